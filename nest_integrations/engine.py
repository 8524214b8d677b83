"""NestEngine: the public entry point tying model, first stage, token index and decoding together.

``generate`` returns a NestResult; ``stream`` yields NestChunks (text deltas, citations as
their spans complete, and the final result). The math and the loop live elsewhere.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from .async_utils import iterate_in_thread
from .citations import Citation, NestResult, NestStats, Provenance, build_citations, clip_citations
from .config import NestConfig, default_config
from .decoding import NestDecoder
from .errors import PromptTooLongError
from .lm import DEFAULT_MODEL, LoadedLM, Message, build_prompt_ids, last_user_text, load_lm, normalize_messages
from .passages.retriever import PassageRetriever, StaticRetriever
from .passages.types import Passage, ScoredPassage
from .relevance import passage_relevance, source_coverage
from .token_index import KeyStore, PassageEncoder, TokenIndex


class NestChunk(BaseModel):
    """One streamed piece: new text, citations completed by it, and the result on the last chunk."""

    text: str = ""
    token_ids: list[int] = Field(default_factory=list)
    copied: bool = False
    citations: list[Citation] = Field(default_factory=list)
    result: NestResult | None = None


class NestEngine:
    """Grounded, cited generation with Nearest Neighbor Speculative Decoding.

    Args:
        model: ``"default"`` (embedded SmolLM2-135M-Instruct), an HF model id or local path,
            or an already loaded :class:`LoadedLM`.
        retriever: the first stage: a :class:`PassageRetriever`, a list of passages
            (always used as they are), or None (no retrieval unless passages are given per call).
        config: NEST hyperparameters; per-call overrides are keyword arguments of ``generate``.
            None: the calibrated config shipped for the model if there is one (the embedded
            model has one), else the paper's defaults (see :func:`default_config`).
        key_store: a directory of precomputed passage keys (see ``KeyStore.build``).

    Example:
        >>> engine = NestEngine(retriever=default_retriever())  # doctest: +SKIP
        >>> engine.generate("Tell me about Robert Boulter.").citations[0].title  # doctest: +SKIP
        'Robert Boulter'
    """

    def __init__(
        self,
        model: str | LoadedLM = DEFAULT_MODEL,
        retriever: PassageRetriever | Sequence[Passage] | None = None,
        config: NestConfig | None = None,
        *,
        device: str | None = None,
        dtype: str | None = None,
        key_store: str | Path | None = None,
        max_cache_bytes: int = 1 << 30,
    ) -> None:
        self.lm = model if isinstance(model, LoadedLM) else load_lm(model, device=device, dtype=dtype)
        if retriever is not None and not isinstance(retriever, PassageRetriever):
            retriever = StaticRetriever(list(retriever))
        self.retriever = retriever
        self.config = config or default_config(self.lm.name)
        store = KeyStore.open(key_store, model=self.lm.name) if key_store is not None else None
        self.encoder = PassageEncoder(self.lm, max_cache_bytes=max_cache_bytes, key_store=store)
        self._lock = threading.Lock()  # one generation at a time: the model is shared

    # Public API ------------------------------------------------------------------------------

    def generate(
        self,
        prompt: str | Sequence[Message],
        *,
        passages: Sequence[Passage | ScoredPassage] | None = None,
        query: str | None = None,
        chat: bool | None = None,
        **overrides: Any,
    ) -> NestResult:
        """Answer ``prompt`` (a string or chat messages). See :meth:`stream` for the arguments."""
        result: NestResult | None = None
        for chunk in self.stream(prompt, passages=passages, query=query, chat=chat, **overrides):
            result = chunk.result or result
        assert result is not None
        return result

    def stream(
        self,
        prompt: str | Sequence[Message],
        *,
        passages: Sequence[Passage | ScoredPassage] | None = None,
        query: str | None = None,
        chat: bool | None = None,
        **overrides: Any,
    ) -> Iterator[NestChunk]:
        """Stream the answer to ``prompt``.

        Args:
            prompt: a user prompt, or chat messages (``{"role", "content"}`` dicts) formatted
                with the tokenizer's chat template.
            passages: use these passages instead of calling the first stage.
            query: what the first stage searches for (default: the last user message).
            chat: False feeds the text to the LM as it is (text completion) instead of
                through the chat template; None uses the template when the tokenizer has one.
            **overrides: any :class:`NestConfig` field for this call only (e.g. ``max_new_tokens``).
        """
        cfg = NestConfig.model_validate({**self.config.model_dump(), **overrides}) if overrides else self.config
        messages = normalize_messages(prompt)
        prompt_ids = self.prompt_ids(messages, chat=chat)
        max_new = min(
            cfg.max_new_tokens, self.lm.context_length - len(prompt_ids)
        )  # documented: generation stops at the context limit
        with self._lock:
            yield from self._stream_locked(messages, prompt_ids, max_new, cfg, passages, query)

    def prompt_ids(self, prompt: str | Sequence[Message], *, chat: bool | None = None) -> list[int]:
        """The prompt's token ids (chat template applied); raises if it does not fit the context."""
        ids = build_prompt_ids(self.lm.tokenizer, normalize_messages(prompt), chat=chat)
        if len(ids) >= self.lm.context_length:
            raise PromptTooLongError(
                f"The prompt is {len(ids)} tokens but {self.lm.name} has a context of "
                f"{self.lm.context_length} tokens; shorten it."
            )
        return ids

    async def astream(
        self,
        prompt: str | Sequence[Message],
        *,
        passages: Sequence[Passage | ScoredPassage] | None = None,
        query: str | None = None,
        **overrides: Any,
    ) -> AsyncIterator[NestChunk]:
        """:meth:`stream` for asyncio: decoding runs in a worker thread, never on the event loop."""
        async for chunk in iterate_in_thread(lambda: self.stream(prompt, passages=passages, query=query, **overrides)):
            yield chunk

    async def agenerate(
        self,
        prompt: str | Sequence[Message],
        *,
        passages: Sequence[Passage | ScoredPassage] | None = None,
        query: str | None = None,
        **overrides: Any,
    ) -> NestResult:
        """:meth:`generate` for asyncio, in a worker thread."""
        call = partial(self.generate, prompt, passages=passages, query=query, **overrides)
        return await asyncio.get_running_loop().run_in_executor(None, call)

    def retrieve(self, query: str, k: int | None = None) -> list[ScoredPassage]:
        """Run the first stage alone."""
        if self.retriever is None:
            return []
        return list(self.retriever.retrieve(query, k or self.config.num_passages))

    # Internals ---------------------------------------------------------------------------------

    def _stream_locked(
        self,
        messages: list[Message],
        prompt_ids: list[int],
        max_new: int,
        cfg: NestConfig,
        given: Sequence[Passage | ScoredPassage] | None,
        query: str | None,
    ) -> Iterator[NestChunk]:
        stats = NestStats(prompt_tokens=len(prompt_ids))
        query = query or last_user_text(messages)
        t0 = time.perf_counter()
        scored: list[ScoredPassage] = []
        if cfg.retrieval:
            if given is not None:
                scored = [p if isinstance(p, ScoredPassage) else ScoredPassage(passage=p) for p in given]
            else:
                scored = self.retrieve(query, cfg.num_passages)
        t1 = time.perf_counter()
        misses = self.encoder.misses
        # Sources under the relevance threshold are never searched, so they are not encoded either.
        searched: list[ScoredPassage] = []
        index = None
        if scored:
            stats.source_coverage = source_coverage(query, [s.passage for s in scored])
        # No source names what the query asks about: copying from any of them would cite the wrong one.
        gated = stats.source_coverage is not None and stats.source_coverage < cfg.min_source_coverage
        if scored and not gated:
            relevance = passage_relevance(
                query, [s.passage for s in scored], [s.score for s in scored], cfg.passage_relevance
            )
            relevant = (relevance >= cfg.min_passage_relevance).nonzero().flatten().tolist()
            searched = [scored[i] for i in relevant]
        encoded = self.encoder.encode([s.passage for s in searched]) if searched else []
        if encoded:
            index = TokenIndex(encoded, self.lm.device, relevance[relevant])
        t2 = time.perf_counter()
        stats.first_stage_seconds, stats.token_index_seconds = t1 - t0, t2 - t1
        stats.passages, stats.passages_encoded = len(scored), self.encoder.misses - misses
        stats.passages_searched = len(searched)

        decoder = NestDecoder(self.lm, cfg, index)
        tokens: list[int] = []
        provenance: list[Provenance | None] = []
        starts: list[int] = []
        ends: list[int] = []
        emitted, cited = 0, 0
        text, stop_at = "", None
        hold = max((len(s) for s in cfg.stop), default=1) - 1
        tok = self.lm.tokenizer
        for step in decoder.run(prompt_ids, max_new):
            for t, p in zip(step.tokens, step.provenance, strict=True):
                if t in decoder.eos:
                    break
                tokens.append(t)
                provenance.append(p)
                starts.append(len(text))
                text = tok.decode(tokens, skip_special_tokens=True)
                ends.append(len(text))
            stop_at = _find_stop(text, cfg.stop, max(0, emitted - hold))
            if stop_at is not None:
                break
            # Hold back a possible partial stop string and an incomplete UTF-8 character.
            safe = len(text) - hold if cfg.stop else len(text)
            while safe > emitted and text[safe - 1] == "\ufffd":
                safe -= 1
            if safe > emitted:
                citations = build_citations(text, starts, ends, provenance, searched, encoded)
                # A citation is final once later text exists after it (its run cannot grow).
                limit = min(safe, _open_run_start(starts, provenance, len(text)))
                done = [c for c in citations if c.output_end <= limit]
                new = done[cited:]
                cited += len(new)
                yield NestChunk(
                    text=text[emitted:safe],
                    token_ids=step.tokens,
                    copied=any(p is not None for p in step.provenance),
                    citations=new,
                )
                emitted = safe
        decoder_time = time.perf_counter() - t2
        finish = "stop" if stop_at is not None else decoder.counters.finish_reason
        if stop_at is not None:
            text = text[:stop_at]
            keep = sum(1 for s in starts if s < stop_at)
            tokens, provenance, starts, ends = tokens[:keep], provenance[:keep], starts[:keep], ends[:keep]
        citations = clip_citations(build_citations(text, starts, ends, provenance, searched, encoded), len(text))
        result = NestResult(
            text=text,
            citations=citations,
            stats=_finish_stats(stats, tokens, provenance, decoder.counters, decoder_time),
            finish_reason=finish,
            passages=scored,
        )
        yield NestChunk(text=text[emitted:], citations=citations[cited:], result=result)


