"""Plain baselines next to NEST, 3 runs each: which plain decoder is fastest on this device?

(a) eager ``generate``; (s) static KV cache (transformers compiles it on CUDA); (s+c) static
cache with the decode step compiled on any device (to decide whether compiling pays on a
CPU); (l) llama.cpp on the same GGUF when ``llama-cpp-cffi`` is installed; (e) NEST with
passage keys cached by a warm-up pass over the same prompts. Prints a Markdown table: the
median tok/s over the runs, their min-max, and the ratio to the fastest plain system.

    python benchmarks/plain_baselines.py --entity 5 --max-new-tokens 64 --runs 3
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

from nest_integrations.bench.run import machine
from nest_integrations.bench.systems import System, llama_cpp, nest, plain_generate, static_cache
from nest_integrations.bench.tasks import entity_prompts
from nest_integrations.builder import EngineOptions, build_engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entity", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="skip (s+c), the compiled static cache")
    args = parser.parse_args()
    engine = build_engine(EngineOptions(key_store=False))
    n = args.max_new_tokens
    prompts = entity_prompts(args.entity, 0)
    systems: list[System] = [plain_generate(engine, n), static_cache(engine, n)]
    if not args.no_compile:
        systems.append(plain_generate(engine, n, "s+c: static cache, compiled", static_cache=True, compile=True))
    peer = llama_cpp(engine, n)
    if peer is not None:
        systems.append(peer)
    systems.append(nest(engine, n, "e: NEST warm cache", cold=False))
    for system in systems:  # warm-up: compilation, first-call overheads, passage keys
        for prompt in prompts:
            system.run(prompt)
    speeds: dict[str, list[float]] = {s.name: [] for s in systems}
    for _ in range(args.runs):
        for system in systems:  # interleaved, so load drifts hit every system alike
            ms = [system.run(p) for p in prompts]
            speeds[system.name].append(sum(m.tokens for m in ms) / sum(m.seconds for m in ms))
    median: Callable[[str], float] = lambda name: statistics.median(speeds[name])  # noqa: E731
    best = max(median(s.name) for s in systems if s.name[:2] in ("a:", "s:", "l:") or s.name.startswith("s+c"))
    print(f"Machine: {machine()}. {len(prompts)} entity prompts, {n} new tokens, {args.runs} runs.\n")
    print("| system | tok/s (median) | min-max | x fastest plain |\n|---|---|---|---|")
    for s in systems:
        v = speeds[s.name]
        print(f"| {s.name} | {median(s.name):.1f} | {min(v):.1f}-{max(v):.1f} | {median(s.name) / best:.2f} |")


if __name__ == "__main__":
    main()
