"""Results: NestResult with the answer, claim-level Citations to exact source offsets, and stats.

The types only (and inline citation marks); ``claims.py`` builds citations from per-token
provenance, verified against both the output and the source.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field

from .passages.types import ScoredPassage
from .text_stream import joined

log = logging.getLogger(__name__)

FinishReason = Literal["stop", "length", "eos", "abstain"]


class Citation(BaseModel):
    """One copied span: where it is in the answer and exactly where it came from.

    Invariant: ``text[output_start:output_end] == quote == passage.text[passage_start:passage_end]``
    and, when the passage knows its document, ``== document.text[document_start:document_end]``.
    A passage not in Unicode NFC (decomposed accents, say) is searched and copied in its NFC form:
    its ``quote`` and offsets are still the passage's own, and the answer shows the quote's NFC form.
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
    also_in: list[str] = Field(
        default_factory=list,
        description="Other retrieved passages holding the same quoted text (duplicates, overlapping chunks).",
    )


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
    abstained: bool = Field(False, description="Grounded-only mode answered that the sources do not cover the query.")
    source_coverage: float | None = Field(
        None, description="Share of the query's key terms (names, numbers) in the best source; None without any."
    )
    first_stage_seconds: float = 0.0
    token_index_seconds: float = 0.0
    decoding_seconds: float = 0.0
    tokens_per_second: float = 0.0


class NestResult(BaseModel):
    """A generated answer with its citations and statistics.

    ``citations`` are claim-level: each is one verbatim slice of one source of two or more
    words (adjacent copies contiguous in the source merged); one that enters its source
    sentence midway is cited only when every name and number the output's sentence gives
    before it is in that source sentence (or the passage title). Other copies are
    ``fragments`` (under two words, entering a source sentence after a different subject
    or other names, or in a sentence spliced from copies of two places): counted in
    ``stats.attribution_ratio``, never listed as sources.
    ``finish_reason`` is ``"abstain"`` when grounded-only mode found no source for the query.
    """

    text: str
    citations: list[Citation] = Field(default_factory=list)
    fragments: list[Citation] = Field(
        default_factory=list,
        description="Copies not listed as sources: under two words, an odd entry point, or a spliced sentence.",
    )
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


def mark_citations(text: str, output_ends: Sequence[int]) -> str:
    """``text`` with " [n]" after the n-th cited span (n from 1, in the order given).

    Claims end at word boundaries; a mark at an offset inside a word or a grapheme cluster
    still goes after it, so it never splits one. Marks at one place keep their order.
    """

    def after_word(end: int) -> int:
        while joined(text, end):
            end += 1
        return end

    places = [(after_word(end), n) for n, end in enumerate(output_ends, 1)]
    for end, n in sorted(places, reverse=True):  # from the back, so earlier offsets stay valid
        text = f"{text[:end]} [{n}]{text[end:]}"
    return text
