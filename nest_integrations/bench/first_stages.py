"""First stages the benchmark can put in front of every system.

``built-in``: the engine's own retriever (on the default corpus, the hybrid index). Over 60
articles it almost always returns the asked article's passages, so wrong sources are rare.
``mixed``: a weak first stage that mixes sources on purpose, as a dense-only vector store
over a corpus of similar documents would: the asked article's ``own`` best passages plus the
passages of *other* articles most similar to the query, up to ``total``, without scores
(most LangChain / LlamaIndex retrievers return none). Citation precision is measured there.
``held-out``: the built-in first stage without the prompt's own article, so a completion
cannot be copied from its reference (the default corpus is the evaluation articles
themselves); quality then measures what the other articles contribute.
"""

from __future__ import annotations

from collections.abc import Callable, Sized

from ..engine import NestEngine
from ..hooks import dense_retriever
from ..passages.retriever import PassageRetriever
from ..passages.types import ScoredPassage
from .tasks import Prompt

FirstStage = Callable[[Prompt], list[ScoredPassage]]
FIRST_STAGES = ("built-in", "mixed", "held-out")


def built_in(engine: NestEngine) -> FirstStage:
    def retrieve(prompt: Prompt) -> list[ScoredPassage]:
        return engine.retrieve(prompt.text)

    return retrieve


def mixed(retriever: PassageRetriever | None, own: int = 6, total: int = 20) -> FirstStage:
    """Needs a retriever with a dense ranking (see :func:`nest_integrations.hooks.dense_retriever`)."""
    dense = dense_retriever(retriever)
    size = len(retriever) if isinstance(retriever, Sized) else 1000  # every passage of an index

    def retrieve(prompt: Prompt) -> list[ScoredPassage]:
        ranked = dense.retrieve(prompt.text, size)
        mine = [s for s in ranked if s.passage.document_id == prompt.document_id][:own]
        others = [s for s in ranked if s.passage.document_id != prompt.document_id][: total - len(mine)]
        keep = {s.passage.id for s in mine + others}
        return [ScoredPassage(passage=s.passage) for s in ranked if s.passage.id in keep]

    return retrieve


def held_out(engine: NestEngine) -> FirstStage:
    def retrieve(prompt: Prompt) -> list[ScoredPassage]:
        b = engine.config.num_passages
        found = engine.retrieve(prompt.text, 3 * b)
        return [s for s in found if s.passage.document_id != prompt.document_id][:b]

    return retrieve


def first_stage(name: str, engine: NestEngine) -> FirstStage:
    if name == "built-in":
        return built_in(engine)
    if name == "held-out":
        return held_out(engine)
    if name == "mixed":
        return mixed(engine.retriever)
    raise ValueError(f"unknown first stage {name!r}; choose from {', '.join(FIRST_STAGES)}")
