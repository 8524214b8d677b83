"""ChatNest, NestLLM and the tool over a real vector store, on the embedded model."""

from __future__ import annotations

import asyncio
import time

import pytest
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever

from langchain_nest import ChatNest, NestLLM, create_nest_tool

pytestmark = pytest.mark.slow
QUESTION = "Tell me about Robert Boulter."


class ListRetriever(BaseRetriever):
    docs: list[Document]

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return self.docs


class FailingRetriever(BaseRetriever):
    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        raise ConnectionError("vector store unreachable")


@pytest.fixture(scope="module")
def llm(vectorstore) -> ChatNest:
    return ChatNest(retriever=vectorstore.as_retriever(search_kwargs={"k": 20}), temperature=0, max_tokens=64)


def annotations(msg: AIMessage) -> list[dict]:
    return [a for block in msg.content_blocks for a in block.get("annotations", [])]


def assert_citations_hold(msg: AIMessage, docs_by_id: dict[str, str], article_texts: dict[str, str]) -> None:
    cits = annotations(msg)
    for c in cits:
        assert msg.text[c["start_index"] : c["end_index"]] == c["cited_text"]
        extras = c["extras"]
        assert c["cited_text"] in docs_by_id[extras["passage_id"]]
        page = docs_by_id[extras["passage_id"]]
        assert page[extras["passage_start"] : extras["passage_end"]] == c["cited_text"]
        doc_text = article_texts[extras["document_id"]]
        assert doc_text[extras["document_start"] : extras["document_end"]] == c["cited_text"]


@pytest.fixture(scope="module")
def docs_by_id(corpus_documents) -> dict[str, str]:
    return {d.id: d.page_content for d in corpus_documents}


def test_invoke_returns_cited_answer_with_standard_annotations(llm, docs_by_id, article_texts) -> None:
    msg = llm.invoke(QUESTION)
    assert isinstance(msg.content, str) and msg.content == msg.text
    cits = annotations(msg)
    assert cits, msg
    assert all(c["type"] == "citation" and c["title"] == "Robert Boulter" for c in cits[:1])
    assert_citations_hold(msg, docs_by_id, article_texts)
    assert msg.usage_metadata["output_tokens"] == msg.response_metadata["nest"]["tokens_generated"]
    assert (
        msg.usage_metadata["total_tokens"] == msg.usage_metadata["input_tokens"] + msg.usage_metadata["output_tokens"]
    )
    assert msg.response_metadata["model_name"] == "SmolLM2-135M-Instruct"
    assert msg.response_metadata["nest"]["attribution_ratio"] > 0


def test_stream_matches_invoke_text_and_citations(llm) -> None:
    msg = llm.invoke(QUESTION)
    chunks = list(llm.stream(QUESTION))
    full = chunks[0]
    for c in chunks[1:]:
        full += c
    assert full.text == msg.text
    assert [(a["start_index"], a["end_index"], a["cited_text"]) for a in annotations(full)] == [
        (a["start_index"], a["end_index"], a["cited_text"]) for a in annotations(msg)
    ]
    # Citations ride on the chunk that completes their span, never before the text exists.
    seen = 0
    for c in chunks:
        seen += len(c.text)
        assert all(cit["output_end"] <= seen for cit in c.response_metadata.get("citations", []))
    assert full.response_metadata["model_name"] == "SmolLM2-135M-Instruct"
    assert full.usage_metadata["output_tokens"] == msg.usage_metadata["output_tokens"]


async def test_async_matches_sync_and_does_not_block_the_event_loop(llm) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    start = time.perf_counter()
    amsg = await llm.ainvoke(QUESTION)
    elapsed = time.perf_counter() - start
    streamed = "".join([c.text async for c in llm.astream(QUESTION)])
    task.cancel()
    assert amsg.text == streamed == llm.invoke(QUESTION).text
    assert ticks >= 0.3 * elapsed / 0.01  # the loop kept running while the model worked


def test_lcel_chain_with_str_output_parser(llm) -> None:
    prompt = ChatPromptTemplate.from_messages([("system", "Answer briefly."), ("human", "{question}")])
    answer = (prompt | llm | StrOutputParser()).invoke({"question": QUESTION})
    assert isinstance(answer, str) and answer


def test_batch_decodes_together_and_equals_sequential(llm) -> None:
    questions = [QUESTION, "Tell me about Du Fu.", "Who was Clayton Kershaw?"]
    batched = llm.batch(questions)  # LangChain's thread pool: the calls share the engine's batch
    alone = [llm.invoke(q) for q in questions]
    assert [m.text for m in batched] == [m.text for m in alone]
    quotes = [[(a["start_index"], a["end_index"], a["cited_text"]) for a in annotations(m)] for m in alone]
    assert [[(a["start_index"], a["end_index"], a["cited_text"]) for a in annotations(m)] for m in batched] == quotes
    assert any(quotes)
    assert llm._engine()._scheduler.peak_active >= 2


def test_stop_and_max_tokens_are_honoured(llm) -> None:
    full = llm.invoke(QUESTION)
    cut = full.text.find(" in ")
    assert cut > 0
    assert llm.invoke(QUESTION, stop=[" in "]).text == full.text[:cut]
    short = llm.invoke(QUESTION, max_tokens=5)
    assert short.usage_metadata["output_tokens"] <= 5


