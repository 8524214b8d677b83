"""``nest calibrate``: fit NEST's hyperparameters for a model on a held-in split of a corpus.

The paper tuned alpha, tau, beta and gamma per task; a user with another model should not
have to. Coordinate search: starting from a config, each parameter in turn takes the grid
value that maximises the objective with the others fixed, for a few passes.

Objective on the held-in prompts (entity and completion prompts of the articles *not* in
the benchmark's entity sample), each run behind every given first stage (by default the
built-in one and the ``mixed`` one that puts other articles' passages in, where wrong
sources can be cited): mean ROUGE-L + citation precision (share of citations that come
from the prompt's own article), over configs whose attribution ratio is at least a floor
and whose speed is at least ``speed_floor`` times the start config's (copying is what
makes NEST fast; a config that copies less to gain noise-level ROUGE is not better). A
config under a floor scores below every config above them. A parameter moves only when
the objective gains more than ``margin``, so the search does not chase measurement noise.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import NestConfig
from ..engine import NestEngine
from ..errors import ConfigError
from .first_stages import FirstStage, built_in, mixed
from .metrics import rouge
from .systems import nest
from .tasks import Prompt, completion_prompts, entity_prompts

# Each parameter's grid; None for knn_temperature means the paper's sqrt(hidden size).
GRID: dict[str, list[Any]] = {
    "alpha": [0.2, 0.3, 0.4],
    "tau": [0.05, 0.1, 0.2],
    "beta": [0.3, 0.5, 0.7],
    "gamma": [5e-4, 5e-3, 5e-2],
    "knn_temperature": [None, 100.0, 400.0],
    "min_passage_relevance": [0.25, 0.5, 0.75],
    "passage_prior": [0.0, 1.0],
}


@dataclass
class Trial:
    params: dict[str, Any]
    objective: float
    rouge_l: float
    citation_precision: float
    attribution_ratio: float
    tokens_per_s: float


def held_in_prompts(
    entities: int, completions: int, seed: int = 0, held_out_entities: int = 20, held_out_completions: int = 50
) -> list[Prompt]:
    """Prompts the benchmark's default sample does not use: entity prompts after its first
    ``held_out_entities``, completion prompts after its first ``held_out_completions`` and
    from articles outside its entity sample."""
    sample = entity_prompts(None, seed)
    excluded = {p.document_id for p in sample[:held_out_entities]}
    entity = sample[held_out_entities : held_out_entities + entities]
    rest = completion_prompts(None, seed)[held_out_completions:]
    completion = [p for p in rest if p.document_id not in excluded][:completions]
    return entity + completion


def evaluate(
    engine: NestEngine,
    prompts: Sequence[Prompt],
    params: dict[str, Any],
    max_new_tokens: int,
    floor: float,
    stages: Sequence[FirstStage],
) -> Trial:
    """Score one config; ``objective`` here applies the attribution floor only (see :func:`calibrate`)."""
    """Run NEST (warm cache) with ``params`` on ``prompts`` behind each first stage and score the result."""
    systems = [nest(engine, max_new_tokens, "calibration", cold=False, stage=stage, **params) for stage in stages]
    measurements = [system.run(p) for system in systems for p in prompts]
    refs = {(p.task, p.text): p.reference for p in prompts}
    rouge_l = sum(rouge(m.text, refs[(m.task, m.prompt)])["rougeL"] for m in measurements) / len(measurements)

    cited = sum(len(m.cited) for m in measurements)
    right = sum(1 for m in measurements for c in m.cited if c.document_id == m.document_id)
    precision = right / cited if cited else 0.0
    tokens = sum(m.tokens for m in measurements)
    attribution = sum(m.tokens_copied for m in measurements) / tokens if tokens else 0.0
    objective = rouge_l + precision if attribution >= floor else attribution - 1.0
    seconds = sum(m.seconds for m in measurements)
    return Trial(dict(params), objective, rouge_l, precision, attribution, tokens / seconds if seconds else 0.0)


def calibrate(
    engine: NestEngine,
    prompts: Sequence[Prompt],
    *,
    start: NestConfig | None = None,
    grid: dict[str, list[Any]] | None = None,
    passes: int = 2,
    max_new_tokens: int = 128,
    floor: float = 0.5,
    speed_floor: float = 0.8,
    margin: float = 0.01,
    stages: Sequence[FirstStage] | None = None,
    on_trial: Callable[[Trial], None] | None = None,
) -> tuple[NestConfig, list[Trial]]:
    """Coordinate search over ``grid`` from ``start``; returns the best config and every trial.

    ``stages``: the first stages every trial runs behind (default: built-in and, when the
    engine's retriever has a dense ranking, mixed).
    """
    grid = grid or GRID
    if stages is None:
        stages = [built_in(engine)]
        with contextlib.suppress(ConfigError):  # a first stage without a dense ranking: built-in only
            stages.append(mixed(engine.retriever))
    base = (start or engine.config).model_dump()
    params = {k: base[k] for k in grid}
    seen: dict[str, Trial] = {}

    def trial(p: dict[str, Any]) -> Trial:
        key = json.dumps(p, sort_keys=True)
        if key not in seen:
            seen[key] = evaluate(engine, prompts, p, max_new_tokens, floor, stages)
            if on_trial is not None:
                on_trial(seen[key])
        return seen[key]

    best = trial(params)
    min_speed = speed_floor * best.tokens_per_s
    for _ in range(passes):
        improved = False
        for name, values in grid.items():
            for v in values:
                candidate = trial({**params, name: v})
                fast_enough = candidate.tokens_per_s >= min_speed
                if fast_enough and candidate.objective > best.objective + margin:
                    best, params, improved = candidate, candidate.params, True
        if not improved:
            break
    return NestConfig.model_validate({**base, **params}), list(seen.values())


def write_calibration(path: Path, config: NestConfig, trials: Sequence[Trial], about: dict[str, Any]) -> None:
    """A file that ``NestConfig.from_file`` loads: the fitted config plus how it was obtained."""
    chosen = next(t for t in trials if all(getattr(config, k) == v for k, v in t.params.items()))
    record = {
        "config": json.loads(config.model_dump_json()),
        "calibration": {
            **about,
            "date": time.strftime("%Y-%m-%d"),
            "objective": "mean ROUGE-L + citation precision; attribution and speed floors; margin",
            "chosen": vars(chosen),
            "trials": [vars(t) for t in trials],
        },
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
