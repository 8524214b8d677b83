"""Ray Serve scale-out for real: 2 replicas of the OpenAI-compatible app on a local Ray cluster
(loopback only), sharing one Chroma server as their first stage, through the `openai` client."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from server_harness import free_port

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray", reason='Ray Serve is optional: pip install "nest-integrations[ray]"')
serve = pytest.importorskip("ray.serve", reason='Ray Serve is optional: pip install "nest-integrations[ray]"')
chromadb = pytest.importorskip("chromadb", reason='the shared first stage needs chromadb (the "ray" extra)')
openai = pytest.importorskip("openai")

from nest_integrations import default_corpus, default_retriever  # noqa: E402
from nest_integrations.server.chroma_store import ChromaRetriever, connect, upload_index  # noqa: E402
from nest_integrations.server.ray_app import build_app  # noqa: E402

QUESTION = "Tell me about Clayton Kershaw."
COLLECTION = "wikitext103"


@pytest.fixture(scope="module")
def chroma(tmp_path_factory) -> Iterator[tuple[object, int]]:
    """A Chroma server on 127.0.0.1 holding the default corpus (its index's own vectors)."""
    beside = Path(sys.executable).parent / "chroma"  # next to this interpreter even outside an activated venv
    exe = str(beside) if beside.is_file() else shutil.which("chroma")
    assert exe, "the chromadb package provides the `chroma` command"
    port = free_port()
    server = subprocess.Popen(
        [exe, "run", "--path", str(tmp_path_factory.mktemp("chroma")), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "ANONYMIZED_TELEMETRY": "False"},
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # the client connects on creation: retry until the server listens
            try:
                client = connect("127.0.0.1", port)
                client.heartbeat()
                break
            except Exception:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.5)
        upload_index("default", client, COLLECTION)
        yield client, port
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def test_the_chroma_store_returns_the_indexed_passages_intact(chroma) -> None:
    client, _ = chroma
    corpus_retriever = default_retriever(progress=False)  # the index alone: no model in this process
    assert upload_index("default", client, COLLECTION) == len(corpus_retriever.passages)  # upsert: no duplicates
    assert client.get_collection(COLLECTION).count() == len(corpus_retriever.passages)
    store = ChromaRetriever(client, COLLECTION, embedder=corpus_retriever.embedder)
    hits = store.retrieve(QUESTION, 5)
    dense = corpus_retriever.dense_retrieve(QUESTION, 5)
    assert [h.passage for h in hits] == [h.passage for h in dense]  # same passages, every field, same order
    for got, want in zip(hits, dense, strict=True):
        assert got.score == pytest.approx(want.score, abs=1e-4)  # cosine similarity either way
    assert store.retrieve("  ", 5) == []


@pytest.fixture(scope="module")
def ray_serve(chroma, tmp_path_factory) -> Iterator[str]:
    """A local Ray cluster bound to 127.0.0.1 running the app with 2 replicas; torn down afterwards."""
    _, chroma_port = chroma
    saved = dict(os.environ)
    os.environ.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # keeps Ray on 127.0.0.1, not the external interface
        RAY_USAGE_STATS_ENABLED="0",
        HOME=str(tmp_path_factory.mktemp("home")),  # Ray's auth token goes to ~/.ray: keep it out of the real home
    )
    port = free_port()
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = build_app(
            {"chroma_port": chroma_port, "collection": COLLECTION, "replicas": 2, "num_cpus": 0.5, "torch_threads": 1}
        )
        serve.run(app, name="nest", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        os.environ.clear()
        os.environ.update(saved)


def test_two_ray_serve_replicas_answer_the_openai_client_with_verified_citations(chroma, ray_serve) -> None:
    client_db, _ = chroma
    collection = client_db.get_collection(COLLECTION)
    documents = {d.id: d.text for d in default_corpus()}
    client = openai.OpenAI(base_url=f"{ray_serve}/v1", api_key="unused", max_retries=0, timeout=300)
    model_id = client.models.list().data[0].id
    messages = [{"role": "user", "content": QUESTION}]

    def ask(_: int):
        raw = client.chat.completions.with_raw_response.create(
            model=model_id, messages=messages, max_tokens=32, temperature=0
        )
        return raw.headers["x-nest-replica"], raw.parse()

    replicas: set[str] = set()
    answers = []
    with ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):  # Ray routes each request to the less busy of two replicas
            for replica, completion in pool.map(ask, range(4)):
                replicas.add(replica)
                answers.append(completion)
            if len(replicas) == 2:
                break
    assert len(replicas) == 2, replicas  # both replicas served
    texts = {a.choices[0].message.content for a in answers}
    assert len(texts) == 1  # greedy: every replica gives the same answer from the shared store
    for answer in answers:
        text, citations = answer.choices[0].message.content, answer.choices[0].message.model_extra["citations"]
        assert citations
        stored = collection.get(ids=[c["passage_id"] for c in citations], include=["documents", "metadatas"])
        source = dict(zip(stored["ids"], stored["documents"], strict=True))
        for c in citations:
            assert text[c["output_start"] : c["output_end"]] == c["quote"]
            assert source[c["passage_id"]][c["passage_start"] : c["passage_end"]] == c["quote"]
            assert documents[c["document_id"]][c["document_start"] : c["document_end"]] == c["quote"]
        assert citations[0]["document_id"] == "Clayton_Kershaw"
    # Streaming goes through Ray's proxy too, and ends properly.
    pieces, streamed_citations, finish = [], [], None
    for chunk in client.chat.completions.create(
        model=model_id, messages=messages, max_tokens=32, temperature=0, stream=True
    ):
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            streamed_citations += (choice.delta.model_extra or {}).get("citations") or []
            finish = choice.finish_reason or finish
    assert "".join(pieces) == answers[0].choices[0].message.content
    # A request batched with others gets the same citations; their scores (1 - lambda) may
    # differ in the last float digits (summation order), so they are compared to 1e-4.
    expected = answers[0].choices[0].message.model_extra["citations"]
    assert [{**c, "score": None} for c in streamed_citations] == [{**c, "score": None} for c in expected]
    assert [c["score"] for c in streamed_citations] == pytest.approx([c["score"] for c in expected], abs=1e-4)
    assert finish in ("stop", "length")
    bad = httpx.post(f"{ray_serve}/v1/chat/completions", json={"model": model_id, "messages": [], "seed": -1})
    assert bad.status_code == 400 and bad.json()["error"]["message"]
