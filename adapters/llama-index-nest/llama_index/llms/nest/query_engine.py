"""NestQueryEngine: answers over a LlamaIndex retriever whose copied spans cite exact node ranges.

``Response.source_nodes`` are exactly the nodes that were cited; ``metadata["citations"]``
holds each citation with the engine's JSON fields plus ``node_id``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.response.schema import AsyncStreamingResponse, Response, StreamingResponse
from llama_index.core.bridge.pydantic import ConfigDict, Field
from llama_index.core.indices.base import BaseIndex
from llama_index.core.query_engine import CustomQueryEngine
from llama_index.core.schema import NodeWithScore

from .base import NestLLM
from .retrievers import nodes_to_passages


def cited_response_parts(
    nest: dict[str, Any], nodes: list[NodeWithScore]
) -> tuple[list[NodeWithScore], dict[str, Any]]:
    """Source nodes that were cited (first-cited first) and the response metadata."""
    by_id = {n.node.node_id: n for n in nodes}
    citations = [{**c, "node_id": c["passage_id"]} for c in nest["citations"]]
    cited = list(dict.fromkeys(c["node_id"] for c in citations if c["node_id"] in by_id))
    return [by_id[i] for i in cited], {"citations": citations, "nest_stats": nest["stats"]}


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
    llm: NestLLM = Field(default_factory=NestLLM)
    streaming: bool = False

    @classmethod
    def from_retriever(
        cls, retriever: BaseRetriever, llm: NestLLM | None = None, streaming: bool = False
    ) -> NestQueryEngine:
        return cls(retriever=retriever, llm=llm or NestLLM(), streaming=streaming)

    @classmethod
    def from_index(
        cls, index: BaseIndex, *, similarity_top_k: int = 20, llm: NestLLM | None = None, streaming: bool = False
    ) -> NestQueryEngine:
        return cls.from_retriever(index.as_retriever(similarity_top_k=similarity_top_k), llm, streaming)

    @staticmethod
    def _check(query_str: str) -> None:
        if not query_str.strip():
            raise ValueError("The query is empty.")

    def custom_query(self, query_str: str) -> Response | StreamingResponse:
        self._check(query_str)
        nodes = self.retriever.retrieve(query_str)
        passages = nodes_to_passages(nodes)
        if self.streaming:
            return self._streaming(query_str, nodes, passages)
        # Through llm.complete, so LlamaIndex's standard LLM events are emitted for it.
        completion = self.llm.complete(query_str, nest_passages=passages)
        source_nodes, metadata = cited_response_parts(completion.raw["nest"], nodes)
        return Response(response=completion.text, source_nodes=source_nodes, metadata=metadata)

    async def acustom_query(self, query_str: str) -> Response | AsyncStreamingResponse:
        self._check(query_str)
        nodes = await self.retriever.aretrieve(query_str)
        passages = nodes_to_passages(nodes)
        if self.streaming:
            return self._astreaming(query_str, nodes, passages)
        completion = await self.llm.acomplete(query_str, nest_passages=passages)
        source_nodes, metadata = cited_response_parts(completion.raw["nest"], nodes)
        return Response(response=completion.text, source_nodes=source_nodes, metadata=metadata)

    def _streaming(self, query_str: str, nodes: list[NodeWithScore], passages: list[Any]) -> StreamingResponse:
        """source_nodes and metadata are filled in once the stream has been consumed."""

        def gen() -> Generator[str, None, None]:
            for piece in self.llm.stream_complete(query_str, nest_passages=passages):
                if piece.raw is not None:
                    response.source_nodes, response.metadata = cited_response_parts(piece.raw["nest"], nodes)
                yield piece.delta or ""

        response = StreamingResponse(response_gen=gen(), source_nodes=[], metadata={"citations": []})
        return response

    def _astreaming(self, query_str: str, nodes: list[NodeWithScore], passages: list[Any]) -> AsyncStreamingResponse:
        async def agen() -> AsyncGenerator[str, None]:
            async for piece in await self.llm.astream_complete(query_str, nest_passages=passages):
                if piece.raw is not None:
                    response.source_nodes, response.metadata = cited_response_parts(piece.raw["nest"], nodes)
                yield piece.delta or ""

        response = AsyncStreamingResponse(response_gen=agen(), source_nodes=[], metadata={"citations": []})
        return response
