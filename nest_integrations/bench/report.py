"""Aggregate measurements per system and task; write Markdown, JSON and a PNG figure."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .claims import claim_rates
from .metrics import rouge
from .systems import PLAIN_SYSTEMS, Measurement
from .tasks import Prompt


def summarize(
    measurements: Sequence[Measurement], prompts: Sequence[Prompt], peak_rss_mib: dict[str, float]
) -> list[dict[str, Any]]:
    refs = {(p.task, p.text): p.reference for p in prompts}
    rows: list[dict[str, Any]] = []
    baseline: dict[str, float] = {}
    order = list(dict.fromkeys(m.system for m in measurements))
    for task in ("completion", "entity"):
        best_plain = max(
            (
                _tokens_per_s([m for m in measurements if m.system == s and m.task == task])
                for s in order
                if s.startswith(PLAIN_SYSTEMS)
            ),
            default=0.0,
        )
        for system in order:
            ms = [m for m in measurements if m.system == system and m.task == task]
            if not ms:
                continue
            tokens, seconds = sum(m.tokens for m in ms), sum(m.seconds for m in ms)
            tps = tokens / seconds if seconds else 0.0
            if system.startswith("a:"):
                baseline[task] = tps
            scores = [rouge(m.text, refs[(task, m.prompt)]) for m in ms]
            cited = [c for m in ms for c in m.cited]
            right = sum(1 for m in ms for c in m.cited if c.document_id == m.document_id)
            wrong_chars = sum(c.chars for m in ms for c in m.cited if c.document_id != m.document_id)
            output_chars = sum(len(m.text) for m in ms)
            proposed = sum(m.spans_proposed for m in ms)
            accepted = sum(m.spans_accepted for m in ms)
            rows.append(
                {
                    "task": task,
                    "system": system,
                    "prompts": len(ms),
                    "tokens_per_s": tps,
                    "speed_ratio": tps / baseline[task] if baseline.get(task) else None,
                    "speed_vs_best_plain": tps / best_plain if best_plain else None,
                    "latency_s": seconds / len(ms),
                    "first_stage_s": statistics.mean(m.first_stage_s for m in ms),
                    "token_index_s": statistics.mean(m.token_index_s for m in ms),
                    "decoding_s": statistics.mean(m.decoding_s for m in ms),
                    "attribution_ratio": sum(m.tokens_copied for m in ms) / tokens if tokens else 0.0,
                    "mean_accepted_span": sum(m.accepted_tokens for m in ms) / accepted if accepted else 0.0,
                    "acceptance_rate": accepted / proposed if proposed else 0.0,
                    "citation_precision": right / len(cited) if cited else None,
                    "wrong_source_rate": wrong_chars / output_chars if output_chars else 0.0,
                    # A completion continues its prompt mid-sentence by design: only answers count.
                    "mid_sentence_starts": (
                        sum(m.mid_sentence_start for m in ms) / len(ms) if task == "entity" else None
                    ),
                    "rouge1": statistics.mean(s["rouge1"] for s in scores),
                    "rouge2": statistics.mean(s["rouge2"] for s in scores),
                    "rougeL": statistics.mean(s["rougeL"] for s in scores),
                    "peak_rss_mib": peak_rss_mib.get(system),
                    **claim_columns(ms),
                }
            )
    return rows


def _tokens_per_s(ms: Sequence[Measurement]) -> float:
    seconds = sum(m.seconds for m in ms)
    return sum(m.tokens for m in ms) / seconds if seconds else 0.0


def claim_columns(ms: Sequence[Measurement]) -> dict[str, float | None]:
    """Spliced-sentence, fragment-citation and verbatim-supported rates (None for systems that do not cite)."""
    counts = [m.claims for m in ms if m.claims is not None]
    if not counts:
        return dict.fromkeys(("spliced_rate", "spliced_copy_rate", "fragment_citation_rate", "verbatim_share"))
    return claim_rates(counts)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"
    return str(v)


COLUMNS = [
    ("system", "system"),
    ("prompts", "n"),
    ("tokens_per_s", "tok/s"),
    ("speed_ratio", "x (a)"),
    ("speed_vs_best_plain", "x best plain"),
    ("latency_s", "latency s"),
    ("first_stage_s", "1st stage s"),
    ("token_index_s", "index s"),
    ("decoding_s", "decode s"),
    ("attribution_ratio", "attribution"),
    ("mean_accepted_span", "mean span"),
    ("acceptance_rate", "accept rate"),
    ("citation_precision", "cit. precision"),
    ("wrong_source_rate", "wrong-source"),
    ("spliced_rate", "spliced"),
    ("spliced_copy_rate", "spliced uncited too"),
    ("fragment_citation_rate", "fragment cit."),
    ("verbatim_share", "verbatim"),
    ("mid_sentence_starts", "mid-sentence"),
    ("rouge1", "R-1"),
    ("rouge2", "R-2"),
    ("rougeL", "R-L"),
    ("peak_rss_mib", "peak RSS MiB"),
]


def markdown(rows: Sequence[dict[str, Any]], header: str) -> str:
    lines = [header, ""]
    for task in dict.fromkeys(r["task"] for r in rows):
        lines += [f"### {task}", "", "| " + " | ".join(c for _, c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(_fmt(r[k]) for k, _ in COLUMNS) + " |" for r in rows if r["task"] == task]
        lines.append("")
    return "\n".join(lines)


def write(out: Path, rows: list[dict[str, Any]], measurements: Sequence[Measurement], header: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(markdown(rows, header), encoding="utf-8")
    (out / "results.json").write_text(
        json.dumps({"summary": rows, "measurements": [asdict(m) for m in measurements]}, indent=2), encoding="utf-8"
    )
    figure(rows, out / "results.png")


def figure(rows: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(len(tasks), 2, figsize=(14, 4.5 * len(tasks)), squeeze=False)
    for row_axes, task in zip(axes, tasks, strict=True):
        rs = [r for r in rows if r["task"] == task]
        ax = row_axes[0]
        for r in rs:
            ax.scatter(r["speed_ratio"] or 0, r["rougeL"])
            ax.annotate(r["system"].split(":")[0], (r["speed_ratio"] or 0, r["rougeL"]), fontsize=9)
        ax.set_xlabel("tokens/s relative to (a) plain generate")
        ax.set_ylabel("ROUGE-L")
        ax.set_title(f"{task}: speed vs quality")
        ax = row_axes[1]
        labels = [r["system"].split(":")[0] for r in rs]
        bottom = [0.0] * len(rs)
        for key, label in (
            ("first_stage_s", "first stage"),
            ("token_index_s", "token index"),
            ("decoding_s", "decoding"),
        ):
            values = [r[key] for r in rs]
            ax.bar(labels, values, bottom=bottom, label=label)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set_ylabel("seconds per prompt")
        ax.set_title(f"{task}: latency breakdown")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
