"""First stage: passages, chunking, the retriever protocol and the built-in hybrid retriever."""

from .chunking import approximate_token_count, chunk_document
from .hybrid import HybridRetriever, fuse_scores
from .retriever import PassageRetriever, StaticRetriever
from .types import Document, Passage, ScoredPassage

__all__ = [
    "Document",
    "HybridRetriever",
    "Passage",
    "PassageRetriever",
    "ScoredPassage",
    "StaticRetriever",
    "approximate_token_count",
    "chunk_document",
    "fuse_scores",
]
