"""The generation loop of one sequence: span proposals from the token index, verification in one forward.

``NestDecoder.steps`` is a generator that yields two kinds of events: a ``Forward`` (the LM
forward it needs next; the caller sends back its ``StepOutput``) and a ``DecodeStep`` (tokens
appended to the output, with their provenance). It never calls the model, so one step model
can serve many decoders at once (``batching.py``); ``run`` drives one decoder alone. Text,
stop strings and citations are built from the steps by ``streaming.py``; the splice rule's
state lives in ``sentence_lock.py``; the math in ``mixture.py`` and ``speculative.py``.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .citations import Provenance
from .config import NestConfig
from .lm import LoadedLM
from .mixture import knn_distribution, lm_distribution, mix_on_support, relative_retrieval_confidence
from .sentence_lock import SentenceLock
from .speculative import accepted_length, best_neighbor, relaxed_accepts, residual_distribution, strict_accepts
from .step_model import Forward, SingleStepModel, StepModel, StepOutput
from .token_index import TokenIndex

# A sampling temperature below this draws the most likely token (vLLM's rule: log-probabilities
# divided by ~1e-38 or less overflow float32, and the draw would fail).
GREEDY_TEMPERATURE = 1e-5


@dataclass
class DecodeStep:
    """Tokens appended to the output in one step, each with its provenance (None: generated)."""

    tokens: list[int]
    provenance: list[Provenance | None]


@dataclass
class DecodeCounters:
    spans_proposed: int = 0
    accepted_spans: list[int] = field(default_factory=list)  # accepted length of each span with >= 1 token
    finish_reason: Literal["length", "eos"] = "length"


@dataclass
class _Mixture:
    """p_M and what produced it, for n positions."""

    p_mix: torch.Tensor  # (n, V)
    p_lm: torch.Tensor  # (n, V)
    p_knn: torch.Tensor | None  # (n, V)
    lam: torch.Tensor  # (n,)
    nb_idx: torch.Tensor | None  # (n, k) key indices, nearest first
    nb_found: torch.Tensor | None = None  # (n, k) False where the key was not searchable (infinite distance)

    def row(self, i: int) -> _Mixture:
        return _Mixture(
            self.p_mix[i : i + 1],
            self.p_lm[i : i + 1],
            None if self.p_knn is None else self.p_knn[i : i + 1],
            self.lam[i : i + 1],
            None if self.nb_idx is None else self.nb_idx[i : i + 1],
            None if self.nb_found is None else self.nb_found[i : i + 1],
        )


class _Rows:
    """Mixtures of consecutive draft positions, computed piece by piece; read as one."""

    def __init__(self) -> None:
        self.parts: list[_Mixture] = []
        self._length = 0

    def __len__(self) -> int:
        return self._length

    def append(self, part: _Mixture) -> None:
        self.parts.append(part)
        self._length += int(part.lam.shape[0])

    def lam(self) -> torch.Tensor:
        return torch.cat([p.lam for p in self.parts])

    def row(self, i: int) -> _Mixture:
        for part in self.parts:
            if i < part.lam.shape[0]:
                return part.row(i)
            i -= int(part.lam.shape[0])
        raise IndexError(i)


class NestDecoder:
    """Runs NEST decoding for one prompt over one token index (or none: plain LM)."""

    def __init__(self, lm: LoadedLM, config: NestConfig, index: TokenIndex | None) -> None:
        self.lm = lm
        self.cfg = config
        self.index = index if index is not None and len(index) and config.retrieval else None
        self.counters = DecodeCounters()
        self.eos = lm.eos_token_ids
        self.knn_temperature = config.knn_temperature or math.sqrt(lm.hidden_size)
        self.generator: torch.Generator | None = None
        if config.seed is not None:
            self.generator = torch.Generator(device="cpu").manual_seed(config.seed)
        self.length = 0  # positions of this sequence the step model holds (prompt and output)
        # Verify drafts in pieces of this many tokens (None: whole). Set by a batch, where one row's
        # long draft would make every row's step long; greedy output does not depend on it.
        self.verify_chunk: int | None = None
        # The first piece of a new span's draft, when drafts go in pieces: a new span that is rejected
        # is mostly rejected within its first few tokens (session 8: 15 of 19 partial accepts kept
        # 1-4 tokens), so a short first piece wastes less of everyone's step. None: ``verify_chunk``.
        self.first_verify_chunk: int | None = None
        self.last_token = -1  # the token the next one follows (set from the prompt in ``run``)
        self.after_boundary = False  # whether last_token ends a sentence or is special (a Python bool: no sync)
        # Keys after which a copy starts a sentence: the passage text's first token, or after . ! ? \n
        self.boundary_keys: torch.Tensor | None = None
        if self.index is not None and config.context_guard:
            boundary = lm.boundary_tokens.to(self.index.device)
            self.boundary_keys = self.index.key_starts_text | boundary[self.index.key_tokens]
        self._echo: tuple[int, int] | None = None  # source position right after the last copied token
        self.lock: SentenceLock | None = None
        if self.index is not None and config.sentence_lock:
            index = self.index
            self.lock = SentenceLock(
                lambda p: index.passages[p].token_ids,
                lm.word_start_tokens,
                lm.boundary_tokens,
                index.is_copied if config.mask_copied else SentenceLock.copied,
            )

    # Distributions -------------------------------------------------------------------------

    def _mixture(
        self,
        logits: torch.Tensor,
        hidden: torch.Tensor | None,
        only: torch.Tensor | None = None,
        forced: Sequence[int] | None = None,
    ) -> _Mixture:
        """p_M at each of the n positions; ``only`` restricts the token search to some keys.

        ``forced`` (n,): per row, the token a locked sentence must continue with (-1: none); such
        a row's p_kNN puts all its mass on that token (lambda still comes from the search).
        Without ``forced``, the lock's current state decides for a single row.
        """
        cfg = self.cfg
        p_lm = lm_distribution(logits, cfg.lm_temperature)
        n = p_lm.shape[0]
        if forced is None and self.lock is not None and n == 1:
            if self.lock.lm_only:
                return _Mixture(p_lm, p_lm, None, torch.ones(n, device=p_lm.device), None)
            cont = self.lock.continuation()
            forced = [cont[2] if cont is not None else -1]
        if self.index is None or hidden is None or self.index.all_masked or cfg.fixed_lambda == 1.0:
            return _Mixture(p_lm, p_lm, None, torch.ones(n, device=p_lm.device), None)
        dist, idx = self.index.search(hidden, cfg.num_neighbors, only)  # (n, k)
        usable = torch.isfinite(dist)
        if not bool(usable.any()):
            return _Mixture(p_lm, p_lm, None, torch.ones(n, device=p_lm.device), None)
        values = self.index.values[idx]
        scored = dist
        if cfg.passage_prior > 0:
            # weight_j ∝ exp(-d_j / T) * relevance^prior, folded into the distance the softmax sees.
            log_rel = torch.log(self.index.relevance[self.index.key_passage[idx]].clamp(min=1e-3))
            scored = dist - self.knn_temperature * cfg.passage_prior * log_rel
        p_knn = knn_distribution(scored, values, p_lm.shape[-1], self.knn_temperature).to(p_lm.device)
        support = values.long()  # where p_kNN may be non-zero
        rows = [i for i, t in enumerate(forced or ()) if t >= 0]
        if rows:
            locked = [int(forced[i]) for i in rows]  # type: ignore[index]
            p_knn[rows] = 0.0
            p_knn[rows, locked] = 1.0
            support = support.clone()
            support[rows] = torch.tensor(locked, dtype=torch.long, device=support.device)[:, None]
        if cfg.fixed_lambda is not None:
            lam = torch.full((n,), cfg.fixed_lambda, device=p_lm.device)
        else:
            lam = relative_retrieval_confidence(dist.masked_fill(~usable, float("inf")), cfg.alpha, cfg.tau).to(
                p_lm.device
            )
        return _Mixture(mix_on_support(p_lm, p_knn, lam, support.to(p_lm.device)), p_lm, p_knn, lam, idx, usable)

    def _sampling_distribution(self, p: torch.Tensor) -> torch.Tensor:
        """What a token is drawn from: p_M with temperature and top-p applied (sampling only)."""
        cfg = self.cfg
        if cfg.temperature < GREEDY_TEMPERATURE:  # as vLLM: so small a temperature is greedy (dividing overflows)
            return torch.zeros_like(p).scatter_(-1, p.argmax(-1, keepdim=True), 1.0)
        if cfg.temperature != 1.0:
            p = torch.softmax(torch.log(p.clamp(min=1e-30)) / cfg.temperature, dim=-1)
        if cfg.top_p < 1.0:
            sorted_p, order = torch.sort(p, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < cfg.top_p
            p = torch.zeros_like(p).scatter_(-1, order, sorted_p * keep)
            p = p / p.sum()
        return p

    def _pick(self, p_mix: torch.Tensor, rejected: int | None = None) -> int:
        """Next token from p_M (V,): argmax when greedy, else a draw (from the residual after a strict rejection)."""
        if not self.cfg.do_sample:
            return int(torch.argmax(p_mix).item())
        q = self._sampling_distribution(p_mix)
        if rejected is not None and self.cfg.acceptance == "strict":
            q = residual_distribution(q, rejected)
        return int(torch.multinomial(q.cpu(), 1, generator=self.generator).item())

    def _accepts(self, p_mix: torch.Tensor, draft: torch.Tensor) -> torch.Tensor:
        """Per-position acceptance of draft tokens (n,) under p_M (n, V)."""
        draft = draft.to(p_mix.device)
        if self.cfg.acceptance == "relaxed":
            return relaxed_accepts(p_mix, draft, self.cfg.gamma)
        q = self._sampling_distribution(p_mix) if self.cfg.do_sample else p_mix
        return strict_accepts(q, draft, sample=self.cfg.do_sample, generator=self.generator)

    def _provenance_of(self, m: _Mixture, token: int) -> Provenance | None:
        """Attribute a single emitted token to the nearest neighbor with that value,
        when retrieval contributed most of its probability."""
        if self.index is None or m.nb_idx is None or m.p_knn is None:
            return None
        lam = float(m.lam[0])
        if (1 - lam) * float(m.p_knn[0, token]) < lam * float(m.p_lm[0, token]):
            return None
        cont = self.lock.continuation() if self.lock is not None else None
        if cont is not None:  # a locked sentence: the k-NN mass is all on the run's next token
            return Provenance(cont[0], cont[1], 1 - lam) if token == cont[2] else None
        keys = m.nb_idx[0][self._searchable(m)]
        hits = (self.index.values[keys] == token).nonzero()
        if not hits.numel():
            return None
        key = int(keys[int(hits[0])])
        return Provenance(int(self.index.key_passage[key]), int(self.index.key_position[key]) + 1, 1 - lam)

    # The loop --------------------------------------------------------------------------------

    def run(
        self, prompt_ids: Sequence[int], max_new_tokens: int, model: StepModel | None = None
    ) -> Iterator[DecodeStep]:
        """Decode up to ``max_new_tokens`` tokens after the prompt alone, yielding each step."""
        model = model or SingleStepModel(self.lm, need_hidden=self.index is not None)
        events = self.steps(prompt_ids, max_new_tokens)
        try:
            event = next(events)
            while True:
                if isinstance(event, Forward):
                    event = events.send(model.step({0: event})[0])
                else:
                    yield event
                    event = next(events)
        except StopIteration:
            return
        finally:
            model.release(0)

    def steps(self, prompt_ids: Sequence[int], max_new_tokens: int) -> Generator[DecodeStep | Forward, Any, None]:
        """Decode up to ``max_new_tokens`` tokens after the prompt.

        Yields a ``Forward`` whenever it needs the LM (send its ``StepOutput`` back) and a
        ``DecodeStep`` for tokens appended to the output (send nothing).
        """
        self.length = 0
        out = yield from self._forward(prompt_ids, outputs=1)  # only the last position is read
        self._follow(prompt_ids[-1])
        m = self._mixture(out.logits[-1:], None if out.hidden is None else out.hidden[-1:], self._answer_start_keys())
        produced = 0
        continuation: tuple[int, int] | None = None  # (passage, next token position) after a full accept
        while produced < max_new_tokens:
            new_span = continuation is None
            source = continuation or self._propose(m)
            continuation, rejected = None, None
            draft = self._draft_tokens(*source, max_new_tokens - produced) if source else None
            if source is not None and draft is not None and draft.numel():
                self.counters.spans_proposed += 1
                if bool(self._accepts(m.p_mix, draft[:1])[0]):
                    step, m, continuation = yield from self._verify(m, source, draft, new_span)
                    yield step
                    produced += len(step.tokens)
                    if self._ended(step):
                        return
                    continue
                rejected = int(draft[0])
            token = self._pick(m.p_mix[0], rejected)
            step = DecodeStep([token], [self._provenance_of(m, token)])
            self._record(step.tokens, step.provenance)
            yield step
            produced += 1
            if self._ended(step) or produced >= max_new_tokens:
                return
            out = yield from self._forward([token])
            m = self._mixture(out.logits, out.hidden)

    def _forward(self, tokens: Sequence[int], outputs: int | None = None) -> Generator[Forward, StepOutput, StepOutput]:
        """Ask for the LM on ``tokens`` after the first ``self.length`` positions of the sequence
        (outputs for the last ``outputs`` of them; None: all)."""
        out = yield Forward(list(tokens), self.length, outputs)
        self.length += len(tokens)
        return out

    def _answer_start_keys(self) -> torch.Tensor | None:
        """With the context guard, an answer that starts at a sentence boundary (a chat turn)
        takes its k-NN mass only from keys that start sentences, so it cannot open mid-sentence."""
        return self.boundary_keys if self.after_boundary else None

    def _ended(self, step: DecodeStep) -> bool:
        if step.tokens and step.tokens[-1] in self.eos:
            self.counters.finish_reason = "eos"
            return True
        return False

    def _searchable(self, m: _Mixture) -> torch.Tensor:
        """Which of the first row's neighbors may still be used: found by the search, not masked since."""
        if self.index is None or m.nb_idx is None or m.nb_found is None:
            raise RuntimeError("_searchable needs a k-NN search result")  # callers check first
        keys = m.nb_idx[0]
        return m.nb_found[0] & ~self.index.masked[keys]

    def _propose(self, m: _Mixture) -> tuple[int, int] | None:
        """Dynamic span selection: when lambda < beta, the span after the best neighbor (in a
        locked sentence: the locked run's continuation, the only neighbor left)."""
        if self.index is None or m.nb_idx is None or float(m.lam[0]) >= self.cfg.beta:
            return None
        if self.lock is not None and (self.lock.lm_only or self.lock.locked is not None):
            cont = self.lock.continuation()
            return (cont[0], cont[1]) if cont is not None and not self.lock.lm_only else None
        # The search may predate the masking of the span just copied: skip keys masked since.
        keys = m.nb_idx[0]
        allowed = self._searchable(m)
        if self.boundary_keys is not None:
            # Left-context agreement: the key's own token is the last output token, or both end a sentence.
            agree = self.index.key_tokens[keys] == self.last_token
            if self.after_boundary:
                agree |= self.boundary_keys[keys]
            allowed &= agree
        keys = keys[allowed]
        if not keys.numel():
            return None
        key = int(keys[best_neighbor(m.p_mix[0], self.index.values[keys])])
        return int(self.index.key_passage[key]), int(self.index.key_position[key]) + 1

    def _draft_tokens(self, passage: int, start: int, budget: int) -> torch.Tensor:
        if self.index is None:
            return torch.zeros(0, dtype=torch.long)
        tokens = self.index.passages[passage].token_ids
        draft = tokens[start : start + min(self.cfg.span_window, budget)]
        for i, t in enumerate(draft.tolist()):
            # Stop before EOS and before text already copied (a continuation must not repeat it).
            if t in self.eos or (self.cfg.mask_copied and self.index.is_copied(passage, start + i)):
                return draft[:i]
        return draft

    def _verify(
        self, m: _Mixture, source: tuple[int, int], draft: torch.Tensor, new_span: bool = True
    ) -> Generator[Forward, StepOutput, tuple[DecodeStep, _Mixture, tuple[int, int] | None]]:
        """Score a span whose first token was accepted in one forward; keep the accepted prefix.

        Returns the step, the mixture at the new last position, and where a fully accepted
        span continues in its passage (None otherwise).
        """
        passage, start = source
        n = int(draft.numel())
        base = self.length
        forced = self._forced_after(source, draft)
        # Row i of ``after``: the mixture after draft token i. The draft goes to the LM in pieces of
        # ``verify_chunk`` tokens (all at once when None); a piece with a rejection ends it, so the
        # rest is never computed. The mixtures see the same masks either way (nothing is recorded
        # until the end), so the accepted prefix is the same as in one piece.
        chunk = first = n
        if self.verify_chunk is not None and not self.cfg.do_sample:
            chunk = first = self.verify_chunk
            if new_span and self.first_verify_chunk is not None:  # ``new_span``: not a continuation
                first = min(chunk, self.first_verify_chunk)
        after = _Rows()
        accepted = 1
        while len(after) < n and accepted == len(after) + 1:
            piece = draft[len(after) : len(after) + (first if not len(after) else chunk)]
            out = yield from self._forward(piece.tolist())
            part = self._mixture(
                out.logits, out.hidden, forced=None if forced is None else forced[len(after) : len(after) + len(piece)]
            )
            checked = draft[len(after) + 1 : len(after) + 1 + len(piece)]  # the tokens these rows predict
            accepted += accepted_length(self._accepts(part.p_mix[: len(checked)], checked.to(part.p_mix.device)))
            after.append(part)
        lams = torch.cat([m.lam, after.lam()[: accepted - 1]]).tolist()
        prov: list[Provenance | None] = [Provenance(passage, start + i, 1 - lams[i]) for i in range(accepted)]
        tokens = draft[:accepted].tolist()
        self.counters.accepted_spans.append(accepted)
        self._record(tokens, prov)
        if accepted == n:
            more = start + n < self._passage_length(passage)
            return DecodeStep(tokens, prov), after.row(n - 1), (passage, start + n) if more else None
        self.length = base + accepted  # the rejected suffix is dropped by the next forward
        at = after.row(accepted - 1)
        token = self._pick(at.p_mix[0], rejected=int(draft[accepted]))
        token_prov = self._provenance_of(at, token)
        self._record([token], [token_prov])
        step = DecodeStep([*tokens, token], [*prov, token_prov])
        if not self._ended(step):
            out = yield from self._forward([token])
            at = self._mixture(out.logits, out.hidden)
        return step, at, None

    def _passage_length(self, passage: int) -> int:
        """Tokens of a passage of the token index."""
        return 0 if self.index is None else int(self.index.passages[passage].token_ids.numel())

    def _forced_after(self, source: tuple[int, int], draft: torch.Tensor) -> list[int] | None:
        """Per draft position, the token a locked sentence must continue with after it (-1: not locked)."""
        if self.lock is None:
            return None
        sim = self.lock.copy()
        forced = []
        for i, t in enumerate(draft.tolist()):
            sim.observe(t, Provenance(source[0], source[1] + i, 0.0))
            cont = sim.continuation()
            forced.append(cont[2] if cont is not None else -1)
        return forced

    def _follow(self, token: int) -> None:
        """Make ``token`` the left context of the next step."""
        self.last_token = token
        if self.boundary_keys is not None:
            self.after_boundary = bool(self.lm.boundary_tokens[token])  # a CPU lookup

    def _record(self, tokens: Sequence[int], provenance: Sequence[Provenance | None]) -> None:
        """Note tokens as output: the last one is the new left context; the splice rule sees each;
        copied source text is masked, and so is source text the LM reproduced right after a
        copy (it is in the output as surely as a copy, and must not be copied again)."""
        if tokens:
            self._follow(tokens[-1])
        for t, p in zip(tokens, provenance, strict=True):
            if self.lock is not None:
                self.lock.observe(t, p)
            source = (p.passage, p.position) if p is not None else self._echo_of(t)
            self._echo = None if source is None else (source[0], source[1] + 1)
            if source is not None and self.index is not None and self.cfg.mask_copied:
                self.index.mask_copied(source[0], [source[1]])

    def _echo_of(self, token: int) -> tuple[int, int] | None:
        """The source position a generated token reproduces: the one right after the last copied
        or reproduced token, when it holds the same token."""
        if self._echo is None or self.index is None:
            return None
        passage, position = self._echo
        tokens = self.index.passages[passage].token_ids
        return self._echo if position < tokens.numel() and int(tokens[position]) == token else None
