#!/usr/bin/env bash
# Quick start, command 1: install the package and run the bundled example service on
# generated sample data, on the embedded SQLite store. Results land in ./demo-output.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh pdf
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/dcm-service demo "$@"
