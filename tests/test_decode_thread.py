"""Every engine's model work runs on the process's one decode thread (decode_thread.py says why)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest

from nest_integrations import NestEngine
from nest_integrations.decode_thread import DecodeThread, decode_thread
from nest_integrations.passages.types import ScoredPassage


@contextmanager
def forward_threads(model) -> Iterator[list[str]]:
    """Names of the threads that run ``model``'s forwards inside the block, one per forward."""
    names: list[str] = []
    inner = model.forward

    def forward(*args, **kwargs):
        names.append(threading.current_thread().name)
        return inner(*args, **kwargs)

    model.forward = forward
    try:
        yield names
    finally:
        del model.forward  # the class's forward again


@pytest.mark.slow
def test_two_engines_called_from_many_threads_decode_on_one_thread(lm, corpus_retriever, boulter_passages) -> None:
    alone = NestEngine(lm, retriever=corpus_retriever)
    batching = NestEngine(lm, retriever=corpus_retriever, max_batch=4)
    calls = [
        lambda: alone.generate("Tell me about Robert Boulter.", passages=boulter_passages, max_new_tokens=12),
        lambda: alone.generate("Tell me about Nero.", max_new_tokens=8),  # the first stage and passage keys too
        lambda: batching.generate("Tell me about Robert Boulter.", passages=boulter_passages, max_new_tokens=12),
        lambda: batching.generate_batch(["Hi", "Who was Nero?"], max_new_tokens=6),
        lambda: alone.generate_batch(["Hi", "Who was Nero?"], max_new_tokens=6),
        lambda: alone.plain_generate(alone.prompt_ids("Hi"), 4),
    ]
    with forward_threads(lm.model) as names, ThreadPoolExecutor(6) as pool:
        results = [f.result(timeout=300) for f in [pool.submit(c) for c in calls]]
    assert results[0].text == results[2].text  # batched or not, the same answer
    assert set(names) == {"nest-decode"}


def test_the_sentence_encoder_runs_on_the_decode_thread(corpus_retriever) -> None:
    embedder = corpus_retriever.embedder
    with forward_threads(embedder.model) as names:
        vectors = embedder.encode(["Robert Boulter", "Nero"])
    assert vectors.shape == (2, embedder.dim) and names == ["nest-decode"]


