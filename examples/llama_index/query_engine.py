"""A VectorStoreIndex over the default corpus (embedded MiniLM embeddings, offline) queried
through NestQueryEngine: every copied span cites the exact node text it came from.

Run: python examples/llama_index/query_engine.py "Tell me about Du Fu." [--max-articles N]
"""

from __future__ import annotations

import argparse

from llama_index.core import Document, VectorStoreIndex
from llama_index.core.node_parser import SentenceSplitter
from llama_index.embeddings.huggingface import HuggingFaceEmbedding

from llama_index.llms.nest import NestLLM, NestQueryEngine
from nest_integrations import default_corpus
from nest_integrations.passages.embedder import find_embedded_minilm


def build_index(max_articles: int | None = None) -> VectorStoreIndex:
    """Default-corpus articles, split into ~100-token nodes, embedded with the bundled MiniLM."""
    documents = [Document(id_=d.id, text=d.text, metadata={"title": d.title}) for d in default_corpus()[:max_articles]]
    embed_model = HuggingFaceEmbedding(model_name=str(find_embedded_minilm()), device="cpu")
    splitter = SentenceSplitter(chunk_size=128, chunk_overlap=0)
    return VectorStoreIndex.from_documents(documents, embed_model=embed_model, transformations=[splitter])


def main(question: str, max_articles: int | None = None, max_tokens: int = 128) -> str:
    index = build_index(max_articles)
    engine = NestQueryEngine.from_index(index, similarity_top_k=20, llm=NestLLM(max_tokens=max_tokens))
    response = engine.query(question)
    print(response.response)
    for n, c in enumerate(response.metadata["citations"], 1):
        print(
            f'[{n}] {c["title"]} (node {c["node_id"]}, chars {c["passage_start"]}-{c["passage_end"]}): "{c["quote"]}"'
        )
    return str(response.response)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("question", nargs="?", default="Tell me about Robert Boulter.")
    parser.add_argument("--max-articles", type=int, help="index only the first N articles (faster)")
    args = parser.parse_args()
    main(args.question, args.max_articles)
