"""The same LCEL chain over a Chroma server: the first stage lives in a shared vector database.

Start a server first (loopback, telemetry off):
    ANONYMIZED_TELEMETRY=False chroma run --path ./chroma-data --host 127.0.0.1 --port 8000
Then: python examples/langchain/lcel_chroma.py --port 8000 "Tell me about Clayton Kershaw."
The corpus is loaded into the collection on the first run.
"""

from __future__ import annotations

import argparse

import chromadb
from langchain_chroma import Chroma
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from langchain_nest import ChatNest, NestEmbeddings
from nest_integrations import default_corpus
from nest_integrations.index import chunk_documents

COLLECTION = "nest-wikitext103"


def connect(host: str, port: int) -> Chroma:
    client = chromadb.HttpClient(host=host, port=port, settings=chromadb.Settings(anonymized_telemetry=False))
    store = Chroma(collection_name=COLLECTION, embedding_function=NestEmbeddings(), client=client)
    if client.get_collection(COLLECTION).count() == 0:
        passages = chunk_documents(default_corpus())
        for i in range(0, len(passages), 1000):
            part = passages[i : i + 1000]
            store.add_texts(
                [p.text for p in part],
                metadatas=[{"title": p.title, "source": p.document_id, "start_index": p.start} for p in part],
                ids=[p.id for p in part],
            )
    return store


def main(question: str, host: str = "127.0.0.1", port: int = 8000) -> str:
    llm = ChatNest(retriever=connect(host, port).as_retriever(search_kwargs={"k": 20}), temperature=0)
    chain = ChatPromptTemplate.from_messages([("human", "{question}")]) | llm
    msg = chain.invoke({"question": question})
    print(StrOutputParser().invoke(msg))
    for n, c in enumerate(msg.content_blocks[0].get("annotations", []), 1):
        print(f'[{n}] {c.get("title")} ({c["extras"]["passage_id"]}): "{c["cited_text"]}"')
    return msg.text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("question", nargs="?", default="Tell me about Clayton Kershaw.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    main(args.question, args.host, args.port)
