"""Shared fixtures: the embedded model and the default-corpus index are loaded once per session."""

from __future__ import annotations

import pytest

from nest_integrations import HybridRetriever, LoadedLM, NestEngine, Passage, default_retriever, load_lm
from nest_integrations.citations import NestResult


@pytest.fixture(scope="session")
def lm() -> LoadedLM:
    return load_lm("default")


@pytest.fixture(scope="session")
def corpus_retriever(lm: LoadedLM) -> HybridRetriever:
    return default_retriever(tokenizer=lm.tokenizer, progress=False)


@pytest.fixture(scope="session")
def engine(lm: LoadedLM, corpus_retriever: HybridRetriever) -> NestEngine:
    return NestEngine(lm, retriever=corpus_retriever)


@pytest.fixture(scope="session")
def boulter_passages(corpus_retriever: HybridRetriever) -> list[Passage]:
    return [p for p in corpus_retriever.passages if p.document_id == "Robert_Boulter"][:6]


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
