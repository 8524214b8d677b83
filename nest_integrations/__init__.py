"""nest-integrations: Nearest Neighbor Speculative Decoding for the RAG pipelines people already run.

Names are imported on first use (PEP 562), so ``import nest_integrations`` and the ``nest``
command start without loading torch or transformers; ``from nest_integrations import X``
works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    ConfigError,
    CorruptStoreError,
    IndexNotFoundError,
    InvalidPassagesError,
    InvalidPromptError,
    MissingExtraError,
    ModelNotFoundError,
    NestError,
    OutputPathError,
    PromptTooLongError,
    UnreadableFileError,
)

if TYPE_CHECKING:
    from .citations import Citation, NestResult, NestStats
    from .config import NestConfig, default_config
    from .corpus import default_corpus, read_documents
    from .engine import NestChunk, NestEngine, ashared_engine, shared_engine
    from .index import build_index, default_retriever, load_index
    from .lm import LoadedLM, load_lm
    from .passages import Document, HybridRetriever, Passage, PassageRetriever, ScoredPassage, StaticRetriever
    from .token_index import KeyStore

__version__ = "0.1.0"

# Public name -> the submodule that defines it (imported on first attribute access).
_LAZY = {
    "Citation": "citations",
    "NestResult": "citations",
    "NestStats": "citations",
    "NestConfig": "config",
    "default_config": "config",
    "default_corpus": "corpus",
    "read_documents": "corpus",
    "NestChunk": "engine",
    "NestEngine": "engine",
    "ashared_engine": "engine",
    "shared_engine": "engine",
    "build_index": "index",
    "default_retriever": "index",
    "load_index": "index",
    "LoadedLM": "lm",
    "load_lm": "lm",
    "Document": "passages",
    "HybridRetriever": "passages",
    "Passage": "passages",
    "PassageRetriever": "passages",
    "ScoredPassage": "passages",
    "StaticRetriever": "passages",
    "KeyStore": "token_index",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "Citation",
    "ConfigError",
    "CorruptStoreError",
    "Document",
    "HybridRetriever",
    "IndexNotFoundError",
    "InvalidPassagesError",
    "InvalidPromptError",
    "KeyStore",
    "LoadedLM",
    "MissingExtraError",
    "ModelNotFoundError",
    "NestChunk",
    "NestConfig",
    "NestEngine",
    "NestError",
    "NestResult",
    "NestStats",
    "OutputPathError",
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
