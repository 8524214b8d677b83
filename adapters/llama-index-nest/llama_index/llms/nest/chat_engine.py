"""NestChatEngine: LlamaIndex's context chat mode with NEST citations.

Like ``index.as_chat_engine(chat_mode="context")``: each turn retrieves nodes for the user
message, but the nodes become NEST's passages (not system-prompt text), so the reply cites
exact node ranges. Memory, ``chat_history`` and ``reset`` work as in ``ContextChatEngine``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Generator
from typing import Any, cast

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole
from llama_index.core.base.response.schema import AsyncStreamingResponse, Response, StreamingResponse
from llama_index.core.chat_engine import ContextChatEngine
from llama_index.core.chat_engine.types import AgentChatResponse, StreamingAgentChatResponse, ToolOutput
from llama_index.core.indices.base import BaseIndex
from llama_index.core.memory import BaseMemory, Memory
from llama_index.core.schema import NodeWithScore
from llama_index.core.types import Thread

from .base import NestLLM
from .retrievers import as_llama_index_retriever
from .synthesizer import NestSynthesizer


class NestChatEngine(ContextChatEngine):
    """A context chat engine whose replies cite the retrieved nodes they copy.

    ``chat`` / ``achat`` return an ``AgentChatResponse`` with ``source_nodes`` the cited nodes and
    ``metadata["citations"]`` the spans (``node_id``, ``passage_start``/``passage_end``, ``quote``).
    ``stream_chat`` / ``astream_chat``: ``response.sources[0].raw_output`` is the streaming
    ``Response``; its ``source_nodes`` and ``metadata`` are filled in once the stream is consumed.

    Example:
        .. code-block:: python

            chat = NestChatEngine.from_index(index, similarity_top_k=20)
            reply = chat.chat("Tell me about Robert Boulter.")
            reply.metadata["citations"], reply.source_nodes
    """

    @classmethod
    def from_defaults(  # type: ignore[override]
        cls,
        retriever: Any,
        chat_history: list[ChatMessage] | None = None,
        memory: BaseMemory | None = None,
        system_prompt: str | None = None,
        prefix_messages: list[ChatMessage] | None = None,
        llm: NestLLM | None = None,
        **kwargs: Any,
    ) -> NestChatEngine:
        """``retriever``: a LlamaIndex retriever or an engine ``PassageRetriever``; ``llm``: a NestLLM."""
        llm = llm or NestLLM()
        if not isinstance(llm, NestLLM):
            raise TypeError(f"NestChatEngine needs a NestLLM, got {type(llm).__name__}.")
        memory = memory or Memory.from_defaults(
            chat_history=chat_history or [], token_limit=llm.metadata.context_window - 256
        )
        if system_prompt is not None:
            if prefix_messages is not None:
                raise ValueError("Give system_prompt or prefix_messages, not both.")
            prefix_messages = [ChatMessage(content=system_prompt, role=MessageRole.SYSTEM)]
        return cls(as_llama_index_retriever(retriever), llm=llm, memory=memory, prefix_messages=prefix_messages or [])

    @classmethod
    def from_index(
        cls, index: BaseIndex, *, similarity_top_k: int = 20, llm: NestLLM | None = None, **kwargs: Any
    ) -> NestChatEngine:
        return cls.from_defaults(index.as_retriever(similarity_top_k=similarity_top_k), llm=llm, **kwargs)

    def _synthesizer(self, history: list[ChatMessage], streaming: bool = False) -> NestSynthesizer:
        if not isinstance(self._llm, NestLLM):
            raise TypeError(f"NestChatEngine needs a NestLLM, got {type(self._llm).__name__}.")
        return NestSynthesizer(self._llm, streaming=streaming, chat_history=[*self._prefix_messages, *history])

    @staticmethod
    def _reply(message: str, response: Response) -> AgentChatResponse:
        return AgentChatResponse(
            response=str(response.response or ""),
            sources=[
                ToolOutput(tool_name="nest", content=str(response), raw_input={"message": message}, raw_output=response)
            ],
            source_nodes=response.source_nodes,
            metadata=response.metadata,
        )

    def _nodes(self, message: str, prev_chunks: list[NodeWithScore] | None) -> list[NodeWithScore]:
        nodes = self._get_nodes(message)
        return prev_chunks if not nodes and prev_chunks is not None else nodes

    async def _anodes(self, message: str, prev_chunks: list[NodeWithScore] | None) -> list[NodeWithScore]:
        nodes = await self._aget_nodes(message)
        return prev_chunks if not nodes and prev_chunks is not None else nodes

    def chat(
        self,
        message: str,
        chat_history: list[ChatMessage] | None = None,
        prev_chunks: list[NodeWithScore] | None = None,
    ) -> AgentChatResponse:
        if chat_history is not None:
            self._memory.set(chat_history)
        nodes = self._nodes(message, prev_chunks)
        response = cast(Response, self._synthesizer(self._memory.get(input=message)).synthesize(message, nodes))
        self._memory.put(ChatMessage(content=message, role=MessageRole.USER))
        self._memory.put(ChatMessage(content=str(response.response or ""), role=MessageRole.ASSISTANT))
        return self._reply(message, response)

    async def achat(
        self,
        message: str,
        chat_history: list[ChatMessage] | None = None,
        prev_chunks: list[NodeWithScore] | None = None,
    ) -> AgentChatResponse:
        if chat_history is not None:
            await self._memory.aset(chat_history)
        nodes = await self._anodes(message, prev_chunks)
        history = await self._memory.aget(input=message)
        response = cast(Response, await self._synthesizer(history).asynthesize(message, nodes))
        await self._memory.aput(ChatMessage(content=message, role=MessageRole.USER))
        await self._memory.aput(ChatMessage(content=str(response.response or ""), role=MessageRole.ASSISTANT))
        return self._reply(message, response)

    def stream_chat(
        self,
        message: str,
        chat_history: list[ChatMessage] | None = None,
        prev_chunks: list[NodeWithScore] | None = None,
    ) -> StreamingAgentChatResponse:
        if chat_history is not None:
            self._memory.set(chat_history)
        nodes = self._nodes(message, prev_chunks)
        synthesizer = self._synthesizer(self._memory.get(input=message), streaming=True)
        response = cast(StreamingResponse, synthesizer.synthesize(message, nodes))
        self._memory.put(ChatMessage(content=message, role=MessageRole.USER))

        def gen() -> Generator[ChatResponse, None, None]:
            text = ""
            for delta in response.response_gen:
                text += delta
                yield ChatResponse(message=ChatMessage(content=text, role=MessageRole.ASSISTANT), delta=delta)
            reply.source_nodes[:] = response.source_nodes

        reply = StreamingAgentChatResponse(
            chat_stream=gen(),
            sources=[ToolOutput(tool_name="nest", content="", raw_input={"message": message}, raw_output=response)],
        )
        thread = Thread(target=reply.write_response_to_history, args=(self._memory,))
        reply.write_response_to_history_thread = thread
        thread.start()
        return reply

    async def astream_chat(
        self,
        message: str,
        chat_history: list[ChatMessage] | None = None,
        prev_chunks: list[NodeWithScore] | None = None,
    ) -> StreamingAgentChatResponse:
        if chat_history is not None:
            await self._memory.aset(chat_history)
        nodes = await self._anodes(message, prev_chunks)
        history = await self._memory.aget(input=message)
        response = cast(
            AsyncStreamingResponse, await self._synthesizer(history, streaming=True).asynthesize(message, nodes)
        )
        await self._memory.aput(ChatMessage(content=message, role=MessageRole.USER))

        async def agen() -> AsyncGenerator[ChatResponse, None]:
            text = ""
            async for delta in response.async_response_gen():
                text += delta
                yield ChatResponse(message=ChatMessage(content=text, role=MessageRole.ASSISTANT), delta=delta)
            reply.source_nodes[:] = response.source_nodes

        reply = StreamingAgentChatResponse(
            achat_stream=agen(),
            sources=[ToolOutput(tool_name="nest", content="", raw_input={"message": message}, raw_output=response)],
        )
        reply.awrite_response_to_history_task = asyncio.create_task(reply.awrite_response_to_history(self._memory))
        return reply
