"""The built-in first stage: dense (FAISS inner product) + BM25 (bm25s), fused into one score.

Fusion (``fusion``): ``"sum"`` (the default) is the official NEST code's ``bm25 + w * dense``
(w = 0.3), whose dense scores are DRAGON+ inner products, not bounded by 1. With
all-MiniLM-L6-v2's cosines (at most 1; BM25 top scores run 2-20 on SQuAD) the dense term seldom
changes the order, and the hybrid ranks about as BM25 alone does. ``"convex"`` min-max scales
each list over its candidates and takes ``(1 - w) * bm25 + w * dense`` (w = 0.5), the convex
combination that Bruch et al., "An Analysis of Fusion Functions for Hybrid Retrieval" (ACM
TOIS 2023), found more accurate than reciprocal rank fusion. On SQuAD dev it ranks the gold
paragraph first 87% of the time against 79% (seeded 100 questions; 77% against 71% on 300
others). The default fuses by ``"sum"`` to choose the k passages (the paper's candidates) and
then re-ranks those k by ``"convex"`` (``rerank``): the order and the scores are the convex
combination's, the set is the sum's. Scores are what NEST's passage relevance reads
(``NestConfig.passage_relevance``): on SQuAD the re-ranked scores led NEST to cite the gold
paragraph 87.5% of the time against 79%. Choosing the passages by ``"convex"`` too made the
benchmark's entity prompts decode at 3.8x plain against 4.8x, one of them never copying
(``benchmarks/RESULTS.md``, sessions 9 and 10). Either
way a passage found by only one retriever gets the other list's lowest score. Indexes persist
as JSON / numpy / FAISS files (no pickle). The dense index is searched on the GPUs when
the installed FAISS is a GPU build that sees one (``dense_device``, see ``devices.py``).
"""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import operator
import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from .devices import check_dense_device, dense_index_on
from .embedder import SentenceEmbedder
from .stopwords import stopwords
from .types import Passage, ScoredPassage

INDEX_FORMAT_VERSION = 2
# GPU FAISS selects at most this many neighbors per search; larger k searches the CPU copy.
GPU_FAISS_MAX_K = 2048
_BM25_TOKEN = re.compile(r"\w+", re.UNICODE)

Fusion = Literal["convex", "sum"]
FUSIONS: tuple[Fusion, ...] = ("sum", "convex")
DEFAULT_DENSE_WEIGHT: dict[Fusion, float] = {"sum": 0.3, "convex": 0.5}


def _bm25_tokenize(texts: Sequence[str]) -> list[list[str]]:
    stop = stopwords()
    return [[w for w in _BM25_TOKEN.findall(t.lower()) if w not in stop] for t in texts]


def _passage_search_text(p: Passage) -> str:
    return f"{p.title}. {p.text}" if p.title else p.text


