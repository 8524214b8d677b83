"""NestLLM and NestQueryEngine on the embedded model over a VectorStoreIndex of the default corpus."""

from __future__ import annotations

import pytest
from llama_index.core import Settings
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.bridge.pydantic import Field
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events.llm import LLMCompletionEndEvent, LLMCompletionStartEvent
from llama_index.core.schema import ImageNode, NodeWithScore, QueryBundle, TextNode
from llama_index.core.tools import QueryEngineTool

from llama_index.llms.nest import LlamaIndexPassageRetriever, NestLLM, NestQueryEngine, nodes_to_passages

pytestmark = pytest.mark.slow
QUESTION = "Tell me about Robert Boulter."


class FixedRetriever(BaseRetriever):
    def __init__(self, nodes: list[NodeWithScore]) -> None:
        super().__init__()
        self.nodes = nodes

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self.nodes


class Recorder(BaseEventHandler):
    events: list = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "Recorder"

    def handle(self, event, **kwargs) -> None:
        self.events.append(event)


@pytest.fixture(scope="module")
def llm() -> NestLLM:
    return NestLLM(max_tokens=64)


@pytest.fixture(scope="module")
def engine(corpus_index, llm) -> NestQueryEngine:
    return NestQueryEngine.from_index(corpus_index, similarity_top_k=20, llm=llm)


def check_citations(response, documents) -> None:
    text = str(response.response if hasattr(response, "response") else response)
    nodes = {n.node.node_id: n.node for n in response.source_nodes}
    cited = {c["node_id"] for c in response.metadata["citations"]}
    assert set(nodes) == cited  # source_nodes are exactly the cited nodes
    for c in response.metadata["citations"]:
        assert text[c["output_start"] : c["output_end"]] == c["quote"]
        assert nodes[c["node_id"]].text[c["passage_start"] : c["passage_end"]] == c["quote"]
        assert documents[c["document_id"]][c["document_start"] : c["document_end"]] == c["quote"]


def test_settings_llm_in_an_unchanged_query_engine(corpus_index) -> None:
    Settings.llm = NestLLM(max_tokens=32)
    try:
        response = corpus_index.as_query_engine().query("Who is Robert Boulter?")
    finally:
        Settings.llm = None
    assert str(response).strip()
    assert response.source_nodes  # the index's own retrieval and synthesis ran


def test_query_engine_cites_multi_token_spans_of_the_right_nodes(engine, llm, documents) -> None:
    response = engine.query(QUESTION)
    check_citations(response, documents)
    multi = [c for c in response.metadata["citations"] if len(llm._engine().lm.tokenizer(c["quote"])["input_ids"]) > 1]
    assert multi
    # Which article a span comes from is the relevance guards' concern (passage-aware k-NN); with dense-only
    # retrieval some of the 20 nodes come from other articles and NEST may copy from them.
    assert response.metadata["nest_stats"]["attribution_ratio"] > 0


async def test_sync_async_and_streaming_agree(corpus_index, llm, documents, same_citations) -> None:
    sync = NestQueryEngine.from_index(corpus_index, llm=llm).query(QUESTION)
    asynchronous = await NestQueryEngine.from_index(corpus_index, llm=llm).aquery(QUESTION)
    streaming = NestQueryEngine.from_index(corpus_index, llm=llm, streaming=True).query(QUESTION)
    streamed_text = "".join(streaming.response_gen)
    astreaming = await NestQueryEngine.from_index(corpus_index, llm=llm, streaming=True).aquery(QUESTION)
    astreamed_text = "".join([t async for t in astreaming.async_response_gen()])
    assert sync.response == asynchronous.response == streamed_text == astreamed_text
    for r in (asynchronous, streaming, astreaming):
        assert same_citations(r.metadata["citations"], sync.metadata["citations"])
        assert [n.node.node_id for n in r.source_nodes] == [n.node.node_id for n in sync.source_nodes]


