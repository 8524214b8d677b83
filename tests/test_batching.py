"""Batched decoding (issue 17): many requests in one forward per step, each output as if alone."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from citation_checks import assert_citations_exact

from nest_integrations import ConfigError, InvalidPromptError, NestEngine
from nest_integrations.citations import NestResult
from nest_integrations.lm import build_prompt_ids
from nest_integrations.step_model import PREFIX_BLOCK, BatchedStepModel, Forward, SingleStepModel

pytestmark = pytest.mark.slow


@pytest.fixture
def exact_in_float32(request, lm) -> None:
    """Batched == unbatched token for token is a float32 property (issue 17 item 3, checked on the
    CPU in CI). In bfloat16 the packed batch's other kernel shapes round differently and a greedy
    near-tie can go the other way (measured on a GPU: benchmarks/RESULTS.md), so there the test
    still runs and is expected to fail."""
    if lm.dtype != torch.float32:
        request.applymarker(pytest.mark.xfail(reason=f"exact in float32 only, the model runs in {lm.dtype}"))


def draft(rng: random.Random) -> list[int]:
    return [rng.randrange(1000, 20000) for _ in range(rng.choice([1, 1, 3, 9]))]


def chat_ids(lm, text: str) -> list[int]:
    return build_prompt_ids(lm.tokenizer, [{"role": "user", "content": text}])


@pytest.mark.parametrize("per_row", [True, False], ids=["per-row attention", "masked attention"])
def test_batched_step_model_gives_each_row_its_logits_alone(lm, exact_in_float32, per_row) -> None:
    """Rows joining at different steps (reading the prompt prefix blocks of the rows before
    them), drafts of different lengths, rollbacks, a row leaving: each row's logits and hidden
    states are those of the same forwards run alone, with each row's attention run over its
    own slots (row_attention.py) or over the whole cache with a mask (other models)."""
    prompts = ["Tell me about Robert Boulter.", "Who was Nero? Answer in detail, with dates.", "Hi"]
    ids = [chat_ids(lm, p) for p in prompts]
    rng = random.Random(0)
    # Per row: 12 forwards of 1-9 tokens, each after rolling back 0-2 positions, some wanting
    # outputs for their last tokens only (as a prompt does).
    scripts = [
        [(rng.choice([0, 0, 1, 2]), draft(rng), rng.choice([None, None, 1, 2])) for _ in range(12)] for _ in prompts
    ]

    def alone(r: int) -> list:
        model, length = SingleStepModel(lm, need_hidden=True), len(ids[r])
        outs = [model.step({0: Forward(ids[r], 0, outputs=1)})[0]]
        for roll, tokens, wanted in scripts[r]:
            keep = max(len(ids[r]), length - roll)
            outs.append(model.step({0: Forward(tokens, keep, wanted)})[0])
            length = keep + len(tokens)
        return outs

    batched = BatchedStepModel(lm, need_hidden=True, per_row_attention=per_row)
    assert batched._row_attention == per_row  # the embedded model's attention is plain SDPA
    outs: dict[int, list] = {r: [] for r in range(3)}
    length: dict[int, int] = {}
    for step in range(19):
        requests = {}
        for r in range(3):
            i = step - 2 * r  # row r joins at step 2r
            if i == 0:
                requests[r], length[r] = Forward(ids[r], 0, outputs=1), len(ids[r])
            elif 1 <= i <= 12:
                roll, tokens, wanted = scripts[r][i - 1]
                keep = max(len(ids[r]), length[r] - roll)
                requests[r], length[r] = Forward(tokens, keep, wanted), keep + len(tokens)
            elif i == 13:
                batched.release(r)
        for r, out in batched.step(requests).items():
            outs[r].append(out)
    for r in range(3):
        reference = alone(r)
        assert len(outs[r]) == len(reference) == 13
        for a, b in zip(reference, outs[r], strict=True):
            assert a.logits.shape == b.logits.shape and a.hidden.shape == b.hidden.shape
            assert torch.equal(a.logits.argmax(-1), b.logits.argmax(-1))
            torch.testing.assert_close(b.logits, a.logits, atol=1e-3, rtol=0)
            torch.testing.assert_close(b.hidden, a.hidden, atol=1e-2, rtol=0)
    # The later rows read the system turn's blocks instead of running them; no row's slot is left.
    common = [next(i for i, (a, b) in enumerate(zip(ids[0], other, strict=False)) if a != b) for other in ids[1:]]
    shared = [c // PREFIX_BLOCK * PREFIX_BLOCK for c in common]
    assert min(shared) >= 16 and batched.prefix_tokens_reused == sum(shared)
    assert len(batched) == 0 and int((batched.owner >= 0).sum()) == 0


def test_prefix_blocks_no_row_reads_are_dropped_past_the_limit(lm) -> None:
    model = BatchedStepModel(lm, need_hidden=False, max_idle_prefix_tokens=0)
    ids = chat_ids(lm, "Who was Nero?")
    model.step({0: Forward(ids, 0, outputs=1)})
    model.step({1: Forward(chat_ids(lm, "Who was Otho?"), 0, outputs=1)})
    assert model.prefix_tokens_reused >= 16  # row 1 read row 0's system turn
    with pytest.raises(ValueError, match="shared prefix"):
        model.step({1: Forward([5], 3)})
    model.release(0)
    model.release(1)
    assert model.owner.numel() == 0  # idle blocks dropped at once (limit 0), then compacted away
    model.step({2: Forward(ids, 0, outputs=1)})
    assert model.prefix_tokens_reused < 2 * len(ids)  # nothing cached any more: the prompt ran again


def test_a_lone_row_of_the_batched_step_model_is_bitwise_the_single_model(lm) -> None:
    """A request alone in a batching engine computes exactly what it computes without one."""
    rng = random.Random(1)
    ids = lm.tokenizer("Who was Nero?")["input_ids"]
    single, batched = SingleStepModel(lm, need_hidden=True), BatchedStepModel(lm, need_hidden=True)
    length = len(ids)
    requests = [Forward(ids, 0, outputs=1)]
    for _ in range(10):
        keep = max(len(ids), length - rng.choice([0, 1, 3]))
        tokens = draft(rng)
        requests.append(Forward(tokens, keep, rng.choice([None, 1])))
        length = keep + len(tokens)
    for request in requests:
        a, b = single.step({0: request})[0], batched.step({7: request})[7]
        assert torch.equal(a.logits, b.logits) and torch.equal(a.hidden, b.hidden)
    assert batched.dead_slots == 0


def test_batched_step_model_rejects_bad_requests(lm) -> None:
    model = BatchedStepModel(lm, need_hidden=False)
    with pytest.raises(ValueError, match="at least one token"):
        model.step({0: Forward([], 0)})
    model.step({0: Forward([1, 2, 3], 0)})
    with pytest.raises(ValueError, match="cannot keep 5 positions of 3"):
        model.step({0: Forward([4], 5)})


def same_result(a: NestResult, b: NestResult) -> None:
    """Token for token the same answer, the same citations (scores to float noise)."""
    assert b.text == a.text
    assert b.finish_reason == a.finish_reason
    for field in ("tokens_generated", "tokens_copied", "spans_proposed", "spans_accepted"):
        assert getattr(b.stats, field) == getattr(a.stats, field), field
    assert len(b.citations) == len(a.citations)
    for x, y in zip(a.citations, b.citations, strict=True):
        assert y.model_dump(exclude={"score"}) == x.model_dump(exclude={"score"})
        assert y.score == pytest.approx(x.score, abs=1e-4)
    fragments = [[f.model_dump(exclude={"score"}) for f in r.fragments] for r in (a, b)]
    assert fragments[1] == fragments[0]


@pytest.fixture(scope="module")
def mixed_requests(corpus_retriever, boulter_passages):
    """Prompts of different lengths and forms over different passage sets (None: the first stage)."""
    du_fu = [p for p in corpus_retriever.passages if p.document_id == "Du_Fu"][:4]
    return [
        ("Tell me about Robert Boulter.", boulter_passages),
        ("Who was Nero? Tell me what the sources say about his reign, his family and his death.", None),
        ([{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Who was Du Fu?"}], du_fu),
        ("Hi", []),
        ("Tell me about Du Fu's poetry.", du_fu + boulter_passages),
    ]


@pytest.fixture(scope="module")
def alone(engine, mixed_requests) -> list[NestResult]:
    return [engine.generate(p, passages=given, max_new_tokens=40) for p, given in mixed_requests]


def test_generate_batch_equals_generate_for_each_prompt(engine, mixed_requests, alone, exact_in_float32) -> None:
    prompts = [p for p, _ in mixed_requests]
    passages = [given for _, given in mixed_requests]
    # batch_size 2 < 5 prompts: rows are refilled as others finish.
    batched = engine.generate_batch(prompts, passages=passages, max_new_tokens=40, batch_size=2)
    assert len(batched) == len(alone)
    for a, b in zip(alone, batched, strict=True):
        same_result(a, b)
        assert_citations_exact(b)
    assert any(r.citations for r in batched)  # the comparison covers citations, not only plain text


@pytest.mark.parametrize("first", [None, 1, 2])
def test_drafts_verified_in_pieces_give_the_same_answers(engine, mixed_requests, alone, monkeypatch, first) -> None:
    """A batch on a CPU verifies a new span's draft 4 tokens first, then 32 a step; any piece
    sizes give the same greedy answer as whole drafts (a piece with a rejection ends the
    verification)."""
    from nest_integrations import decoding

    pieces = []
    original = decoding.NestDecoder._forward

    def forward(self, tokens, outputs=None):
        if outputs is None:  # not a prompt
            pieces.append(len(tokens))
        return (yield from original(self, tokens, outputs))

    monkeypatch.setattr(decoding.NestDecoder, "_forward", forward)
    init = decoding.NestDecoder.__init__

    def with_pieces(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.verify_chunk, self.first_verify_chunk = 3, first

    monkeypatch.setattr(decoding.NestDecoder, "__init__", with_pieces)
    for (prompt, given), whole in zip(mixed_requests, alone, strict=True):
        same_result(whole, engine.generate(prompt, passages=given, max_new_tokens=40))
    assert max(r.stats.mean_accepted_span for r in alone) > 3  # spans longer than a piece were accepted
    assert pieces and max(pieces) <= 3
    if first is not None:
        assert first in pieces  # new spans did start with the short piece


def test_generate_batch_applies_stop_strings_and_grounded_only_per_row(engine, boulter_passages) -> None:
    prompts = ["Tell me about Robert Boulter.", "What is the airspeed of a swallow?"]
    given = [boulter_passages, []]
    options = {"max_new_tokens": 40, "stop": [" in "], "grounded_only": True}
    alone = [engine.generate(p, passages=g, **options) for p, g in zip(prompts, given, strict=True)]
    batched = engine.generate_batch(prompts, passages=given, **options)
    assert batched[1].finish_reason == "abstain"
    for a, b in zip(alone, batched, strict=True):
        same_result(a, b)


def test_generate_batch_raises_a_prompts_error_once_the_others_have_ended(lm, corpus_retriever) -> None:
    """One prompt's first stage fails: the error is raised after the other rows have ended (as
    without batching), not while they decode on for nobody."""

    class Flaky:
        def retrieve(self, query: str, k: int) -> list:
            if "boom" in query:
                raise RuntimeError("retriever down")
            return corpus_retriever.retrieve(query, k)

    engine = NestEngine(lm, retriever=Flaky(), max_batch=4)
    prompts = ["boom", "Tell me about Robert Boulter.", "Who was Nero?"]
    engine.generate_batch(prompts[1:], max_new_tokens=1)  # passage keys encoded: the rows decode at once
    with pytest.raises(RuntimeError, match="retriever down"):
        engine.generate_batch(prompts, max_new_tokens=64)
    scheduler = engine._scheduler
    assert scheduler._waiting.empty() and not scheduler._loop.rows  # a row leaves before its result is delivered


def test_batch_size_bounds_how_many_prompts_decode_at_once_on_a_batching_engine(engine) -> None:
    batching = NestEngine(engine.lm, retriever=engine.retriever, max_batch=4)
    prompts = ["Tell me about Robert Boulter.", "Who was Nero?", "Who was Otho?", "Tell me about Boulter."]
    results = batching.generate_batch(prompts, batch_size=2, max_new_tokens=12)
    assert batching._scheduler.peak_active <= 2  # the engine alone would take 4
    for prompt, result in zip(prompts, results, strict=True):
        assert result.text == engine.generate(prompt, max_new_tokens=12).text


def test_closing_a_submitted_request_before_reading_it_cancels_it(engine) -> None:
    batching = NestEngine(engine.lm, retriever=engine.retriever, max_batch=2)
    stream = batching._scheduler.submit(lambda: (_ for _ in ()).throw(AssertionError("never prepared")))
    stream.close()
    assert stream._submission.cancelled.is_set()
    assert list(stream) == []  # a closed stream yields nothing more


def test_generate_batch_checks_its_input_before_decoding(engine) -> None:
    with pytest.raises(ValueError, match="passages has 1 entries for 2 prompts"):
        engine.generate_batch(["a", "b"], passages=[[]])
    with pytest.raises(ConfigError, match="batch_size"):
        engine.generate_batch(["a"], batch_size=0)
    with pytest.raises(InvalidPromptError):
        engine.generate_batch(["Tell me about Robert Boulter.", "   "])
    with pytest.raises(ConfigError):
        engine.generate_batch(["a"], max_new_tokens=0)
    with pytest.raises(ConfigError, match="max_batch"):
        NestEngine(engine.lm, max_batch=0)
    assert engine.generate_batch([]) == []
    with pytest.raises(InvalidPromptError, match="list of prompts"):
        engine.generate_batch("Tell me about Robert Boulter.")


@pytest.fixture(scope="module")
def batching_engine(lm, corpus_retriever) -> NestEngine:
    return NestEngine(lm, retriever=corpus_retriever, max_batch=4)


def test_concurrent_callers_share_one_batch_and_get_their_own_answers(
    batching_engine, mixed_requests, alone, exact_in_float32
) -> None:
    results: dict[int, NestResult] = {}
    start = threading.Barrier(len(mixed_requests))

    def call(i: int) -> None:
        prompt, given = mixed_requests[i]
        start.wait()
        results[i] = batching_engine.generate(prompt, passages=given, max_new_tokens=40)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(mixed_requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert batching_engine._scheduler is not None and batching_engine._scheduler.peak_active >= 2
    for i, a in enumerate(alone):
        same_result(a, results[i])


def test_a_cancelled_stream_frees_its_row_and_leaves_the_others_alone(
    batching_engine, mixed_requests, alone, exact_in_float32
) -> None:
    async def main() -> list[NestResult]:
        async def cancelled() -> None:
            stream = batching_engine.astream("Tell me about Robert Boulter.", max_new_tokens=200)
            await anext(stream)
            await stream.aclose()  # the client went away after its first chunk

        calls = [batching_engine.agenerate(p, passages=g, max_new_tokens=40) for p, g in mixed_requests]
        *answers, _ = await asyncio.gather(*calls, cancelled())
        return answers

    answers = asyncio.run(main())
    for a, b in zip(alone, answers, strict=True):
        same_result(a, b)
    scheduler = batching_engine._scheduler
    assert scheduler is not None
    deadline = 100
    while scheduler.active and deadline:  # the cancelled row leaves at the next step boundary
        threading.Event().wait(0.1)
        deadline -= 1
    assert scheduler.active == 0


def test_a_batching_server_serves_50_concurrent_clients_each_as_if_alone(lm, corpus_retriever, engine) -> None:
    """Issue 17's load test: 50 clients at once, batch 8, queue 64: all served (no 429, no 5xx),
    every citation exact, each answer the unbatched one; a client that disconnects mid-stream
    frees its row; the server is idle and healthy afterwards."""
    openai = pytest.importorskip("openai")
    httpx = pytest.importorskip("httpx")
    from server_harness import running

    from nest_integrations.server.openai_api import ServerLimits, create_app

    questions = [
        f"Tell me about {name}." for name in ("Robert Boulter", "Du Fu", "Clayton Kershaw", "Nero", "Ise Shrine")
    ]
    reference = {q: engine.generate(q, max_new_tokens=8) for q in questions}
    batching = NestEngine(lm, retriever=corpus_retriever, max_batch=8)
    limits = ServerLimits(max_tokens=64, max_waiting=64, queue_timeout_s=600)
    passages = {p.id: p for p in corpus_retriever.passages}
    with running(create_app(batching, limits=limits)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)

        def ask(i: int) -> tuple[str, object]:
            q = questions[i % len(questions)]
            reply = client.chat.completions.create(
                model=lm.name, messages=[{"role": "user", "content": q}], max_tokens=8, temperature=0
            )
            return q, reply

        def disconnect() -> None:
            body = {"model": lm.name, "messages": [{"role": "user", "content": questions[0]}], "max_tokens": 64}
            with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=600) as r:
                for line in r.iter_lines():
                    if line.startswith("data: ") and '"content": "' in line and '"content": ""' not in line:
                        break  # the client goes away after its first piece of text

        with ThreadPoolExecutor(max_workers=51) as pool:
            gone = pool.submit(disconnect)
            replies = list(pool.map(ask, range(50)))
            gone.result()
        for q, reply in replies:
            message = reply.choices[0].message
            assert message.content == reference[q].text
            for c in message.model_extra["citations"]:
                assert message.content[c["output_start"] : c["output_end"]] == c["quote"]
                assert passages[c["passage_id"]].text[c["passage_start"] : c["passage_end"]] == c["quote"]
        assert any(reply.choices[0].message.model_extra["citations"] for _, reply in replies)
        assert batching._scheduler is not None and batching._scheduler.peak_active >= 2
        for _ in range(100):  # the disconnected stream's row leaves at a step boundary
            health = httpx.get(f"{url}/health").json()
            if health == {"status": "ok", "running": 0, "waiting": 0} and batching._scheduler.active == 0:
                break
            time.sleep(0.1)
        assert health == {"status": "ok", "running": 0, "waiting": 0}
        assert batching._scheduler.active == 0


def test_a_consumer_that_is_gone_leaves_the_rest_of_the_batch_alone(engine, mixed_requests, alone) -> None:
    """A job whose chunks cannot be delivered (an asyncio submitter whose loop closed) is
    dropped; the others decode on and the loop keeps serving."""
    from nest_integrations.batching import BatchLoop

    def prepare(i: int):
        prompt, given = mixed_requests[i]
        return engine._submission(prompt, given, None, None, None, {"max_new_tokens": 40}).prepared()()

    def gone(item) -> None:
        raise RuntimeError("Event loop is closed")

    got = []
    loop = BatchLoop(engine.lm)
    loop.add(prepare(0), gone)
    loop.add(prepare(1), got.append)
    while loop.rows:
        loop.step()
    same_result(alone[1], got[-1].result)
    assert len(loop.model) == 0


def test_generate_batch_on_a_batching_engine_decodes_together(
    lm, corpus_retriever, mixed_requests, alone, exact_in_float32
) -> None:
    batching = NestEngine(lm, retriever=corpus_retriever, max_batch=4)
    prompts, given = [p for p, _ in mixed_requests], [g for _, g in mixed_requests]
    results = batching.generate_batch(prompts, passages=given, max_new_tokens=40)
    for a, b in zip(alone, results, strict=True):
        same_result(a, b)
    scheduler = batching._scheduler
    assert scheduler is not None and scheduler.peak_active >= 2
    scheduler.close()  # what runs at interpreter exit: its requests end, later ones are refused
    assert scheduler.closed and not scheduler.has_work()
    with pytest.raises(RuntimeError, match="closed"):
        batching.generate("Hi", passages=[], max_new_tokens=2)


def test_admission_counts_requests_arriving_together() -> None:
    from nest_integrations.server.admission import Admission, Busy, TimedOut

    async def main() -> tuple[int, int, int]:
        admission = Admission(max_waiting=2, timeout=0.2, concurrency=4)
        outcomes = await asyncio.gather(*(admission.acquire() for _ in range(10)), return_exceptions=True)
        busy = sum(isinstance(o, Busy) for o in outcomes)
        timed_out = sum(isinstance(o, TimedOut) for o in outcomes)
        return busy, timed_out, admission.running

    busy, timed_out, running = asyncio.run(main())
    assert (busy, timed_out, running) == (4, 2, 4)  # 4 run, 2 wait (and time out), 4 refused at once


def test_a_non_streaming_client_that_disconnects_frees_its_batch_place(lm, corpus_retriever) -> None:
    httpx = pytest.importorskip("httpx")
    from server_harness import running

    from nest_integrations.server.openai_api import ServerLimits, create_app

    batching = NestEngine(lm, retriever=corpus_retriever, max_batch=2)
    body = {"model": lm.name, "messages": [{"role": "user", "content": "Tell me about Du Fu."}], "max_tokens": 2000}
    with running(create_app(batching, limits=ServerLimits(max_tokens=2000))) as url:
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{url}/v1/chat/completions", json=body, timeout=3)  # gives up long before 2000 tokens
        for _ in range(150):  # 15 s: far less than decoding 2000 tokens takes here
            health = httpx.get(f"{url}/health").json()
            if health["running"] == 0 and batching._scheduler is not None and batching._scheduler.active == 0:
                break
            time.sleep(0.1)
        assert health == {"status": "ok", "running": 0, "waiting": 0}
        assert batching._scheduler is not None and batching._scheduler.active == 0


def test_outputs_for_the_last_tokens_only_without_logits_to_keep(lm, monkeypatch) -> None:
    """A model whose forward lacks ``logits_to_keep`` computes every position; the step models
    still return only the wanted ones, equal to those a model with the argument returns."""
    from nest_integrations import step_model

    ids = lm.tokenizer("Who was Nero?")["input_ids"]
    requests = {0: Forward(ids, 0, outputs=1), 1: Forward(ids[:-1], 0, outputs=2)}
    with_argument = BatchedStepModel(lm, need_hidden=True).step(requests)
    monkeypatch.setitem(step_model._KEEPS_LOGITS, type(lm.model), False)
    without = BatchedStepModel(lm, need_hidden=True).step(requests)
    single = SingleStepModel(lm, need_hidden=False).step({0: Forward(ids, 0, outputs=1)})[0]
    for r in requests:
        assert with_argument[r].logits.shape == (requests[r].wanted(), lm.model.config.vocab_size)
        torch.testing.assert_close(without[r].logits, with_argument[r].logits, atol=1e-4, rtol=0)
        torch.testing.assert_close(without[r].hidden, with_argument[r].hidden, atol=1e-4, rtol=0)
    torch.testing.assert_close(single.logits, with_argument[0].logits, atol=1e-3, rtol=0)


def test_a_client_that_leaves_the_queue_gives_its_place_back() -> None:
    """The server waits for admission unless the client disconnects first (then nothing is held)."""
    from nest_integrations.server.admission import Admission
    from nest_integrations.server.openai_api import _admitted, _unless_disconnected

    class GoneAfterAWhile:
        async def receive(self) -> dict:
            await asyncio.sleep(0.05)
            return {"type": "http.disconnect"}

    async def scenario() -> tuple:
        admission = Admission(max_waiting=1, timeout=30, concurrency=1)
        await admission.acquire()  # the one running request
        left = await _unless_disconnected(GoneAfterAWhile(), _admitted(admission))  # type: ignore[arg-type]
        waiting_after = admission.waiting
        admission.release()
        admitted = await _unless_disconnected(GoneAfterAWhile(), _admitted(admission))  # type: ignore[arg-type]
        return left, waiting_after, admitted, admission.running

    assert asyncio.run(scenario()) == (None, 0, True, 1)


def test_streaming_clients_that_leave_at_once_give_back_every_place(lm, corpus_retriever) -> None:
    """Streaming clients that disconnect within ~50 ms (some still queued, some just admitted,
    some before the first chunk is sent) leave no place taken: a few such clients once wedged
    the server (every later request waited, then got 503)."""
    httpx = pytest.importorskip("httpx")
    from server_harness import running

    from nest_integrations.server.openai_api import ServerLimits, create_app

    batching = NestEngine(lm, retriever=corpus_retriever, max_batch=4)
    body = {"model": lm.name, "messages": [{"role": "user", "content": "Who wrote Herons?"}], "max_tokens": 32}

    async def leave_early(url: str, n: int) -> None:
        async with httpx.AsyncClient(timeout=30) as client:

            async def one() -> None:
                task = asyncio.ensure_future(client.post(f"{url}/v1/chat/completions", json={**body, "stream": True}))
                await asyncio.sleep(0.05)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

            await asyncio.gather(*[one() for _ in range(n)])

    limits = ServerLimits(max_tokens=64, max_waiting=2, queue_timeout_s=20)
    with running(create_app(batching, limits=limits)) as url:
        for _ in range(3):
            asyncio.run(leave_early(url, 6))
        for _ in range(300):  # 30 s: the abandoned requests' decoding ends long before
            health = httpx.get(f"{url}/health").json()
            if health["running"] == 0:
                break
            time.sleep(0.1)
        assert health == {"status": "ok", "running": 0, "waiting": 0}
        served = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
        assert served.status_code == 200 and served.json()["choices"][0]["message"]["content"]


def test_a_prompt_that_wants_every_position_gets_every_position_with_a_cached_prefix(lm) -> None:
    model = BatchedStepModel(lm, need_hidden=True)
    first, second = chat_ids(lm, "Who was Nero?"), chat_ids(lm, "Who was Otho?")
    model.step({0: Forward(first, 0, outputs=1)})
    out = model.step({1: Forward(second, 0)})[1]  # outputs=None: every position's logits
    assert out.logits.shape[0] == len(second) and model.prefix_tokens_reused == 0
    assert model.step({2: Forward(second, 0, outputs=3)})[2].logits.shape[0] == 3
    assert model.prefix_tokens_reused > 0
