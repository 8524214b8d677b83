"""Many requests decoded together: one LM forward per step over every active request.

A :class:`DecodeJob` is one request after source selection: its decoder and the assembler of
its text and citations. :class:`BatchLoop` advances many jobs in lockstep over one
:class:`~nest_integrations.step_model.BatchedStepModel`: each step, every job's decoder asks for
its next forward (a one-token step or a draft to verify), all run in one padded forward, and
each job's decoder goes on alone (its own mixture, acceptance, splice rule and citations) until
it asks again. Jobs join and leave at step boundaries. :class:`BatchScheduler` holds an engine's
requests and admits them as they arrive (continuous batching); the process's decode thread
(``decode_thread.py``) steps every engine's loop.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .citations import NestResult, NestStats, Provenance
from .decode_thread import decode_thread
from .decoding import DecodeCounters, DecodeStep, NestDecoder
from .fork_safe import ForkSafeLock
from .sources import SourceSelection
from .step_model import BatchedStepModel, Forward, SingleStepModel, StepModel, StepOutput
from .streaming import AnswerAssembler, NestChunk

if TYPE_CHECKING:
    from .lm import LoadedLM

__all__ = ["BatchLoop", "BatchScheduler", "ChunkStream", "DecodeJob"]

log = logging.getLogger(__name__)

# On a CPU, while rows share a batch, a new span's draft is verified 4 tokens first, then in
# pieces of 32: a rejected new span is mostly rejected within its first few tokens, and the
# rest of its piece would be computed in everyone's step for nothing (4 measured best of 4, 8
# and 32 at 8 concurrent requests: +16% tokens/s, -20% p95; benchmarks/RESULTS.md, session 8).
FIRST_PIECE_CPU = 4


@dataclass
class DecodeJob:
    """One request being decoded: its decoder, the assembler of its answer, what its result needs."""

    decoder: NestDecoder
    answer: AnswerAssembler
    sources: SourceSelection
    stats: NestStats
    prompt_ids: list[int]
    max_new_tokens: int
    started: float = field(default_factory=time.perf_counter)

    def steps(self) -> Generator[DecodeStep | Forward, Any, None]:
        return self.decoder.steps(self.prompt_ids, self.max_new_tokens)

    def put(self, step: DecodeStep) -> NestChunk | None:
        """The chunk a decoding step releases, if any; see ``stopped`` after each call."""
        return self.answer.put(step.tokens, step.provenance)

    @property
    def stopped(self) -> bool:
        """A stop string was produced: decoding this job must end."""
        return self.answer.stop_at is not None

    def finish(self) -> NestChunk:
        """The last chunk, carrying the :class:`NestResult`."""
        seconds = time.perf_counter() - self.started
        text, tokens, provenance = self.answer.finish()
        counters = self.decoder.counters
        result = NestResult(
            text=text,
            citations=self.answer.citations,
            fragments=self.answer.fragments,
            stats=_finish_stats(self.stats, tokens, provenance, counters, seconds),
            finish_reason="stop" if self.answer.stop_at is not None else counters.finish_reason,
            passages=self.sources.retrieved,
        )
        return self.answer.last_chunk(text, result)


def _finish_stats(
    stats: NestStats, tokens: list[int], provenance: list[Provenance | None], counters: DecodeCounters, seconds: float
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


Emit = Callable[[NestChunk | BaseException], None]


@dataclass
class _Row:
    job: DecodeJob
    events: Generator[DecodeStep | Forward, Any, None]
    emit: Emit
    pending: Forward | None = None


class BatchLoop:
    """Decodes any number of jobs together, one batched forward per step (not thread-safe).

    ``emit`` receives each job's chunks as they are released, the last one with the result,
    or the exception that ended that job alone.
    """

    def __init__(
        self,
        lm: LoadedLM,
        verify_chunk: int | Literal["auto"] | None = "auto",
        *,
        step_model: StepModel | None = None,
    ) -> None:
        """``verify_chunk``: while other rows share the batch, a row verifies its draft at most this
        many tokens a step (a piece with a rejection ends it; greedy output does not change);
        None: whole drafts. "auto": 32 on a CPU, where a forward costs about as much per token
        past ~8 tokens and one row's 64-token draft would make every row's step several times
        longer (32 measured best of 8-64 at 8 concurrent requests with free copying, session 7;
        8 had been best with the sentence lock on, ``benchmarks/RESULTS.md``), a new span's first
        piece ``FIRST_PIECE_CPU``; None elsewhere. ``step_model``: what serves the forwards
        (default: a :class:`BatchedStepModel`; a ``SingleStepModel`` takes one row at a time)."""
        self.model: Any = step_model if step_model is not None else BatchedStepModel(lm, need_hidden=True)
        self._pieces = step_model is None  # draft pieces are a policy of a shared batch alone
        if (
            verify_chunk is not None
            and verify_chunk != "auto"
            and (not isinstance(verify_chunk, int) or verify_chunk < 1)
        ):
            raise ValueError(f"verify_chunk must be an integer >= 1, None or 'auto', got {verify_chunk!r}")
        self.verify_chunk = verify_chunk
        self._cpu = lm.device.type == "cpu"
        self.rows: dict[int, _Row] = {}
        self._next_key = 0

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, job: DecodeJob, emit: Emit) -> int:
        """Start decoding ``job``; its first forward runs at the next :meth:`step`. Returns its key."""
        key = self._next_key
        self._next_key += 1
        self.rows[key] = _Row(job, job.steps(), emit)
        self._advance(key, None)
        return key

    def _chunk(self) -> int | None:
        """The draft piece a row verifies per step now (None: whole): only while it has company."""
        if len(self.rows) < 2:
            return None
        if self.verify_chunk == "auto":
            return 32 if self._cpu else None
        return self.verify_chunk

    def _first_chunk(self) -> int | None:
        """The first piece of a new span's draft ("auto" on a CPU: FIRST_PIECE_CPU), while pieces are in use."""
        return FIRST_PIECE_CPU if self.verify_chunk == "auto" and self._cpu and len(self.rows) >= 2 else None

    def cancel(self, key: int) -> None:
        """Stop a job now (e.g. its client went away); the others are not disturbed."""
        row = self.rows.pop(key, None)
        if row is not None:
            row.events.close()
            self.model.release(key)

    def step(self) -> None:
        """One forward over every job, then each job decodes until it needs the LM again."""
        requests = {key: row.pending for key, row in self.rows.items() if row.pending is not None}
        if not requests:
            return
        try:
            outputs = self.model.step(requests)
        except Exception as e:  # the batch's forward failed (e.g. out of memory): every job fails
            for key in list(requests):
                self._fail(key, e)
            return
        for key, output in outputs.items():
            self._advance(key, output)

    def _advance(self, key: int, output: StepOutput | None) -> None:
        """Run a job's decoder until its next forward request, delivering its chunks."""
        row = self.rows[key]
        if self._pieces:
            row.job.decoder.verify_chunk = self._chunk()
            row.job.decoder.first_verify_chunk = self._first_chunk()
        try:
            event = row.events.send(output) if output is not None else next(row.events)
            while isinstance(event, DecodeStep):
                chunk = row.job.put(event)
                if row.job.stopped:
                    row.events.close()
                    break
                if chunk is not None and not _deliver(row.emit, chunk):
                    self.cancel(key)  # nobody to deliver to: the job's consumer is gone
                    return
                event = next(row.events)
            else:
                row.pending = event
                return
        except StopIteration:
            pass
        except Exception as e:  # a failure of this job alone
            self._fail(key, e)
            return
        self._end(key)

    def _end(self, key: int) -> None:
        row = self.rows.pop(key)
        self.model.release(key)
        try:
            last: NestChunk | BaseException = row.job.finish()
        except Exception as e:
            last = e
        _deliver(row.emit, last)

    def _fail(self, key: int, error: BaseException) -> None:
        row = self.rows.pop(key, None)
        if row is not None:
            row.events.close()
            self.model.release(key)
            _deliver(row.emit, error)