def test_llm_events_are_emitted_through_the_dispatcher(engine) -> None:
    recorder = Recorder()
    root = get_dispatcher()
    root.add_event_handler(recorder)
    try:
        engine.query(QUESTION)
    finally:
        root.event_handlers.remove(recorder)
    kinds = {type(e) for e in recorder.events}
    assert {LLMCompletionStartEvent, LLMCompletionEndEvent} <= kinds


def test_nest_llm_chat_complete_and_usage(llm) -> None:
    chat = llm.chat([ChatMessage(role="user", content=QUESTION)])
    complete = llm.complete(QUESTION)
    assert chat.message.content == complete.text
    usage = complete.raw["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    streamed = list(llm.stream_chat([ChatMessage(role="user", content=QUESTION)]))
    assert streamed[-1].message.content == chat.message.content
    assert "".join(r.delta for r in streamed) == chat.message.content
    meta = llm.metadata
    assert meta.context_window == 8192 and meta.is_chat_model and meta.num_output == 64


def test_bad_input_never_crashes(llm, corpus_index) -> None:
    with pytest.raises(ValueError, match="empty"):
        NestQueryEngine.from_index(corpus_index, llm=llm).query("  ")
    empty = NestQueryEngine.from_retriever(FixedRetriever([]), llm=llm).query(QUESTION)
    assert str(empty).strip() and empty.source_nodes == [] and empty.metadata["citations"] == []
    text = corpus_index.docstore.get_node("Robert_Boulter#0").text
    odd = [
        NodeWithScore(node=ImageNode(image="aGVsbG8=", text="")),
        NodeWithScore(node=TextNode(text="   ")),
        NodeWithScore(node=TextNode(id_="odd", text=text, metadata={"n": 3, "when": object(), "tags": ("a", 1)})),
    ]
    assert [p.passage.id for p in nodes_to_passages(odd)] == ["odd"]
    response = NestQueryEngine.from_retriever(FixedRetriever(odd), llm=llm).query(QUESTION)
    for c in response.metadata["citations"]:
        assert c["node_id"] == "odd" and text[c["passage_start"] : c["passage_end"]] == c["quote"]


def test_query_engine_tool_for_agents(engine) -> None:
    tool = QueryEngineTool.from_defaults(engine, name="corpus", description="Answers from the corpus with citations.")
    output = tool.call(QUESTION)
    assert output.content.strip()
    assert output.raw_output.metadata["citations"]


def test_nest_llm_with_its_own_retriever_and_the_engine_bridge(corpus_index, documents) -> None:
    llm = NestLLM(retriever=corpus_index.as_retriever(similarity_top_k=20), max_tokens=48)
    response = llm.complete(QUESTION)
    citations = response.raw["nest"]["citations"]
    assert citations and response.additional_kwargs["citations"] == citations
    for c in citations:
        assert response.text[c["output_start"] : c["output_end"]] == c["quote"]
        assert documents[c["document_id"]][c["document_start"] : c["document_end"]] == c["quote"]
    bridge = LlamaIndexPassageRetriever(corpus_index.as_retriever(similarity_top_k=5))
    hits = bridge.retrieve(QUESTION, k=3)
    assert len(hits) == 3 and hits[0].passage.document_id == "Robert_Boulter"


def test_nest_config_is_applied_and_call_arguments_win(corpus_index) -> None:
    from nest_integrations import NestConfig

    retriever = corpus_index.as_retriever(similarity_top_k=20)
    off = NestLLM(retriever=retriever, nest_config=NestConfig(retrieval=False, max_new_tokens=24))
    result = off.complete(QUESTION).raw["nest"]
    assert result["stats"]["tokens_copied"] == 0 and not result["citations"]
    assert 0 < result["stats"]["tokens_generated"] <= 24 and off.metadata.num_output == 24
    assert off.complete(QUESTION, max_tokens=8).raw["nest"]["stats"]["tokens_generated"] <= 8
    on = NestLLM(retriever=retriever, max_tokens=24)
    assert on.complete(QUESTION).raw["nest"]["stats"]["tokens_copied"] > 0
