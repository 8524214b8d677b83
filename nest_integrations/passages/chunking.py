"""Split documents into passages of at most ~N LM tokens, on sentence boundaries where possible.

Every passage keeps its char offsets in the document, so ``doc.text[p.start:p.end] == p.text``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from .types import Document, Passage

TokenCounter = Callable[[str], int]

_PARAGRAPH = re.compile(r"\S(?:.*?\S)?(?=\n\s*\n|\s*\Z)", re.S)
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"”')\]]*\s+(?=[\"“(\[]?[A-Z0-9])")
_WORD = re.compile(r"\S+")


def approximate_token_count(text: str) -> int:
    """A tokenizer-free estimate (about 4/3 tokens per word) for when no tokenizer is given."""
    return (len(text.split()) * 4 + 2) // 3


def _spans(pattern: re.Pattern[str], text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Split text[start:end] at pattern matches into (start, end) spans with no surrounding space."""
    pieces, cursor = [], start
    for m in pattern.finditer(text, start, end):
        pieces.append((cursor, m.start()))
        cursor = m.end()
    pieces.append((cursor, end))
    return [(s, e) for s, e in pieces if text[s:e].strip()]


def _split_long(text: str, start: int, end: int, max_tokens: int, count: TokenCounter) -> list[tuple[int, int]]:
    """Split an over-long sentence on word boundaries."""
    words = [(m.start(), m.end()) for m in _WORD.finditer(text, start, end)]
    out: list[tuple[int, int]] = []
    i = 0
    while i < len(words):
        j = i + 1
        while j < len(words) and count(text[words[i][0] : words[j][1]]) <= max_tokens:
            j += 1
        out.append((words[i][0], words[j - 1][1]))
        i = j
    return out


def chunk_document(
    doc: Document,
    *,
    max_tokens: int = 100,
    count_tokens: TokenCounter = approximate_token_count,
    min_chars: int = 40,
) -> Iterator[Passage]:
    """Yield the passages of ``doc``: sentences packed greedily within each paragraph.

    Paragraphs shorter than ``min_chars`` (headings, captions) are not made into passages.
    """
    if max_tokens < 8:
        raise ValueError(f"max_tokens must be at least 8, got {max_tokens}")
    text, n = doc.text, 0
    for para in _PARAGRAPH.finditer(text):
        if para.end() - para.start() < min_chars:
            continue
        units: list[tuple[int, int]] = []
        for s, e in _spans(_SENTENCE_END, text, para.start(), para.end()):
            units.extend(
                _split_long(text, s, e, max_tokens, count_tokens) if count_tokens(text[s:e]) > max_tokens else [(s, e)]
            )
        cur: tuple[int, int] | None = None
        for s, e in units:
            if cur is not None and count_tokens(text[cur[0] : e]) <= max_tokens:
                cur = (cur[0], e)
                continue
            if cur is not None:
                yield _passage(doc, n, *cur)
                n += 1
            cur = (s, e)
        if cur is not None:
            yield _passage(doc, n, *cur)
            n += 1


def _passage(doc: Document, n: int, start: int, end: int) -> Passage:
    return Passage(
        id=f"{doc.id}#{n}",
        text=doc.text[start:end],
        title=doc.title,
        metadata=dict(doc.metadata),
        document_id=doc.id,
        start=start,
        end=end,
    )
