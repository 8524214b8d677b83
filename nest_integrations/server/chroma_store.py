"""A Chroma server as the first stage that several replicas share: load a passage index into
it once, then every replica queries it through :class:`ChromaRetriever` (a PassageRetriever).

Needs ``chromadb`` (``pip install "nest-integrations[ray]"``). Run as a module to load an index:
``python -m nest_integrations.server.chroma_store --index DIR --host H --port P --collection C``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from ..errors import CorruptStoreError, IndexNotFoundError
from ..passages.embedder import SentenceEmbedder
from ..passages.hybrid import read_passages
from ..passages.types import Passage, ScoredPassage

INSTALL = 'pip install "nest-integrations[ray]"'
DEFAULT_COLLECTION = "nest"


def connect(host: str = "127.0.0.1", port: int = 8000) -> Any:
    """A ``chromadb.HttpClient`` for the Chroma server at ``host:port`` (telemetry off)."""
    try:
        import chromadb
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"The shared Chroma first stage needs chromadb: {INSTALL}") from e
    return chromadb.HttpClient(host=host, port=port, settings=chromadb.Settings(anonymized_telemetry=False))


class ChromaRetriever:
    """Query a Chroma collection written by :func:`upload_index`; scores are cosine similarities.

    Args:
        client: a chromadb client (see :func:`connect`).
        collection: the collection's name.
        embedder: encodes queries; must be the encoder the collection's vectors came from
            (the index's, all-MiniLM-L6-v2 by default).
    """

    def __init__(self, client: Any, collection: str = DEFAULT_COLLECTION, embedder: SentenceEmbedder | None = None):
        self._collection = client.get_collection(collection)
        self._embedder = embedder

    @property
    def embedder(self) -> SentenceEmbedder:
        if self._embedder is None:
            self._embedder = SentenceEmbedder()
        return self._embedder

    def retrieve(self, query: str, k: int) -> list[ScoredPassage]:
        """Up to ``k`` passages for ``query``, most similar first."""
        if not query.strip():
            return []
        found = self._collection.query(
            query_embeddings=self.embedder.encode([query]).tolist(),
            n_results=k,
            include=["documents", "metadatas", "distances"],
        )
        return [
            ScoredPassage(passage=passage_from_record(pid, doc, meta), score=1.0 - float(dist))
            for pid, doc, meta, dist in zip(
                found["ids"][0], found["documents"][0], found["metadatas"][0], found["distances"][0], strict=True
            )
        ]


def passage_from_record(pid: str, document: str, metadata: dict[str, Any]) -> Passage:
    """The :class:`Passage` stored as one Chroma record by :func:`upload_index`."""
    start, end = metadata.get("start", -1), metadata.get("end", -1)
    return Passage(
        id=pid,
        text=document,
        title=str(metadata.get("title", "")),
        document_id=metadata.get("document_id") or None,
        start=start if start >= 0 else None,
        end=end if end >= 0 else None,
        metadata=json.loads(metadata.get("metadata", "{}")),
    )


def upload_index(index: str | Path, client: Any, collection: str = DEFAULT_COLLECTION, *, batch: int = 1000) -> int:
    """Copy a passage index (a ``nest index`` directory, or ``"default"``) into ``collection``.

    The index's own dense vectors are stored (nothing is re-encoded), with cosine distance.
    Records are upserted by passage id, so a second upload of the same index changes nothing.
    Returns the number of passages. Raises ``IndexNotFoundError`` / ``CorruptStoreError``.
    """
    if str(index) == "default":
        from ..index import default_retriever

        with tempfile.TemporaryDirectory() as tmp:
            default_retriever(progress=False).save(tmp)
            return upload_index(tmp, client, collection, batch=batch)
    import faiss

    src = Path(index)
    if not (src / "meta.json").is_file():
        raise IndexNotFoundError(f"{src} is not a NEST passage index (no meta.json); build one with `nest index`.")
    passages = list(read_passages(src / "passages.jsonl"))
    if not passages:
        return 0
    dense = faiss.read_index(str(src / "dense.faiss"))
    if dense.ntotal != len(passages):
        raise CorruptStoreError(f"{src}: {dense.ntotal} vectors for {len(passages)} passages; rebuild the index.")
    vectors = dense.reconstruct_n(0, dense.ntotal)
    target = client.get_or_create_collection(collection, metadata={"hnsw:space": "cosine"}, embedding_function=None)
    for i in range(0, len(passages), batch):
        part = passages[i : i + batch]
        target.upsert(
            ids=[p.id for p in part],
            embeddings=vectors[i : i + batch].tolist(),
            documents=[p.text for p in part],
            metadatas=[
                {
                    "title": p.title,
                    "document_id": p.document_id or "",
                    "start": -1 if p.start is None else p.start,
                    "end": -1 if p.end is None else p.end,
                    "metadata": json.dumps(p.metadata),
                }
                for p in part
            ],
        )
    return len(passages)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Load a NEST passage index into a Chroma server.")
    parser.add_argument("--index", default="default", help='a `nest index` directory, or "default"')
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--collection", default=DEFAULT_COLLECTION)
    args = parser.parse_args(argv)
    count = upload_index(args.index, connect(args.host, args.port), args.collection)
    print(f"{count} passages in collection {args.collection!r} at {args.host}:{args.port}")


if __name__ == "__main__":
    main()
