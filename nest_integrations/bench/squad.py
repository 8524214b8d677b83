"""SQuAD v1.1 QA task: plain LM, in-context RAG and NEST answer real questions over
the SQuAD dev paragraphs indexed as documents; answer containment, token F1, citation
precision (article, paragraph), first-stage recall@k, latency and the claim metrics.

The data (CC BY-SA 4.0, Rajpurkar et al. 2016) is read from a directory, never shipped: ``--squad-dir``,
else ``$NEST_SQUAD_DIR``, else ``../shared/data/squad`` next to the repository (or the working directory).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import string
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import NestConfig
from ..corpus import read_documents
from ..engine import NestEngine
from ..errors import NestError
from ..index import DEFAULT_MAX_PASSAGE_TOKENS, cache_dir, cached_index
from ..lm import load_lm
from ..passages.hybrid import HybridRetriever
from .claims import claim_rates
from .first_stages import built_in
from .report import _fmt
from .run import machine
from .systems import Measurement, in_context_rag, nest, plain_generate
from .tasks import Prompt

SQUAD_LICENCE = (
    "SQuAD v1.1 dev (Rajpurkar, Zhang, Lopyrev, Liang, EMNLP 2016), paragraphs from English Wikipedia, CC BY-SA 4.0."
)


class SquadDataNotFoundError(NestError, FileNotFoundError):
    """The SQuAD directory (corpus.jsonl, questions.jsonl) is not where it was looked for."""


# --- Scoring (the official SQuAD v1.1 evaluation's definitions) -------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation, drop the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def contains_answer(output: str, answers: Sequence[str]) -> bool:
    """Whether any gold answer, normalised, occurs in the normalised output (on word boundaries)."""
    out = f" {normalize_answer(output)} "
    return any(norm and f" {norm} " in out for norm in map(normalize_answer, answers))


def token_f1(output: str, answers: Sequence[str]) -> float:
    """SQuAD token F1: the best over gold answers of F1 on normalised whitespace tokens."""

    def f1(gold: str) -> float:
        pred_tokens, gold_tokens = normalize_answer(output).split(), normalize_answer(gold).split()
        common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
        if common == 0:
            return 0.0
        p, r = common / len(pred_tokens), common / len(gold_tokens)
        return 2 * p * r / (p + r)

    return max((f1(a) for a in answers), default=0.0)


# --- Data ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answers: list[str]
    title: str
    gold_passage: str


def find_squad_dir(explicit: str | Path | None = None) -> Path:
    """Where the SQuAD files are: ``explicit``, ``$NEST_SQUAD_DIR``, or ``../shared/data/squad``.

    Raises :class:`SquadDataNotFoundError` naming every place looked at.
    """
    if explicit is not None or os.environ.get("NEST_SQUAD_DIR"):
        candidates = [Path(explicit or os.environ["NEST_SQUAD_DIR"])]
    else:
        repo = Path(__file__).resolve().parents[2]
        candidates = [repo.parent / "shared/data/squad", Path.cwd().parent / "shared/data/squad"]
    for d in candidates:
        if (d / "corpus.jsonl").is_file() and (d / "questions.jsonl").is_file():
            return d
    looked = ", ".join(str(d) for d in dict.fromkeys(candidates))
    raise SquadDataNotFoundError(
        f"SQuAD data not found (looked in {looked}): the task needs corpus.jsonl and questions.jsonl "
        "(SQuAD v1.1 dev, see ../shared/data/squad/README.md); pass --squad-dir DIR or set NEST_SQUAD_DIR."
    )


def load_questions(directory: Path) -> list[Question]:
    with (directory / "questions.jsonl").open(encoding="utf-8") as f:
        return [Question(**{k: d[k] for k in Question.__dataclass_fields__}) for d in map(json.loads, f) if d]


def sample_questions(directory: Path, n: int, seed: int = 0) -> list[Question]:
    """A seeded sample of ``n`` questions (the same for the same file, n and seed)."""
    questions = load_questions(directory)
    return random.Random(seed).sample(questions, min(n, len(questions)))


def squad_index(directory: Path, tokenizer: Any | None = None, progress: bool = True) -> HybridRetriever:
    """The paragraphs of ``corpus.jsonl`` as documents, indexed as ``nest index`` does; cached by content."""
    corpus = directory / "corpus.jsonl"
    digest = hashlib.sha1(corpus.read_bytes() + f"|{DEFAULT_MAX_PASSAGE_TOKENS}|v2".encode()).hexdigest()[:12]
    return cached_index(
        cache_dir() / f"squad-index-{digest}",
        lambda: read_documents([corpus]),
        tokenizer=tokenizer,
        progress=progress,
    )


# --- Run and report ------------------------------------------------------------------------------


def score(
    measurements: Sequence[Measurement],
    questions: Sequence[Question],
    recall: Sequence[bool],
    titles: dict[str, str],
) -> list[dict[str, Any]]:
    """One row per system; ``measurements`` are system by system, each in ``questions`` order.

    ``recall[i]``: whether question i's gold paragraph was among the first stage's passages
    (reported for the systems that read passages); ``titles``: document id -> article title.
    """
    rows = []
    for system in dict.fromkeys(m.system for m in measurements):
        ms = [m for m in measurements if m.system == system]
        qs = questions[: len(ms)]
        cited = [(q, c) for m, q in zip(ms, qs, strict=True) for c in m.cited]
        tokens, seconds = sum(m.tokens for m in ms), sum(m.seconds for m in ms)
        claims = [m.claims for m in ms if m.claims is not None]
        reads = not system.startswith("a:")
        rows.append(
            {
                "task": "squad",
                "system": system,
                "prompts": len(ms),
                "containment": sum(contains_answer(m.text, q.answers) for m, q in zip(ms, qs, strict=True)) / len(ms),
                "f1": sum(token_f1(m.text, q.answers) for m, q in zip(ms, qs, strict=True)) / len(ms),
                "precision_article": (
                    sum(titles.get(c.document_id or "") == q.title for q, c in cited) / len(cited) if cited else None
                ),
                "precision_paragraph": (
                    sum(c.document_id == q.gold_passage for q, c in cited) / len(cited) if cited else None
                ),
                "recall_at_k": sum(recall[: len(ms)]) / len(ms) if reads else None,
                "latency_s": seconds / len(ms),
                "first_stage_s": sum(m.first_stage_s for m in ms) / len(ms),
                "decoding_s": sum(m.decoding_s for m in ms) / len(ms),
                "tokens_per_s": tokens / seconds if seconds else 0.0,
                "attribution_ratio": sum(m.tokens_copied for m in ms) / tokens if tokens else 0.0,
                **(
                    claim_rates(claims)
                    if claims
                    else dict.fromkeys(
                        ("spliced_rate", "spliced_copy_rate", "fragment_citation_rate", "verbatim_share")
                    )
                ),
            }
        )
    return rows


COLUMNS = [
    ("system", "system"),
    ("prompts", "n"),
    ("containment", "contains answer"),
    ("f1", "token F1"),
    ("precision_article", "cit. prec. article"),
    ("precision_paragraph", "cit. prec. paragraph"),
    ("recall_at_k", "recall@k"),
    ("latency_s", "latency s"),
    ("first_stage_s", "1st stage s"),
    ("decoding_s", "decode s"),
    ("tokens_per_s", "tok/s"),
    ("attribution_ratio", "attribution"),
    ("spliced_rate", "spliced"),
    ("spliced_copy_rate", "spliced uncited too"),
    ("fragment_citation_rate", "fragment cit."),
    ("verbatim_share", "verbatim"),
]


def markdown(rows: Sequence[dict[str, Any]], header: str) -> str:
    lines = [header, "", "| " + " | ".join(c for _, c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r[k]) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join([*lines, ""])


def run_squad(
    out: Path,
    *,
    questions: int = 5,
    seed: int = 0,
    max_new_tokens: int = 128,
    model: str = "default",
    config: NestConfig | None = None,
    squad_dir: str | Path | None = None,
    engine: NestEngine | None = None,
    progress: bool = True,
    checkpoint: int = 1,
) -> list[dict[str, Any]]:
    """Answer a seeded sample of SQuAD questions with (a) plain LM, (b) in-context RAG, (d) NEST.

    (b) and NEST read the same first-stage passages (the engine's retriever over the SQuAD
    paragraphs, b = ``config.num_passages``); NEST's passage cache is cleared before each
    question, so its latency includes encoding them. ``engine``: a loaded model to reuse (its
    retriever is replaced by the SQuAD index). Writes ``squad.md`` and ``squad.json`` in ``out``
    every ``checkpoint`` questions (a long run that is stopped keeps its figures so far) and at
    the end; returns the rows. Raises :class:`SquadDataNotFoundError` when the data is not found.
    """
    directory = find_squad_dir(squad_dir)
    sample = sample_questions(directory, questions, seed)
    lm = engine.lm if engine is not None else load_lm(model)
    retriever = squad_index(directory, tokenizer=lm.tokenizer, progress=progress)
    engine = NestEngine(lm, retriever=retriever, config=config or (engine.config if engine else None))
    titles = {p.document_id or "": p.title for p in retriever.passages}
    prompts = [Prompt("squad", q.question, q.answers[0], q.gold_passage) for q in sample]
    stage = built_in(engine)
    recall = [any(s.passage.document_id == p.document_id for s in stage(p)) for p in prompts]
    systems = [
        plain_generate(engine, max_new_tokens),
        in_context_rag(engine, max_new_tokens, prompt_lookup=False, stage=stage),
        nest(engine, max_new_tokens, "d: NEST cold cache", cold=True, stage=stage),
    ]
    started = time.strftime("%Y-%m-%d %H:%M")
    engine.generate("Hello", max_new_tokens=2)  # warm-up: first-call overheads are not a system's cost

    def header(done: int) -> str:
        partial = f" (partial: {done} of {len(sample)} answered so far)" if done < len(sample) else ""
        return (
            f"## SQuAD v1.1 dev QA ({started})\n\nMachine: {machine()}. Model: {lm.name}. "
            f"{len(sample)} questions (seed {seed}) from {directory}{partial}; {len(retriever)} passages of "
            f"{len(titles)} paragraphs; {max_new_tokens} new tokens; first stage: built-in hybrid, "
            f"k = b = {engine.config.num_passages}; systems interleaved question by question. Data: {SQUAD_LICENCE}"
        )

    from tqdm.auto import tqdm

    done: dict[str, list[Measurement]] = {s.name: [] for s in systems}
    rows: list[dict[str, Any]] = []
    for i, prompt in enumerate(tqdm(prompts, desc="SQuAD questions", disable=not progress), 1):
        for system in systems:  # interleaved, so a changing machine load hits every system alike
            done[system.name].append(system.run(prompt))
        if i % checkpoint == 0 or i == len(prompts):
            measurements = [m for ms in done.values() for m in ms]
            rows = score(measurements, sample, recall, titles)
            _write(out, rows, header(i), measurements, sample, recall)
    return rows


def _write(
    out: Path,
    rows: list[dict[str, Any]],
    header: str,
    measurements: Sequence[Measurement],
    sample: Sequence[Question],
    recall: Sequence[bool],
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "squad.md").write_text(markdown(rows, header), encoding="utf-8")
    per_system: dict[str, int] = {}
    per_question = []
    for m in measurements:
        i = per_system[m.system] = per_system.get(m.system, -1) + 1
        q = sample[i]
        extra = {"question_id": q.id, "answers": q.answers, "title": q.title, "gold_in_first_stage": recall[i]}
        per_question.append({**asdict(m), **extra})
    (out / "squad.json").write_text(
        json.dumps({"summary": rows, "measurements": per_question}, indent=2), encoding="utf-8"
    )