def _deliver(emit: Emit, item: NestChunk | BaseException) -> bool:
    """Hand ``item`` to a job's consumer; False when that fails (the consumer is gone), which
    must never disturb the other jobs of the batch."""
    try:
        emit(item)
    except Exception:
        log.debug("a batched request's consumer is gone", exc_info=True)
        return False
    return True


def _received(item: NestChunk | BaseException) -> NestChunk:
    """A chunk delivered to a submitter; an exception delivered instead is raised."""
    if isinstance(item, BaseException):
        raise item
    return item


class ChunkStream(Iterator[NestChunk]):
    """A submitted request's chunks, as they are released. ``close()`` (or dropping the stream)
    cancels the request, even before its first chunk was read (a generator's ``finally`` would
    not run then: ``generate_batch`` reading its results in order must be able to cancel the rest)."""

    def __init__(self, chunks: queue.SimpleQueue[Any], submission: _Submission) -> None:
        self._chunks = chunks
        self._submission = submission
        self._done = False

    def __next__(self) -> NestChunk:
        if self._done:
            raise StopIteration
        try:
            chunk = _received(self._chunks.get())
        except BaseException:
            self.close()
            raise
        if chunk.result is not None:  # the last chunk
            self.close()
        return chunk

    def close(self) -> None:
        self._done = True
        self._submission.cancelled.set()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # e.g. at interpreter exit
            self._submission.cancelled.set()


