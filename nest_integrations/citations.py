"""Results: NestResult with the answer, per-span Citations to exact source offsets, and stats.

Turns per-token provenance (which passage token each output token was copied from) into
citations whose quoted text is verified against both the output and the source.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from .passages.types import ScoredPassage
from .token_index import EncodedPassage

log = logging.getLogger(__name__)

FinishReason = Literal["stop", "length", "eos"]


class Citation(BaseModel):
    """One copied span: where it is in the answer and exactly where it came from.

    Invariant: ``text[output_start:output_end] == quote == passage.text[passage_start:passage_end]``
    and, when the passage knows its document, ``== document.text[document_start:document_end]``.
    """

    output_start: int
    output_end: int
    quote: str
    passage_id: str
    document_id: str | None = None
    title: str = ""
    passage_start: int
    passage_end: int
    document_start: int | None = None
    document_end: int | None = None
    score: float = Field(description="Mean retrieval confidence (1 - lambda) over the copied tokens.")
    metadata: dict[str, Any] = Field(default_factory=dict)


class NestStats(BaseModel):
    """What happened during one generation."""

    prompt_tokens: int = 0
    tokens_generated: int = 0
    tokens_copied: int = 0
    attribution_ratio: float = 0.0
    spans_proposed: int = 0
    spans_accepted: int = 0
    mean_accepted_span: float = 0.0
    passages: int = 0
    passages_encoded: int = Field(0, description="Passages run through the LM (cache misses).")
    passages_searched: int = Field(0, description="Passages in the token search (relevant, not gated).")
    source_coverage: float | None = Field(
        None, description="Share of the query's key terms (names, numbers) in the best source; None without any."
    )
    first_stage_seconds: float = 0.0
    token_index_seconds: float = 0.0
    decoding_seconds: float = 0.0
    tokens_per_second: float = 0.0


class NestResult(BaseModel):
    """A generated answer with its citations and statistics."""

    text: str
    citations: list[Citation] = Field(default_factory=list)
    stats: NestStats = Field(default_factory=NestStats)
    finish_reason: FinishReason = "length"
    passages: list[ScoredPassage] = Field(default_factory=list, description="What the first stage returned.")

    def cited_passage_ids(self) -> list[str]:
        return list(dict.fromkeys(c.passage_id for c in self.citations))


@dataclass(frozen=True)
class Provenance:
    """Where an output token was copied from: passage index, token position, confidence 1 - lambda."""

    passage: int
    position: int
    confidence: float


def build_citations(
    text: str,
    token_starts: Sequence[int],
    token_ends: Sequence[int],
    provenance: Sequence[Provenance | None],
    passages: Sequence[ScoredPassage],
    encoded: Sequence[EncodedPassage],
) -> list[Citation]:
    """Group copied tokens into runs (same passage, consecutive positions) and cite each run.

    A run whose output text does not equal its source text (a tokenizer that does not
    round-trip) is dropped rather than cited wrongly.
    """
    citations: list[Citation] = []
    k = 0
    while k < len(provenance):
        first = provenance[k]
        if first is None:
            k += 1
            continue
        end = k + 1
        while end < len(provenance):
            nxt, prev = provenance[end], provenance[end - 1]
            if nxt is None or prev is None or nxt.passage != first.passage or nxt.position != prev.position + 1:
                break
            end += 1
        run = [p for p in provenance[k:end] if p is not None]
        cit = _cite_run(
            text, token_starts[k], token_ends[end - 1], run, passages[first.passage], encoded[first.passage]
        )
        if cit is not None:
            citations.append(cit)
        k = end
    return citations


def _cite_run(
    text: str,
    out_start: int,
    out_end: int,
    run: Sequence[Provenance],
    scored: ScoredPassage,
    enc: EncodedPassage,
) -> Citation | None:
    p = scored.passage
    src_start = int(enc.char_spans[run[0].position, 0]) - enc.text_offset
    src_end = int(enc.char_spans[run[-1].position, 1]) - enc.text_offset
    # Drop what lies outside the passage text (the title separator) and surrounding whitespace.
    if src_start < 0:
        out_start, src_start = out_start - src_start, 0
    out_quote, src_quote = text[out_start:out_end], p.text[src_start:src_end]
    if out_quote != src_quote:
        log.debug("dropping citation: output %r != source %r", out_quote, src_quote)
        return None
    lead = len(out_quote) - len(out_quote.lstrip())
    trail = len(out_quote) - len(out_quote.rstrip())
    out_start, src_start = out_start + lead, src_start + lead
    out_end, src_end = out_end - trail, src_end - trail
    if out_end <= out_start:
        return None
    doc_start = p.start + src_start if p.start is not None else None
    return Citation(
        output_start=out_start,
        output_end=out_end,
        quote=text[out_start:out_end],
        passage_id=p.id,
        document_id=p.document_id,
        title=p.title,
        passage_start=src_start,
        passage_end=src_end,
        document_start=doc_start,
        document_end=doc_start + (src_end - src_start) if doc_start is not None else None,
        score=sum(r.confidence for r in run) / len(run),
        metadata=dict(p.metadata),
    )


def mark_citations(text: str, output_ends: Sequence[int]) -> str:
    """``text`` with " [n]" after the n-th cited span (n from 1, in the order given).

    A span may end inside a word (the model wrote "B", a passage gave "oulter"); its mark
    goes after the word so it never splits one. Marks at one place keep their order.
    """

    def after_word(end: int) -> int:
        while 0 < end < len(text) and text[end - 1].isalnum() and text[end].isalnum():
            end += 1
        return end

    places = [(after_word(end), n) for n, end in enumerate(output_ends, 1)]
    for end, n in sorted(places, reverse=True):  # from the back, so earlier offsets stay valid
        text = f"{text[:end]} [{n}]{text[end:]}"
    return text


def clip_citations(citations: Sequence[Citation], length: int) -> list[Citation]:
    """Citations cut at output char ``length`` (for stop strings), keeping the quote invariant."""
    out = []
    for c in citations:
        if c.output_start >= length:
            continue
        cut = max(0, c.output_end - length)
        if cut == 0:
            out.append(c)
            continue
        quote = c.quote[: len(c.quote) - cut].rstrip()
        if not quote:
            continue
        drop = len(c.quote) - len(quote)
        out.append(
            c.model_copy(
                update={
                    "output_end": c.output_end - drop,
                    "quote": quote,
                    "passage_end": c.passage_end - drop,
                    "document_end": c.document_end - drop if c.document_end is not None else None,
                }
            )
        )
    return out
