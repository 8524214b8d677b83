"""Claim-level quality of a cited answer: spliced sentences, fragment citations and
the share of the output that is verbatim-supported, from a ``NestResult`` and its passages.

Pure functions, no model. Definitions (used by ``nest bench``):

- a *copy* is a copied span: an entry of ``result.citations`` or of ``result.fragments``
  (the decoder may list fragments there instead of citing them); a *substantive copy* has
  two or more words (``text_stream.word_count``: "Nero's" is one word), a *fragment* fewer;
- *sentences* of the output: split after ``.``, ``!`` or ``?`` followed by whitespace or the
  end of the text, and at every newline (so "St. Louis" splits: sentences come out short,
  which can only hide a splice across the split, never invent one); blank pieces are dropped;
- a sentence is *copied* when a substantive copy overlaps it, and *cited* when a substantive
  copy listed in ``result.citations`` does. A copied sentence is *verbatim-supported* when the
  substantive copies overlapping it (listed or not), in output order, form one
  contiguous slice of one source: each next copy comes from the same document, starts as far
  after the previous copy's end in the document as it does in the output, and the output text
  between them equals the document text between them (read from the result's passages; a gap
  the passages do not cover counts as not equal). It is *spliced* otherwise. The spliced
  rate is of cited sentences (issue 13: a citation must not back a spliced sentence); the
  spliced-copy rate, of copied sentences, says how often the text itself was put together
  from several places, cited or not;
- the *source* of a copy is its document (``document_id`` with document offsets) when the
  citation has them, else its passage (``passage_id`` with passage offsets).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from typing import Any

from ..citations import Citation, NestResult
from ..claims import CJK_STOPS
from ..passages.types import Passage, ScoredPassage
from ..text_stream import word_count

_SENTENCE_END = re.compile(rf"[.!?](?=\s|$)|[{CJK_STOPS}]|\n")
MIN_SUBSTANTIVE_WORDS = 2


def is_fragment(citation: Citation) -> bool:
    """A copy of fewer than two words ("B", "oulter", "by")."""
    return word_count(citation.quote) < MIN_SUBSTANTIVE_WORDS


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` char spans of the sentences of ``text`` (the rule in the module docstring).

    Each span is stripped of surrounding whitespace; spans are in order and do not overlap.
    """
    spans: list[tuple[int, int]] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        spans.append((start, m.end()))
        start = m.end()
    spans.append((start, len(text)))
    out = []
    for s, e in spans:
        piece = text[s:e]
        if piece.strip():
            lead = len(piece) - len(piece.lstrip())
            out.append((s + lead, s + len(piece.rstrip())))
    return out


class _Sources:
    """Document (or passage) text by char position, pieced together from the given passages."""

    def __init__(self, passages: Iterable[Passage]) -> None:
        self.chars: dict[str, dict[int, str]] = {}
        for p in passages:
            self._add(f"passage:{p.id}", 0, p.text)
            if p.document_id is not None and p.start is not None:
                self._add(f"document:{p.document_id}", p.start, p.text)

    def _add(self, key: str, start: int, text: str) -> None:
        where = self.chars.setdefault(key, {})
        for i, ch in enumerate(text):
            where[start + i] = ch

    def text(self, key: str, start: int, end: int) -> str | None:
        """The source's text in ``[start, end)``, or None where the passages do not cover it."""
        where = self.chars.get(key, {})
        out = []
        for i in range(start, end):
            ch = where.get(i)
            if ch is None:
                return None
            out.append(ch)
        return "".join(out)


def _source(c: Citation) -> tuple[str, int, int]:
    if c.document_id is not None and c.document_start is not None and c.document_end is not None:
        return f"document:{c.document_id}", c.document_start, c.document_end
    return f"passage:{c.passage_id}", c.passage_start, c.passage_end


