"""Bridge LlamaIndex nodes and retrievers to the NEST engine's first stage.

``NodeWithScore`` -> scored ``Passage`` (node id, text, metadata, ref doc id, score, and the
node's char range in its document when LlamaIndex recorded it). Non-text nodes are skipped.
``PassageRetrieverAdapter`` goes the other way: an engine ``PassageRetriever`` as a LlamaIndex retriever.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.schema import (
    MetadataMode,
    NodeRelationship,
    NodeWithScore,
    QueryBundle,
    RelatedNodeInfo,
    TextNode,
)

from nest_integrations import Passage, ScoredPassage
from nest_integrations.passages.types import json_safe

log = logging.getLogger(__name__)


def node_to_passage(nws: NodeWithScore) -> Passage | None:
    """A passage for a text node, or None (with a debug log) for image or empty nodes."""
    node = nws.node
    if not isinstance(node, TextNode) or type(node).__name__ == "ImageNode":
        log.debug("skipping non-text node %s (%s)", node.node_id, type(node).__name__)
        return None
    text = node.get_content(metadata_mode=MetadataMode.NONE)
    if not text.strip():
        log.debug("skipping empty node %s", node.node_id)
        return None
    meta = json_safe(dict(node.metadata or {}))
    start, end = node.start_char_idx, node.end_char_idx
    exact = isinstance(start, int) and isinstance(end, int) and end - start == len(text) and start >= 0
    return Passage(
        id=node.node_id,
        text=text,
        title=str(meta.get("title") or meta.get("file_name") or ""),
        metadata=meta,
        document_id=node.ref_doc_id,
        start=start if exact else None,
        end=end if exact else None,
    )


def nodes_to_passages(nodes: Sequence[NodeWithScore]) -> list[ScoredPassage]:
    """Passages in retrieval order, with the node's score (None when it has none: the order alone is not one)."""
    out = []
    for nws in nodes:
        passage = node_to_passage(nws)
        if passage is not None:
            score = float(nws.score) if nws.score is not None else None
            out.append(ScoredPassage(passage=passage, score=score))
    return out


class LlamaIndexPassageRetriever:
    """Any LlamaIndex ``BaseRetriever`` as the engine's ``PassageRetriever``."""

    def __init__(self, retriever: BaseRetriever) -> None:
        self.retriever = retriever

    def retrieve(self, query: str, k: int) -> list[ScoredPassage]:
        return nodes_to_passages(self.retriever.retrieve(QueryBundle(query)))[:k]


def passage_to_node(hit: ScoredPassage) -> NodeWithScore:
    """A text node that :func:`node_to_passage` turns back into the same passage (id, text, range)."""
    p = hit.passage
    relationships = {}
    if p.document_id is not None:
        relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=p.document_id)
    node = TextNode(
        id_=p.id,
        text=p.text,
        metadata={**p.metadata, "title": p.title},
        start_char_idx=p.start,
        end_char_idx=p.end,
        relationships=relationships,
    )
    return NodeWithScore(node=node, score=hit.score)


class PassageRetrieverAdapter(BaseRetriever):
    """An engine ``PassageRetriever`` (``retrieve(query, k) -> list[ScoredPassage]``) as a LlamaIndex
    retriever of ``k`` nodes. ``NestLLM`` / ``NestQueryEngine`` wrap a plain one in this themselves (k=20).
    """

    def __init__(self, retriever: Any, k: int = 20) -> None:
        super().__init__()
        self.passage_retriever, self.k = retriever, k

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return [passage_to_node(hit) for hit in self.passage_retriever.retrieve(query_bundle.query_str, self.k)]


def as_llama_index_retriever(value: Any) -> Any:
    """``value`` when it is None or a LlamaIndex retriever; an engine ``PassageRetriever`` wrapped in
    :class:`PassageRetrieverAdapter`. Raises TypeError for anything else."""
    if value is None or isinstance(value, BaseRetriever):
        return value
    if callable(getattr(value, "retrieve", None)):
        return PassageRetrieverAdapter(value)
    raise TypeError(
        "retriever must be a LlamaIndex BaseRetriever (e.g. index.as_retriever()) or a NEST PassageRetriever "
        f"(an object with retrieve(query, k) -> list[ScoredPassage]); got {type(value).__name__}."
    )
