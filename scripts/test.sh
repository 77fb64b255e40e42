#!/usr/bin/env bash
# The README's test command: set everything up in .venv, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
# two workers (pytest-xdist), a test file per worker: module fixtures are built once, and the
# gpu-check job cache on disk (atomic writes) is shared between them
python -m pytest -q -ra -n 2 --dist loadfile "$@"
