"""Issue 13's claim-level figures on the entity prompts: spliced sentences, fragment citations,
verbatim-supported share, with citation precision, attribution and speed, for NEST (warm cache)
behind the built-in and the "mixed" first stages, against (a) plain generate.

Usage: python benchmarks/claims_entity.py [--entity 20] [--max-new-tokens 128] [--out DIR]
    [--set FIELD=JSON ...] [--dtype bfloat16] [--fusion convex]
The same columns as ``nest bench`` (which also has them), for only the systems they concern, so
before/after runs are short. Systems run interleaved prompt by prompt; claims_entity.md / .json
are rewritten after every prompt, so a stopped run keeps its figures so far.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tqdm.auto import tqdm

from nest_integrations import NestEngine, default_retriever, load_lm
from nest_integrations.bench.first_stages import first_stage
from nest_integrations.bench.report import _fmt, summarize
from nest_integrations.bench.run import machine
from nest_integrations.bench.systems import Measurement, nest, plain_generate
from nest_integrations.bench.tasks import entity_prompts
from nest_integrations.index import default_index_dir
from nest_integrations.passages import HybridRetriever
from nest_integrations.passages.hybrid import FUSIONS

COLUMNS = [
    ("system", "system"),
    ("prompts", "n"),
    ("spliced_rate", "spliced"),
    ("spliced_copy_rate", "spliced uncited too"),
    ("fragment_citation_rate", "fragment cit."),
    ("verbatim_share", "verbatim"),
    ("citation_precision", "cit. precision"),
    ("attribution_ratio", "attribution"),
    ("rougeL", "R-L"),
    ("speed_ratio", "x (a)"),
    ("tokens_per_s", "tok/s"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entity", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=JSON", help="a NestConfig override")
    parser.add_argument("--dtype", help="the model's dtype (default: load_lm's choice for the device)")
    parser.add_argument("--fusion", choices=FUSIONS, help="the built-in first stage's fusion (default: the index's)")
    args = parser.parse_args()
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    lm = load_lm(dtype=args.dtype)
    retriever = default_retriever(tokenizer=lm.tokenizer, progress=False)
    if args.fusion:
        retriever = HybridRetriever.load(default_index_dir(), fusion=args.fusion)
    engine = NestEngine(lm, retriever=retriever)
    if overrides:
        engine = NestEngine(lm, retriever=engine.retriever, config=engine.call_config(**overrides))
    prompts = entity_prompts(args.entity, 0)
    n = args.max_new_tokens
    systems = [plain_generate(engine, n)] + [
        nest(engine, n, f"e: NEST warm, {name}", cold=False, stage=first_stage(name, engine))
        for name in ("built-in", "mixed")
    ]
    engine.generate("Hello", max_new_tokens=2)
    done: dict[str, list[Measurement]] = {s.name: [] for s in systems}
    for i, prompt in enumerate(tqdm(prompts, desc="entity prompts"), 1):
        for system in systems:
            done[system.name].append(system.run(prompt))
        rows = summarize([m for ms in done.values() for m in ms], prompts[:i], {})
        lines = [
            f"## Claim-level quality, {i} of {len(prompts)} entity prompts (seed 0), {n} new tokens",
            "",
            f"Machine: {machine()}. Model: {lm.name} ({lm.dtype}). Config: the model's default, "
            f"overrides {overrides}; first-stage fusion {retriever.fusion}.",
            "",
            "| " + " | ".join(c for _, c in COLUMNS) + " |",
            "|" + "---|" * len(COLUMNS),
        ]
        lines += ["| " + " | ".join(_fmt(r[k]) for k, _ in COLUMNS) + " |" for r in rows]
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "claims_entity.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
        measurements = [m.__dict__ | {"cited": [c.__dict__ for c in m.cited]} for ms in done.values() for m in ms]
        (args.out / "claims_entity.json").write_text(
            json.dumps({"summary": rows, "measurements": measurements}, indent=2), encoding="utf-8"
        )
    print((args.out / "claims_entity.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
