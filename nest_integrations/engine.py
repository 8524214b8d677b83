"""NestEngine: the public entry point wiring model, first stage, token index and decoding.

One request: retrieve (the first stage), select sources (``sources.py``), build the token
index (``token_index.py``), decode (``decoding.py``), assemble text and citations
(``streaming.py``). ``generate`` returns a NestResult; ``stream`` yields NestChunks.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import decode_thread
from .batching import BatchLoop, BatchScheduler, ChunkStream, DecodeJob
from .citations import NestResult, NestStats
from .config import NestConfig, default_config, with_overrides
from .decoding import NestDecoder
from .errors import ConfigError, InvalidPassagesError, InvalidPromptError, PromptTooLongError
from .fork_safe import ForkSafeLock
from .lm import (
    DEFAULT_MODEL,
    LoadedLM,
    Message,
    build_prompt_ids,
    completion_text,
    last_user_text,
    load_lm,
    normalize_messages,
)
from .passages.retriever import PassageRetriever, StaticRetriever
from .passages.types import Passage, ScoredPassage
from .sources import SourceSelection, select_sources
from .streaming import AnswerAssembler, NestChunk
from .token_index import KeyStore, PassageEncoder, TokenIndex

if TYPE_CHECKING:
    from .plain import PlainOutput

__all__ = ["NestChunk", "NestEngine", "PromptTooLongError", "ashared_engine", "shared_engine"]


class NestEngine:
    """Grounded, cited generation with Nearest Neighbor Speculative Decoding.

    Args:
        model: ``"default"`` (embedded SmolLM2-135M-Instruct), an HF model id or local path,
            or an already loaded :class:`LoadedLM`.
        retriever: the first stage: a :class:`PassageRetriever`, a list of passages
            (always used as they are), or None (no retrieval unless passages are given per call).
        config: NEST hyperparameters, a ``NestConfig`` or a dict of its fields (``ConfigError``
            when invalid, before the model loads); per-call overrides are keyword arguments of
            ``generate``. None: the calibrated config shipped for the model if there is one (the
            embedded model has one), else the paper's defaults (see :func:`default_config`).
        key_store: a directory of precomputed passage keys (see ``KeyStore.build``), or an open ``KeyStore``.
        max_batch: how many requests decode together. 1 (default): one at a time, in the calling
            thread. Above 1: ``stream``/``generate`` calls from many threads (a server, an agent
            framework's thread pool) join one running batch at step boundaries (continuous
            batching, ``batching.py``); each request's output is what it would be alone
            (greedy: token for token, up to floating-point summation order).

    Example:
        >>> engine = NestEngine(retriever=default_retriever())  # doctest: +SKIP
        >>> engine.generate("Tell me about Robert Boulter.").citations[0].title  # doctest: +SKIP
        'Robert Boulter'
    """

    def __init__(
        self,
        model: str | LoadedLM = DEFAULT_MODEL,
        retriever: PassageRetriever | Sequence[Passage] | None = None,
        config: NestConfig | Mapping[str, Any] | None = None,
        *,
        device: str | None = None,
        dtype: str | None = None,
        key_store: str | Path | KeyStore | None = None,
        max_cache_bytes: int = 1 << 30,
        max_batch: int = 1,
    ) -> None:
        if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
            raise ConfigError(f"max_batch must be an integer >= 1, got {max_batch!r}")
        # Arguments are checked before the model loads (seconds).
        if isinstance(retriever, (str, bytes)):  # iterable, but not a list of passages
            raise ConfigError(
                f"retriever must be a PassageRetriever or a list of passages, got a {type(retriever).__name__}; "
                "for an index directory use HybridRetriever.load(path)"
            )
        if isinstance(config, Mapping):
            config = NestConfig(**config)  # ConfigError naming the field when a value is invalid
        elif config is not None and not isinstance(config, NestConfig):
            raise ConfigError(f"config must be a NestConfig (or a dict of its fields), got a {type(config).__name__}")
        self.lm = model if isinstance(model, LoadedLM) else load_lm(model, device=device, dtype=dtype)
        if retriever is not None and not isinstance(retriever, PassageRetriever):
            retriever = StaticRetriever(list(retriever))
        self.retriever = retriever
        self.config = config if config is not None else default_config(self.lm.name)
        store = KeyStore.for_model(key_store, self.lm.name) if key_store is not None else None
        self.encoder = PassageEncoder(self.lm, max_cache_bytes=max_cache_bytes, key_store=store)
        self.max_batch = max_batch
        # Every request decodes on the process's decode thread (see decode_thread.py), batched or not.
        self._scheduler = BatchScheduler(self.lm, max_batch, ForkSafeLock(reentrant=True))

    @property
    def _lock(self) -> ForkSafeLock:
        """One user of the model at a time (a batch step, an offline batch, a baseline); re-entrant."""
        return self._scheduler.lock

    # Public API ------------------------------------------------------------------------------

    def generate(
        self,
        prompt: str | Sequence[Message],
        *,
        passages: Sequence[Passage | ScoredPassage] | None = None,
        query: str | None = None,
        chat: bool | None = None,
        prompt_ids: Sequence[int] | None = None,
        **overrides: Any,
    ) -> NestResult:
        """Answer ``prompt`` (a string or chat messages). See :meth:`stream` for the arguments."""
        # Decoded as :meth:`stream` does, but no chunk is built until the one with the result.
        pending = self._submission(prompt, passages, query, chat, prompt_ids, overrides, stream=False)
        return _last_result(self._decode_when_read(pending))

    def stream(
        self,
        prompt: str | Sequence[Message],
        *,
        passages: Sequence[Passage | ScoredPassage] | None = None,
        query: str | None = None,
        chat: bool | None = None,
        prompt_ids: Sequence[int] | None = None,
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
            prompt_ids: the prompt's token ids when the caller already has them (from
                :meth:`prompt_ids`, e.g. after validating the prompt's length), so it is not
                tokenised twice; ``prompt`` still gives the query.
            **overrides: any :class:`NestConfig` field for this call only (e.g. ``max_new_tokens``).

        Decoding runs on the process's decode thread (:mod:`~nest_integrations.decode_thread`),
        whatever thread calls; without batching (``max_batch=1``) requests decode one at a time
        in arrival order. A stream decodes ahead of its reader (its chunks wait for it); closing
        it (``close()``, or leaving a ``for`` loop over it and dropping it) cancels the request.
        """
        pending = self._submission(prompt, passages, query, chat, prompt_ids, overrides)  # bad input raises here
        return self._decode_when_read(pending)

    def _decode_when_read(self, pending: _Pending) -> Iterator[NestChunk]:
        """Decoding starts at the first ``next`` (a stream never read costs nothing). The first
        stage runs in this thread (a slow one delays this request alone), the rest on the decode thread."""
        if decode_thread.decode_thread().on_thread():
            # Called from work already on the decode thread (``decode_thread.call``): queued, it would
            # wait for its own thread. Decoded here and now, alone.
            with self._lock:
                yield from _decode_alone(pending.prepared()())
            return
        yield from self._scheduler.submit(pending.prepared())

    def generate_batch(
        self,
        prompts: Sequence[str | Sequence[Message]],
        *,
        passages: Sequence[Sequence[Passage | ScoredPassage] | None] | None = None,
        queries: Sequence[str | None] | None = None,
        chat: bool | None = None,
        batch_size: int | None = None,
        **overrides: Any,
    ) -> list[NestResult]:
        """Answer many prompts, decoding them together (one LM forward per step for all).

        Args:
            prompts: B prompts (strings or chat messages), as for :meth:`stream`.
            passages: B passage lists (or None entries: call the first stage), or None.
            queries: B first-stage queries (None entries: the last user message), or None.
            chat: as for :meth:`stream`, for every prompt.
            batch_size: how many of these prompts decode at once (default: the engine's
                ``max_batch`` if above 1, where they share its batch with other callers' requests,
                else 8); the others join as rows finish. On a batching engine a smaller
                ``batch_size`` submits the next prompt as each earlier one, in order, ends.
            **overrides: :class:`NestConfig` fields for every prompt of this call.

        Returns:
            B results, in prompt order; greedy results equal ``generate``'s for each prompt.

        Raises:
            ConfigError, InvalidPromptError, PromptTooLongError: before anything is decoded.
            InvalidPassagesError, InvalidPromptError: ``passages`` or ``queries`` not of length B
                (``ValueError`` subclasses).
            Any error of one request's decoding, after the others have finished.
        """
        if isinstance(prompts, str):
            raise InvalidPromptError("generate_batch takes a list of prompts; for one prompt use generate().")
        prompts = list(prompts)
        n = len(prompts)
        for name, given in (("passages", passages), ("queries", queries)):
            if given is None:
                continue
            error = InvalidPassagesError if name == "passages" else InvalidPromptError
            if isinstance(given, (str, bytes)) or not isinstance(given, Sequence):
                raise error(f"{name} must be a list with one entry per prompt, got a {type(given).__name__}")
            if len(given) != n:
                raise error(f"{name} has {len(given)} entries for {n} prompts (one per prompt: a list of lists)")
        size = batch_size if batch_size is not None else (self.max_batch if self.max_batch > 1 else 8)
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {size!r}")
        pendings = [
            self._submission(
                prompt,
                None if passages is None else passages[i],
                None if queries is None else queries[i],
                chat,
                None,
                overrides,
                stream=False,
            )
            for i, prompt in enumerate(prompts)
        ]
        jobs = [pending.prepared_or_error() for pending in pendings]  # the first stage, in this thread
        if self.max_batch > 1 and not decode_thread.decode_thread().on_thread():
            # All at once (the scheduler admits up to max_batch), or batch_size of them at a time.
            window = n if batch_size is None else size
            streams: list[ChunkStream] = []
            results: list[NestResult] = []
            failure: Exception | None = None
            try:
                for i in range(n):  # every request ends before one's error is raised, as below
                    while len(streams) < min(n, i + window):
                        streams.append(self._scheduler.submit(jobs[len(streams)]))
                    try:
                        results.append(_last_result(streams[i]))
                    except Exception as e:
                        failure = failure or e
            finally:  # an interrupted caller (KeyboardInterrupt, a timeout) leaves nothing decoding
                for chunks in streams:
                    chunks.close()
            if failure is not None:
                raise failure
            return results
        return decode_thread.call(partial(self._decode_together, jobs, size))

    async def agenerate_batch(
        self,
        prompts: Sequence[str | Sequence[Message]],
        *,
        passages: Sequence[Sequence[Passage | ScoredPassage] | None] | None = None,
        queries: Sequence[str | None] | None = None,
        chat: bool | None = None,
        batch_size: int | None = None,
        **overrides: Any,
    ) -> list[NestResult]:
        """:meth:`generate_batch` for asyncio, in a worker thread."""
        call = partial(
            self.generate_batch,
            prompts,
            passages=passages,
            queries=queries,
            chat=chat,
            batch_size=batch_size,
            **overrides,
        )
        if decode_thread.decode_thread().on_thread():  # an event loop run on the decode thread itself
            return call()
        return await asyncio.get_running_loop().run_in_executor(None, call)

    def _decode_together(self, jobs: list[Callable[[], DecodeJob | NestChunk]], size: int) -> list[NestResult]:
        """Decode prepared requests ``size`` at a time (on the decode thread); rows are refilled as they finish."""
        results: list[NestResult | BaseException | None] = [None] * len(jobs)

        def collect(i: int) -> Callable[[NestChunk | BaseException], None]:
            def emit(item: NestChunk | BaseException) -> None:
                if isinstance(item, BaseException):
                    results[i] = item
                elif item.result is not None:
                    results[i] = item.result

            return emit

        with self._lock:
            loop = BatchLoop(self.lm)
            waiting = list(enumerate(jobs))[::-1]  # popped in prompt order
            while True:
                while waiting and len(loop) < size:
                    i, prepare = waiting.pop()
                    try:
                        job = prepare()
                    except Exception as e:
                        results[i] = e
                        continue
                    if isinstance(job, NestChunk):
                        results[i] = job.result
                    else:
                        loop.add(job, collect(i))
                if not loop.rows:
                    break
                loop.step()
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return [r for r in results if isinstance(r, NestResult)]

    def _submission(
        self,
        prompt: str | Sequence[Message],
        passages: Sequence[Passage | ScoredPassage] | None,
        query: str | None,
        chat: bool | None,
        prompt_ids: Sequence[int] | None,
        overrides: dict[str, Any],
        *,
        stream: bool = True,
    ) -> _Pending:
        """Validate a request now (errors raise in the caller) and return what prepares its job
        (``stream=False``: its chunks before the last are not built, for callers of the result alone)."""
        cfg = self.call_config(**overrides)
        messages = normalize_messages(prompt)
        ids = self._fits(list(prompt_ids)) if prompt_ids is not None else self._prompt_ids(messages, chat)
        if query is not None and not isinstance(query, str):
            raise InvalidPromptError(f"query must be a string, got {type(query).__name__}")
        # A text-completion prompt is where the answer's first sentence begins (claims read its subject there).
        lead = (completion_text(self.lm.tokenizer, messages, chat=chat) or "") if prompt_ids is None else ""
        query = query or last_user_text(messages)
        given = _passage_list(passages)
        return _Pending(
            partial(self._select_timed, query, given, cfg), partial(self._prepare, query, ids, cfg, stream, lead)
        )

    def call_config(self, **overrides: Any) -> NestConfig:
        """The engine's config with per-call overrides applied; raises ``ConfigError`` on bad values."""
        return with_overrides(self.config, overrides)

    def prompt_ids(self, prompt: str | Sequence[Message], *, chat: bool | None = None) -> list[int]:
        """The prompt's token ids (chat template applied); raises if it does not fit the context."""
        return self._prompt_ids(normalize_messages(prompt), chat)

    def _prompt_ids(self, messages: list[Message], chat: bool | None) -> list[int]:
        return self._fits(build_prompt_ids(self.lm.tokenizer, messages, chat=chat))

    def _fits(self, ids: list[int]) -> list[int]:
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
        chat: bool | None = None,
        prompt_ids: Sequence[int] | None = None,
        **overrides: Any,
    ) -> AsyncIterator[NestChunk]:
        """:meth:`stream` for asyncio: decoding runs on the decode thread, never on the event
        loop, and no thread waits per request."""
        pending = self._submission(prompt, passages, query, chat, prompt_ids, overrides)
        if decode_thread.decode_thread().on_thread():  # an event loop run on the decode thread itself
            for chunk in self._decode_when_read(pending):
                yield chunk
            return
        prepare = await asyncio.get_running_loop().run_in_executor(None, pending.prepared)  # the first stage
        async for chunk in self._scheduler.asubmit(prepare):
            yield chunk

    async def agenerate(
        self,
        prompt: str | Sequence[Message],
        *,
        passages: Sequence[Passage | ScoredPassage] | None = None,
        query: str | None = None,
        chat: bool | None = None,
        prompt_ids: Sequence[int] | None = None,
        **overrides: Any,
    ) -> NestResult:
        """:meth:`generate` for asyncio: decoding runs on the decode thread (see :meth:`astream`)."""
        pending = self._submission(prompt, passages, query, chat, prompt_ids, overrides, stream=False)
        if decode_thread.decode_thread().on_thread():  # an event loop run on the decode thread itself
            return _last_result(self._decode_when_read(pending))
        prepare = await asyncio.get_running_loop().run_in_executor(None, pending.prepared)  # the first stage
        async for chunk in self._scheduler.asubmit(prepare):
            if chunk.result is not None:
                return chunk.result
        raise RuntimeError("the stream ended without a result")  # unreachable: the last chunk has one

    def retrieve(self, query: str, k: int | None = None) -> list[ScoredPassage]:
        """Run the first stage alone."""
        if self.retriever is None:
            return []
        return list(self.retriever.retrieve(query, k or self.config.num_passages))

    def clear_passage_cache(self) -> None:
        """Forget the in-process passage keys (an on-disk key store stays); for cold-cache measurements."""
        self.encoder.clear()

    def plain_generate(self, prompt_ids: Sequence[int], max_new_tokens: int, **options: Any) -> PlainOutput:
        """Plain greedy decoding with the same loaded model (a baseline); see :func:`plain.plain_generate`."""
        from .plain import plain_generate

        def run() -> PlainOutput:
            with self._lock:
                return plain_generate(self.lm, list(prompt_ids), max_new_tokens, **options)

        return decode_thread.call(run)  # where NEST decodes, so the two are timed alike

    def dense_retriever(self) -> PassageRetriever:
        """The first stage's dense-only view (see :func:`hooks.dense_retriever`)."""
        from .hooks import dense_retriever

        return dense_retriever(self.retriever)

    # Internals ---------------------------------------------------------------------------------

    def _select(self, query: str, given: Sequence[Passage | ScoredPassage] | None, cfg: NestConfig) -> SourceSelection:
        if not cfg.retrieval:
            return SourceSelection(retrieved=[])
        if given is not None:
            retrieved = [p if isinstance(p, ScoredPassage) else ScoredPassage(passage=p) for p in given]
        else:
            retrieved = self.retrieve(query, cfg.num_passages)
            for p in retrieved:  # a store's text, not checked when it was indexed
                _check_unicode(p.passage)
        return select_sources(query, retrieved, cfg)

    def _select_timed(
        self, query: str, given: Sequence[Passage | ScoredPassage] | None, cfg: NestConfig
    ) -> tuple[SourceSelection, float]:
        """The sources (first stage and selection) and the seconds they took."""
        t0 = time.perf_counter()
        sources = self._select(query, given, cfg)
        return sources, time.perf_counter() - t0

    def _prepare(
        self,
        query: str,
        prompt_ids: list[int],
        cfg: NestConfig,
        stream: bool,
        lead: str,
        selected: tuple[SourceSelection, float],
    ) -> DecodeJob | NestChunk:
        """Build the token index of the selected sources: a job ready to decode, or an abstention.
        ``lead``: the text-completion prompt the answer continues ("" after a chat turn)."""
        stats = NestStats(prompt_tokens=len(prompt_ids))
        sources, first_stage_seconds = selected
        t1 = time.perf_counter()
        misses = self.encoder.misses
        # Sources that are not searched are not encoded either.
        encoded = self.encoder.encode([s.passage for s in sources.searched]) if sources.searched else []
        index = (
            TokenIndex(encoded, self.lm.device, sources.relevance, [s.passage for s in sources.searched])
            if encoded
            else None
        )
        t2 = time.perf_counter()
        stats.first_stage_seconds, stats.token_index_seconds = first_stage_seconds, t2 - t1
        stats.passages, stats.passages_encoded = len(sources.retrieved), self.encoder.misses - misses
        stats.passages_searched, stats.source_coverage = len(sources.searched), sources.coverage
        if cfg.grounded_only and index is None:
            return _abstention(query, sources, stats)
        decoder = NestDecoder(self.lm, cfg, index)
        answer = AnswerAssembler(
            self.lm.tokenizer,
            decoder.eos,
            cfg.stop,
            sources.searched,
            encoded,
            sources.duplicates,
            stream=stream,
            to_source=sources.to_source if sources.originals else None,
            lead=lead,
        )
        # Generation stops at the context limit (documented).
        budget = min(cfg.max_new_tokens, self.lm.context_length - len(prompt_ids))
        return DecodeJob(decoder, answer, sources, stats, prompt_ids, budget, started=t2)