class RewritingRetriever:
    """A first stage that asks the engine's LM to rewrite the query (as LangChain's
    MultiQueryRetriever does): it runs in the caller's thread and calls the engine from there."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.engine: NestEngine | None = None
        self.rewrites: list[str] = []
        self.threads: list[str] = []

    def retrieve(self, query: str, k: int) -> list[ScoredPassage]:
        assert self.engine is not None
        self.threads.append(threading.current_thread().name)
        rewrite = self.engine.generate(f"Rewrite as a search query: {query}", passages=[], max_new_tokens=6)
        self.rewrites.append(rewrite.text)
        both = self.engine.generate_batch([f"Rewrite: {query}", "Hi"], passages=[[], []], max_new_tokens=4)
        self.rewrites.extend(r.text for r in both)
        return self.inner.retrieve(query, k)


@pytest.mark.slow
@pytest.mark.parametrize("max_batch", [1, 4])
def test_a_first_stage_that_calls_the_engine_does_not_deadlock(lm, corpus_retriever, max_batch) -> None:
    retriever = RewritingRetriever(corpus_retriever)
    engine = NestEngine(lm, retriever=retriever, max_batch=max_batch)
    retriever.engine = engine
    with ThreadPoolExecutor(1, thread_name_prefix="caller") as pool:
        result = pool.submit(engine.generate, "Tell me about Robert Boulter.", max_new_tokens=16).result(timeout=300)
    assert retriever.threads and all(name.startswith("caller") for name in retriever.threads)
    plain = NestEngine(lm, retriever=corpus_retriever)
    assert result.text == plain.generate("Tell me about Robert Boulter.", max_new_tokens=16).text
    rewrite = plain.generate("Rewrite as a search query: Tell me about Robert Boulter.", passages=[], max_new_tokens=6)
    both = plain.generate_batch(["Rewrite: Tell me about Robert Boulter.", "Hi"], passages=[[], []], max_new_tokens=4)
    assert retriever.rewrites == [rewrite.text, *(r.text for r in both)]


def test_call_returns_results_raises_errors_and_runs_inline_on_its_own_thread() -> None:
    thread = DecodeThread(name="test-decode")
    assert thread.call(lambda: threading.current_thread().name) == "test-decode"
    with pytest.raises(ZeroDivisionError):
        thread.call(lambda: 1 / 0)
    assert thread.call(lambda: thread.call(lambda: 7)) == 7  # a call from the thread itself runs at once
    thread.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        thread.call(lambda: 1)
    assert decode_thread().name == "nest-decode"


class HandingOffRetriever:
    """A first stage that calls the engine through a thread pool of its own and waits for it."""

    def __init__(self, inner, passages) -> None:
        self.inner, self.passages, self.engine = inner, passages, None

    def retrieve(self, query: str, k: int) -> list[ScoredPassage]:
        with ThreadPoolExecutor(1) as pool:
            pool.submit(self.engine.generate, "Hi", passages=self.passages, max_new_tokens=4).result(timeout=300)
        return self.inner.retrieve(query, k)


@pytest.mark.slow
@pytest.mark.parametrize("max_batch", [1, 4])
def test_engine_calls_from_first_stages_and_the_decode_thread_do_not_deadlock(
    lm, corpus_retriever, boulter_passages, max_batch
) -> None:
    import asyncio

    from nest_integrations import decode_thread as dt

    retriever = HandingOffRetriever(corpus_retriever, boulter_passages)
    engine = NestEngine(lm, retriever=retriever, max_batch=max_batch)
    retriever.engine = engine
    plain = NestEngine(lm, retriever=corpus_retriever)
    expected = plain.generate("Tell me about Robert Boulter.", max_new_tokens=12).text
    with ThreadPoolExecutor(1) as pool:
        assert (
            pool.submit(engine.generate, "Tell me about Robert Boulter.", max_new_tokens=12).result(300).text
            == expected
        )
    # An event loop run on the decode thread (a retriever bridging to asyncio, called through call()).
    alone = plain.generate("Who is Robert Boulter?", passages=boulter_passages, max_new_tokens=8).text
    one = dt.call(
        lambda: asyncio.run(engine.agenerate("Who is Robert Boulter?", passages=boulter_passages, max_new_tokens=8))
    )
    assert one.text == alone
    batch = dt.call(
        lambda: asyncio.run(
            engine.agenerate_batch(["Who is Robert Boulter?"], passages=[boulter_passages], max_new_tokens=8)
        )
    )
    assert [r.text for r in batch] == [alone]


class CancellingRetriever:
    def retrieve(self, query: str, k: int) -> list[ScoredPassage]:
        import asyncio

        raise asyncio.CancelledError()


@pytest.mark.slow
def test_a_base_exception_reaches_its_caller_and_the_decode_thread_goes_on(lm, boulter_passages) -> None:
    import asyncio

    from nest_integrations.batching import BatchScheduler
    from nest_integrations.fork_safe import ForkSafeLock

    engine = NestEngine(lm, retriever=CancellingRetriever(), max_batch=4)
    with pytest.raises(asyncio.CancelledError):
        engine.generate("Tell me about Robert Boulter.", max_new_tokens=4)

    def cancelled():
        raise asyncio.CancelledError()

    scheduler = BatchScheduler(lm, 4, ForkSafeLock(reentrant=True))
    with pytest.raises(asyncio.CancelledError):  # raised while the job is built, on the decode thread
        next(iter(scheduler.submit(cancelled)))
    assert engine.generate("Hi", passages=boulter_passages, max_new_tokens=4).text  # still decoding
    assert decode_thread()._thread is not None and decode_thread()._thread.is_alive()


@pytest.mark.slow
def test_close_fails_waiting_requests_at_once(lm, boulter_passages) -> None:
    engine = NestEngine(lm, max_batch=1)
    outcomes: list[object] = []

    def ask() -> None:
        try:
            outcomes.append(
                engine.generate("Tell me about Robert Boulter.", passages=boulter_passages, max_new_tokens=48)
            )
        except RuntimeError as e:
            outcomes.append(e)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    while engine._scheduler.active == 0:
        threading.Event().wait(0.01)
    engine._scheduler.close()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads) and len(outcomes) == 4
    refused = [o for o in outcomes if isinstance(o, RuntimeError)]
    assert len(refused) >= 3 and all("closed" in str(e) for e in refused)  # at most the one decoding finished
    assert engine._scheduler.closed


EXIT_SCRIPT = """
import threading, time
from nest_integrations import NestEngine, Passage
e1 = NestEngine(); e2 = NestEngine(e1.lm)
p = [Passage(id="b", text="Robert Boulter is an English film, television and theatre actor.")]
def ask(e, i):
    e.generate(f"Write a long story {i}.", passages=p, max_new_tokens=32)
    print("answered", flush=True)
for e in (e1, e2):
    for i in range(6):
        threading.Thread(target=ask, args=(e, i), daemon=True).start()
time.sleep(1.0)
print("main thread ends", flush=True)
"""

FORK_SCRIPT = """
import os, threading, time
from nest_integrations import NestEngine, Passage
e = NestEngine()
p = [Passage(id="b", text="Robert Boulter is an English film, television and theatre actor.")]
ref = e.generate("Tell me about Robert Boulter.", passages=p, max_new_tokens=12).text
stop = threading.Event()
def busy():
    while not stop.is_set():
        e.generate("Write a story.", passages=[], max_new_tokens=16)
for _ in range(3):
    threading.Thread(target=busy, daemon=True).start()
time.sleep(2.0)
pid = os.fork()
if pid == 0:
    same = e.generate("Tell me about Robert Boulter.", passages=p, max_new_tokens=12).text == ref
    os._exit(0 if same else 3)
_, status = os.waitpid(pid, 0)
stop.set()
print("child", os.waitstatus_to_exitcode(status), flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "script", [EXIT_SCRIPT, FORK_SCRIPT], ids=["exit-with-requests-in-flight", "fork-while-decoding"]
)
def test_a_process_exits_or_forks_cleanly_while_decoding(script) -> None:
    """Exit: the interpreter ends without decoding what waits (it used to decode every queued
    request first, then could abort while torch was torn down). Fork: the child decodes although
    the parent's decode thread held locks at the fork."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "terminate called" not in done.stderr
    if script is FORK_SCRIPT:
        assert "child 0" in done.stdout
    else:  # requests still waiting at exit are refused, not decoded first (at most the decoding ones end)
        assert done.stdout.split("main thread ends", 1)[1].count("answered") <= 2
