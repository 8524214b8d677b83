"""An LCEL chain `prompt | ChatNest | parser` over a FAISS vector store of the default corpus.

Run: python examples/langchain/lcel_faiss.py "Tell me about Du Fu."
Offline: the embeddings (all-MiniLM-L6-v2) and the LM (SmolLM2-135M-Instruct) are embedded.
"""

from __future__ import annotations

import argparse

from langchain_community.vectorstores import FAISS
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_nest import ChatNest, NestEmbeddings
from nest_integrations import default_corpus
from nest_integrations.index import chunk_documents


def build_store(max_articles: int | None = None) -> FAISS:
    """Chunk the default corpus and index it in FAISS (start_index keeps document offsets)."""
    articles = default_corpus()[:max_articles]
    docs = [
        Document(
            id=p.id, page_content=p.text, metadata={"title": p.title, "source": p.document_id, "start_index": p.start}
        )
        for p in chunk_documents(articles)
    ]
    return FAISS.from_documents(docs, NestEmbeddings())


def main(question: str, max_articles: int | None = None, max_tokens: int = 128) -> str:
    store = build_store(max_articles)
    llm = ChatNest(retriever=store.as_retriever(search_kwargs={"k": 20}), temperature=0, max_tokens=max_tokens)
    prompt = ChatPromptTemplate.from_messages([("human", "{question}")])
    answer = (prompt | llm | StrOutputParser()).invoke({"question": question})
    print(answer)
    # The same chain without the parser keeps the message, whose citations are standard annotations.
    msg = (prompt | llm).invoke({"question": question})
    for n, c in enumerate(msg.content_blocks[0].get("annotations", []), 1):
        print(f'[{n}] {c.get("title")} ({c["extras"]["passage_id"]}): "{c["cited_text"]}"')
    return answer


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("question", nargs="?", default="Tell me about Robert Boulter.")
    parser.add_argument("--max-articles", type=int, help="index only the first N articles (faster)")
    args = parser.parse_args()
    main(args.question, args.max_articles)
