"""Real databases as NEST's first stage: PostgreSQL + pgvector (``pgserver``, a Unix socket in a
temp dir) through ``langchain-postgres``, and Qdrant local mode through ``langchain-qdrant``.

Each store serves ChatNest(retriever=...) and the create_retrieval_chain recipe; both give the
same cited answer, and every citation is checked against the row or point the store holds.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_classic.chains import create_retrieval_chain
from langchain_core.messages import AIMessage

from langchain_nest import ChatNest, NestEmbeddings, create_nest_documents_chain

pytestmark = pytest.mark.slow
QUESTION = "Tell me about Clayton Kershaw."


def annotations(msg: AIMessage) -> list[dict]:
    return [a for block in msg.content_blocks for a in block.get("annotations", [])]


def native_and_chain(retriever) -> tuple[AIMessage, dict]:
    native = ChatNest(retriever=retriever, temperature=0, max_tokens=64).invoke(QUESTION)
    chain = create_retrieval_chain(retriever, create_nest_documents_chain(ChatNest(temperature=0, max_tokens=64)))
    return native, chain.invoke({"input": QUESTION})


def check_against_store(msg: AIMessage, stored, article_texts: dict[str, str]) -> None:
    """``stored(passage_id) -> (text, metadata)`` reads the row/point back from the database."""
    cits = annotations(msg)
    assert cits, msg
    for c in cits:
        x = c["extras"]
        text, meta = stored(x["passage_id"])
        assert msg.text[c["start_index"] : c["end_index"]] == c["cited_text"]
        assert text[x["passage_start"] : x["passage_end"]] == c["cited_text"]
        assert meta["source"] == x["document_id"]
        assert article_texts[x["document_id"]][x["document_start"] : x["document_end"]] == c["cited_text"]
    assert cits[0]["extras"]["document_id"] == "Clayton_Kershaw"


# PostgreSQL + pgvector -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_uri() -> Iterator[str]:
    """A PostgreSQL 16 + pgvector server on a Unix socket in a temp dir; stopped and deleted afterwards."""
    pgserver = pytest.importorskip("pgserver", reason="install the adapter's test extra: pgserver")
    data = Path(tempfile.mkdtemp(prefix="nest-pg-"))
    data.chmod(0o777)  # as root, pgserver runs PostgreSQL as its own system user
    try:
        server = pgserver.get_server(data, cleanup_mode="delete")
    except Exception as e:  # pragma: no cover - depends on the machine
        shutil.rmtree(data, ignore_errors=True)
        pytest.skip(f"pgserver could not start PostgreSQL here: {e}")
    try:
        yield server.get_uri().replace("postgresql://", "postgresql+psycopg://", 1)
    finally:
        server.cleanup()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_store(pg_uri, corpus_documents, embeddings: NestEmbeddings):
    from langchain_postgres import PGVector

    store = PGVector(embeddings=embeddings, connection=pg_uri, collection_name="nest_test", use_jsonb=True)
    store.add_documents(corpus_documents, ids=[d.id for d in corpus_documents])
    return store


def test_pgvector_first_stage_cites_rows_of_the_database(pg_store, pg_uri, article_texts, same_citations) -> None:
    import psycopg

    native, out = native_and_chain(pg_store.as_retriever(search_kwargs={"k": 20}))
    assert out["answer"].text == native.text
    assert same_citations(annotations(out["answer"]), annotations(native))
    with psycopg.connect(pg_uri.replace("postgresql+psycopg://", "postgresql://", 1)) as conn:

        def stored(pid: str) -> tuple[str, dict]:
            sql = "SELECT document, cmetadata FROM langchain_pg_embedding WHERE id = %s"
            row = conn.execute(sql, (pid,)).fetchone()
            assert row is not None, pid
            return row[0], row[1]

        check_against_store(native, stored, article_texts)


async def test_pgvector_async_mode_gives_the_same_answer(pg_store, pg_uri, embeddings, same_citations) -> None:
    from langchain_postgres import PGVector

    store = PGVector(embeddings=embeddings, connection=pg_uri, collection_name="nest_test", async_mode=True)
    retriever = store.as_retriever(search_kwargs={"k": 20})
    sync = ChatNest(retriever=pg_store.as_retriever(search_kwargs={"k": 20}), temperature=0, max_tokens=64)
    expected = sync.invoke(QUESTION)
    got = await ChatNest(retriever=retriever, temperature=0, max_tokens=64).ainvoke(QUESTION)
    assert got.text == expected.text and same_citations(annotations(got), annotations(expected))


# Qdrant local mode ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qdrant_store(corpus_documents, embeddings: NestEmbeddings):
    pytest.importorskip("langchain_qdrant", reason="install the adapter's test extra: langchain-qdrant")
    from langchain_qdrant import QdrantVectorStore

    ids = [str(uuid.uuid5(uuid.NAMESPACE_URL, d.id)) for d in corpus_documents]  # Qdrant ids are UUIDs
    return QdrantVectorStore.from_documents(
        corpus_documents, embedding=embeddings, location=":memory:", collection_name="nest_test", ids=ids
    )


def test_qdrant_local_first_stage_cites_points_of_the_collection(qdrant_store, article_texts, same_citations) -> None:
    native, out = native_and_chain(qdrant_store.as_retriever(search_kwargs={"k": 20}))
    assert out["answer"].text == native.text
    assert same_citations(annotations(out["answer"]), annotations(native))

    def stored(pid: str) -> tuple[str, dict]:
        (point,) = qdrant_store.client.retrieve("nest_test", ids=[pid], with_payload=True)
        return point.payload["page_content"], point.payload["metadata"]

    check_against_store(native, stored, article_texts)
