"""NestLLM: NEST as a LangChain completion model (string in, string out) for completion-style chains."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult

from nest_integrations import NestResult, ScoredPassage

from ._base import NestParams, citations_payload, generate_with, iterate_in_thread, result_metadata, usage


class NestLLM(NestParams, BaseLLM):
    """Completion-style NEST: the prompt string is the user turn; citations in ``generation_info``."""

    @property
    def _llm_type(self) -> str:
        return "nest"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self._nest_params()

    def _generation(self, result: NestResult) -> Generation:
        info = result_metadata(result, self.model_name)
        info.update(citations=citations_payload(result.citations), usage=usage(result))
        return Generation(text=result.text, generation_info=info)

    def _chunks(
        self, prompt: str, passages: list[ScoredPassage] | None, overrides: dict[str, Any]
    ) -> Iterator[GenerationChunk]:
        for piece in self._engine().stream(prompt, passages=passages, **overrides):
            info: dict[str, Any] = {"citations": citations_payload(piece.citations)}
            if piece.result is not None:
                info.update(result_metadata(piece.result, self.model_name), usage=usage(piece.result))
            yield GenerationChunk(text=piece.text, generation_info=info)

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        overrides = self._overrides(stop, kwargs)
        generations = []
        for prompt in prompts:
            passages = self._passages(prompt, run_manager)
            generations.append([self._generation(self._engine().generate(prompt, passages=passages, **overrides))])
        return LLMResult(generations=generations)

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        overrides = self._overrides(stop, kwargs)
        loop = asyncio.get_running_loop()
        generations = []
        for prompt in prompts:
            passages = await self._apassages(prompt, run_manager)
            # The first call loads the model: that too happens off the event loop.
            result = await loop.run_in_executor(None, partial(generate_with, self, prompt, passages, overrides))
            generations.append([self._generation(result)])
        return LLMResult(generations=generations)

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        passages = self._passages(prompt, run_manager)
        for chunk in self._chunks(prompt, passages, self._overrides(stop, kwargs)):
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        passages = await self._apassages(prompt, run_manager)
        overrides = self._overrides(stop, kwargs)
        async for chunk in iterate_in_thread(lambda: self._chunks(prompt, passages, overrides)):
            if run_manager:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk
