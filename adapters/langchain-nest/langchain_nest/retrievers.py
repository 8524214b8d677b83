"""Bridge LangChain retrievers to the NEST engine's first stage.

``documents_to_passages`` turns ``Document``s into scored passages (text, id, title, source
and metadata kept for citations); ``LangChainPassageRetriever`` wraps any ``BaseRetriever``
as a ``PassageRetriever`` for code that uses ``NestEngine`` directly, and
``PassageRetrieverAdapter`` the other way round (an engine retriever as a ``BaseRetriever``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from nest_integrations import Passage, ScoredPassage
from nest_integrations.passages.types import json_safe

log = logging.getLogger(__name__)

_SCORE_KEYS = ("relevance_score", "score", "similarity")


def document_to_passage(doc: Document) -> Passage | None:
    """A passage for ``doc``, or None when it has no text."""
    text = doc.page_content
    if not isinstance(text, str) or not text.strip():
        log.debug("skipping a document with empty content: %r", doc.metadata)
        return None
    meta = json_safe(dict(doc.metadata or {}))
    # Document.id, else the store's id in metadata (langchain-qdrant puts the point id in "_id").
    stored_id = doc.id or meta.get("id") or meta.get("_id")
    pid = stored_id or "doc-" + hashlib.sha1(text.encode()).hexdigest()[:16]
    source = meta.get("source")
    start = meta.get("start_index")  # set by LangChain text splitters with add_start_index=True
    has_start = isinstance(start, int) and not isinstance(start, bool) and start >= 0
    return Passage(
        id=str(pid),
        text=text,
        title=str(meta.get("title") or ""),
        metadata=meta,
        document_id=str(source) if source is not None else None,
        start=start if has_start else None,
        end=start + len(text) if has_start else None,
    )


def documents_to_passages(docs: Sequence[Document]) -> list[ScoredPassage]:
    """Passages in retriever order; scores from metadata when present, else None (no score: the
    order alone is not one, and passage relevance then reads the query's words only)."""
    out: list[ScoredPassage] = []
    for doc in docs:
        passage = document_to_passage(doc)
        if passage is None:
            continue
        score = next(
            (float(doc.metadata[k]) for k in _SCORE_KEYS if isinstance(doc.metadata.get(k), (int, float))), None
        )
        out.append(ScoredPassage(passage=passage, score=score))
    return out


class LangChainPassageRetriever:
    """Any LangChain ``BaseRetriever`` as the engine's ``PassageRetriever``.

    The retriever decides how many documents it returns (``k`` caps them).
    """

    def __init__(self, retriever: BaseRetriever) -> None:
        self.retriever = retriever

    def retrieve(self, query: str, k: int) -> list[ScoredPassage]:
        return documents_to_passages(self.retriever.invoke(query))[:k]


def passage_to_document(hit: ScoredPassage) -> Document:
    """A ``Document`` that :func:`document_to_passage` turns back into the same passage and score."""
    p = hit.passage
    meta: dict[str, Any] = {**p.metadata, "title": p.title, "score": hit.score}
    if p.document_id is not None:
        meta["source"] = p.document_id
    if p.start is not None:
        meta["start_index"] = p.start
    return Document(id=p.id, page_content=p.text, metadata=meta)


def is_passage_retriever(obj: object) -> bool:
    """True for an engine ``PassageRetriever`` (a ``retrieve(query, k)`` method) that is not a LangChain retriever."""
    return not isinstance(obj, BaseRetriever) and callable(getattr(obj, "retrieve", None))


class PassageRetrieverAdapter(BaseRetriever):
    """An engine ``PassageRetriever`` (``retrieve(query, k) -> list[ScoredPassage]``, e.g. a
    ``HybridRetriever`` or your own BM25) as a LangChain retriever of ``k`` documents.

    ``ChatNest(retriever=...)`` wraps a plain ``PassageRetriever`` in this itself (``k=20``).
    """

    retriever: Any
    """The engine retriever."""
    k: int = 20
    """Passages asked for per query."""

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return [passage_to_document(hit) for hit in self.retriever.retrieve(query, self.k)]
