"""ChatNest: NEST as a LangChain chat model, with per-span citations on the AI message."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from nest_integrations import NestChunk, NestResult
from nest_integrations.call_options import last_user_text

from ._base import NestParams, citations_payload, result_metadata, usage
from ._citations import PROVIDER

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool", "function": "tool"}


def to_engine_messages(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages as chat-template messages (text content only)."""
    out = []
    for m in messages:
        role = _ROLES.get(m.type)
        if role is None:
            role = getattr(m, "role", None) or "user"  # ChatMessage carries its own role
        out.append({"role": role, "content": m.text})
    return out


def last_human_text(messages: Sequence[BaseMessage]) -> str:
    """Default first-stage query: the last human message (the engine's ``last_user_text``)."""
    return last_user_text(to_engine_messages(messages)) if messages else ""


_NO_TOOLS = (
    "ChatNest does not call tools or produce structured output: NEST is a grounded text generator that "
    "copies cited spans from retrieved passages, and copied spans are not tool calls or JSON. Give an agent "
    "NEST as a tool instead: langchain_nest.create_nest_tool(ChatNest(retriever=...)), and let a "
    "tool-calling model drive the agent."
)


class ChatNest(NestParams, BaseChatModel):
    """Grounded chat with Nearest Neighbor Speculative Decoding over your retriever's documents.

    Copied spans come back as LangChain standard ``Citation`` annotations:
    ``msg.content`` stays the plain answer (``StrOutputParser`` works unchanged),
    ``msg.content_blocks[0]["annotations"]`` holds the citations, and
    ``msg.response_metadata["citations"]`` the engine's fields (passage and document offsets).

    Example:
        .. code-block:: python

            from langchain_nest import ChatNest

            llm = ChatNest(retriever=vectorstore.as_retriever(search_kwargs={"k": 20}))
            msg = llm.invoke("Who directed Mercury Fur?")
            for c in msg.content_blocks[0].get("annotations", []):
                print(c["cited_text"], c["title"])
    """

    query_from_messages: Callable[[Sequence[BaseMessage]], str] | None = None
    """How the first-stage query is built from the messages (default: the last human message)."""
    streaming: bool = False
    """Stream by default from ``invoke``."""

    @property
    def _llm_type(self) -> str:
        return "nest-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self._nest_params()

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider=PROVIDER,
            ls_model_name=kwargs.get("model", self.model_name),
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
        )
        if (max_tokens := kwargs.get("max_tokens", self.max_tokens)) is not None:
            params["ls_max_tokens"] = max_tokens
        if ls_stop := stop or self.stop:
            params["ls_stop"] = ls_stop
        return params

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        """Not supported: raises ``NotImplementedError`` saying why and what to use instead."""
        raise NotImplementedError(_NO_TOOLS)

    def with_structured_output(self, schema: Any, **kwargs: Any) -> Any:
        """Not supported: raises ``NotImplementedError`` saying why and what to use instead."""
        raise NotImplementedError(_NO_TOOLS)

    # Shared steps ------------------------------------------------------------------------------

    def _query(self, messages: Sequence[BaseMessage], kwargs: dict[str, Any]) -> str:
        """The call's ``nest_query``, else the query built from the messages."""
        if not messages:
            raise ValueError("ChatNest needs at least one message.")
        if given := kwargs.get("nest_query"):
            return str(given)
        return (self.query_from_messages or last_human_text)(messages)

    def _message(self, result: NestResult) -> AIMessage:
        metadata = result_metadata(result, self.model_name)
        metadata["citations"] = citations_payload(result.citations)
        return AIMessage(content=result.text, response_metadata=metadata, usage_metadata=usage(result))

    def _chunk(self, piece: NestChunk) -> ChatGenerationChunk:
        """One engine chunk as a LangChain chunk; the last one carries usage and the NEST stats."""
        metadata: dict[str, Any] = {"model_provider": PROVIDER, "citations": citations_payload(piece.citations)}
        if piece.result is None:
            return ChatGenerationChunk(message=AIMessageChunk(content=piece.text, response_metadata=metadata))
        metadata.update(result_metadata(piece.result, self.model_name))
        return ChatGenerationChunk(
            message=AIMessageChunk(
                content=piece.text,
                response_metadata=metadata,
                usage_metadata=usage(piece.result),
                chunk_position="last",
            ),
            generation_info={"finish_reason": piece.result.finish_reason},
        )

    # LangChain interface -------------------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        query = self._query(messages, kwargs)
        passages = self._passages(query, run_manager, kwargs)
        result = self._engine().generate(
            to_engine_messages(messages), passages=passages, query=query, **self._overrides(stop, kwargs)
        )
        return ChatResult(generations=[ChatGeneration(message=self._message(result))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        query = self._query(messages, kwargs)
        passages = self._passages(query, run_manager, kwargs)
        for piece in self._engine().stream(
            to_engine_messages(messages), passages=passages, query=query, **self._overrides(stop, kwargs)
        ):
            yield self._chunk(piece)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        query = self._query(messages, kwargs)
        passages = await self._apassages(query, run_manager, kwargs)
        engine = await self._aengine()
        result = await engine.agenerate(
            to_engine_messages(messages), passages=passages, query=query, **self._overrides(stop, kwargs)
        )
        return ChatResult(generations=[ChatGeneration(message=self._message(result))])

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        query = self._query(messages, kwargs)
        passages = await self._apassages(query, run_manager, kwargs)
        engine = await self._aengine()
        async for piece in engine.astream(
            to_engine_messages(messages), passages=passages, query=query, **self._overrides(stop, kwargs)
        ):
            yield self._chunk(piece)
