"""A real Chroma server (loopback) holding the default corpus as ChatNest's first stage."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_nest import ChatNest, NestEmbeddings
from nest_integrations import default_corpus
from nest_integrations.index import chunk_documents

pytestmark = pytest.mark.slow
chromadb = pytest.importorskip("chromadb", reason="install the adapter's test extra: chromadb")
langchain_chroma = pytest.importorskip("langchain_chroma", reason="install the adapter's test extra: langchain-chroma")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def chroma_client(tmp_path_factory) -> Iterator[object]:
    # The `chroma` command sits next to this interpreter even when its venv is not activated.
    beside = Path(sys.executable).parent / "chroma"
    exe = str(beside) if beside.is_file() else shutil.which("chroma")
    assert exe, "the chromadb package provides the `chroma` command"
    port = _free_port()
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
    server = subprocess.Popen(
        [exe, "run", "--path", str(tmp_path_factory.mktemp("chroma")), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # the client connects on creation: retry until the server listens
            try:
                client = chromadb.HttpClient(
                    host="127.0.0.1", port=port, settings=chromadb.Settings(anonymized_telemetry=False)
                )
                client.heartbeat()
                break
            except Exception:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.5)
        yield client
    finally:  # stopped also when tests fail
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture(scope="module")
def chroma_store(chroma_client, embeddings: NestEmbeddings):
    passages = chunk_documents(default_corpus())
    store = langchain_chroma.Chroma(collection_name="wikitext103", embedding_function=embeddings, client=chroma_client)
    batch = 1000
    for i in range(0, len(passages), batch):
        part = passages[i : i + batch]
        store.add_texts(
            [p.text for p in part],
            metadatas=[{"title": p.title, "source": p.document_id, "start_index": p.start} for p in part],
            ids=[p.id for p in part],
        )
    return store


def test_chain_over_chroma_cites_text_that_is_in_the_chroma_document(chroma_store, chroma_client) -> None:
    llm = ChatNest(retriever=chroma_store.as_retriever(search_kwargs={"k": 20}), temperature=0, max_tokens=64)
    msg = llm.invoke("Tell me about Clayton Kershaw.")
    annotations = msg.content_blocks[0].get("annotations", [])
    assert annotations, msg
    collection = chroma_client.get_collection("wikitext103")
    for a in annotations:
        assert msg.text[a["start_index"] : a["end_index"]] == a["cited_text"]
        stored = collection.get(ids=[a["extras"]["passage_id"]], include=["documents", "metadatas"])
        assert a["cited_text"] in stored["documents"][0]
        assert stored["metadatas"][0]["source"] == a["extras"]["document_id"]
    assert annotations[0]["extras"]["document_id"] == "Clayton_Kershaw"
    chain = ChatPromptTemplate.from_messages([("human", "{question}")]) | llm | StrOutputParser()
    assert chain.invoke({"question": "Tell me about Clayton Kershaw."}) == msg.text