def _open_run_start(starts: Sequence[int], provenance: Sequence[Provenance | None], length: int) -> int:
    """Output char where the copied run that the next step could still extend begins."""
    if not provenance or provenance[-1] is None:
        return length
    k = len(provenance) - 1
    while k > 0:
        prev, cur = provenance[k - 1], provenance[k]
        if prev is None or cur is None or prev.passage != cur.passage or prev.position + 1 != cur.position:
            break
        k -= 1
    return starts[k]


def _find_stop(text: str, stops: Sequence[str], start: int) -> int | None:
    found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(found) if found else None


def _finish_stats(
    stats: NestStats, tokens: list[int], provenance: list[Provenance | None], counters: Any, seconds: float
) -> NestStats:
    stats.tokens_generated = len(tokens)
    stats.tokens_copied = sum(p is not None for p in provenance)
    stats.attribution_ratio = stats.tokens_copied / len(tokens) if tokens else 0.0
    stats.spans_proposed = counters.spans_proposed
    stats.spans_accepted = len(counters.accepted_spans)
    spans = counters.accepted_spans
    stats.mean_accepted_span = sum(spans) / len(spans) if spans else 0.0
    stats.decoding_seconds = seconds
    stats.tokens_per_second = len(tokens) / seconds if seconds > 0 else 0.0
    return stats


async def ashared_engine(
    model: str = DEFAULT_MODEL, *, device: str | None = None, dtype: str | None = None
) -> NestEngine:
    """:func:`shared_engine` for asyncio: the first load (seconds) happens off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(
        None, partial(shared_engine, model, device=device, dtype=dtype)
    )


_SHARED_ENGINES: dict[tuple[str, str | None, str | None], NestEngine] = {}
_SHARED_LOCK = threading.Lock()


def shared_engine(model: str = DEFAULT_MODEL, *, device: str | None = None, dtype: str | None = None) -> NestEngine:
    """One engine per (model, device, dtype) per process, loaded on first use.

    For integrations that create many lightweight objects (chat models, tools): the weights
    and the passage-key cache are loaded once and shared; generations are serialised by the
    engine's lock. Pass passages per call (``generate(..., passages=...)``).
    """
    key = (model, device, dtype)
    with _SHARED_LOCK:
        engine = _SHARED_ENGINES.get(key)
        if engine is None:
            engine = _SHARED_ENGINES[key] = NestEngine(model, device=device, dtype=dtype)
        return engine
