"""The one thread on which every engine of a process runs its model work.

PyTorch's CPU build parallelises each operator with OpenMP (GNU libgomp), and every thread that
runs an operator gets a team of worker threads of its own. Once a process holds more OpenMP
threads than it has cores, libgomp stops letting idle workers spin between operators (its
"throttled" spin count): each of a forward's ~2,000 parallel operators then wakes its workers
through the kernel. Measured on 2 cores: the embedded model's one-token forward takes 45 ms in
the only thread that has run torch and 68 ms in a second one (+50%; ``benchmarks/RESULTS.md``,
session 11). A server that decoded in its request threads, or two engines each with a thread of
their own, paid that on every forward.

So decoding happens here: a :class:`~nest_integrations.batching.BatchScheduler` (one per engine)
holds its requests and its batch, and this thread steps every scheduler that has work in turn
(source selection, passage encoding, the forwards and NEST's per-row math). :func:`call` runs
any other model work on it (an offline batch, a plain-decoding baseline). Callers in any thread
wait on queues, which costs no CPU.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .batching import BatchScheduler

__all__ = ["DecodeThread", "call", "call_on_cpu", "decode_thread"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class DecodeThread:
    """A daemon thread that steps registered schedulers in turn and runs submitted calls."""

    def __init__(self, name: str = "nest-decode") -> None:
        self.name = name
        self._cond = threading.Condition()
        self._active: dict[BatchScheduler, None] = {}  # schedulers with work, in arrival order
        self._calls: list[tuple[Callable[[], Any], Future[Any]]] = []
        self._thread: threading.Thread | None = None
        self._stopping = False

    def on_thread(self) -> bool:
        """Whether the caller is this thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    def wake(self, scheduler: BatchScheduler) -> None:
        """``scheduler`` has work (a request or a stop): step it until it has none."""
        with self._cond:
            self._active[scheduler] = None
            self._start()
            self._cond.notify()

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on this thread and return its result (raise its error); called on this
        thread, it runs at once. Schedulers wait while it runs."""
        if self.on_thread():
            return fn()
        future: Future[T] = Future()
        with self._cond:
            if self._stopping:
                raise RuntimeError("the decode thread is stopped (the interpreter is exiting)")
            self._calls.append((fn, future))
            self._start()
            self._cond.notify()
        return future.result()

    def stop(self, timeout: float = 10.0) -> None:
        """End the thread once it is idle (at interpreter exit)."""
        with self._cond:
            self._stopping = True
            thread = self._thread
            self._cond.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _start(self) -> None:  # holding _cond
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._calls and not self._active:
                    if self._stopping:
                        return
                    self._cond.wait()
                calls, self._calls = self._calls, []
                active = list(self._active)
            for fn, future in calls:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as e:  # delivered to the caller
                        future.set_exception(e)
            for scheduler in active:
                try:
                    scheduler.run_once()
                except BaseException:  # run_once handles its own failures; this would be a bug in it
                    log.exception("a batch scheduler failed to step")
                with self._cond:  # a request queued since run_once began re-wakes it; the check is under the lock
                    if not scheduler.has_work():
                        self._active.pop(scheduler, None)


_DECODE_THREAD = DecodeThread()


def decode_thread() -> DecodeThread:
    """The process's decode thread."""
    return _DECODE_THREAD


def call(fn: Callable[[], T]) -> T:
    """Run ``fn`` on the process's decode thread (see :meth:`DecodeThread.call`)."""
    return _DECODE_THREAD.call(fn)


def call_on_cpu(device: Any, fn: Callable[[], T]) -> T:
    """:func:`call` when ``device`` (a ``torch.device``) is a CPU, where OpenMP teams matter;
    elsewhere run ``fn`` in this thread."""
    return call(fn) if device.type == "cpu" else fn()


@atexit.register
def _stop_at_exit() -> None:
    _DECODE_THREAD.stop()


def _forget_after_fork() -> None:
    """A forked child has no decode thread (threads do not survive a fork) and may hold a copy of
    its lock taken: it starts afresh."""
    global _DECODE_THREAD
    _DECODE_THREAD = DecodeThread()


os.register_at_fork(after_in_child=_forget_after_fork)
