"""From decoding steps to streamed chunks: answer text, stop strings and final citations.

A citation is streamed on the first chunk after which it cannot change (its claim is closed,
the sentences it touches have ended and its text is released); the last chunk carries the
``NestResult``. Each chunk costs O(new
tokens). Decoding and source selection are not done here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field

from .citations import Citation, NestResult, Provenance
from .claims import ClaimTracker
from .passages.types import Passage, ScoredPassage
from .text_stream import Chars, IncrementalDetokenizer, StopScanner
from .token_index import EncodedPassage


class NestChunk(BaseModel):
    """One streamed piece: new text, citations completed by it, and the result on the last chunk."""

    text: str = ""
    token_ids: list[int] = Field(default_factory=list)
    copied: bool = False
    citations: list[Citation] = Field(default_factory=list)
    result: NestResult | None = None


class AnswerAssembler:
    """Collects decoded tokens and their provenance; releases text and final citations.

    ``stream=False`` (``generate``, which reads only the result): :meth:`put` keeps the text
    and the stop scan up to date but builds no chunk and no claim; :meth:`finish` builds the
    claims in one pass over the finished text (a ``str``: indexing it is cheaper than the
    growing text's), and :meth:`last_chunk` carries the whole text and every citation.
    """

    def __init__(
        self,
        tokenizer: Any,
        eos: set[int],
        stops: Sequence[str],
        passages: Sequence[ScoredPassage],
        encoded: Sequence[EncodedPassage],
        duplicates: Mapping[int, Sequence[Passage]] | None = None,
        *,
        stream: bool = True,
        to_source: Callable[[Citation], Citation] | None = None,
        lead: str = "",
    ) -> None:
        """``to_source``: maps a citation of a searched passage to the passage the user gave (an
        NFC copy's citation to the original: ``SourceSelection.to_source``); None: they are the same.
        ``lead``: the text-completion prompt the answer continues (see ``ClaimTracker``)."""
        self.eos = eos
        self._to_source = to_source
        self.stream = stream
        self.detok = IncrementalDetokenizer(tokenizer)
        self.stops = StopScanner(stops)
        self.claims = ClaimTracker(passages, encoded, duplicates, lead)
        self.provenance: list[Provenance | None] = []
        self.stop_at: int | None = None  # char where a stop string begins, once one is seen
        self._released = 0  # chars of text streamed so far
        self._unreleased = ""  # text after those chars: a possible partial stop string
        self._cited = 0  # citations streamed so far
        self._claimed = 0  # tokens given to the claims so far

    def put(self, tokens: Sequence[int], provenance: Sequence[Provenance | None]) -> NestChunk | None:
        """Add one decoding step; returns the chunk it releases, if any (None after a stop string)."""
        kept_tokens, kept_provenance = tokens, provenance
        if self.eos and not self.eos.isdisjoint(tokens):
            kept = next(i for i, t in enumerate(tokens) if t in self.eos)
            kept_tokens, kept_provenance = tokens[:kept], provenance[:kept]
        d = self.detok
        self.provenance.extend(kept_provenance)
        d.put(kept_tokens)
        new = d.appended
        if self.stop_at is None:
            self.stop_at = self.stops.feed(new)
        if not self.stream:
            return None
        self._feed_claims(d.text, d.committed)
        if self.stop_at is not None:
            return None
        self._unreleased += new
        safe = self.stops.releasable(len(d.text))
        if safe <= self._released:
            return None
        n = safe - self._released
        released, self._unreleased = self._unreleased[:n], self._unreleased[n:]
        self._released = safe
        copied = provenance[0] is not None if len(provenance) == 1 else any(p is not None for p in provenance)
        # Plain construction: pydantic-core validates these fields faster than model_construct builds them.
        return NestChunk(
            text=released, token_ids=list(tokens), copied=copied, citations=self._final_citations(safe), result=None
        )

    def _feed_claims(self, text: Chars, upto: int) -> None:
        """Give the claims the committed tokens not given yet, up to token ``upto``."""
        add, provenance, starts, ends = self.claims.add, self.provenance, self.detok.starts, self.detok.ends
        for i in range(self._claimed, upto):
            add(text, provenance[i], starts[i], ends[i])
        if upto > self._claimed:
            self.claims.settle(text, ends[upto - 1])
        self._claimed = max(self._claimed, upto)

    def _final_citations(self, limit: int) -> list[Citation]:
        if self._cited == len(self.claims.citations):
            return []  # most steps close no claim
        open_start = self.claims.open_start()
        if open_start is not None:
            limit = min(limit, open_start)
        done = self.claims.citations
        new = []
        while self._cited < len(done) and done[self._cited].output_end <= limit:
            new.append(done[self._cited])
            self._cited += 1
        return self._restored(new)

    def _restored(self, citations: list[Citation]) -> list[Citation]:
        return citations if self._to_source is None else [self._to_source(c) for c in citations]

    @property
    def citations(self) -> list[Citation]:
        """The final citations, in output order, in terms of the passages the user gave."""
        return self._restored(self.claims.citations)

    @property
    def fragments(self) -> list[Citation]:
        """Copies not listed as sources (see ``NestResult.fragments``), as :attr:`citations`."""
        return self._restored(self.claims.fragments)

    def finish(self) -> tuple[str, list[int], list[Provenance | None]]:
        """End of output: the final text (cut at a stop string), its tokens and their provenance."""
        d = self.detok
        d.flush()
        text, tokens, provenance = str(d.text), d.tokens, self.provenance
        self._feed_claims(text, d.committed - d.dropped)  # a cut character's tokens cite nothing
        if self.stop_at is None:
            self.stop_at = self.stops.feed(d.appended)
        if self.stop_at is not None:
            text = text[: self.stop_at]
            keep = sum(1 for s in d.starts if s < self.stop_at)
            tokens, provenance = tokens[:keep], provenance[:keep]
        self.claims.finish(text)
        return text, tokens, provenance

    def last_chunk(self, text: str, result: NestResult) -> NestChunk:
        """The chunk that carries the result: the rest of the text and the citations not yet streamed."""
        rest = self._restored(self.claims.citations[self._cited :])
        return NestChunk(text=text[self._released :], citations=rest, result=result)