@dataclass(frozen=True)
class _Pending:
    """A validated request: ``select`` runs its first stage (in the caller's thread, so a slow
    one holds up no other request), ``build`` the rest on the decode thread."""

    select: Callable[[], tuple[SourceSelection, float]]
    build: Callable[[tuple[SourceSelection, float]], DecodeJob | NestChunk]

    def prepared(self) -> Callable[[], DecodeJob | NestChunk]:
        """Run the first stage now; what is left to run on the decode thread (errors raise here)."""
        return partial(self.build, self.select())

    def prepared_or_error(self) -> Callable[[], DecodeJob | NestChunk]:
        """:meth:`prepared`, with an error of the first stage raised later, by the returned callable."""
        try:
            return self.prepared()
        except Exception as e:
            return partial(_raise, e)


def _raise(error: BaseException) -> DecodeJob | NestChunk:
    raise error


def _passage_list(passages: Any) -> list[Passage | ScoredPassage] | None:
    """``passages`` as a list, checked: each a ``Passage`` or ``ScoredPassage`` (None: none given)."""
    if passages is None:
        return None
    if isinstance(passages, (str, bytes, Passage, ScoredPassage)) or not isinstance(passages, Iterable):
        raise InvalidPassagesError(
            f"passages must be a list of Passage or ScoredPassage objects, got a {type(passages).__name__}"
        )
    given = list(passages)
    for p in given:
        if not isinstance(p, (Passage, ScoredPassage)):
            raise InvalidPassagesError(
                f"passages must be Passage or ScoredPassage objects, got a {type(p).__name__}: {str(p)[:60]!r}"
            )
        _check_unicode(p.passage if isinstance(p, ScoredPassage) else p)
    return given


