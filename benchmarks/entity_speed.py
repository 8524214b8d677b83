"""NEST vs plain greedy `generate` on entity prompts over the default corpus (same model, machine, run).

Usage: python benchmarks/entity_speed.py [--prompts 5] [--max-new-tokens 128]
Prints a Markdown table: tokens/s of each system, the ratio, attribution ratio, mean accepted span.
Speed targets live here, not in the tests.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from nest_integrations import default_corpus
from nest_integrations.builder import EngineOptions, build_engine
from nest_integrations.lm import LoadedLM, build_prompt_ids, normalize_messages
from nest_integrations.plain import plain_generate as plain_decode


def plain_generate(lm: LoadedLM, prompt: str, max_new_tokens: int) -> tuple[int, float]:
    ids = build_prompt_ids(lm.tokenizer, normalize_messages(prompt))
    out = plain_decode(lm, ids, max_new_tokens, min_new_tokens=max_new_tokens)
    return len(out.token_ids), out.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()

    engine = build_engine(EngineOptions(key_store=False, progress=True))
    lm = engine.lm
    titles = [d.title for d in default_corpus()][: args.prompts]
    prompts = [f"Tell me about {t}." for t in titles]
    plain_generate(lm, "Hello", 8)  # warm-up

    rows = []
    for prompt in prompts:
        n_plain, s_plain = plain_generate(lm, prompt, args.max_new_tokens)
        t = time.perf_counter()
        cold = engine.generate(prompt, max_new_tokens=args.max_new_tokens)
        s_cold = time.perf_counter() - t
        t = time.perf_counter()
        warm = engine.generate(prompt, max_new_tokens=args.max_new_tokens)
        s_warm = time.perf_counter() - t
        rows.append(
            {
                "prompt": prompt,
                "plain_tps": n_plain / s_plain,
                "cold_tps": cold.stats.tokens_generated / s_cold,
                "warm_tps": warm.stats.tokens_generated / s_warm,
                "attribution": warm.stats.attribution_ratio,
                "span": warm.stats.mean_accepted_span,
                "encode_s": cold.stats.token_index_seconds,
                "tokens": warm.stats.tokens_generated,
            }
        )

    print(f"device: {lm.device}, threads: {torch.get_num_threads()}, model: {lm.name}, tokens: {args.max_new_tokens}")
    print("| prompt | plain tok/s | cold tok/s | warm tok/s | warm/plain | attribution | mean span | encode s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['prompt']} | {r['plain_tps']:.1f} | {r['cold_tps']:.1f} | {r['warm_tps']:.1f} | "
            f"{r['warm_tps'] / r['plain_tps']:.2f}x | {r['attribution']:.2f} | {r['span']:.1f} | {r['encode_s']:.2f} |"
        )
    keys = ("plain_tps", "cold_tps", "warm_tps", "attribution", "span")
    mean = {k: statistics.mean(r[k] for r in rows) for k in keys}
    print(
        f"| **mean** | {mean['plain_tps']:.1f} | {mean['cold_tps']:.1f} | {mean['warm_tps']:.1f} | "
        f"{mean['warm_tps'] / mean['plain_tps']:.2f}x (cold {mean['cold_tps'] / mean['plain_tps']:.2f}x) | "
        f"{mean['attribution']:.2f} | {mean['span']:.1f} | |"
    )


if __name__ == "__main__":
    main()
