"""NestEmbedding: the embedded all-MiniLM-L6-v2 as a LlamaIndex embedding model, fully offline.

LlamaIndex defaults ``Settings.embed_model`` to OpenAI; pass ``embed_model=NestEmbedding()``
(or set it in ``Settings``) to build a ``VectorStoreIndex`` with no API key and no download.
"""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr

from nest_integrations.passages.embedder import DEFAULT_EMBEDDER, SentenceEmbedder


class NestEmbedding(BaseEmbedding):
    """Normalised sentence embeddings (384 floats for the embedded MiniLM), loaded on first use.

    Example:
        .. code-block:: python

            from llama_index.llms.nest import NestEmbedding

            index = VectorStoreIndex.from_documents(docs, embed_model=NestEmbedding())
    """

    model_name: str = Field(default=DEFAULT_EMBEDDER, description="'default' (embedded MiniLM) or a local path.")
    device: str | None = Field(default=None, description="torch device ('cpu', 'cuda'); None: the embedder's default.")
    _embedder: Any = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        return "NestEmbedding"

    def _get(self) -> SentenceEmbedder:
        if self._embedder is None:
            self._embedder = SentenceEmbedder(self.model_name, device=self.device)
        return self._embedder

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        vectors: list[Embedding] = self._get().encode(texts, batch_size=self.embed_batch_size).tolist()
        return vectors

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._get_text_embeddings([text])[0]

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._get_text_embeddings([query])[0]

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)
