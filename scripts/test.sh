#!/usr/bin/env bash
# The README's test command: set everything up in .venv, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
python -m pytest -q -ra "$@"
