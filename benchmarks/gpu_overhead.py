"""What bounds NEST's speedup on a GPU (issue 5, item 5): verification cost and k-NN overhead.

Usage: python benchmarks/gpu_overhead.py [--device cuda] [--shapes 135M 1B 8B] [--out DIR]

(i) For randomly initialised Llama-shaped models in bf16 (no weights to download), the time
of one forward over n draft tokens with a KV cache of ``--context`` tokens, against one
decoding step (n = 1). NEST verifies a whole span in one forward, so when verifying n
tokens costs little more than one step, accepted spans are almost free.
(ii) The per-step cost of NEST's own work, the engine's code on random keys: squared-L2
search for r = 1024 neighbors over 2,000 and 20,000 keys (``TokenIndex.search``), the k-NN
distribution over the vocabulary, Relative Retrieval Confidence and the mixture, for one
position (a decoding step) and for 64 (verifying a span).

Writes gpu_overhead.md and .json. Runs on CPU too (``--device cpu --shapes 135M``) as a
smoke test; the figures that matter are the GPU ones.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from nest_integrations.mixture import knn_distribution, lm_distribution, mix_on_support, relative_retrieval_confidence
from nest_integrations.token_index import EncodedPassage, TokenIndex

# Llama shapes: SmolLM2-135M, Llama-3.2-1B, Llama-3.1-8B (hidden, layers, heads, kv heads, MLP, vocab).
SHAPES = {
    "135M": (576, 30, 9, 3, 1536, 49152),
    "1B": (2048, 16, 32, 8, 8192, 128256),
    "8B": (4096, 32, 32, 8, 14336, 128256),
}


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median milliseconds of ``fn`` after a warm-up, synchronising the device around each call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1000)
    return float(np.median(times))


@torch.inference_mode()
def verification_cost(
    shape: str, device: torch.device, dtype: torch.dtype, context: int, ns: list[int], repeats: int
) -> list[dict[str, object]]:
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, kv, mlp, vocab = SHAPES[shape]
    config = LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=mlp,
        vocab_size=vocab,
        max_position_embeddings=context + max(ns) + 8,
    )
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build the weights in bf16 directly: an 8B model in fp32 is 32 GB
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default)
    prefix = torch.randint(0, vocab, (1, context), device=device)
    out = model(input_ids=prefix, use_cache=True)
    cache = out.past_key_values
    # transformers 5.2x takes the cache as ``cache`` (``past_key_values`` still works, with a warning)
    cache_argument = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    rows: list[dict[str, object]] = []
    for n in ns:
        draft = torch.randint(0, vocab, (1, n), device=device)

        def step(draft: torch.Tensor = draft, n: int = n) -> None:
            model(input_ids=draft, **{cache_argument: cache}, use_cache=True, output_hidden_states=True)
            cache.crop(-n)  # roll back to the context, as NEST does after verification

        rows.append({"shape": shape, "n": n, "ms": timed(step, device, repeats)})
    base = float(rows[0]["ms"])  # type: ignore[arg-type]
    for r in rows:
        r["x_one_step"] = float(r["ms"]) / base  # type: ignore[arg-type]
    return rows  # the model is freed when this returns


def knn_overhead(device: torch.device, dim: int, keys: int, positions: int, repeats: int) -> dict[str, object]:
    vocab, r = 49152, 1024
    passages = max(1, keys // 100)
    per = keys // passages
    encoded = [
        EncodedPassage(
            token_ids=torch.randint(0, vocab, (per + 1,)),
            char_spans=np.zeros((per + 1, 2), dtype=np.int64),
            text_offset=0,
            first_key=0,
            keys=torch.randn(per, dim),
        )
        for _ in range(passages)
    ]
    index = TokenIndex(encoded, device)
    queries = torch.randn(positions, dim, device=device)
    logits = torch.randn(positions, vocab, device=device)

    def step() -> None:
        dist, idx = index.search(queries, r)
        values = index.values[idx]
        p_knn = knn_distribution(dist, values, vocab, dim**0.5)
        lam = relative_retrieval_confidence(dist, 0.3, 0.1)
        mix_on_support(lm_distribution(logits, 0.7), p_knn, lam, values.long())  # as the decoder mixes

    def search_only() -> None:
        index.search(queries, r)

    return {
        "dim": dim,
        "keys": len(index),
        "positions": positions,
        "search_ms": timed(search_only, device, repeats),
        "search_knn_mixture_ms": timed(step, device, repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--context", type=int, default=512, help="tokens already in the KV cache")
    parser.add_argument("--ns", type=int, nargs="+", default=[1, 4, 16, 32, 64], help="draft lengths")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if args.context < 1 or args.repeats < 1 or min(args.ns) < 1:
        parser.error("--context, --repeats and every --ns must be at least 1")
    if args.ns[0] != 1:
        args.ns = [1, *[n for n in args.ns if n != 1]]  # "x one step" is relative to n = 1
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    verify = [
        row
        for shape in args.shapes
        for row in verification_cost(shape, device, dtype, args.context, args.ns, args.repeats)
    ]
    knn = [
        knn_overhead(device, dim, keys, positions, args.repeats)
        for dim in (576, 2048)
        for keys in (2000, 20000)
        for positions in (1, 64)
    ]
    lines = [
        f"## GPU overhead ({name}, {dtype}, torch {torch.__version__})",
        "",
        f"### (i) Verifying n draft tokens vs one step (KV cache of {args.context} tokens, random weights)",
        "",
        "| shape | n | ms | x one step |",
        "|---|---|---|---|",
        *[f"| {r['shape']} | {r['n']} | {r['ms']:.2f} | {r['x_one_step']:.2f} |" for r in verify],
        "",
        "### (ii) NEST per-step work, r = 1024 neighbors, vocabulary 49,152",
        "",
        "| key dim | keys | positions | search ms | search + k-NN + RRC + mixture ms |",
        "|---|---|---|---|---|",
        *[
            f"| {k['dim']} | {k['keys']} | {k['positions']} | {k['search_ms']:.3f} | {k['search_knn_mixture_ms']:.3f} |"
            for k in knn
        ],
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_overhead.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (args.out / "gpu_overhead.json").write_text(
        json.dumps({"device": name, "verify": verify, "knn": knn}, indent=2), encoding="utf-8"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