def _fail_waiting(waiting: queue.SimpleQueue[_Submission], error: BaseException) -> None:
    """Hand ``error`` to every request still waiting in ``waiting`` (emptied)."""
    while True:
        try:
            submission = waiting.get_nowait()
        except queue.Empty:
            return
        _deliver(submission.put, error)


def _reset_after_fork() -> None:
    """In a forked child, every scheduler starts empty (see ``fork_safe.py``)."""
    for scheduler in list(_SCHEDULERS):
        scheduler._after_fork()


@dataclass
class _Submission:
    prepare: Callable[[], DecodeJob | NestChunk]
    put: Callable[[Any], None] = lambda item: None  # delivers a chunk or an exception to the submitter
    cancelled: threading.Event = field(default_factory=threading.Event)


_SCHEDULERS: weakref.WeakSet[BatchScheduler] = weakref.WeakSet()
os.register_at_fork(after_in_child=_reset_after_fork)


@atexit.register
def _close_schedulers() -> None:
    """Stop every scheduler before the interpreter shuts down (then the decode thread ends: a
    thread still decoding while torch tears down can abort the process)."""
    schedulers = list(_SCHEDULERS)
    for scheduler in schedulers:  # all at once: waiting requests fail now, decoding ones at the next step
        scheduler.request_stop()
    deadline = time.monotonic() + 10.0
    for scheduler in schedulers:
        scheduler._stopped.wait(max(0.0, deadline - time.monotonic()))


