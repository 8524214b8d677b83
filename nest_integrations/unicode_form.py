"""NFC working copies of passages that are not in NFC, and citations mapped back to the originals.

A passage in decomposed Unicode (NFD: "e" + U+0301 for "é", as macOS file names and some PDF
extractors give it) tokenizes into rare byte pieces the LM has hardly seen; copying them sent
the embedded model into loops of combining marks ("Brontë̈̈̈̈"). The token search and the
copies therefore work on the passage's NFC form (the same text, canonically equivalent), and
each citation is mapped back to the original before a user sees it: its offsets and quote are
the original passage's (``quote == passage.text[passage_start:passage_end]`` still holds),
while the answer shows the NFC form of the quote. Decoding and citing are not done here.
"""

from __future__ import annotations

import bisect
import unicodedata
from dataclasses import dataclass

from .citations import Citation
from .passages.types import Passage
from .text_stream import GRAPHEME  # NFC never composes across grapheme clusters


@dataclass(frozen=True)
class OffsetMap:
    """Grapheme cluster boundaries of a text's NFC form and of the text itself, pairwise equal."""

    nfc: list[int]  # increasing, from 0 to len(NFC text)
    source: list[int]  # the same boundaries in the original text

    def to_source(self, i: int, *, end: bool) -> int:
        """Char ``i`` of the NFC text in the original: a start maps to the start of its cluster,
        an end to the end of its cluster (quotes end at cluster boundaries, where both are exact)."""
        k = bisect.bisect_left(self.nfc, i) if end else bisect.bisect_right(self.nfc, i) - 1
        return self.source[min(max(k, 0), len(self.source) - 1)]


def nfc_copy(passage: Passage) -> tuple[Passage, OffsetMap] | None:
    """The passage with its text and title in NFC, and the map from its text back; None when it is
    in NFC already (the usual case, checked in one pass) or a cluster would not map one to one."""
    text, title = passage.text, passage.title
    if unicodedata.is_normalized("NFC", text) and unicodedata.is_normalized("NFC", title):
        return None
    nfc_bounds, source_bounds, pieces = [0], [0], []
    for m in GRAPHEME.finditer(text):
        piece = unicodedata.normalize("NFC", m.group())
        pieces.append(piece)
        nfc_bounds.append(nfc_bounds[-1] + len(piece))
        source_bounds.append(m.end())
    normalized = "".join(pieces)
    if normalized != unicodedata.normalize("NFC", text):
        return None  # a composition across clusters (not seen in practice): keep the original
    # The copy is not placed in its document (its offsets are NFC ones): overlapping chunks of a
    # non-NFC document are searched as separate texts. ``restore`` puts the document offsets back.
    copy = passage.model_copy(
        update={"text": normalized, "title": unicodedata.normalize("NFC", title), "start": None, "end": None}
    )
    return copy, OffsetMap(nfc_bounds, source_bounds)


def restore(citation: Citation, original: Passage, offsets: OffsetMap) -> Citation:
    """``citation`` of an NFC copy (its offsets and quote in NFC) as a citation of ``original``."""
    s0 = offsets.to_source(citation.passage_start, end=False)
    s1 = offsets.to_source(citation.passage_end, end=True)
    doc_start = original.start + s0 if original.start is not None else None
    return citation.model_copy(
        update={
            "quote": original.text[s0:s1],
            "title": original.title,
            "passage_start": s0,
            "passage_end": s1,
            "document_start": doc_start,
            "document_end": doc_start + (s1 - s0) if doc_start is not None else None,
        }
    )
