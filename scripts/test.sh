#!/usr/bin/env bash
# Quick start, command 2: install everything (system peers + Python deps) and run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh --system test
export PATH="$PWD/.venv/bin:$PATH"   # dcm2niix, dciodvfy; dcmtk is called by full path
exec .venv/bin/python -m pytest "$@"
