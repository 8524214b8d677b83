"""Wrong-source copying (issue 7): entity prompts over passages of three articles mixed together.

Usage: python benchmarks/wrong_source.py [--per-article 6] [--max-new-tokens 128]
For each entity, prints how many citations point to another article, with the paper's
settings and with the default config, first with the passages given as they are (no
first-stage scores), then through a hybrid retriever over the same passages.
"""

from __future__ import annotations

import argparse

from nest_integrations import HybridRetriever, NestConfig, NestEngine, default_corpus, load_lm
from nest_integrations.index import chunk_documents

ARTICLES = ("Robert_Boulter", "Du_Fu", "Clayton_Kershaw")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--per-article", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()
    lm = load_lm()
    docs = {d.id: d for d in default_corpus()}
    passages = [p for a in ARTICLES for p in chunk_documents([docs[a]], tokenizer=lm.tokenizer)[: args.per_article]]
    hybrid = HybridRetriever(passages)
    for label, config in (("paper settings", NestConfig.paper()), ("default config", None)):
        engine = NestEngine(lm, config=config)
        total = wrong = 0
        for mode in ("given passages", "hybrid first stage"):
            for article in ARTICLES:
                question = f"Tell me about {docs[article].title}."
                given = passages if mode == "given passages" else hybrid.retrieve(question, len(passages))
                r = engine.generate(question, passages=given, max_new_tokens=args.max_new_tokens)
                bad = [c for c in r.citations if c.document_id != article]
                total, wrong = total + len(r.citations), wrong + len(bad)
                print(f"[{label}, {mode}] {question} {len(bad)}/{len(r.citations)} citations from other articles")
                print(f"    {r.text[:160]!r}")
                for c in bad[:2]:
                    print(f"    wrong: {c.document_id}: {c.quote[:70]!r}")
        print(f"{label}: wrong-source citations {wrong}/{total} ({wrong / max(total, 1):.0%})\n")


if __name__ == "__main__":
    main()
