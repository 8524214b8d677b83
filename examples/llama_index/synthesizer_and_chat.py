"""The standard LlamaIndex recipes with citations: `index.as_query_engine(response_synthesizer=
NestSynthesizer(...))` and a context-mode chat engine (`NestChatEngine`), over an index built
with the offline `NestEmbedding` (no OpenAI key, nothing downloaded).

Run: python examples/llama_index/synthesizer_and_chat.py "Tell me about Du Fu." [--max-articles N]
"""

from __future__ import annotations

import argparse

from llama_index.core import Document, VectorStoreIndex
from llama_index.core.node_parser import SentenceSplitter

from llama_index.llms.nest import NestChatEngine, NestEmbedding, NestLLM, NestSynthesizer
from nest_integrations import default_corpus


def build_index(max_articles: int | None = None) -> VectorStoreIndex:
    documents = [Document(id_=d.id, text=d.text, metadata={"title": d.title}) for d in default_corpus()[:max_articles]]
    splitter = SentenceSplitter(chunk_size=128, chunk_overlap=0)
    return VectorStoreIndex.from_documents(documents, embed_model=NestEmbedding(), transformations=[splitter])


def show(text: str, citations: list[dict]) -> None:
    print(text)
    for n, c in enumerate(citations, 1):
        where = f"node {c['node_id']}, chars {c['passage_start']}-{c['passage_end']}"
        print(f'[{n}] {c["title"]} ({where}): "{c["quote"]}"')


def main(question: str, max_articles: int | None = None, max_tokens: int = 128) -> tuple[str, str]:
    index = build_index(max_articles)
    llm = NestLLM(max_tokens=max_tokens)
    engine = index.as_query_engine(llm=llm, response_synthesizer=NestSynthesizer(llm), similarity_top_k=20)
    response = engine.query(question)
    show(str(response.response), response.metadata["citations"])
    chat = NestChatEngine.from_index(index, similarity_top_k=20, llm=llm)
    reply = chat.chat(question)
    show(reply.response, reply.metadata["citations"])
    return str(response.response), reply.response


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("question", nargs="?", default="Tell me about Robert Boulter.")
    parser.add_argument("--max-articles", type=int, help="index only the first N articles (faster)")
    args = parser.parse_args()
    main(args.question, args.max_articles)
