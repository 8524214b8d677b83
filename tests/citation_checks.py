"""Assertions shared by the engine tests."""

from __future__ import annotations

import itertools
import re
import unicodedata

from nest_integrations.citations import NestResult
from nest_integrations.text_stream import joined


def assert_citations_exact(result: NestResult, documents: dict[str, str] | None = None) -> None:
    """Every citation's quote equals the passage text and the document text at its offsets, and the
    output text at its offsets (in NFC, for a source that is not: see ``unicode_form.py``)."""
    by_id = {s.passage.id: s.passage for s in result.passages}
    for c in result.citations:
        assert c.quote, c
        assert result.text[c.output_start : c.output_end] in (c.quote, unicodedata.normalize("NFC", c.quote))
        passage = by_id[c.passage_id]
        assert passage.text[c.passage_start : c.passage_end] == c.quote
        if documents is not None and c.document_id is not None:
            assert c.document_start is not None and c.document_end is not None
            assert documents[c.document_id][c.document_start : c.document_end] == c.quote


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Sentences of ``text`` as char ranges: split after . ! ? followed by whitespace, and at newlines."""
    spans, start = [], 0
    for m in re.finditer(r"(?<=[.!?])\s+|\n+|(?<=[\u3002\uff01\uff1f])\s*", text):
        if m.start() > start:
            spans.append((start, m.start()))
        start = m.end()
    if start < len(text):
        spans.append((start, len(text)))
    return spans


def spliced_sentences(result: NestResult, documents: dict[str, str] | None = None) -> list[str]:
    """Cited sentences whose substantive copies are not one contiguous slice of one source.

    Two claims in one sentence are contiguous when they come from one document and the output
    text between them equals the source text between them (issue 13's definition).
    """
    by_id = {s.passage.id: s.passage for s in result.passages}
    spliced = []
    for start, end in sentence_spans(result.text):
        inside = [c for c in result.citations if c.output_start < end and c.output_end > start]
        for a, b in itertools.pairwise(inside):
            gap = result.text[a.output_end : b.output_start]
            if a.passage_id == b.passage_id:
                source = by_id[a.passage_id].text[a.passage_end : b.passage_start]
            elif documents is not None and a.document_id == b.document_id and a.document_id is not None:
                source = documents[a.document_id][a.document_end : b.document_start]
            else:
                source = None
            if source is None or unicodedata.normalize("NFC", source) != gap:
                spliced.append(result.text[start:end])
                break
    return spliced


def assert_claim_level(result: NestResult, documents: dict[str, str] | None = None) -> None:
    """Citations are exact, never fragments, never split a word, and no cited sentence is spliced."""
    assert_citations_exact(result, documents)
    for c in result.citations:
        assert len(c.quote.split()) >= 2, f"fragment listed as a source: {c.quote!r}"
        for at in (c.output_start, c.output_end):
            assert not joined(result.text, at), f"citation boundary inside a word at {at}: {result.text!r}"
    assert not spliced_sentences(result, documents), spliced_sentences(result, documents)
