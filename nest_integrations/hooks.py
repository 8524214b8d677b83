"""Public hooks for tools that measure or tune a built engine (``nest bench``, ``nest calibrate``).

Each reaches into the engine through one documented door, so the tools use no private
attribute: drop the passage cache, decode plainly with the same model, rank passages densely.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .plain import PlainOutput, plain_generate

if TYPE_CHECKING:
    from .engine import NestEngine
    from .passages.retriever import PassageRetriever
    from .passages.types import ScoredPassage

__all__ = ["PlainOutput", "clear_passage_cache", "dense_retriever", "plain_generate"]


def clear_passage_cache(engine: NestEngine) -> None:
    """Forget every passage encoding held in memory, so the next call encodes its passages
    afresh (a cold cache). An on-disk key store, if the engine has one, still answers."""
    engine.encoder.clear()


@runtime_checkable
class _DenseRanking(Protocol):
    def dense_retrieve(self, query: str, k: int) -> list[ScoredPassage]: ...


class _DenseOnly:
    """A retriever returning its base's dense ranking alone (as a plain vector store would)."""

    def __init__(self, base: _DenseRanking) -> None:
        self.base = base

    def retrieve(self, query: str, k: int) -> list[ScoredPassage]:
        return self.base.dense_retrieve(query, k)


def dense_retriever(retriever: PassageRetriever | None) -> PassageRetriever:
    """A dense-only view of ``retriever`` (a ``PassageRetriever``), through the retriever protocol.

    Raises ``ConfigError`` when the retriever has no dense ranking of its own (e.g. a
    static list of passages or an adapter's vector store).
    """
    from .errors import ConfigError

    dense_only = getattr(retriever, "dense_only", None)  # a view the retriever offers itself
    if callable(dense_only):
        view: PassageRetriever = dense_only()
        return view
    if isinstance(retriever, _DenseRanking):
        return _DenseOnly(retriever)
    raise ConfigError(f"{type(retriever).__name__} has no dense-only ranking; use the built-in HybridRetriever.")
