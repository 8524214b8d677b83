"""Where one request's decoding time goes: the LM's forwards, inside and outside the engine.

Usage: python benchmarks/step_profile.py [--device cuda] [--requests 4] [--max-new-tokens 64] [--out DIR]

For entity prompts decoded one at a time (NEST warm: passage keys built first), reports
(1) tokens/s and the engine's forwards (count, mean wall ms each, share of the wall time;
synchronised on a GPU); (2) the same model's bare forward of 1 and 16 tokens over a 40-token
KV cache in the same process, so the gap between (1)'s per-forward time and (2) is what the
engine adds around a forward; (3) plain greedy ``generate`` of the same length (what users
run without NEST); (4) a cProfile of one request (top functions by own time) and torch.profiler's
top operators, written to DIR/cprofile.txt and DIR/torch_ops.txt. Runs on CPU too.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from pathlib import Path

import torch

from nest_integrations import NestEngine, default_retriever, load_lm
from nest_integrations.bench.tasks import entity_prompts
from nest_integrations.plain import plain_generate


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device")
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("step_profile"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    lm = load_lm("default", device=args.device)
    engine = NestEngine(lm, retriever=default_retriever(tokenizer=lm.tokenizer, progress=False))
    texts = [p.text for p in entity_prompts(args.requests)]
    for text in texts:
        engine.generate(text, max_new_tokens=4)

    calls, seconds = [0], [0.0]
    inner = lm.model.forward

    def timed(*a: object, **k: object) -> object:
        sync(lm.device)
        t = time.perf_counter()
        out = inner(*a, **k)
        sync(lm.device)
        calls[0] += 1
        seconds[0] += time.perf_counter() - t
        return out

    lm.model.forward = timed
    t = time.perf_counter()
    results = [engine.generate(text, max_new_tokens=args.max_new_tokens) for text in texts]
    wall = time.perf_counter() - t
    lm.model.forward = inner
    tokens = sum(r.stats.tokens_generated for r in results)
    print(f"device {lm.device}, dtype {lm.dtype}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(
        f"NEST one at a time: {tokens / wall:.1f} tok/s, {calls[0]} forwards, "
        f"{seconds[0] / calls[0] * 1000:.1f} ms each, {seconds[0] / wall:.0%} of the wall time"
    )

    from transformers import DynamicCache

    with torch.inference_mode():
        for n in (1, 16):
            cache = DynamicCache(config=lm.model.config)
            lm.model(input_ids=torch.randint(100, 20000, (1, 40), device=lm.device), past_key_values=cache)
            x = torch.randint(100, 20000, (1, n), device=lm.device)
            times = []
            for _ in range(20):
                sync(lm.device)
                t = time.perf_counter()
                lm.model(input_ids=x, past_key_values=cache, use_cache=True, output_hidden_states=True)
                sync(lm.device)
                times.append(time.perf_counter() - t)
                cache.crop(-n)
            print(f"bare forward, {n} tokens: {sorted(times)[10] * 1000:.1f} ms (median of 20)")

    prompt_ids = lm.tokenizer(texts[0])["input_ids"]
    plain_generate(lm, prompt_ids, 8)
    out = plain_generate(lm, prompt_ids, args.max_new_tokens, min_new_tokens=args.max_new_tokens)
    print(f"plain greedy generate: {len(out.token_ids) / out.seconds:.1f} tok/s ({len(out.token_ids)} tokens)")

    profiler = cProfile.Profile()
    profiler.enable()
    engine.generate(texts[0], max_new_tokens=args.max_new_tokens)
    profiler.disable()
    buffer = io.StringIO()
    pstats.Stats(profiler, stream=buffer).sort_stats("tottime").print_stats(40)
    (args.out / "cprofile.txt").write_text(buffer.getvalue())
    activities = [torch.profiler.ProfilerActivity.CPU]
    if lm.device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        engine.generate(texts[0], max_new_tokens=args.max_new_tokens)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
    (args.out / "torch_ops.txt").write_text(table)
    print(buffer.getvalue()[:6000])
    print(table[:5000])


if __name__ == "__main__":
    main()
