"""Fixtures for the LangChain adapter: one in-memory vector store over a few default-corpus articles."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore

from langchain_nest import NestEmbeddings
from nest_integrations import default_corpus
from nest_integrations.index import chunk_documents

ARTICLES = ("Robert_Boulter", "Clayton_Kershaw", "Du_Fu", "Dick_Rifenburg")


@pytest.fixture(scope="session")
def embeddings() -> NestEmbeddings:
    return NestEmbeddings()


@pytest.fixture(scope="session")
def corpus_documents() -> list[Document]:
    """Default-corpus passages of a few articles as LangChain documents (with start_index)."""
    docs = [d for d in default_corpus() if d.id in ARTICLES]
    return [
        Document(
            id=p.id,
            page_content=p.text,
            metadata={"title": p.title, "source": p.document_id, "start_index": p.start},
        )
        for p in chunk_documents(docs)
    ]


@pytest.fixture(scope="session")
def article_texts() -> dict[str, str]:
    return {d.id: d.text for d in default_corpus() if d.id in ARTICLES}


@pytest.fixture(scope="session")
def vectorstore(corpus_documents: list[Document], embeddings: NestEmbeddings) -> InMemoryVectorStore:
    store = InMemoryVectorStore(embedding=embeddings)
    store.add_documents(corpus_documents)
    return store