class BatchScheduler:
    """Continuous batching: admits requests into a running :class:`BatchLoop` at step boundaries.

    Requests wait in arrival order; up to ``max_batch`` decode at once, and a waiting request
    joins at the next step boundary after a slot frees. The process's decode thread
    (:mod:`~nest_integrations.decode_thread`) steps the loop while it has work, so passage
    encoding (``prepare``, given the request's sources) and decoding run on that one thread.
    ``lock`` is held around each step (the engine's lock: the model is not used by anything else
    meanwhile). With ``max_batch`` 1 (an engine without batching) each request decodes with its
    own KV cache, exactly as ``NestDecoder.run`` does.
    """

    def __init__(self, lm: LoadedLM, max_batch: int, lock: ForkSafeLock) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.lm = lm
        self.max_batch = max_batch
        self.lock = lock
        self._waiting: queue.SimpleQueue[_Submission] = queue.SimpleQueue()
        self._start_lock = threading.Lock()
        _SCHEDULERS.add(self)
        self._closed = False
        self._stop_asked = False  # request_stop() ran: the decode thread ends this scheduler
        self._used = False  # a request was ever queued
        self._stopped = threading.Event()
        self._loop: BatchLoop | None = None
        self._owners: dict[int, _Submission] = {}
        self.active = 0  # requests decoding now
        self.peak_active = 0  # the most requests that decoded together so far

    def _after_fork(self) -> None:
        """In a forked child: the requests belonged to the parent's threads; start empty."""
        self._waiting = queue.SimpleQueue()
        self._start_lock = threading.Lock()
        self._loop = None
        self._owners = {}
        self.active = 0

    def _new_loop(self) -> BatchLoop:
        if self.max_batch == 1:
            return BatchLoop(self.lm, step_model=SingleStepModel(self.lm, need_hidden=True))
        return BatchLoop(self.lm)

    def submit(self, prepare: Callable[[], DecodeJob | NestChunk]) -> ChunkStream:
        """Queue a request now; iterate the result for its chunks (closing it cancels the request)."""
        chunks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        submission = _Submission(prepare, chunks.put)
        self._enqueue(submission)
        return ChunkStream(chunks, submission)

    async def asubmit(self, prepare: Callable[[], DecodeJob | NestChunk]) -> AsyncIterator[NestChunk]:
        """:meth:`submit` for asyncio: chunks arrive on the event loop, no thread waits per request."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[Any] = asyncio.Queue()
        submission = _Submission(prepare)

        def put(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(chunks.put_nowait, item)
            except RuntimeError:  # the submitter's event loop is closed: nobody is waiting
                submission.cancelled.set()
                raise

        submission.put = put
        self._enqueue(submission)
        try:
            while True:
                chunk = _received(await chunks.get())
                yield chunk
                if chunk.result is not None:  # the last chunk
                    return
        finally:
            submission.cancelled.set()

    def _enqueue(self, submission: _Submission) -> None:
        with self._start_lock:
            if self._closed:
                raise RuntimeError("the engine's batch scheduler is closed (the interpreter is exiting)")
            self._used = True
            self._waiting.put(submission)
        decode_thread().wake(self)

    def request_stop(self) -> None:
        """Refuse new requests and fail the waiting ones now; the decoding ones fail at the next step."""
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
        _fail_waiting(self._waiting, RuntimeError("the engine's batch scheduler was closed"))
        if not self._used:  # nothing was ever decoded: nothing to stop on the decode thread
            self._stopped.set()
            return
        self._stop_asked = True
        decode_thread().wake(self)

    def close(self, timeout: float = 10.0) -> None:
        """Stop scheduling: requests still decoding or waiting get a ``RuntimeError``, later ones are
        refused. Waits up to ``timeout`` seconds for the decoding ones to end (one step)."""
        self.request_stop()
        if decode_thread().on_thread():
            self.run_once()
        else:
            self._stopped.wait(timeout)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run to its end (requests are refused)."""
        return self._stopped.is_set()

    def has_work(self) -> bool:
        """Requests decoding or waiting (or a stop to carry out)."""
        if self._stopped.is_set():
            return False
        return self._stop_asked or bool(self._loop is not None and self._loop.rows) or not self._waiting.empty()

    def run_once(self) -> None:
        """Admit what waits, drop cancelled rows, run one step (on the decode thread)."""
        if self._stopped.is_set():
            return
        if self._loop is None:
            self._loop = self._new_loop()
        if self._stop_asked:
            self._stop(self._loop, self._owners)
            self._stopped.set()
            return
        try:
            self._iterate(self._loop, self._owners)
        except BaseException as e:  # a bug in the loop itself: fail what it held, keep serving
            log.exception("the batch loop failed; its requests get the error")
            for submission in self._owners.values():
                _deliver(submission.put, e)
            self._owners.clear()
            self._loop = self._new_loop()
        self._count(self._loop)

    def _iterate(self, loop: BatchLoop, owners: dict[int, _Submission]) -> None:
        """Admit what waits, drop cancelled rows, run one step."""
        if not loop.rows:
            owners.clear()
        while len(loop) < self.max_batch:
            try:
                submission = self._waiting.get_nowait()
            except queue.Empty:
                break
            self._admit(loop, owners, submission)
        for key in [k for k, s in owners.items() if s.cancelled.is_set()]:
            with self.lock:
                loop.cancel(key)
            owners.pop(key)
        with self.lock:
            loop.step()
        for key in [k for k in owners if k not in loop.rows]:
            owners.pop(key)

    def _stop(self, loop: BatchLoop, owners: dict[int, _Submission]) -> None:
        error = RuntimeError("the engine's batch scheduler was closed")
        for key, submission in owners.items():
            loop.cancel(key)
            _deliver(submission.put, error)
        owners.clear()
        _fail_waiting(self._waiting, error)

    def _admit(self, loop: BatchLoop, owners: dict[int, _Submission], submission: _Submission) -> None:
        if submission.cancelled.is_set():
            return
        try:
            with self.lock:
                job = submission.prepare()
                if isinstance(job, NestChunk):  # answered without decoding (an abstention)
                    _deliver(submission.put, job)
                    return
                owners[loop.add(job, submission.put)] = submission
        except BaseException as e:  # a first stage's CancelledError or SystemExit too: its request's alone
            _deliver(submission.put, e)
        self._count(loop)

    def _count(self, loop: BatchLoop) -> None:
        self.active = len(loop)
        self.peak_active = max(self.peak_active, self.active)
