"""Documents in, documents out: read user files, parse WikiText, and the default corpus.

The default corpus is the WikiText-103 test split (60 Wikipedia articles, Merity et al.
2016, CC BY-SA 3.0), detokenized and shipped inside the package. Indexing is in ``index.py``.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path

from .errors import UnreadableFileError
from .passages.types import Document

DEFAULT_CORPUS_FILE = "wikitext103_test.jsonl.gz"
DEFAULT_CORPUS_NOTICE = (
    "Default corpus: WikiText-103 test articles (Merity et al., 'Pointer Sentinel Mixture Models', 2016), "
    "from Wikipedia, licensed CC BY-SA 3.0."
)

_TITLE = re.compile(r"^ = ([^=].*?) = $")
_HEADING = re.compile(r"^ (?:= )+(.*?)(?: =)+ $")


def detokenize_wikitext(line: str) -> str:
    """Undo WikiText's escapes and tokenization spaces ("guest @-@ starring ," -> "guest-starring,")."""
    s = line.strip()
    s = s.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    s = re.sub(r'" ([^"]*?) "', r'"\1"', s)
    s = re.sub(r" ([,.;:!?%)\]}])", r"\1", s)
    s = re.sub(r"([(\[{$£]) ", r"\1", s)
    s = re.sub(r" (n't|'t|'s|'re|'ve|'ll|'m|'d|')(?=\W|$)", r"\1", s)
    return s


def parse_wikitext(raw: str) -> list[Document]:
    """Split raw WikiText into articles; headings become their own lines in the text."""
    lines = raw.split("\n")
    docs: list[Document] = []
    title: str | None = None
    body: list[str] = []

    def flush() -> None:
        if title is not None and body:
            slug = re.sub(r"[^A-Za-z0-9]+", "_", title).strip("_")
            docs.append(Document(id=slug, title=title, text="\n\n".join(body), metadata={"source": "wikitext-103"}))

    for i, line in enumerate(lines):
        m = _TITLE.match(line)
        # An article title is followed by three blank lines; equation lines like " = 1 henry = " are not.
        if m and all(not lines[j].strip() for j in range(i + 1, min(i + 4, len(lines)))):
            flush()
            title, body = detokenize_wikitext(m.group(1)), []
            continue
        if not line.strip() or title is None:
            continue
        h = _HEADING.match(line)
        body.append(detokenize_wikitext(h.group(1) if h else line))
    flush()
    return docs


def default_corpus() -> list[Document]:
    """The shipped WikiText-103 test articles."""
    data = resources.files("nest_integrations.data").joinpath(DEFAULT_CORPUS_FILE).read_bytes()
    lines = gzip.decompress(data).decode("utf-8").splitlines()
    return [Document.model_validate_json(line) for line in lines if line.strip()]


def read_documents(paths: Iterable[str | Path]) -> Iterator[Document]:
    """Read .txt / .md files (one document each) and .jsonl files (one document per line).

    JSONL lines need a ``text`` field; ``id``, ``title`` and ``metadata`` are optional.
    A document's text, and so every citation's document offsets, is the file as Python reads
    it in text mode: ``\r\n`` and ``\r`` become ``\n``, a UTF-8 byte-order mark is dropped.
    Raises :class:`UnreadableFileError` naming the file for non-UTF-8 or malformed input.
    """
    for path in paths:
        p = Path(path)
        if p.is_dir():
            yield from read_documents(sorted(q for q in p.rglob("*") if q.suffix in {".txt", ".md", ".jsonl"}))
            continue
        try:
            raw = p.read_text(encoding="utf-8-sig")  # a BOM is not text
        except UnicodeDecodeError as e:
            raise UnreadableFileError(
                f"{p} is not UTF-8 text ({e.reason} at byte {e.start}); convert it, e.g. `iconv -t UTF-8`."
            ) from e
        if p.suffix == ".jsonl":
            yield from _jsonl_documents(p, raw)
        else:
            yield Document(id=p.stem, title=p.stem.replace("_", " "), text=raw, metadata={"source": str(p)})


def _jsonl_documents(p: Path, raw: str) -> Iterator[Document]:
    for n, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UnreadableFileError(f"{p}:{n}: not valid JSON ({e.msg}).") from e
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise UnreadableFileError(f"{p}:{n}: each JSONL line needs a string 'text' field.")
        yield Document(
            id=str(obj.get("id", f"{p.stem}-{n}")),
            title=str(obj.get("title", "")),
            text=obj["text"],
            metadata={"source": str(p), **(obj.get("metadata") or {})},
        )
