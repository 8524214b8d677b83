"""The splice rule: within one output sentence, copies continue a single source run.

Once a copy of two or more words has been made from a source position, the rest of the
sentence may only continue that run: the k-NN distribution holds only the run's next
token, which is also proposed as the next span. A token that leaves the run (the LM
disagreed) breaks the lock and the LM alone finishes the sentence, uncited. A sentence
boundary resets everything. State only; the decoder applies it (``decoding.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .citations import Provenance

MIN_LOCK_WORDS = 2  # a substantive copy: two or more words


@dataclass
class SentenceLock:
    """Per-sentence copy state of one output sequence.

    Args:
        passage_tokens: passage index -> its token ids (L,), the source a lock continues in.
        word_start: bool (V,): tokens that begin a new word (their text starts with whitespace).
        sentence_end: bool (V,): tokens after which a new sentence starts (., !, ?, newline, special).
        copied: (passage, position) -> whether that source token is already in the output (a
            locked run that reaches copied text ends there: nothing is copied twice).
    """

    passage_tokens: Callable[[int], torch.Tensor]
    word_start: torch.Tensor
    sentence_end: torch.Tensor
    copied: Callable[[int, int], bool] = lambda passage, position: False
    locked: tuple[int, int] | None = None  # (passage, position of the source token that comes next)
    broken: bool = False  # a locked run was left: the LM alone finishes the sentence
    _run: tuple[int, int, int] | None = None  # the current copy run: (passage, last position, words)

    @property
    def lm_only(self) -> bool:
        """Whether the rest of this sentence is decoded by the LM alone (no k-NN, no spans): the
        locked run was left, or it reached its passage's end or text already in the output."""
        return self.broken or (self.locked is not None and self.continuation() is None)

    def continuation(self) -> tuple[int, int, int] | None:
        """(passage, position, token) the locked sentence must continue with, if locked."""
        if self.locked is None:
            return None
        passage, position = self.locked
        tokens = self.passage_tokens(passage)
        if position >= tokens.numel() or self.copied(passage, position):
            return None
        return passage, position, int(tokens[position])

    def observe(self, token: int, provenance: Provenance | None) -> None:
        """Update the state with one output token and where it was copied from (None: generated)."""
        if self.locked is not None:
            cont = self.continuation()
            if cont is not None and token == cont[2]:
                self.locked = (cont[0], cont[1] + 1)
            else:
                self.locked, self.broken = None, True
        elif not self.broken:
            self._extend_run(token, provenance)
        if bool(self.sentence_end[token]):
            # A lock whose run goes on across the sentence end stays: the next sentence continues
            # the same source verbatim, or the LM leaves it and finishes that sentence alone.
            self.broken, self._run = False, None

    def _extend_run(self, token: int, provenance: Provenance | None) -> None:
        if provenance is None:
            self._run = None
            return
        run = self._run
        if run is not None and provenance.passage == run[0] and provenance.position == run[1] + 1:
            self._run = (run[0], provenance.position, run[2] + int(self.word_start[token]))
        else:
            self._run = (provenance.passage, provenance.position, 1)
        if self._run[2] >= MIN_LOCK_WORDS:
            self.locked = (self._run[0], self._run[1] + 1)
            self._run = None

    def copy(self) -> SentenceLock:
        return SentenceLock(
            self.passage_tokens, self.word_start, self.sentence_end, self.copied, self.locked, self.broken, self._run
        )
