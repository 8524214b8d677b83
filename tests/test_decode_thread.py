"""Every engine's model work runs on the process's one decode thread (decode_thread.py says why)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from nest_integrations import NestEngine
from nest_integrations.decode_thread import DecodeThread, decode_thread
from nest_integrations.passages.types import ScoredPassage


@pytest.fixture
def forward_threads(lm) -> Iterator[set[str]]:
    """Names of the threads that run the model's forwards while the test runs."""
    names: set[str] = set()
    inner = lm.model.forward

    def forward(*args, **kwargs):
        names.add(threading.current_thread().name)
        return inner(*args, **kwargs)

    lm.model.forward = forward
    try:
        yield names
    finally:
        del lm.model.forward  # the class's forward again


@pytest.mark.slow
def test_two_engines_called_from_many_threads_decode_on_one_thread(
    lm, corpus_retriever, boulter_passages, forward_threads
) -> None:
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
    with ThreadPoolExecutor(6) as pool:
        results = [f.result(timeout=300) for f in [pool.submit(c) for c in calls]]
    assert results[0].text == results[2].text  # batched or not, the same answer
    assert forward_threads == {"nest-decode"}


def test_the_sentence_encoder_runs_on_the_decode_thread(corpus_retriever) -> None:
    embedder = corpus_retriever.embedder
    seen: list[str] = []
    inner = embedder.model.forward

    def forward(*args, **kwargs):
        seen.append(threading.current_thread().name)
        return inner(*args, **kwargs)

    embedder.model.forward = forward
    try:
        vectors = embedder.encode(["Robert Boulter", "Nero"])
    finally:
        del embedder.model.forward
    assert vectors.shape == (2, embedder.dim) and seen == ["nest-decode"]


class RewritingRetriever:
    """A first stage that asks the engine's LM to rewrite the query (as LangChain's
    MultiQueryRetriever does): it runs on the decode thread and calls the engine from there."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.engine: NestEngine | None = None
        self.rewrites: list[str] = []

    def retrieve(self, query: str, k: int) -> list[ScoredPassage]:
        assert self.engine is not None
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
    with ThreadPoolExecutor(1) as pool:
        result = pool.submit(engine.generate, "Tell me about Robert Boulter.", max_new_tokens=16).result(timeout=300)
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
