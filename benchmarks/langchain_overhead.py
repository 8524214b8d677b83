"""Per-call overhead of ChatNest over calling the engine directly (same passages, warm caches).

Usage: python benchmarks/langchain_overhead.py [--runs 5] [--max-new-tokens 64]
Target: under 5% of the engine's own time.
"""

from __future__ import annotations

import argparse
import statistics
import time

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from langchain_nest import ChatNest
from langchain_nest.retrievers import documents_to_passages
from nest_integrations import default_corpus, shared_engine
from nest_integrations.index import chunk_documents


class FixedRetriever(BaseRetriever):
    docs: list[Document]

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return self.docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    passages = [p for p in chunk_documents(default_corpus()[:1])][:20]
    docs = [Document(id=p.id, page_content=p.text, metadata={"title": p.title}) for p in passages]
    question = "Tell me about Robert Boulter."
    llm = ChatNest(retriever=FixedRetriever(docs=docs), temperature=0, max_tokens=args.max_new_tokens)
    engine = shared_engine()
    scored = documents_to_passages(docs)
    llm.invoke(question)  # warm: model loaded, passages encoded
    engine_s, adapter_s = [], []
    for _ in range(args.runs):
        t = time.perf_counter()
        messages = [{"role": "user", "content": question}]
        direct = engine.generate(messages, passages=scored, max_new_tokens=args.max_new_tokens)
        engine_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        msg = llm.invoke(question)
        adapter_s.append(time.perf_counter() - t)
        assert msg.text == direct.text
    e, a = statistics.median(engine_s), statistics.median(adapter_s)
    print(
        f"engine median {e * 1000:.1f} ms, ChatNest median {a * 1000:.1f} ms, overhead {(a - e) / e:+.1%} "
        f"({args.runs} runs, {args.max_new_tokens} new tokens)"
    )


if __name__ == "__main__":
    main()
