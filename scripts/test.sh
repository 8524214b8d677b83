#!/usr/bin/env bash
# Set everything up, then run the test suite (arguments are passed to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pytest "$@"