class HybridRetriever:
    """Dense + BM25 hybrid retriever over a fixed list of passages.

    ``dense_device``: ``"auto"`` (default) searches the dense index on every GPU that a GPU
    build of FAISS sees and on the CPU otherwise; ``"cpu"`` keeps it on the CPU; ``"cuda"``
    requires the GPU (:class:`~nest_integrations.errors.ConfigError` when FAISS sees none).
    ``dense_on_gpu`` says where it ended up. ``fusion`` and ``dense_weight`` (None: 0.3 for
    ``"sum"``, 0.5 for ``"convex"``): how the two rankings are fused to choose the k passages;
    ``rerank`` (a fusion, with its default weight; None or ``fusion``: none): how those k are then
    ordered and scored (see the module docstring). A bad value raises ``ValueError``.
    """

    def __init__(
        self,
        passages: Sequence[Passage],
        *,
        embedder: SentenceEmbedder | None = None,
        fusion: Fusion = "sum",
        dense_weight: float | None = None,
        rerank: Fusion | None = "convex",
        candidates: int = 100,
        dense_device: str = "auto",
        _dense_index: Any = None,
        _bm25: Any = None,
        progress: bool = False,
    ) -> None:
        import bm25s
        import faiss

        check_fusion(fusion)
        if rerank is not None:
            check_fusion(rerank, "rerank")
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
            raise ValueError(f"candidates must be an integer >= 1, got {candidates!r}")
        if dense_weight is None:
            dense_weight = DEFAULT_DENSE_WEIGHT[fusion]
        _check_dense_weight(dense_weight, fusion)
        self.passages = list(passages)
        self.fusion: Fusion = fusion
        self.dense_weight = float(dense_weight)
        self.rerank: Fusion | None = None if rerank == fusion else rerank
        self.candidates = candidates
        self.dense_device = check_dense_device(dense_device)
        self.dense_on_gpu = False
        self._embedder = embedder
        self._dense: Any = None  # the CPU index: saved, and searched for k above GPU_FAISS_MAX_K
        self._dense_search: Any = None  # what searches: the CPU index or its GPU copy
        self._gpu_lock = threading.Lock()  # GPU FAISS indexes are not safe to search from two threads at once
        self._bm25: Any = None
        if not self.passages:
            return
        texts = [_passage_search_text(p) for p in self.passages]
        if _dense_index is None:
            vectors = self.embedder.encode(texts, progress=progress)
            _dense_index = faiss.IndexFlatIP(vectors.shape[1])
            _dense_index.add(vectors)
        if _bm25 is None:
            _bm25 = bm25s.BM25()
            _bm25.index(_bm25_tokenize(texts), show_progress=progress)
        self._dense, self._bm25 = _dense_index, _bm25
        self._dense_search, self.dense_on_gpu = dense_index_on(_dense_index, dense_device, faiss)

    @property
    def embedder(self) -> SentenceEmbedder:
        if self._embedder is None:
            self._embedder = SentenceEmbedder()
        return self._embedder

    def __len__(self) -> int:
        return len(self.passages)

    def retrieve(self, query: str, k: int) -> list[ScoredPassage]:
        """The ``k`` best passages for ``query``, best first (fewer when the index holds fewer);
        ``[]`` for k = 0 or a blank query. ``ValueError`` for a negative ``k``."""
        k = _check_k(k)
        if not k or not self.passages or not query.strip():
            return []
        n = min(len(self.passages), max(k, self.candidates))
        dense = self._dense_scores(query, n)
        sparse = self._bm25_scores(query, n)
        best = sorted(_fuse(self.fusion, dense, sparse, self.dense_weight).items(), key=lambda kv: -kv[1])[:k]
        if self.rerank is not None:
            # The same k passages, ordered and scored by the other fusion (stable: ties keep their order).
            scores = _fuse(self.rerank, dense, sparse, DEFAULT_DENSE_WEIGHT[self.rerank])
            best = sorted(((i, scores[i]) for i, _ in best), key=lambda kv: -kv[1])
        return [ScoredPassage(passage=self.passages[i], score=s) for i, s in best]

    def dense_retrieve(self, query: str, k: int) -> list[ScoredPassage]:
        """The dense ranking alone (cosine similarity), as a plain vector store would return it."""
        k = _check_k(k)
        if not k or not self.passages or not query.strip():
            return []
        best = sorted(self._dense_scores(query, min(k, len(self.passages))).items(), key=lambda kv: -kv[1])
        return [ScoredPassage(passage=self.passages[i], score=s) for i, s in best[:k]]

    def dense_only(self) -> DenseOnlyRetriever:
        """The dense ranking alone as a :class:`PassageRetriever` (what a plain vector store returns)."""
        return DenseOnlyRetriever(self)

    def _dense_scores(self, query: str, n: int) -> dict[int, float]:
        q = self.embedder.encode([query])
        on_gpu = self.dense_on_gpu and n <= GPU_FAISS_MAX_K
        with self._gpu_lock if on_gpu else contextlib.nullcontext():
            scores, ids = (self._dense_search if on_gpu else self._dense).search(q, n)
        return {int(i): float(s) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0}

    def _bm25_scores(self, query: str, n: int) -> dict[int, float]:
        tokens = _bm25_tokenize([query])
        if not tokens[0]:
            return {}
        ids, scores = self._bm25.retrieve(tokens, k=n, show_progress=False)
        return {int(i): float(s) for i, s in zip(ids[0], scores[0], strict=True) if s > 0}

    # Persistence -------------------------------------------------------------------------

    def save(self, directory: str | Path) -> None:
        """Write passages.jsonl, dense.faiss, bm25/ and meta.json into ``directory``."""
        import faiss

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        with (out / "passages.jsonl").open("w", encoding="utf-8") as f:
            for p in self.passages:
                f.write(p.model_dump_json() + "\n")
        meta = {
            "format_version": INDEX_FORMAT_VERSION,
            "embedder": self.embedder.name if self._embedder is not None else "all-MiniLM-L6-v2",
            "fusion": self.fusion,
            "dense_weight": self.dense_weight,
            "rerank": self.rerank,
            "candidates": self.candidates,
            "num_passages": len(self.passages),
        }
        if self.passages:
            faiss.write_index(self._dense, str(out / "dense.faiss"))
            self._bm25.save(str(out / "bm25"), show_progress=False)
        (out / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        embedder: SentenceEmbedder | None = None,
        dense_device: str = "auto",
        fusion: Fusion | None = None,
        dense_weight: float | None = None,
        rerank: Fusion | Literal["saved"] | None = "saved",
    ) -> HybridRetriever:
        """Load an index written by :meth:`save`; ``dense_device`` as in the constructor.

        ``fusion`` / ``dense_weight``: None takes the saved ones (an index saved before fusion was
        a choice fuses by ``"sum"``); a ``fusion`` other than the saved one takes its own default
        weight unless ``dense_weight`` is given. ``rerank``: ``"saved"`` takes the saved one (an
        index saved before re-ranking was a choice does not re-rank: None).
        """
        import bm25s
        import faiss

        src = Path(directory)
        meta_path = src / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{src} is not a NEST passage index (no meta.json); build one with `nest index`.")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format_version") != INDEX_FORMAT_VERSION:
            raise ValueError(f"{src}: index format {meta.get('format_version')} is not supported; rebuild it.")
        passages = list(read_passages(src / "passages.jsonl"))
        dense = bm25 = None
        if passages:
            dense = faiss.read_index(str(src / "dense.faiss"))
            bm25 = bm25s.BM25.load(str(src / "bm25"), show_progress=False)
        if embedder is None and meta["embedder"] != "all-MiniLM-L6-v2":
            embedder = SentenceEmbedder(meta["embedder"])
        for key, given in (("fusion", fusion is not None), ("rerank", rerank != "saved")):
            # A hand-edited meta.json: say where the bad value is (unless a value is given instead).
            if not given and meta.get(key) is not None and meta[key] not in FUSIONS:
                raise ValueError(
                    f"{meta_path}: the saved {key} {meta[key]!r} is not one of {', '.join(FUSIONS)}; "
                    f"rebuild the index with `nest index`, or pass {key}= to HybridRetriever.load"
                )
        saved_fusion = meta.get("fusion")
        chosen: Fusion = fusion if fusion is not None else saved_fusion or "sum"
        if dense_weight is None and chosen == (saved_fusion or "sum"):
            dense_weight = meta["dense_weight"]
        return cls(
            passages,
            embedder=embedder,
            fusion=chosen,
            dense_weight=dense_weight,
            rerank=meta.get("rerank") if rerank == "saved" else rerank,
            candidates=meta["candidates"],
            dense_device=dense_device,
            _dense_index=dense,
            _bm25=bm25,
        )


