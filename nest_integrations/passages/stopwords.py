"""English stop words plus the instruction words of prompts, shared by BM25 and passage relevance."""

from __future__ import annotations

from functools import lru_cache

# Instruction words of prompts ("Tell me about X") are rare in a corpus, so BM25 would rank
# them high and they would count as content words; they are dropped with the stop words.
PROMPT_WORDS = frozenset({"tell", "describe", "explain", "give", "write", "summarize", "summarise", "please"})


@lru_cache(maxsize=1)
def stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN_PLUS

    return frozenset(STOPWORDS_EN_PLUS) | PROMPT_WORDS
