#!/usr/bin/env bash
# Set everything up in .venv and run the whole test suite (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0          # the CPU build; never a multi-GB CUDA build
python -m pip install -q -e ".[test]"
python -m pytest -q -ra "$@"
