"""Source selection: which retrieved passages NEST's token search may use for one query.

Three filters, in order: the source-coverage gate (no source names what the query asks
about, or the query has no word at all: search none), passage relevance (sources under the
threshold are left out, and so never encoded; so are passages with no text), and duplicates
(identical text held by several passages is one candidate, held by the best-ranked one). A
searched passage that is not in NFC is searched as its NFC copy;
:meth:`SourceSelection.to_source` maps citations back.
Retrieval itself and the token index are not done here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .citations import Citation
from .config import NestConfig
from .passages.types import Passage, ScoredPassage
from .relevance import passage_relevance, source_coverage
from .unicode_form import OffsetMap, nfc_copy, restore

log = logging.getLogger(__name__)


@dataclass
class SourceSelection:
    """What the first stage returned and what the token search may use of it."""

    retrieved: list[ScoredPassage]
    searched: list[ScoredPassage] = field(default_factory=list)
    relevance: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # (len(searched),) in [0, 1]
    coverage: float | None = None  # share of the query's key terms in the best source
    gated: bool = False  # no source covers the query: decode with the plain LM
    # searched index -> other retrieved passages holding exactly the same text
    duplicates: dict[int, list[Passage]] = field(default_factory=dict)
    # passage id -> (the original, its offset map) for a searched passage that is an NFC copy
    originals: dict[str, tuple[Passage, OffsetMap]] = field(default_factory=dict)

    def to_source(self, citation: Citation) -> Citation:
        """``citation`` in the terms of the passage the user gave (see ``unicode_form.py``)."""
        found = self.originals.get(citation.passage_id)
        return citation if found is None else restore(citation, *found)


def select_sources(query: str, retrieved: Sequence[ScoredPassage], config: NestConfig) -> SourceSelection:
    """Apply the coverage gate, the relevance threshold and de-duplication to ``retrieved``."""
    retrieved = _unique_ids(retrieved)
    selection = SourceSelection(retrieved=list(retrieved))
    if not retrieved:
        return selection
    passages = [s.passage for s in retrieved]
    selection.coverage = source_coverage(query, passages)
    selection.gated = selection.coverage is not None and selection.coverage < config.min_source_coverage
    if selection.gated:
        return selection
    relevance = passage_relevance(query, passages, [s.score for s in retrieved], config.passage_relevance)
    holder_of: dict[str, int] = {}  # passage text -> index in ``searched``
    kept: list[int] = []
    searched: list[ScoredPassage] = []
    for i in (relevance >= config.min_passage_relevance).nonzero().flatten().tolist():
        scored = retrieved[i]
        if not scored.passage.text.strip():
            continue  # nothing to copy (a vector store's empty chunk): no token of it is searched
        copy = nfc_copy(scored.passage)  # searched and copied in NFC, cited as given
        text = scored.passage.text if copy is None else copy[0].text
        if text in holder_of:  # an NFD and an NFC copy of one text are one text too
            selection.duplicates.setdefault(holder_of[text], []).append(passages[i])
            continue
        if copy is not None:
            selection.originals[scored.passage.id] = (scored.passage, copy[1])
            scored = scored.model_copy(update={"passage": copy[0]})
        holder_of[text] = len(kept)
        kept.append(i)
        searched.append(scored)
    selection.searched = searched
    selection.relevance = relevance[kept]
    return selection


def _unique_ids(retrieved: Sequence[ScoredPassage]) -> Sequence[ScoredPassage]:
    """Passages that share an id but not their text (chunks of a loader that copied one id into
    every chunk) get ``"<id>#2"``, ``"<id>#3"``, ... so that each citation names one text."""
    taken = {s.passage.id for s in retrieved}
    text_of: dict[str, str] = {}
    new_ids: dict[tuple[str, str], str] = {}  # (id, text) -> the id it is cited as
    renamed: list[ScoredPassage] | None = None
    for i, s in enumerate(retrieved):
        p = s.passage
        if text_of.setdefault(p.id, p.text) == p.text:
            continue
        new_id = new_ids.get((p.id, p.text))
        if new_id is None:
            n = 2
            while f"{p.id}#{n}" in taken:
                n += 1
            new_id = new_ids[p.id, p.text] = f"{p.id}#{n}"
            taken.add(new_id)
            log.warning("two passages have the id %r and different texts: the later one is cited as %r", p.id, new_id)
        renamed = renamed if renamed is not None else list(retrieved)
        renamed[i] = s.model_copy(update={"passage": p.model_copy(update={"id": new_id})})
    return renamed if renamed is not None else retrieved
