"""NestSynthesizer: a LlamaIndex response synthesizer whose answers cite exact node ranges.

Plugs into the standard recipes (``index.as_query_engine(response_synthesizer=...)``,
``RetrieverQueryEngine``): the retrieved nodes become NEST's passages instead of prompt
text, ``Response.source_nodes`` are the cited nodes and ``metadata["citations"]`` the spans.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Sequence
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.base.response.schema import AsyncStreamingResponse, Response, StreamingResponse
from llama_index.core.callbacks import CallbackManager
from llama_index.core.response_synthesizers import BaseSynthesizer
from llama_index.core.schema import NodeWithScore, QueryBundle

from nest_integrations import Passage, ScoredPassage

from .base import NestLLM
from .retrievers import nodes_to_passages

NestResponse = Response | StreamingResponse | AsyncStreamingResponse


def cited_response_parts(
    nest: dict[str, Any], nodes: Sequence[NodeWithScore]
) -> tuple[list[NodeWithScore], dict[str, Any]]:
    """Source nodes that were cited (first-cited first) and the response metadata."""
    by_id = {n.node.node_id: n for n in nodes}
    citations = [{**c, "node_id": c["passage_id"]} for c in nest["citations"]]
    cited = list(dict.fromkeys(c["node_id"] for c in citations if c["node_id"] in by_id))
    return [by_id[i] for i in cited], {"citations": citations, "nest_stats": nest["stats"]}


class NestSynthesizer(BaseSynthesizer):
    """Synthesize a cited answer from retrieved nodes with a :class:`NestLLM`.

    Args:
        llm: the NEST model (default: ``NestLLM()``, the embedded model).
        streaming: return a (Async)StreamingResponse; its ``source_nodes`` and ``metadata`` are
            filled in once the stream has been consumed.
        chat_history: messages sent before the question (system prompt, earlier turns).
        callback_manager: LlamaIndex callbacks.

    Example:
        .. code-block:: python

            engine = index.as_query_engine(llm=NestLLM(), response_synthesizer=NestSynthesizer(), similarity_top_k=20)
            response = engine.query("Tell me about Robert Boulter.")
            response.metadata["citations"]  # node_id, passage_start/end, quote, ...
    """

    def __init__(
        self,
        llm: NestLLM | None = None,
        *,
        streaming: bool = False,
        chat_history: Sequence[ChatMessage] | None = None,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        llm = llm or NestLLM()
        if not isinstance(llm, NestLLM):
            raise TypeError(f"NestSynthesizer needs a NestLLM, got {type(llm).__name__}.")
        super().__init__(llm=llm, callback_manager=callback_manager, streaming=streaming)
        self._nest = llm
        self._history = list(chat_history or [])

    def _get_prompts(self) -> dict[str, Any]:
        return {}  # NEST reads passages, not a prompt template

    def _update_prompts(self, prompts_dict: dict[str, Any]) -> None:
        pass

    def _messages(self, query_str: str) -> list[ChatMessage]:
        return [*self._history, ChatMessage(role=MessageRole.USER, content=query_str)]

    # The question alone goes through ``complete`` (LlamaIndex's completion events, as a query
    # engine emits); with history, through ``chat``. Both send the same prompt for one question.

    def _run(self, query_str: str, passages: list[Any]) -> tuple[str, dict[str, Any]]:
        if not self._history:
            done = self._nest.complete(query_str, nest_passages=passages)
            return done.text, done.raw["nest"]
        reply = self._nest.chat(self._messages(query_str), nest_passages=passages)
        return reply.message.content or "", reply.raw["nest"]

    async def _arun(self, query_str: str, passages: list[Any]) -> tuple[str, dict[str, Any]]:
        if not self._history:
            done = await self._nest.acomplete(query_str, nest_passages=passages)
            return done.text, done.raw["nest"]
        reply = await self._nest.achat(self._messages(query_str), nest_passages=passages)
        return reply.message.content or "", reply.raw["nest"]

    def _pieces(self, query_str: str, passages: list[Any]) -> Iterator[tuple[str, dict[str, Any] | None]]:
        """(delta, the NestResult JSON on the last piece)."""
        if not self._history:
            for done in self._nest.stream_complete(query_str, nest_passages=passages):
                yield done.delta or "", done.raw["nest"] if done.raw is not None else None
            return
        for reply in self._nest.stream_chat(self._messages(query_str), nest_passages=passages):
            yield reply.delta or "", reply.raw["nest"] if reply.raw is not None else None

    async def _apieces(self, query_str: str, passages: list[Any]) -> AsyncIterator[tuple[str, dict[str, Any] | None]]:
        if not self._history:
            async for done in await self._nest.astream_complete(query_str, nest_passages=passages):
                yield done.delta or "", done.raw["nest"] if done.raw is not None else None
            return
        async for reply in await self._nest.astream_chat(self._messages(query_str), nest_passages=passages):
            yield reply.delta or "", reply.raw["nest"] if reply.raw is not None else None

    # The standard entry points: cite the nodes ------------------------------------------------------

    def synthesize(
        self,
        query: str | QueryBundle,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
        **response_kwargs: Any,
    ) -> NestResponse:
        query_str = _query_str(query)
        passages = nodes_to_passages(nodes)
        if self._streaming:
            return self._streaming_response(query_str, nodes, passages)
        text, nest = self._run(query_str, passages)
        source_nodes, metadata = cited_response_parts(nest, nodes)
        return Response(response=text, source_nodes=source_nodes, metadata=metadata)

    async def asynthesize(
        self,
        query: str | QueryBundle,
        nodes: list[NodeWithScore],
        additional_source_nodes: Sequence[NodeWithScore] | None = None,
        **response_kwargs: Any,
    ) -> NestResponse:
        query_str = _query_str(query)
        passages = nodes_to_passages(nodes)
        if self._streaming:
            return self._astreaming_response(query_str, nodes, passages)
        text, nest = await self._arun(query_str, passages)
        source_nodes, metadata = cited_response_parts(nest, nodes)
        return Response(response=text, source_nodes=source_nodes, metadata=metadata)

    def _streaming_response(
        self, query_str: str, nodes: Sequence[NodeWithScore], passages: list[ScoredPassage]
    ) -> StreamingResponse:
        def gen() -> Generator[str, None, None]:
            for delta, nest in self._pieces(query_str, passages):
                if nest is not None:
                    response.source_nodes, response.metadata = cited_response_parts(nest, nodes)
                yield delta

        response = StreamingResponse(response_gen=gen(), source_nodes=[], metadata={"citations": []})
        return response

    def _astreaming_response(
        self, query_str: str, nodes: Sequence[NodeWithScore], passages: list[ScoredPassage]
    ) -> AsyncStreamingResponse:
        async def agen() -> AsyncGenerator[str, None]:
            async for delta, nest in self._apieces(query_str, passages):
                if nest is not None:
                    response.source_nodes, response.metadata = cited_response_parts(nest, nodes)
                yield delta

        response = AsyncStreamingResponse(response_gen=agen(), source_nodes=[], metadata={"citations": []})
        return response

    # Text chunks without nodes (BaseSynthesizer's abstract API): the chunks are the passages ----------

    def get_response(self, query_str: str, text_chunks: Sequence[str], **response_kwargs: Any) -> str:
        """The answer over plain text chunks (their citations name ``chunk-<i>``); prefer :meth:`synthesize`."""
        return self._run(query_str, _chunk_passages(text_chunks))[0]

    async def aget_response(self, query_str: str, text_chunks: Sequence[str], **response_kwargs: Any) -> str:
        return (await self._arun(query_str, _chunk_passages(text_chunks)))[0]


def _query_str(query: str | QueryBundle) -> str:
    text = query.query_str if isinstance(query, QueryBundle) else query
    if not text.strip():
        raise ValueError("The query is empty.")
    return text


def _chunk_passages(text_chunks: Sequence[str]) -> list[Passage]:
    return [Passage(id=f"chunk-{i}", text=t) for i, t in enumerate(text_chunks) if t.strip()]
