"""Run the benchmark: every system on the same seeded prompts, then the report files."""

from __future__ import annotations

import platform
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..engine import NestEngine
from ..index import default_retriever
from ..lm import load_lm
from .report import markdown, summarize, write
from .systems import Measurement, System, nest, standard_systems
from .tasks import Prompt, completion_prompts, entity_prompts


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_systems(
    systems: Sequence[System], prompts: Sequence[Prompt], progress: bool = True
) -> tuple[list[Measurement], dict[str, float]]:
    from tqdm.auto import tqdm

    measurements: list[Measurement] = []
    peaks: dict[str, float] = {}
    for system in systems:
        for prompt in tqdm(prompts, desc=system.name, disable=not progress):
            measurements.append(system.run(prompt))
        peaks[system.name] = _peak_rss_mib()  # the process peak so far (RSS peaks cannot be reset)
    return measurements, peaks


def machine() -> str:
    device = (
        torch.cuda.get_device_name(0)
        if torch.cuda.is_available()
        else f"CPU ({platform.processor() or platform.machine()})"
    )
    return f"{device}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def run_benchmark(
    out: Path,
    *,
    completion: int | None = 50,
    entity: int | None = 20,
    max_new_tokens: int = 128,
    seed: int = 0,
    model: str = "default",
    sweep: bool = False,
    progress: bool = True,
    engine: NestEngine | None = None,
) -> list[dict[str, Any]]:
    """Measure every system; write results.md / results.json / results.png (and sweep.md with ``sweep``).

    ``engine`` reuses a loaded engine (its retriever is the first stage); by default the
    model is loaded and the default corpus's index is the first stage.
    """
    if engine is None:
        lm = load_lm(model)
        engine = NestEngine(lm, retriever=default_retriever(tokenizer=lm.tokenizer, progress=progress))
    lm = engine.lm
    prompts = completion_prompts(completion, seed) + entity_prompts(entity, seed)
    systems = standard_systems(engine, max_new_tokens)
    engine.generate("Hello", max_new_tokens=2)  # warm-up: first-call overheads are not a system's cost
    started = time.strftime("%Y-%m-%d %H:%M")
    measurements, peaks = run_systems(systems, prompts, progress)
    rows = summarize(measurements, prompts, peaks)
    n_completion = sum(p.task == "completion" for p in prompts)
    header = (
        f"## NEST benchmark ({started})\n\nMachine: {machine()}. Model: {lm.name}. "
        f"Prompts: {n_completion} completion, {len(prompts) - n_completion} entity (seed {seed}); "
        f"{max_new_tokens} new tokens; first stage: built-in hybrid, b = 20."
    )
    write(out, rows, measurements, header)
    if sweep:
        sweep_rows = run_sweep(engine, entity_prompts(min(entity or 5, 5), seed), max_new_tokens, progress)
        (out / "sweep.md").write_text(
            markdown(sweep_rows, "## Sensitivity (entity prompts, NEST warm)"), encoding="utf-8"
        )
    return rows


def run_sweep(
    engine: NestEngine, prompts: Sequence[Prompt], max_new_tokens: int, progress: bool
) -> list[dict[str, Any]]:
    """gamma (relaxation), beta (span threshold) and b (passages), one at a time around the defaults."""
    grid: list[tuple[str, dict[str, Any]]] = [("a: plain generate", {})]
    grid += [(f"gamma={g}", {"gamma": g}) for g in (5e-4, 5e-3, 5e-2, 0.5, 1.0)]
    grid += [(f"beta={b}", {"beta": b}) for b in (0.2, 0.35, 0.5, 0.65, 0.8)]
    grid += [(f"b={n}", {"num_passages": n}) for n in (1, 5, 10, 20, 40)]
    from .systems import plain_generate

    systems = [plain_generate(engine, max_new_tokens)] + [
        nest(engine, max_new_tokens, name, cold=False, **kw) for name, kw in grid[1:]
    ]
    measurements, peaks = run_systems(systems, prompts, progress)
    return summarize(measurements, prompts, peaks)
