"""Aggregate throughput and latency of concurrent requests: batched decoding vs one at a time.

Usage: python benchmarks/batched_throughput.py [--concurrency 1 4 8 16] [--max-new-tokens 64]
    [--device cpu|cuda] [--dtype ...] [--prompts 16]

For each concurrency c, c threads each send one entity prompt ("Tell me about X.", the
benchmark's entity task over the built-in corpus) at the same moment to (a) an engine that
decodes one request at a time (``max_batch=1``: the lock serialises them) and (b) an engine
that batches them (``max_batch=c``). Reported per system: aggregate generated tokens/s
(all tokens / wall time of the wave), p50 / p95 request latency, and for (b) the batch's
forwards. Passage keys are warmed first (a pass over every prompt), so this measures decoding.
Greedy outputs of (a) and (b) are compared and any difference is reported.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from nest_integrations import NestEngine, default_retriever, load_lm
from nest_integrations.bench.tasks import entity_prompts


def wave(engine: NestEngine, prompts: list[str], max_new_tokens: int) -> tuple[float, list[float], list]:
    """Send every prompt at once from its own thread; wall time, latencies, results."""
    results: list = [None] * len(prompts)
    latencies = [0.0] * len(prompts)
    barrier = threading.Barrier(len(prompts) + 1)

    def call(i: int) -> None:
        barrier.wait()
        t = time.perf_counter()
        results[i] = engine.generate(prompts[i], max_new_tokens=max_new_tokens)
        latencies[i] = time.perf_counter() - t

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - start, latencies, results


def p95(xs: list[float]) -> float:
    return sorted(xs)[round(0.95 * (len(xs) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=16, help="entity prompts cycled through")
    parser.add_argument("--device")
    parser.add_argument("--dtype")
    args = parser.parse_args()

    lm = load_lm("default", device=args.device, dtype=args.dtype)
    retriever = default_retriever(tokenizer=lm.tokenizer, progress=False)
    texts = [p.text for p in entity_prompts(args.prompts)]
    one_at_a_time = NestEngine(lm, retriever=retriever)
    for text in texts:  # warm the passage-key cache (shared below) and the kernels
        one_at_a_time.generate(text, max_new_tokens=4)
    print(f"device {lm.device}, dtype {lm.dtype}, {args.max_new_tokens} new tokens, entity prompts\n")
    print("| concurrent | system | aggregate tok/s | p50 latency s | p95 latency s | x one-at-a-time |")
    print("|---|---|---|---|---|---|")
    for c in args.concurrency:
        prompts = [texts[i % len(texts)] for i in range(c)]
        batched = NestEngine(lm, retriever=retriever, max_batch=max(c, 2))
        batched.encoder = one_at_a_time.encoder  # the same warm passage keys
        rows = {}
        for name, engine in (("one at a time", one_at_a_time), ("batched", batched)):
            wall, latencies, results = wave(engine, prompts, args.max_new_tokens)
            tokens = sum(r.stats.tokens_generated for r in results)
            rows[name] = (tokens / wall, latencies, results)
        base = rows["one at a time"][0]
        for name, (rate, latencies, _) in rows.items():
            print(
                f"| {c} | {name} | {rate:.1f} | {statistics.median(latencies):.2f} | {p95(latencies):.2f} | "
                f"{rate / base:.2f} |"
            )
        differ = [
            i for i, (a, b) in enumerate(zip(rows["one at a time"][2], rows["batched"][2], strict=True)) if a.text != b.text
        ]
        if differ:
            print(f"|   | (outputs differ for {len(differ)} of {c} requests: {differ}) | | | | |")


if __name__ == "__main__":
    main()
