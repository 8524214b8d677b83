"""Issue 7's before/after table: citation precision of entity answers, paper settings vs defaults.

Usage: python benchmarks/citation_precision.py [--entity 20] [--max-new-tokens 128] [--out DIR]
Runs (a) plain generate, NEST with the paper's settings ("before") and NEST with the engine's
default config ("after": for the embedded model, its calibrated config with the guards on),
warm cache, behind the built-in first stage (b = 20 over the whole default corpus) and behind
the "mixed" first stage (6 passages of the asked article, 14 of the most similar other
articles, no scores). Writes citation_precision.md and .json to the output directory.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from nest_integrations.bench.first_stages import first_stage
from nest_integrations.bench.report import summarize
from nest_integrations.bench.run import machine, run_systems
from nest_integrations.bench.systems import nest, paper_settings, plain_generate
from nest_integrations.bench.tasks import entity_prompts
from nest_integrations.builder import EngineOptions, build_engine

COLUMNS = [
    ("citation_precision", "citation precision"),
    ("wrong_source_rate", "wrong-source copy rate"),
    ("mid_sentence_starts", "mid-sentence starts"),
    ("attribution_ratio", "attribution"),
    ("rougeL", "ROUGE-L"),
    ("speed_ratio", "speed x (a)"),
    ("tokens_per_s", "tok/s"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entity", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    engine = build_engine(EngineOptions(key_store=False))
    prompts = entity_prompts(args.entity, 0)
    n = args.max_new_tokens
    systems = [plain_generate(engine, n)]
    for stage_name in ("built-in", "mixed"):
        stage = first_stage(stage_name, engine)
        before = f"before (paper settings), {stage_name}"
        systems.append(nest(engine, n, before, cold=False, stage=stage, **paper_settings()))
        systems.append(nest(engine, n, f"after (default config), {stage_name}", cold=False, stage=stage))
    engine.generate("Hello", max_new_tokens=2)
    measurements, peaks = run_systems(systems, prompts)
    rows = summarize(measurements, prompts, peaks)
    lines = [
        f"## Citation precision, {len(prompts)} entity prompts, {n} new tokens",
        "",
        f"Machine: {machine()}. Model: {engine.lm.name}. Default config: {engine.config.model_dump_json()}",
        "",
        "| system | " + " | ".join(c for _, c in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for r in rows:
        cells = ["-" if r[k] is None else f"{r[k]:.3f}" if k != "tokens_per_s" else f"{r[k]:.1f}" for k, _ in COLUMNS]
        lines.append(f"| {r['system']} | " + " | ".join(cells) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "citation_precision.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (args.out / "citation_precision.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
