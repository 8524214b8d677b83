"""Assertions shared by the engine tests."""

from __future__ import annotations

from nest_integrations.citations import NestResult


def assert_citations_exact(result: NestResult, documents: dict[str, str] | None = None) -> None:
    """Every citation's quote equals the output text, the passage text and the document text at its offsets."""
    by_id = {s.passage.id: s.passage for s in result.passages}
    for c in result.citations:
        assert c.quote, c
        assert result.text[c.output_start : c.output_end] == c.quote
        passage = by_id[c.passage_id]
        assert passage.text[c.passage_start : c.passage_end] == c.quote
        if documents is not None and c.document_id is not None:
            assert c.document_start is not None and c.document_end is not None
            assert documents[c.document_id][c.document_start : c.document_end] == c.quote