class DenseOnlyRetriever:
    """A :class:`PassageRetriever` view of a :class:`HybridRetriever`'s dense index: cosine scores, no BM25."""

    def __init__(self, hybrid: HybridRetriever) -> None:
        self.hybrid = hybrid

    @property
    def passages(self) -> list[Passage]:
        return self.hybrid.passages

    def __len__(self) -> int:
        return len(self.hybrid)

    def retrieve(self, query: str, k: int) -> list[ScoredPassage]:
        return self.hybrid.dense_retrieve(query, k)


def fuse_scores(dense: dict[int, float], sparse: dict[int, float], dense_weight: float) -> dict[int, float]:
    """score = sparse + dense_weight * dense; a missing score is that list's lowest.
    ``ValueError`` unless dense_weight is finite and >= 0 and every score is finite."""
    _check_dense_weight(dense_weight, "sum")
    _check_finite(dense, sparse)
    if not dense and not sparse:
        return {}
    low_dense = min(dense.values()) if dense else 0.0
    low_sparse = min(sparse.values()) if sparse else 0.0
    return {i: sparse.get(i, low_sparse) + dense_weight * dense.get(i, low_dense) for i in set(dense) | set(sparse)}


def check_fusion(fusion: object, name: str = "fusion") -> None:
    """``ValueError`` unless ``fusion`` is one of ``FUSIONS`` (``name``: the parameter, for the message)."""
    if fusion not in FUSIONS:
        raise ValueError(f"{name} must be one of {', '.join(FUSIONS)}, got {fusion!r}")


