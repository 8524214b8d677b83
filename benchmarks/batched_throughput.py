"""Aggregate throughput and latency of concurrent requests: batched decoding vs one at a time.

Usage: python benchmarks/batched_throughput.py [--concurrency 1 4 8 16] [--max-new-tokens 64]
    [--requests-per-client 3] [--device cpu|cuda] [--dtype ...] [--prompts 16]
    [--set FIELD=JSON ...]

For each concurrency c, c client threads send c x ``--requests-per-client`` entity prompts
("Tell me about X.", the benchmark's entity task over the built-in corpus) taken from one
shared list, each client its next request as soon as its previous one is answered (a closed
loop, as vLLM's ``benchmark_serving --max-concurrency``: c requests in flight until the list
runs out), to (a) an engine that decodes one request at a time (``max_batch=1``: the lock
serialises them) and (b) an engine that batches them (``max_batch=c``, continuous batching).
Reported per system: aggregate generated tokens/s (all tokens / wall time), p50 / p95 request
latency, and the ratio to (a). Passage keys are warmed first (a pass over every prompt), so this
measures decoding. Greedy outputs of (a) and (b) are compared and any difference is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

from nest_integrations import NestEngine, default_retriever, load_lm
from nest_integrations.bench.tasks import entity_prompts


def closed_loop(
    engine: NestEngine, prompts: list[str], concurrency: int, max_new_tokens: int, overrides: dict
) -> tuple[float, list[float], list]:
    """``concurrency`` client threads take the next prompt from one shared list as soon as their
    previous request is answered (vLLM's ``--max-concurrency`` load), so ``concurrency``
    requests are in flight until the list runs out. Wall time, latencies, results in list order."""
    results: list = [None] * len(prompts)
    latencies: list[float] = []
    todo = iter(range(len(prompts)))
    take = threading.Lock()
    barrier = threading.Barrier(concurrency + 1)

    def client() -> None:
        barrier.wait()
        while True:
            with take:
                i = next(todo, None)
            if i is None:
                return
            t = time.perf_counter()
            results[i] = engine.generate(prompts[i], max_new_tokens=max_new_tokens, **overrides)
            latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
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
    parser.add_argument("--requests-per-client", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=16, help="entity prompts cycled through")
    parser.add_argument("--device")
    parser.add_argument("--dtype")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON", help="a NestConfig override")
    args = parser.parse_args()
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}

    lm = load_lm("default", device=args.device, dtype=args.dtype)
    retriever = default_retriever(tokenizer=lm.tokenizer, progress=False)
    texts = [p.text for p in entity_prompts(args.prompts)]
    one_at_a_time = NestEngine(lm, retriever=retriever)
    for text in texts:  # warm the passage-key cache (shared below) and the kernels
        one_at_a_time.generate(text, max_new_tokens=4)
    print(
        f"device {lm.device}, dtype {lm.dtype}, {args.max_new_tokens} new tokens, entity prompts, "
        f"{args.requests_per_client} requests per client, overrides {overrides}\n"
    )
    print("| concurrent | system | aggregate tok/s | p50 latency s | p95 latency s | x one-at-a-time |")
    print("|---|---|---|---|---|---|")
    for c in args.concurrency:
        prompts = [texts[i % len(texts)] for i in range(c * args.requests_per_client)]
        batched = NestEngine(lm, retriever=retriever, max_batch=max(c, 2))
        batched.encoder = one_at_a_time.encoder  # the same warm passage keys
        rows = {}
        for name, engine in (("one at a time", one_at_a_time), ("batched", batched)):
            wall, latencies, results = closed_loop(engine, prompts, c, args.max_new_tokens, overrides)
            tokens = sum(r.stats.tokens_generated for r in results)
            rows[name] = (tokens / wall, latencies, results)
        base = rows["one at a time"][0]
        for name, (rate, latencies, _) in rows.items():
            print(
                f"| {c} | {name} | {rate:.1f} | {statistics.median(latencies):.2f} | {p95(latencies):.2f} | "
                f"{rate / base:.2f} |"
            )
        pairs = list(zip(rows["one at a time"][2], rows["batched"][2], strict=True))
        differ = sum(a.text != b.text for a, b in pairs)
        if differ:
            print(f"|   | (outputs differ for {differ} of {len(pairs)} requests) | | | | |")


if __name__ == "__main__":
    main()
