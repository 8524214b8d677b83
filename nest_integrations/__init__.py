"""nest-integrations: Nearest Neighbor Speculative Decoding for the RAG pipelines people already run."""

from .citations import Citation, NestResult, NestStats
from .config import NestConfig, default_config
from .corpus import default_corpus, read_documents
from .engine import NestChunk, NestEngine, ashared_engine, shared_engine
from .errors import (
    ConfigError,
    CorruptStoreError,
    IndexNotFoundError,
    InvalidPromptError,
    ModelNotFoundError,
    NestError,
    PromptTooLongError,
    UnreadableFileError,
)
from .index import build_index, default_retriever, load_index
from .lm import LoadedLM, load_lm
from .passages import Document, HybridRetriever, Passage, PassageRetriever, ScoredPassage, StaticRetriever
from .token_index import KeyStore

__version__ = "0.1.0"

__all__ = [
    "Citation",
    "ConfigError",
    "CorruptStoreError",
    "Document",
    "HybridRetriever",
    "IndexNotFoundError",
    "InvalidPromptError",
    "KeyStore",
    "LoadedLM",
    "ModelNotFoundError",
    "NestChunk",
    "NestConfig",
    "NestEngine",
    "NestError",
    "NestResult",
    "NestStats",
    "Passage",
    "PassageRetriever",
    "PromptTooLongError",
    "ScoredPassage",
    "StaticRetriever",
    "UnreadableFileError",
    "ashared_engine",
    "build_index",
    "default_config",
    "default_corpus",
    "default_retriever",
    "load_index",
    "load_lm",
    "read_documents",
    "shared_engine",
]