def continues(text: str, before: Citation, after: Citation, sources: _Sources) -> bool:
    """Whether ``after`` continues ``before``'s source run exactly as the output does (the output
    shows a source that is not in NFC in its NFC form: see ``unicode_form.py``)."""
    key_a, _, end_a = _source(before)
    key_b, start_b, _ = _source(after)
    gap = text[before.output_end : after.output_start] if after.output_start >= before.output_end else None
    if key_a != key_b or gap is None or start_b < end_a:
        return False
    between = sources.text(key_a, end_a, start_b)
    return between is not None and (between == gap or unicodedata.normalize("NFC", between) == gap)


@dataclass(frozen=True)
class ClaimCounts:
    """Counts for one answer; rates are ratios of sums over answers (``claim_rates``).

    ``supported_chars``: for each verbatim-supported sentence, the chars from its first
    substantive copy's start to its last one's end, clipped to the sentence (copies plus the
    verified gap text between them), summed; ``output_chars``: ``len(result.text)``.
    """

    sentences: int = 0
    cited_sentences: int = 0
    spliced_sentences: int = 0  # of the cited ones
    copied_sentences: int = 0
    spliced_copy_sentences: int = 0  # of the copied ones, cited or not
    citations: int = 0
    fragment_citations: int = 0
    supported_chars: int = 0
    output_chars: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def claim_counts(result: NestResult, passages: Sequence[ScoredPassage | Passage] | None = None) -> ClaimCounts:
    """Claim counts of ``result``; ``passages``: what it was given (default ``result.passages``).

    Copies are ``result.citations`` plus ``getattr(result, "fragments", [])``; the fragment
    count is of ``result.citations`` only (what a user sees listed as sources).
    """
    given = result.passages if passages is None else passages
    sources = _Sources(p.passage if isinstance(p, ScoredPassage) else p for p in given)
    text = result.text
    fragments: list[Citation] = list(getattr(result, "fragments", None) or [])
    copies = sorted(result.citations + fragments, key=lambda c: (c.output_start, c.output_end))
    substantive = [c for c in copies if not is_fragment(c)]
    listed = [c for c in result.citations if not is_fragment(c)]
    sentences = sentence_spans(text)
    copied = cited = spliced = spliced_copies = supported = 0
    for s, e in sentences:
        inside = [c for c in substantive if c.output_start < e and c.output_end > s]
        if not inside:
            continue
        copied += 1
        is_cited = any(c.output_start < e and c.output_end > s for c in listed)
        cited += is_cited
        if all(continues(text, a, b, sources) for a, b in pairwise(inside)):
            supported += min(e, inside[-1].output_end) - max(s, inside[0].output_start)
        else:
            spliced_copies += 1
            spliced += is_cited
    return ClaimCounts(
        sentences=len(sentences),
        cited_sentences=cited,
        spliced_sentences=spliced,
        copied_sentences=copied,
        spliced_copy_sentences=spliced_copies,
        citations=len(result.citations),
        fragment_citations=sum(is_fragment(c) for c in result.citations),
        supported_chars=supported,
        output_chars=len(text),
    )


def claim_rates(counts: Iterable[ClaimCounts | Mapping[str, Any]]) -> dict[str, float | None]:
    """Rates over several answers (None where the denominator is 0).

    ``spliced_rate`` = spliced / cited sentences; ``spliced_copy_rate`` = spliced / copied
    sentences (cited or not); ``fragment_citation_rate`` = fragment citations / citations
    listed; ``verbatim_share`` = supported chars / output chars.
    """
    total: dict[str, int] = dict.fromkeys(ClaimCounts().as_dict(), 0)
    for c in counts:
        for k, v in (c.as_dict() if isinstance(c, ClaimCounts) else c).items():
            total[k] += int(v)

    def ratio(a: str, b: str) -> float | None:
        return total[a] / total[b] if total[b] else None

    return {
        "spliced_rate": ratio("spliced_sentences", "cited_sentences"),
        "spliced_copy_rate": ratio("spliced_copy_sentences", "copied_sentences"),
        "fragment_citation_rate": ratio("fragment_citations", "citations"),
        "verbatim_share": ratio("supported_chars", "output_chars"),
    }
