"""The standard LangChain RAG recipe, `create_retrieval_chain`, with NEST's documents chain in
place of `create_stuff_documents_chain`: retrieval runs once and the answer keeps its citations.

Run: python examples/langchain/retrieval_chain.py "Tell me about Du Fu." [--max-articles N]
Offline: the embeddings (all-MiniLM-L6-v2) and the LM (SmolLM2-135M-Instruct) are embedded.
"""

from __future__ import annotations

import argparse

from langchain_classic.chains import create_retrieval_chain
from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore

from langchain_nest import ChatNest, NestEmbeddings, create_nest_documents_chain
from nest_integrations import default_corpus
from nest_integrations.index import chunk_documents


def build_store(max_articles: int | None = None) -> InMemoryVectorStore:
    """Default-corpus passages in a vector store (start_index keeps offsets in the article)."""
    docs = [
        Document(
            id=p.id, page_content=p.text, metadata={"title": p.title, "source": p.document_id, "start_index": p.start}
        )
        for p in chunk_documents(default_corpus()[:max_articles])
    ]
    return InMemoryVectorStore.from_documents(docs, NestEmbeddings())


def main(question: str, max_articles: int | None = None, max_tokens: int = 128) -> str:
    retriever = build_store(max_articles).as_retriever(search_kwargs={"k": 20})
    chain = create_retrieval_chain(retriever, create_nest_documents_chain(ChatNest(max_tokens=max_tokens)))
    out = chain.invoke({"input": question})  # {"input", "context": [Document], "answer": AIMessage}
    answer = out["answer"]
    print(answer.text)
    for n, c in enumerate(answer.content_blocks[0].get("annotations", []), 1):
        print(f'[{n}] {c.get("title")} ({c["extras"]["passage_id"]}): "{c["cited_text"]}"')
    print(f"({len(out['context'])} documents retrieved once)")
    return answer.text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("question", nargs="?", default="Tell me about Robert Boulter.")
    parser.add_argument("--max-articles", type=int, help="index only the first N articles (faster)")
    args = parser.parse_args()
    main(args.question, args.max_articles)
