"""Fixtures for the LlamaIndex adapter: a VectorStoreIndex of the default corpus, built once."""

from __future__ import annotations

import pytest
from llama_index.core import Settings, VectorStoreIndex
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

from nest_integrations import default_corpus
from nest_integrations.index import chunk_documents
from nest_integrations.passages.embedder import find_embedded_minilm


@pytest.fixture(scope="session")
def embed_model():
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    return HuggingFaceEmbedding(model_name=str(find_embedded_minilm()), device="cpu")


@pytest.fixture(scope="session")
def documents() -> dict[str, str]:
    return {d.id: d.text for d in default_corpus()}


@pytest.fixture(scope="session")
def corpus_index(embed_model) -> VectorStoreIndex:
    """Default-corpus passages as nodes that keep their document and char range."""
    nodes = [
        TextNode(
            id_=p.id,
            text=p.text,
            metadata={"title": p.title},
            start_char_idx=p.start,
            end_char_idx=p.end,
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=p.document_id)},
        )
        for p in chunk_documents(default_corpus())
    ]
    return VectorStoreIndex(nodes, embed_model=embed_model)


@pytest.fixture(autouse=True)
def no_openai_defaults(embed_model):
    """LlamaIndex defaults to OpenAI; tests never reach it."""
    Settings.embed_model = embed_model
    yield
