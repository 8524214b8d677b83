"""NestLLM: NEST as a LlamaIndex LLM; citations and stats ride on the response's ``raw``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.llms.generic_utils import (
    achat_to_completion_decorator,
    astream_chat_to_completion_decorator,
    chat_to_completion_decorator,
    stream_chat_to_completion_decorator,
)
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import ConfigDict, Field, field_validator
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.schema import QueryBundle

from nest_integrations import (
    NestConfig,
    NestEngine,
    NestResult,
    ScoredPassage,
    ashared_engine,
    default_config,
    shared_engine,
)
from nest_integrations.call_options import engine_overrides, last_user_text
from nest_integrations.lm import DEFAULT_MODEL, EMBEDDED_MODEL_NAME, context_length_of, normalize_messages

from .retrievers import as_llama_index_retriever, nodes_to_passages

Prompt = list[dict[str, str]]


def _raw(result: NestResult) -> dict[str, Any]:
    prompt, output = result.stats.prompt_tokens, result.stats.tokens_generated
    return {
        "nest": result.model_dump(mode="json", exclude={"passages"}),
        "usage": {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output},
    }


def _engine_messages(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    return [{"role": m.role.value, "content": m.content or ""} for m in messages]


class NestLLM(CustomLLM):
    """Grounded generation with Nearest Neighbor Speculative Decoding, as a LlamaIndex LLM.

    ``response.raw["nest"]`` is the engine's ``NestResult`` as JSON (text, citations, stats)
    and ``response.raw["usage"]`` the token counts; ``additional_kwargs["citations"]`` repeats
    the citations. With ``retriever`` set, that retriever is NEST's first stage; without it,
    NEST decodes without retrieval (use :class:`NestQueryEngine` to cite an index's nodes).

    Example:
        .. code-block:: python

            from llama_index.llms.nest import NestLLM

            llm = NestLLM(retriever=index.as_retriever(similarity_top_k=20))
            print(llm.complete("Tell me about Robert Boulter.").raw["nest"]["citations"])
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model: str = Field(default=DEFAULT_MODEL, description="'default' (embedded SmolLM2), an HF id or a local path.")
    retriever: BaseRetriever | None = Field(
        default=None, description="First stage: a LlamaIndex retriever or a NEST PassageRetriever (retrieve(query, k))."
    )
    nest_config: NestConfig | None = Field(
        default=None,
        description="NEST hyperparameters; None: the model's default (calibrated for the embedded model).",
    )
    temperature: float | None = Field(
        default=None,
        ge=0.0,
        description="None: nest_config decides (default: greedy); 0: greedy; above 0: sampling at this temperature.",
    )
    max_tokens: int | None = Field(default=None, description="Maximum new tokens (default: nest_config's).")
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] | None = None
    device: str | None = None
    dtype: str | None = None

    @field_validator("retriever", mode="before")
    @classmethod
    def _wrap_passage_retriever(cls, value: Any) -> Any:
        return as_llama_index_retriever(value)

    @classmethod
    def class_name(cls) -> str:
        return "NestLLM"

    @property
    def model_name(self) -> str:
        return EMBEDDED_MODEL_NAME if self.model == DEFAULT_MODEL else self.model

    def _engine(self) -> NestEngine:
        """Loaded on first use; shared by every NestLLM of the same model in the process."""
        return shared_engine(self.model, device=self.device, dtype=self.dtype)

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=context_length_of(self.model),
            num_output=self.max_tokens or (self.nest_config or default_config(self.model_name)).max_new_tokens,
            is_chat_model=True,
            model_name=self.model_name,
        )

    def _overrides(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The fields, then the call's keyword arguments, as engine overrides (see ``call_options``)."""
        stops = [*(self.stop or []), *(kwargs.get("stop") or [])]
        return engine_overrides(
            nest_config=kwargs.get("nest_config", self.nest_config),
            temperature=kwargs.get("temperature", self.temperature),
            top_p=kwargs.get("top_p", self.top_p),
            max_tokens=kwargs.get("max_tokens", self.max_tokens),
            stop=stops or None,
            seed=kwargs.get("seed", self.seed),
        )

    def _passages(self, query: str, kwargs: dict[str, Any]) -> list[ScoredPassage] | None:
        """Passages given by the caller (``nest_passages``), else from the retriever, else None."""
        if (given := kwargs.get("nest_passages")) is not None:
            return list(given)
        if self.retriever is None:
            return None
        return nodes_to_passages(self.retriever.retrieve(QueryBundle(query)))

    @staticmethod
    def _query_of(prompt: Prompt) -> str:
        return last_user_text(normalize_messages(prompt))

    def _run(self, prompt: Prompt, kwargs: dict[str, Any]) -> NestResult:
        query = self._query_of(prompt)
        passages = self._passages(query, kwargs)
        return self._engine().generate(prompt, passages=passages, query=query, **self._overrides(kwargs))

    async def _arun(self, prompt: Prompt, kwargs: dict[str, Any]) -> NestResult:
        query = self._query_of(prompt)
        passages = await self._apassages(query, kwargs)
        engine = await ashared_engine(self.model, device=self.device, dtype=self.dtype)
        return await engine.agenerate(prompt, passages=passages, query=query, **self._overrides(kwargs))

    async def _apassages(self, query: str, kwargs: dict[str, Any]) -> list[ScoredPassage] | None:
        if (given := kwargs.get("nest_passages")) is not None:
            return list(given)
        if self.retriever is None:
            return None
        return nodes_to_passages(await self.retriever.aretrieve(QueryBundle(query)))

    async def _astream(
        self, prompt: Prompt, kwargs: dict[str, Any]
    ) -> AsyncIterator[tuple[str, str, NestResult | None]]:
        query = self._query_of(prompt)
        passages = await self._apassages(query, kwargs)
        engine = await ashared_engine(self.model, device=self.device, dtype=self.dtype)
        text = ""
        async for piece in engine.astream(prompt, passages=passages, query=query, **self._overrides(kwargs)):
            text += piece.text
            yield text, piece.text, piece.result

    def _stream(self, prompt: Prompt, kwargs: dict[str, Any]) -> Iterator[tuple[str, str, NestResult | None]]:
        """(text so far, delta, final result on the last item)."""
        query = self._query_of(prompt)
        passages = self._passages(query, kwargs)
        text = ""
        for piece in self._engine().stream(prompt, passages=passages, query=query, **self._overrides(kwargs)):
            text += piece.text
            yield text, piece.text, piece.result

    # Chat (through the tokenizer's chat template) ------------------------------------------------

    def _chat(self, result: NestResult) -> ChatResponse:
        raw = _raw(result)
        return ChatResponse(
            message=ChatMessage(role=MessageRole.ASSISTANT, content=result.text),
            raw=raw,
            additional_kwargs={"citations": raw["nest"]["citations"]},
        )

    def _chat_piece(self, text: str, delta: str, result: NestResult | None) -> ChatResponse:
        """A streamed chat response: content so far and delta; the last one also carries raw and citations."""
        if result is not None:
            response = self._chat(result)
        else:
            response = ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text))
        response.message.content, response.delta = text, delta
        return response

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._chat(self._run(_engine_messages(messages), kwargs))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        def gen() -> ChatResponseGen:
            for text, delta, result in self._stream(_engine_messages(messages), kwargs):
                yield self._chat_piece(text, delta, result)

        return gen()

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._chat(await self._arun(_engine_messages(messages), kwargs))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        prompt = _engine_messages(messages)

        async def gen() -> ChatResponseAsyncGen:
            async for text, delta, result in self._astream(prompt, kwargs):
                yield self._chat_piece(text, delta, result)

        return gen()

    # Completion, derived from chat (as LlamaIndex's own integrations do) ------------------------

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """``prompt`` as the user turn; ``raw["nest"]`` and ``additional_kwargs["citations"]`` as in chat."""
        return chat_to_completion_decorator(self.chat)(prompt, **kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return stream_chat_to_completion_decorator(self.stream_chat)(prompt, **kwargs)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await achat_to_completion_decorator(self.achat)(prompt, **kwargs)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        return await astream_chat_to_completion_decorator(self.astream_chat)(prompt, **kwargs)
