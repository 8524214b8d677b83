"""NestLLM: NEST as a LangChain completion model (string in, string out) for completion-style chains."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM
from langchain_core.outputs import Generation, GenerationChunk, LLMResult

from nest_integrations import NestChunk, NestResult

from ._base import NestParams, citations_payload, result_metadata, usage


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

    def _chunk(self, piece: NestChunk) -> GenerationChunk:
        info: dict[str, Any] = {"citations": citations_payload(piece.citations)}
        if piece.result is not None:
            info.update(result_metadata(piece.result, self.model_name), usage=usage(piece.result))
        return GenerationChunk(text=piece.text, generation_info=info)

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
            passages = self._passages(prompt, run_manager, kwargs)
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
        engine = await self._aengine()
        generations = []
        for prompt in prompts:
            passages = await self._apassages(prompt, run_manager, kwargs)
            generations.append([self._generation(await engine.agenerate(prompt, passages=passages, **overrides))])
        return LLMResult(generations=generations)

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        passages = self._passages(prompt, run_manager, kwargs)
        for piece in self._engine().stream(prompt, passages=passages, **self._overrides(stop, kwargs)):
            chunk = self._chunk(piece)
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
        passages = await self._apassages(prompt, run_manager, kwargs)
        engine = await self._aengine()
        async for piece in engine.astream(prompt, passages=passages, **self._overrides(stop, kwargs)):
            chunk = self._chunk(piece)
            if run_manager:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk
