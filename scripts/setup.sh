#!/usr/bin/env bash
# Create .venv with seqc and its test tools (CPU PyTorch). Sourced by main.sh and test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0          # the CPU build; never a multi-GB CUDA build
python -m pip install -q -e ".[test]"
