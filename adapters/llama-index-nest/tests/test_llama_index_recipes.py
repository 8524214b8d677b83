"""The standard LlamaIndex recipes keep NEST's citations: as_query_engine / RetrieverQueryEngine
with NestSynthesizer and the context chat engine equal NestQueryEngine on the same index;
engine retrievers; the offline embedding class."""

from __future__ import annotations

import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

from llama_index.llms.nest import (
    NestChatEngine,
    NestEmbedding,
    NestLLM,
    NestQueryEngine,
    NestSynthesizer,
    PassageRetrieverAdapter,
    nodes_to_passages,
)
from nest_integrations import StaticRetriever, default_corpus
from nest_integrations.index import chunk_documents

pytestmark = pytest.mark.slow
QUESTION = "Tell me about Robert Boulter."
ARTICLES = ("Robert_Boulter", "Clayton_Kershaw", "Du_Fu", "Dick_Rifenburg")


@pytest.fixture(scope="module")
def small_index() -> VectorStoreIndex:
    """Four articles' passages as nodes that keep document and char range, embedded with NestEmbedding."""
    nodes = [
        TextNode(
            id_=p.id,
            text=p.text,
            metadata={"title": p.title},
            start_char_idx=p.start,
            end_char_idx=p.end,
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=p.document_id)},
        )
        for p in chunk_documents([d for d in default_corpus() if d.id in ARTICLES])
    ]
    return VectorStoreIndex(nodes, embed_model=NestEmbedding())


@pytest.fixture(scope="module")
def llm() -> NestLLM:
    return NestLLM(max_tokens=64)


@pytest.fixture(scope="module")
def native(small_index, llm):
    return NestQueryEngine.from_index(small_index, similarity_top_k=20, llm=llm).query(QUESTION)


def check_citations(text: str, source_nodes, metadata, documents) -> None:
    nodes = {n.node.node_id: n.node for n in source_nodes}
    assert metadata["citations"]
    assert set(nodes) == {c["node_id"] for c in metadata["citations"]}  # source_nodes: the cited nodes
    for c in metadata["citations"]:
        assert text[c["output_start"] : c["output_end"]] == c["quote"]
        assert nodes[c["node_id"]].text[c["passage_start"] : c["passage_end"]] == c["quote"]
        assert documents[c["document_id"]][c["document_start"] : c["document_end"]] == c["quote"]


def same(a, b, same_citations) -> None:
    assert str(a.response) == str(b.response)
    assert same_citations(a.metadata["citations"], b.metadata["citations"])
    assert [n.node.node_id for n in a.source_nodes] == [n.node.node_id for n in b.source_nodes]


def test_as_query_engine_with_the_synthesizer_equals_nest_query_engine(
    small_index, llm, native, documents, same_citations
) -> None:
    engine = small_index.as_query_engine(llm=llm, response_synthesizer=NestSynthesizer(llm), similarity_top_k=20)
    response = engine.query(QUESTION)
    same(response, native, same_citations)
    check_citations(response.response, response.source_nodes, response.metadata, documents)
    retriever_engine = RetrieverQueryEngine(
        small_index.as_retriever(similarity_top_k=20), response_synthesizer=NestSynthesizer(llm)
    )
    same(retriever_engine.query(QUESTION), native, same_citations)


async def test_synthesizer_streams_and_runs_async_with_the_same_answer(
    small_index, llm, native, same_citations
) -> None:
    streaming = small_index.as_query_engine(
        llm=llm, response_synthesizer=NestSynthesizer(llm, streaming=True), similarity_top_k=20
    ).query(QUESTION)
    text = "".join(streaming.response_gen)
    assert text == native.response
    assert same_citations(streaming.metadata["citations"], native.metadata["citations"])
    engine = small_index.as_query_engine(llm=llm, response_synthesizer=NestSynthesizer(llm), similarity_top_k=20)
    same(await engine.aquery(QUESTION), native, same_citations)


def test_chat_engine_cites_and_its_first_turn_equals_the_query_engine(
    small_index, llm, native, documents, same_citations
) -> None:
    chat = NestChatEngine.from_index(small_index, similarity_top_k=20, llm=llm)
    first = chat.chat(QUESTION)
    assert first.response == native.response
    assert same_citations(first.metadata["citations"], native.metadata["citations"])
    assert [n.node.node_id for n in first.source_nodes] == [n.node.node_id for n in native.source_nodes]
    check_citations(first.response, first.source_nodes, first.metadata, documents)
    second = chat.chat("Tell me about Du Fu.")
    assert [m.role.value for m in chat.chat_history] == ["user", "assistant", "user", "assistant"]
    assert chat.chat_history[1].content == first.response
    if second.metadata["citations"]:
        check_citations(second.response, second.source_nodes, second.metadata, documents)
    chat.reset()
    assert chat.chat_history == []


async def test_chat_engine_streams_and_runs_async(small_index, llm, native, same_citations) -> None:
    chat = NestChatEngine.from_index(small_index, similarity_top_k=20, llm=llm)
    streamed = chat.stream_chat(QUESTION)
    text = "".join(streamed.response_gen)
    assert text == native.response
    assert same_citations(streamed.sources[0].raw_output.metadata["citations"], native.metadata["citations"])
    assert [n.node.node_id for n in streamed.source_nodes] == [n.node.node_id for n in native.source_nodes]
    achat = NestChatEngine.from_index(small_index, similarity_top_k=20, llm=llm)
    reply = await achat.achat(QUESTION)
    assert reply.response == native.response and same_citations(
        reply.metadata["citations"], native.metadata["citations"]
    )
    astreamed = await NestChatEngine.from_index(small_index, similarity_top_k=20, llm=llm).astream_chat(QUESTION)
    assert "".join([t async for t in astreamed.async_response_gen()]) == native.response


def test_engine_passage_retriever_in_the_query_engine(small_index, llm, documents) -> None:
    nodes = small_index.as_retriever(similarity_top_k=20).retrieve(QUESTION)
    passages = nodes_to_passages(nodes)
    engine = NestQueryEngine.from_retriever(StaticRetriever(passages), llm=llm)
    assert isinstance(engine.retriever, PassageRetrieverAdapter)
    response = engine.query(QUESTION)
    check_citations(response.response, response.source_nodes, response.metadata, documents)
    back = nodes_to_passages(engine.retriever.retrieve(QUESTION))
    assert [(p.passage.id, p.passage.text, p.passage.document_id, p.passage.start, p.score) for p in back] == [
        (p.passage.id, p.passage.text, p.passage.document_id, p.passage.start, p.score) for p in passages
    ]
    with pytest.raises(TypeError, match="PassageRetriever"):
        NestQueryEngine(retriever=object(), llm=llm)


def test_embedding_class_matches_the_huggingface_one_and_builds_an_index(embed_model) -> None:
    nest = NestEmbedding(device="cpu", embed_batch_size=8)
    texts = [QUESTION, "Du Fu was a Chinese poet."]
    ours = nest.get_text_embedding_batch(texts)
    theirs = embed_model.get_text_embedding_batch(texts)
    for a, b in zip(ours, theirs, strict=True):
        assert len(a) == 384 and a == pytest.approx(b, abs=1e-4)
    assert nest.get_query_embedding(QUESTION) == pytest.approx(ours[0], abs=1e-6)
    index = VectorStoreIndex([TextNode(id_=str(i), text=t) for i, t in enumerate(texts)], embed_model=nest)
    hits = index.as_retriever(similarity_top_k=1).retrieve("Which poet?")
    assert hits[0].node.node_id == "1"
