"""The first-stage interface: anything that maps a query to scored passages."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from .types import Passage, ScoredPassage


@runtime_checkable
class PassageRetriever(Protocol):
    """A first stage: return up to ``k`` passages for ``query``, best first."""

    def retrieve(self, query: str, k: int) -> list[ScoredPassage]: ...


class StaticRetriever:
    """Always returns the same passages (unscored unless given as ``ScoredPassage``): for fixed contexts and tests."""

    def __init__(self, passages: Sequence[Passage | ScoredPassage]) -> None:
        self._passages = [p if isinstance(p, ScoredPassage) else ScoredPassage(passage=p) for p in passages]

    def retrieve(self, query: str, k: int) -> list[ScoredPassage]:
        return self._passages[:k]
