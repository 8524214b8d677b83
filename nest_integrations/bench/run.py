"""Run the benchmark: every system on the same seeded prompts, then the report files."""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..builder import EngineOptions, build_engine
from ..config import NestConfig
from ..engine import NestEngine
from .first_stages import first_stage as make_first_stage
from .report import markdown, summarize, write
from .systems import Measurement, System, measurement_from_dict, nest, standard_systems
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
    first_stage: str = "built-in",
    config: NestConfig | None = None,
    isolate: bool = False,
) -> list[dict[str, Any]]:
    """Measure every system; write results.md / results.json / results.png (and sweep.md with ``sweep``).

    ``engine`` reuses a loaded engine (its retriever feeds the first stage); by default the
    model is loaded with ``config`` (None: the model's default) and the default corpus's
    index is the first stage. ``first_stage``: "built-in", "mixed" or "held-out" (see
    ``first_stages.py``). ``isolate`` runs each system in its own process, so that each
    peak RSS is that system's own (model, index and its working memory).
    """
    prompts = completion_prompts(completion, seed) + entity_prompts(entity, seed)
    started = time.strftime("%Y-%m-%d %H:%M")
    spec: dict[str, Any] = {
        "completion": completion,
        "entity": entity,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
        "model": model,
        "first_stage": first_stage,
        "config": config.model_dump() if config else None,
    }
    if isolate:
        measurements, peaks, name, b = _run_isolated(spec, progress)
    else:
        engine = engine or _engine(model, config, progress)
        name, b = engine.lm.name, engine.config.num_passages
        systems = standard_systems(engine, max_new_tokens, make_first_stage(first_stage, engine))
        engine.generate("Hello", max_new_tokens=2)  # warm-up: first-call overheads are not a system's cost
        measurements, peaks = run_systems(systems, prompts, progress)
    rows = summarize(measurements, prompts, peaks)
    n_completion = sum(p.task == "completion" for p in prompts)
    rss = "each system in its own process" if isolate else "the process peak so far"
    header = (
        f"## NEST benchmark ({started})\n\nMachine: {machine()}. Model: {name}. "
        f"Prompts: {n_completion} completion, {len(prompts) - n_completion} entity (seed {seed}); "
        f"{max_new_tokens} new tokens; first stage: {first_stage}, b = {b}. Peak RSS: {rss}."
    )
    write(out, rows, measurements, header)
    if sweep:
        engine = engine or _engine(model, config, progress)
        sweep_rows = run_sweep(engine, entity_prompts(min(entity or 5, 5), seed), max_new_tokens, progress)
        (out / "sweep.md").write_text(
            markdown(sweep_rows, "## Sensitivity (entity prompts, NEST warm)"), encoding="utf-8"
        )
    return rows


def _engine(model: str, config: NestConfig | None, progress: bool) -> NestEngine:
    """The benchmarked engine: the built-in first stage, passage keys in memory only (cold runs stay cold)."""
    return build_engine(EngineOptions(model=model, key_store=False, progress=progress), config=config)


def run_one_system(spec: dict[str, Any], index: int) -> dict[str, Any]:
    """Run system ``index`` of the standard list alone (in a worker process) and report it."""
    config = NestConfig.model_validate(spec["config"]) if spec["config"] else None
    engine = _engine(spec["model"], config, progress=False)
    systems = standard_systems(engine, spec["max_new_tokens"], make_first_stage(spec["first_stage"], engine))
    prompts = completion_prompts(spec["completion"], spec["seed"]) + entity_prompts(spec["entity"], spec["seed"])
    engine.generate("Hello", max_new_tokens=2)
    measurements, peaks = run_systems(systems[index : index + 1], prompts, progress=False)
    return {
        "systems": len(systems),
        "model": engine.lm.name,
        "num_passages": engine.config.num_passages,
        "measurements": [asdict(m) for m in measurements],
        "peak_rss_mib": peaks,
    }


def _run_isolated(spec: dict[str, Any], progress: bool) -> tuple[list[Measurement], dict[str, float], str, int]:
    from tqdm.auto import tqdm

    measurements: list[Measurement] = []
    peaks: dict[str, float] = {}
    index, count, name, b = 0, 1, "", 0
    with tqdm(desc="systems (one process each)", disable=not progress) as bar:
        while index < count:
            done = subprocess.run(
                [sys.executable, "-m", "nest_integrations.bench.worker", json.dumps(spec), str(index)],
                check=True,
                capture_output=True,
                text=True,
            )
            report = json.loads(done.stdout.strip().splitlines()[-1])
            count, name, b = report["systems"], report["model"], report["num_passages"]
            bar.total = count
            measurements += [measurement_from_dict(m) for m in report["measurements"]]
            peaks |= report["peak_rss_mib"]
            index += 1
            bar.update()
    return measurements, peaks, name, b


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
