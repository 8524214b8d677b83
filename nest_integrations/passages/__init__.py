"""First stage: passages, chunking, the retriever protocol, the built-in hybrid retriever and
pyserini's BM25 over a Lucene index (``LuceneRetriever``, the ``pyserini`` extra)."""

from .chunking import approximate_token_count, chunk_document
from .hybrid import DenseOnlyRetriever, HybridRetriever, convex_fusion, fuse_scores
from .lucene import LuceneFields, LuceneRetriever
from .retriever import PassageRetriever, StaticRetriever
from .types import Document, Passage, ScoredPassage

__all__ = [
    "DenseOnlyRetriever",
    "Document",
    "HybridRetriever",
    "LuceneFields",
    "LuceneRetriever",
    "Passage",
    "PassageRetriever",
    "ScoredPassage",
    "StaticRetriever",
    "approximate_token_count",
    "chunk_document",
    "convex_fusion",
    "fuse_scores",
]