def test_custom_query_from_messages(vectorstore) -> None:
    llm = ChatNest(
        retriever=vectorstore.as_retriever(search_kwargs={"k": 5}),
        query_from_messages=lambda msgs: "Clayton Kershaw baseball pitcher",
        max_tokens=32,
    )
    # The message names no one in the corpus ("Zorblax"): the engine's relevance and source-coverage
    # checks must use the same query as the first stage, or it would decline to copy anything.
    msg = llm.invoke([SystemMessage("Be brief."), HumanMessage("Tell me about him, the pitcher Zorblax admired.")])
    found = annotations(msg)
    assert found and all(a["extras"]["document_id"] == "Clayton_Kershaw" for a in found)
    assert msg.response_metadata["nest"]["source_coverage"] == 1.0


def test_bad_input(corpus_documents) -> None:
    with pytest.raises(ValueError):
        ChatNest(max_tokens=8).invoke([])
    with pytest.raises(ConnectionError, match="unreachable"):
        ChatNest(retriever=FailingRetriever(), max_tokens=8).invoke(QUESTION)
    empty = ChatNest(retriever=ListRetriever(docs=[]), max_tokens=16).invoke(QUESTION)
    assert empty.text and annotations(empty) == []
    odd = [
        Document(page_content="", metadata={"title": "blank"}),
        Document(page_content="   ", metadata={}),
        Document(
            page_content=corpus_documents[0].page_content,
            metadata={"title": 42, "source": ("tuple", 1), "when": time.gmtime(0), "start_index": "x"},
        ),
    ]
    msg = ChatNest(retriever=ListRetriever(docs=odd), max_tokens=32).invoke(QUESTION)
    for a in annotations(msg):
        assert a["cited_text"] in corpus_documents[0].page_content


def test_nest_llm_completion(vectorstore) -> None:
    llm = NestLLM(retriever=vectorstore.as_retriever(search_kwargs={"k": 20}), max_tokens=48)
    text = llm.invoke(QUESTION)
    streamed = "".join(llm.stream(QUESTION))
    assert text == streamed and text
    result = llm.generate([QUESTION])
    info = result.generations[0][0].generation_info
    for c in info["citations"]:
        assert text[c["output_start"] : c["output_end"]] == c["quote"]


def test_agent_tool_returns_answer_and_citations_artifact(llm, docs_by_id) -> None:
    tool = create_nest_tool(llm)
    out = tool.invoke({"type": "tool_call", "id": "call-1", "name": tool.name, "args": {"question": QUESTION}})
    assert out.tool_call_id == "call-1" and "[1]" in out.content
    artifact = out.artifact
    assert artifact["citations"]
    for c in artifact["citations"]:
        assert artifact["answer"][c["output_start"] : c["output_end"]] == c["quote"]
        assert c["quote"] in docs_by_id[c["passage_id"]]
    assert tool.args_schema.model_json_schema()["required"] == ["question"]


def test_output_version_v1_puts_annotations_in_content(vectorstore) -> None:
    llm = ChatNest(retriever=vectorstore.as_retriever(search_kwargs={"k": 20}), max_tokens=48, output_version="v1")
    msg = llm.invoke(QUESTION)
    assert isinstance(msg.content, list) and msg.content[0]["type"] == "text"
    cits = msg.content[0].get("annotations", [])
    assert cits and all(msg.text[c["start_index"] : c["end_index"]] == c["cited_text"] for c in cits)
    streamed = None
    for chunk in llm.stream(QUESTION):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed.text == msg.text
    assert [c["cited_text"] for c in streamed.content_blocks[0]["annotations"]] == [c["cited_text"] for c in cits]


def test_engine_bridge_uses_any_langchain_retriever(vectorstore) -> None:
    from langchain_nest import LangChainPassageRetriever
    from nest_integrations import shared_engine

    bridge = LangChainPassageRetriever(vectorstore.as_retriever(search_kwargs={"k": 20}))
    hits = bridge.retrieve(QUESTION, k=5)
    assert len(hits) == 5 and hits[0].passage.document_id == "Robert_Boulter"
    assert hits[0].passage.start is not None  # start_index from the documents' metadata
    result = shared_engine().generate(QUESTION, passages=bridge.retrieve(QUESTION, k=20), max_new_tokens=32)
    assert result.citations


def test_nest_config_is_applied_and_call_arguments_win(vectorstore) -> None:
    from nest_integrations import NestConfig

    retriever = vectorstore.as_retriever(search_kwargs={"k": 20})
    off = ChatNest(retriever=retriever, nest_config=NestConfig(retrieval=False, max_new_tokens=24, stop=["\n\n"]))
    msg = off.invoke(QUESTION)
    assert msg.response_metadata["nest"]["tokens_copied"] == 0 and not annotations(msg)
    assert 0 < msg.usage_metadata["output_tokens"] <= 24 and "\n\n" not in msg.text
    assert off._identifying_params["nest_config"]["retrieval"] is False
    # A field or call argument overrides the same value of nest_config.
    assert off.invoke(QUESTION, max_tokens=8).usage_metadata["output_tokens"] <= 8
    on = ChatNest(retriever=retriever, max_tokens=24)
    assert on.invoke(QUESTION).response_metadata["nest"]["tokens_copied"] > 0
