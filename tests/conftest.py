"""Shared fixtures: the embedded model and the default-corpus index are loaded once per session."""

from __future__ import annotations

import pytest

from nest_integrations import HybridRetriever, LoadedLM, NestEngine, Passage, default_retriever, load_lm


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
