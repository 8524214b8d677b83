"""The standard LangChain recipes keep NEST's citations: create_retrieval_chain with the NEST
documents chain equals ChatNest(retriever=...) on the same store; engine retrievers; no tools."""

from __future__ import annotations

import pytest
from langchain_classic.chains import create_retrieval_chain
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.messages import AIMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from pydantic import Field

from langchain_nest import ChatNest, NestEmbeddings, PassageRetrieverAdapter, create_nest_documents_chain
from langchain_nest.retrievers import documents_to_passages, passage_to_document
from nest_integrations import StaticRetriever

pytestmark = pytest.mark.slow
QUESTION = "Tell me about Robert Boulter."


def annotations(msg: AIMessage) -> list[dict]:
    return [a for block in msg.content_blocks for a in block.get("annotations", [])]


def check_cited(msg: AIMessage, docs: list, article_texts: dict[str, str]) -> None:
    """Every annotation quotes the response, the retrieved document and the article at its offsets."""
    by_id = {d.id: d.page_content for d in docs}
    cits = annotations(msg)
    assert cits, msg
    for c in cits:
        x = c["extras"]
        assert msg.text[c["start_index"] : c["end_index"]] == c["cited_text"]
        assert by_id[x["passage_id"]][x["passage_start"] : x["passage_end"]] == c["cited_text"]
        assert article_texts[x["document_id"]][x["document_start"] : x["document_end"]] == c["cited_text"]


@pytest.fixture(scope="module")
def retriever(vectorstore):
    return vectorstore.as_retriever(search_kwargs={"k": 20})


@pytest.fixture(scope="module")
def native(retriever) -> AIMessage:
    return ChatNest(retriever=retriever, temperature=0, max_tokens=64).invoke(QUESTION)


def test_retrieval_chain_equals_chat_nest_with_the_retriever(retriever, native, article_texts, same_citations) -> None:
    chain = create_retrieval_chain(retriever, create_nest_documents_chain(ChatNest(temperature=0, max_tokens=64)))
    out = chain.invoke({"input": QUESTION})
    assert set(out) == {"input", "context", "answer"}
    answer = out["answer"]
    assert isinstance(answer, AIMessage)
    assert answer.text == native.text
    assert same_citations(annotations(answer), annotations(native))
    assert same_citations(answer.response_metadata["citations"], native.response_metadata["citations"])
    check_cited(answer, out["context"], article_texts)
    assert answer.response_metadata["citations"][0]["document_id"] == "Robert_Boulter"


class Counting(BaseRetriever):
    inner: BaseRetriever
    calls: list[str] = Field(default_factory=list)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        self.calls.append(query)
        return self.inner.invoke(query)


def test_retrieval_runs_once_even_when_the_model_has_a_retriever(retriever) -> None:
    counting = Counting(inner=retriever)
    chain = create_retrieval_chain(counting, create_nest_documents_chain(ChatNest(retriever=counting, max_tokens=16)))
    out = chain.invoke({"input": QUESTION})
    assert counting.calls == [QUESTION]
    assert out["answer"].text.strip()


async def test_chain_streams_and_runs_async_with_the_same_answer(retriever, native, same_citations) -> None:
    docs_chain = create_nest_documents_chain(ChatNest(temperature=0, max_tokens=64))
    chain = create_retrieval_chain(retriever, docs_chain)
    answers = [part["answer"] for part in chain.stream({"input": QUESTION}) if "answer" in part]
    assert len(answers) > 1  # token chunks, not one message
    merged = answers[0]
    for a in answers[1:]:
        merged += a
    assert merged.text == native.text
    assert same_citations(annotations(merged), annotations(native))
    out = await chain.ainvoke({"input": QUESTION})
    assert out["answer"].text == native.text and same_citations(annotations(out["answer"]), annotations(native))


def test_prompt_and_extra_inputs_reach_the_model(retriever) -> None:
    prompt = ChatPromptTemplate.from_messages([("system", "Answer in the style of {style}."), ("human", "{input}")])
    chain = create_retrieval_chain(retriever, create_nest_documents_chain(ChatNest(max_tokens=32), prompt))
    out = chain.invoke({"input": QUESTION, "style": "an encyclopedia"})
    assert out["answer"].text.strip() and out["context"]
    with pytest.raises(ValueError, match="'input'"):
        create_nest_documents_chain(ChatNest(max_tokens=8)).invoke({"question": QUESTION})


def test_engine_passage_retriever_is_accepted(corpus_documents, article_texts) -> None:
    passages = [p for p in documents_to_passages(corpus_documents) if p.passage.document_id == "Robert_Boulter"]
    engine_retriever = StaticRetriever(passages)
    via_engine = ChatNest(retriever=engine_retriever, temperature=0, max_tokens=48)
    assert isinstance(via_engine.retriever, PassageRetrieverAdapter)
    docs = via_engine.retriever.invoke(QUESTION)
    assert [d.id for d in docs] == [p.passage.id for p in passages]
    msg = via_engine.invoke(QUESTION)
    check_cited(msg, docs, article_texts)
    # The adapter round-trips passages exactly (text, id, document and offsets).
    back = documents_to_passages([passage_to_document(p) for p in passages])
    assert [(b.passage.id, b.passage.text, b.passage.document_id, b.passage.start, b.passage.end) for b in back] == [
        (p.passage.id, p.passage.text, p.passage.document_id, p.passage.start, p.passage.end) for p in passages
    ]
    assert [b.score for b in back] == [p.score for p in passages]
    with pytest.raises(TypeError, match="PassageRetriever"):
        ChatNest(retriever="my index")


def test_tools_and_structured_output_explain_why_not() -> None:
    llm = ChatNest()
    for call in (lambda: llm.bind_tools([]), lambda: llm.with_structured_output(dict)):
        with pytest.raises(NotImplementedError, match="create_nest_tool") as info:
            call()
        assert "grounded text generator" in str(info.value)


def test_embeddings_take_a_device() -> None:
    emb = NestEmbeddings(device="cpu")
    vec = emb.embed_query(QUESTION)
    assert len(vec) == 384 and abs(sum(v * v for v in vec) - 1) < 1e-4
    assert str(emb._get().device) == "cpu"
    assert emb.embed_documents([QUESTION])[0] == pytest.approx(vec, abs=1e-6)