def _fuse(fusion: Fusion, dense: dict[int, float], sparse: dict[int, float], dense_weight: float) -> dict[int, float]:
    return (convex_fusion if fusion == "convex" else fuse_scores)(dense, sparse, dense_weight)


def _check_dense_weight(dense_weight: object, fusion: Fusion) -> None:
    bound = "in [0, 1]" if fusion == "convex" else "finite and >= 0"
    message = f"dense_weight must be a number {bound} for {fusion!r} fusion, got {dense_weight!r}"
    if isinstance(dense_weight, bool) or not isinstance(dense_weight, numbers.Real):  # numpy floats are Real
        raise ValueError(message)
    weight = float(dense_weight)
    if not math.isfinite(weight) or weight < 0 or (fusion == "convex" and weight > 1):
        raise ValueError(message)


def _check_finite(dense: dict[int, float], sparse: dict[int, float]) -> None:
    for name, scores in (("dense", dense), ("sparse", sparse)):
        if not all(math.isfinite(v) for v in scores.values()):
            raise ValueError(f"{name} scores must be finite numbers")


def _check_k(k: int) -> int:
    """``k`` as an int (numpy integers too); ``ValueError`` for a negative or non-integer one."""
    try:
        n = operator.index(k)
    except TypeError:
        n = -1
    if isinstance(k, bool) or n < 0:
        raise ValueError(f"k must be an integer >= 0, got {k!r}")
    return n


def convex_fusion(dense: dict[int, float], sparse: dict[int, float], dense_weight: float) -> dict[int, float]:
    """score = (1 - dense_weight) * sparse' + dense_weight * dense', each list min-max scaled to
    [0, 1] over its candidates (all 1 when they tie); a missing score is that list's lowest (0).
    ``ValueError`` unless 0 <= dense_weight <= 1 and every score is finite."""
    _check_dense_weight(dense_weight, "convex")
    _check_finite(dense, sparse)
    scaled_dense, scaled_sparse = _min_max(dense), _min_max(sparse)
    return {
        i: (1 - dense_weight) * scaled_sparse.get(i, 0.0) + dense_weight * scaled_dense.get(i, 0.0)
        for i in set(dense) | set(sparse)
    }


def _min_max(scores: dict[int, float]) -> dict[int, float]:
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    spread = high - low
    return {i: (s - low) / spread if spread > 0 else 1.0 for i, s in scores.items()}


def read_passages(path: str | Path) -> Iterable[Passage]:
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield Passage.model_validate_json(line)