def _check_unicode(passage: Passage) -> None:
    """Raise :class:`InvalidPassagesError` for a passage the tokenizer cannot read (a lone surrogate)."""
    for field_name in ("text", "title"):
        try:
            getattr(passage, field_name).encode("utf-8")
        except UnicodeEncodeError as e:
            raise InvalidPassagesError(
                f"Passage {passage.id!r}: its {field_name} is not valid Unicode (a lone surrogate at char "
                f"{e.start}); pass UTF-8 text."
            ) from e


def _decode_alone(job: DecodeJob | NestChunk) -> Iterator[NestChunk]:
    """Decode one prepared request with its own KV cache (an abstention is its only chunk)."""
    if isinstance(job, NestChunk):
        yield job
        return
    for step in job.decoder.run(job.prompt_ids, job.max_new_tokens):
        chunk = job.put(step)
        if job.stopped:
            break
        if chunk is not None:
            yield chunk
    yield job.finish()


def _last_result(chunks: Iterator[NestChunk]) -> NestResult:
    for chunk in chunks:
        if chunk.result is not None:
            return chunk.result
    raise RuntimeError("the stream ended without a result")  # unreachable: the last chunk has one


def _abstention(query: str, sources: SourceSelection, stats: NestStats) -> NestChunk:
    """Grounded-only mode with no source about the query: say so instead of decoding."""
    subject = " ".join(query.split())
    subject = subject if len(subject) <= 200 else subject[:199] + "…"
    why = "no source was retrieved" if not sources.retrieved else "no retrieved source covers it"
    text = f'The sources do not cover "{subject}" ({why}).'
    stats.abstained = True
    result = NestResult(text=text, stats=stats, finish_reason="abstain", passages=sources.retrieved)
    return NestChunk(text=text, result=result)


