"""What ChatNest and NestLLM share: fields, the engine handle, retrieval and call options."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManager, CallbackManagerForLLMRun
from langchain_core.retrievers import BaseRetriever
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from nest_integrations import NestConfig, NestEngine, NestResult, ScoredPassage, shared_engine
from nest_integrations.lm import DEFAULT_MODEL, EMBEDDED_MODEL_NAME

from ._citations import PROVIDER, citation_payload
from .retrievers import documents_to_passages


class NestParams(BaseModel):
    """Pydantic fields common to the LangChain NEST models."""

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    model: str = DEFAULT_MODEL
    """'default' (embedded SmolLM2-135M-Instruct), a Hugging Face model id or a local path."""
    retriever: BaseRetriever | None = None
    """First stage: any LangChain retriever (e.g. ``vectorstore.as_retriever(k=20)``). None: no retrieval."""
    nest_config: NestConfig = Field(default_factory=NestConfig)
    """NEST hyperparameters (alpha, tau, beta, gamma, span window, neighbours, ...)."""
    temperature: float | None = None
    """0 or None: greedy decoding. Above 0: sampling from the NEST mixture at this temperature."""
    max_tokens: int | None = None
    """Maximum new tokens (default: ``nest_config.max_new_tokens``)."""
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] | None = None
    """Stop strings; the output ends before the first one."""
    timeout: float | None = None
    """Accepted for compatibility with hosted models; a local model has no request timeout."""
    max_retries: int = 0
    """Accepted for compatibility; a local model is not retried."""
    api_key: SecretStr | None = None
    """Accepted for compatibility; a local model needs no key."""
    device: str | None = None
    dtype: str | None = None

    @property
    def model_name(self) -> str:
        return EMBEDDED_MODEL_NAME if self.model == DEFAULT_MODEL else self.model

    def _engine(self) -> NestEngine:
        """The model is loaded on first use and shared by every instance with the same model."""
        return shared_engine(self.model, device=self.device, dtype=self.dtype)

    def _overrides(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Per-call NestConfig values from fields and call kwargs (kwargs win)."""
        temperature = kwargs.get("temperature", self.temperature)
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        top_p = kwargs.get("top_p", self.top_p)
        seed = kwargs.get("seed", self.seed)
        out: dict[str, Any] = {"stop": list(dict.fromkeys([*(self.stop or []), *(stop or [])]))}
        if max_tokens is not None:
            out["max_new_tokens"] = max_tokens
        if temperature:
            out.update(do_sample=True, temperature=temperature)
        elif temperature is not None:
            out["do_sample"] = False
        if top_p is not None:
            out["top_p"] = top_p
        if seed is not None:
            out["seed"] = seed
        return out

    def _passages(self, query: str, run_manager: CallbackManagerForLLMRun | None) -> list[ScoredPassage] | None:
        if self.retriever is None:
            return None
        return documents_to_passages(self.retriever.invoke(query, config={"callbacks": _child(run_manager)}))

    async def _apassages(
        self, query: str, run_manager: AsyncCallbackManagerForLLMRun | None
    ) -> list[ScoredPassage] | None:
        if self.retriever is None:
            return None
        return documents_to_passages(await self.retriever.ainvoke(query, config={"callbacks": _child(run_manager)}))

    def _nest_params(self) -> dict[str, Any]:
        return {"model": self.model_name, "nest_config": self.nest_config.model_dump()}


def generate_with(
    params: NestParams,
    prompt: str | Sequence[dict[str, str]],
    passages: list[ScoredPassage] | None,
    overrides: dict[str, Any],
) -> NestResult:
    """Load (first time) and generate: the unit of work async methods hand to a worker thread."""
    return params._engine().generate(prompt, passages=passages, **overrides)


def _child(run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None) -> CallbackManager | None:
    """Callbacks for the first-stage retrieval, traced as a child of the model run."""
    if run_manager is None:
        return None
    return CallbackManager(
        handlers=run_manager.inheritable_handlers,
        inheritable_handlers=run_manager.inheritable_handlers,
        parent_run_id=run_manager.run_id,
        tags=run_manager.inheritable_tags,
        inheritable_tags=run_manager.inheritable_tags,
        metadata=run_manager.inheritable_metadata,
        inheritable_metadata=run_manager.inheritable_metadata,
    )


def result_metadata(result: NestResult, model_name: str) -> dict[str, Any]:
    """response_metadata / generation_info for a finished generation."""
    return {
        "model_name": model_name,
        "model_provider": PROVIDER,
        "finish_reason": result.finish_reason,
        "nest": result.stats.model_dump(),
    }


def usage(result: NestResult) -> dict[str, int]:
    prompt, output = result.stats.prompt_tokens, result.stats.tokens_generated
    return {"input_tokens": prompt, "output_tokens": output, "total_tokens": prompt + output}


def citations_payload(result_citations: Sequence[Any]) -> list[dict[str, Any]]:
    return [citation_payload(c) for c in result_citations]


async def iterate_in_thread(make: Callable[[], Iterator[Any]]) -> AsyncIterator[Any]:
    """Run a blocking iterator in a worker thread, yielding its items without blocking the event loop."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in make():
                if stop.is_set():
                    return
                loop.call_soon_threadsafe(queue.put_nowait, (True, item))
        except BaseException as e:  # handed to the consumer
            loop.call_soon_threadsafe(queue.put_nowait, (False, e))
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, (True, done))

    worker = loop.run_in_executor(None, produce)
    try:
        while True:
            ok, item = await queue.get()
            if not ok:
                raise item
            if item is done:
                break
            yield item
    finally:
        stop.set()
        await worker
