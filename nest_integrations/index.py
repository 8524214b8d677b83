"""Build, save and load passage indexes; the default corpus's index is built once and cached.

Chunking counts LM tokens with the model's tokenizer, so "at most ~100 tokens" holds for
the model that will read the passages.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any

from .cache import cache_dir
from .corpus import DEFAULT_CORPUS_FILE, default_corpus
from .lm import load_tokenizer
from .passages.chunking import TokenCounter, approximate_token_count, chunk_document
from .passages.embedder import SentenceEmbedder
from .passages.hybrid import Fusion, HybridRetriever, check_fusion
from .passages.types import Document, Passage

DEFAULT_MAX_PASSAGE_TOKENS = 100


def token_counter(tokenizer: Any | None) -> TokenCounter:
    if tokenizer is None:
        return approximate_token_count
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def chunk_documents(
    docs: Iterable[Document], *, tokenizer: Any | None = None, max_tokens: int = DEFAULT_MAX_PASSAGE_TOKENS
) -> list[Passage]:
    count = token_counter(tokenizer)
    return [p for d in docs for p in chunk_document(d, max_tokens=max_tokens, count_tokens=count)]


def build_index(
    docs: Iterable[Document],
    directory: str | Path | None = None,
    *,
    tokenizer: Any | None = None,
    max_tokens: int = DEFAULT_MAX_PASSAGE_TOKENS,
    embedder: SentenceEmbedder | None = None,
    progress: bool = True,
    fusion: Fusion = "sum",
    rerank: Fusion | None = "convex",
) -> HybridRetriever:
    """Chunk ``docs`` into passages, index them (dense + BM25) and save to ``directory`` if given.

    ``fusion`` / ``rerank``: how the index fuses its two rankings to choose passages, and then
    orders and scores them (saved with it; see :class:`~nest_integrations.passages.HybridRetriever`).
    Raises :class:`OutputPathError` before any work when ``directory`` cannot be a directory,
    ``ValueError`` for an unknown ``fusion`` or ``rerank``.
    """
    check_fusion(fusion)  # before the chunking and embedding work
    if rerank is not None:
        check_fusion(rerank, "rerank")
    if directory is not None:
        from .builder import check_output_dir

        check_output_dir(Path(directory), "the index directory")
    passages = chunk_documents(docs, tokenizer=tokenizer, max_tokens=max_tokens)
    retriever = HybridRetriever(passages, embedder=embedder, progress=progress, fusion=fusion, rerank=rerank)
    if directory is not None:
        retriever.save(directory)
    return retriever


def default_index_dir() -> Path:
    """Where the built-in corpus's index is cached (built by :func:`default_retriever`)."""
    corpus = resources.files("nest_integrations.data").joinpath(DEFAULT_CORPUS_FILE).read_bytes()
    digest = hashlib.sha1(corpus + f"|{DEFAULT_MAX_PASSAGE_TOKENS}|v3".encode()).hexdigest()[:12]
    return cache_dir() / f"default-index-{digest}"


def default_retriever(*, tokenizer: Any | None = None, progress: bool = True) -> HybridRetriever:
    """The built-in first stage over the default corpus, built on first use and cached on disk.

    ``tokenizer`` counts passage tokens; it should be the default model's (loaded if not given).
    """
    return cached_index(default_index_dir(), default_corpus, tokenizer=tokenizer, progress=progress)


def cached_index(
    target: Path,
    docs: Callable[[], Iterable[Document]],
    *,
    tokenizer: Any | None = None,
    progress: bool = True,
) -> HybridRetriever:
    """The index saved in ``target``, or ``build_index(docs(), target, ...)`` when there is none yet.

    ``target`` should name what the index holds (e.g. a digest of the corpus file and the
    passage length), so a changed corpus gets a new index. ``tokenizer``: the default model's
    when not given.
    """
    if (target / "meta.json").is_file():
        return HybridRetriever.load(target)
    if tokenizer is None:
        tokenizer = load_tokenizer()
    # Build in a temporary directory and rename, so a crash never leaves a half index behind.
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        retriever = build_index(docs(), tmp, tokenizer=tokenizer, progress=progress)
        with contextlib.suppress(OSError):  # another process finished first
            tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return retriever


def load_index(directory: str | Path) -> HybridRetriever:
    return HybridRetriever.load(directory)