async def ashared_engine(
    model: str = DEFAULT_MODEL, *, device: str | None = None, dtype: str | None = None
) -> NestEngine:
    """:func:`shared_engine` for asyncio: the first load (seconds) happens off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(
        None, partial(shared_engine, model, device=device, dtype=dtype)
    )


SHARED_MAX_BATCH = 8
"""Requests a shared engine decodes together (see :func:`shared_engine`)."""

_SHARED_ENGINES: dict[tuple[str, str | None, str | None], NestEngine] = {}
_SHARED_LOCK = threading.Lock()


def shared_engine(model: str = DEFAULT_MODEL, *, device: str | None = None, dtype: str | None = None) -> NestEngine:
    """One engine per (model, device, dtype) per process, loaded on first use.

    For integrations that create many lightweight objects (chat models, tools): the weights
    and the passage-key cache are loaded once and shared, and concurrent calls (LangChain's
    ``batch``/``abatch``, LlamaIndex's async queries, agent tools in threads) decode together
    in one batch of up to :data:`SHARED_MAX_BATCH` (continuous batching; each answer is what it
    would be alone). Pass passages per call (``generate(..., passages=...)``).
    """
    key = (model, device, dtype)
    with _SHARED_LOCK:
        engine = _SHARED_ENGINES.get(key)
        if engine is None:
            engine = _SHARED_ENGINES[key] = NestEngine(model, device=device, dtype=dtype, max_batch=SHARED_MAX_BATCH)
        return engine
