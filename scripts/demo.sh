#!/usr/bin/env bash
# Set everything up, then answer a question with citations over the built-in corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
NEST_SETUP=core bash scripts/setup.sh
. .venv/bin/activate
nest ask "${1:-Tell me about Robert Boulter.}"
