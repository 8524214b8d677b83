"""NestQueryEngine: answers over a LlamaIndex retriever whose copied spans cite exact node ranges.

``Response.source_nodes`` are exactly the nodes that were cited; ``metadata["citations"]``
holds each citation with the engine's JSON fields plus ``node_id``.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.response.schema import AsyncStreamingResponse, Response, StreamingResponse
from llama_index.core.bridge.pydantic import ConfigDict, Field, field_validator
from llama_index.core.indices.base import BaseIndex
from llama_index.core.query_engine import CustomQueryEngine

from .base import NestLLM
from .retrievers import as_llama_index_retriever
from .synthesizer import NestSynthesizer, cited_response_parts

__all__ = ["NestQueryEngine", "cited_response_parts"]


class NestQueryEngine(CustomQueryEngine):
    """Query engine whose answers cite the exact node text they copy.

    Example:
        .. code-block:: python

            engine = NestQueryEngine.from_index(index, similarity_top_k=20)
            response = engine.query("Tell me about Robert Boulter.")
            for c in response.metadata["citations"]:
                print(c["node_id"], c["passage_start"], c["passage_end"], c["quote"])
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    retriever: BaseRetriever
    """Any LlamaIndex retriever, or an engine ``PassageRetriever`` (wrapped in a ``PassageRetrieverAdapter``)."""
    llm: NestLLM = Field(default_factory=NestLLM)
    streaming: bool = False

    @classmethod
    def from_retriever(cls, retriever: Any, llm: NestLLM | None = None, streaming: bool = False) -> NestQueryEngine:
        return cls(retriever=retriever, llm=llm or NestLLM(), streaming=streaming)

    @classmethod
    def from_index(
        cls, index: BaseIndex, *, similarity_top_k: int = 20, llm: NestLLM | None = None, streaming: bool = False
    ) -> NestQueryEngine:
        return cls.from_retriever(index.as_retriever(similarity_top_k=similarity_top_k), llm, streaming)

    @field_validator("retriever", mode="before")
    @classmethod
    def _wrap_passage_retriever(cls, value: Any) -> Any:
        return as_llama_index_retriever(value)

    def _synthesizer(self) -> NestSynthesizer:
        return NestSynthesizer(self.llm, streaming=self.streaming)

    def custom_query(self, query_str: str) -> Response | StreamingResponse:
        if not query_str.strip():
            raise ValueError("The query is empty.")
        return self._synthesizer().synthesize(query_str, self.retriever.retrieve(query_str))  # type: ignore[return-value]

    async def acustom_query(self, query_str: str) -> Response | AsyncStreamingResponse:
        if not query_str.strip():
            raise ValueError("The query is empty.")
        nodes = await self.retriever.aretrieve(query_str)
        return await self._synthesizer().asynthesize(query_str, nodes)  # type: ignore[return-value]
