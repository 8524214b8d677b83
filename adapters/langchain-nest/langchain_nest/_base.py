"""What ChatNest and NestLLM share: fields, the engine handle, retrieval and call options."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManager, CallbackManagerForLLMRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import BaseModel, ConfigDict, SecretStr, field_validator

from nest_integrations import (
    NestConfig,
    NestEngine,
    NestResult,
    ScoredPassage,
    ashared_engine,
    default_config,
    shared_engine,
)
from nest_integrations.call_options import engine_overrides
from nest_integrations.lm import DEFAULT_MODEL, EMBEDDED_MODEL_NAME

from ._citations import PROVIDER, citation_payload
from .retrievers import PassageRetrieverAdapter, documents_to_passages, is_passage_retriever


class NestParams(BaseModel):
    """Pydantic fields common to the LangChain NEST models."""

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    model: str = DEFAULT_MODEL
    """'default' (embedded SmolLM2-135M-Instruct), a Hugging Face model id or a local path."""
    retriever: BaseRetriever | None = None
    """First stage: any LangChain retriever (e.g. ``vectorstore.as_retriever(k=20)``) or an engine
    ``PassageRetriever`` (``retrieve(query, k)``; wrapped in a ``PassageRetrieverAdapter`` asking for
    20 passages). None: no retrieval."""
    nest_config: NestConfig | None = None
    """NEST hyperparameters (alpha, tau, beta, gamma, span window, neighbors, ...). None: the
    model's default (the calibrated config shipped for the embedded model, else the paper's)."""
    temperature: float | None = None
    """None: ``nest_config`` decides (default: greedy). 0: greedy. Above 0: sampling at this temperature."""
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

    @field_validator("retriever", mode="before")
    @classmethod
    def _wrap_passage_retriever(cls, value: Any) -> Any:
        if value is None or isinstance(value, BaseRetriever):
            return value
        if is_passage_retriever(value):
            return PassageRetrieverAdapter(retriever=value)
        raise TypeError(
            f"retriever must be a LangChain BaseRetriever (e.g. vectorstore.as_retriever()) or a NEST "
            f"PassageRetriever (an object with retrieve(query, k) -> list[ScoredPassage]); got {type(value).__name__}."
        )

    @property
    def model_name(self) -> str:
        return EMBEDDED_MODEL_NAME if self.model == DEFAULT_MODEL else self.model

    def _engine(self) -> NestEngine:
        """The model is loaded on first use and shared by every instance with the same model."""
        return shared_engine(self.model, device=self.device, dtype=self.dtype)

    async def _aengine(self) -> NestEngine:
        """:meth:`_engine` without blocking the event loop on the first load."""
        return await ashared_engine(self.model, device=self.device, dtype=self.dtype)

    def _overrides(self, stop: list[str] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Per-call NestConfig values from fields and call kwargs (kwargs win); see ``call_options``."""
        return engine_overrides(
            nest_config=kwargs.get("nest_config", self.nest_config),
            temperature=kwargs.get("temperature", self.temperature),
            top_p=kwargs.get("top_p", self.top_p),
            max_tokens=kwargs.get("max_tokens", self.max_tokens),
            stop=_stops(self.stop, stop),
            seed=kwargs.get("seed", self.seed),
        )

    def _passages(
        self, query: str, run_manager: CallbackManagerForLLMRun | None, kwargs: dict[str, Any]
    ) -> list[ScoredPassage] | None:
        """The call's ``nest_documents`` (already retrieved), else the retriever's, else None."""
        if (given := _given_documents(kwargs)) is not None:
            return given
        if self.retriever is None:
            return None
        return documents_to_passages(self.retriever.invoke(query, config={"callbacks": _child(run_manager)}))

    async def _apassages(
        self, query: str, run_manager: AsyncCallbackManagerForLLMRun | None, kwargs: dict[str, Any]
    ) -> list[ScoredPassage] | None:
        if (given := _given_documents(kwargs)) is not None:
            return given
        if self.retriever is None:
            return None
        return documents_to_passages(await self.retriever.ainvoke(query, config={"callbacks": _child(run_manager)}))

    def _nest_params(self) -> dict[str, Any]:
        config = self.nest_config or default_config(self.model_name)
        return {"model": self.model_name, "nest_config": config.model_dump()}


def _given_documents(kwargs: dict[str, Any]) -> list[ScoredPassage] | None:
    docs = kwargs.get("nest_documents")
    if docs is None:
        return None
    if not all(isinstance(d, Document) for d in docs):
        raise TypeError("nest_documents takes a list of LangChain Document objects (what a retriever returns).")
    return documents_to_passages(docs)


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


def _stops(*given: str | Sequence[str] | None) -> list[str] | None:
    """The field's and the call's stop strings together; a lone string is one stop string (not
    its characters), and an empty one stays so that it is rejected like any bad stop."""
    stops: list[str] = []
    for s in given:
        if s is not None:
            stops.extend([s] if isinstance(s, str) else s)
    return stops or None
