"""Quality metrics: ROUGE-1/2/L F1 on lowercased word tokens (Lin, 2004) and citation checks."""

from __future__ import annotations

import re
from collections import Counter

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _f1(overlap: int, hyp: int, ref: int) -> float:
    if not overlap or not hyp or not ref:
        return 0.0
    p, r = overlap / hyp, overlap / ref
    return 2 * p * r / (p + r)


def rouge_n(hypothesis: str, reference: str, n: int) -> float:
    def grams(ws: list[str]) -> Counter[tuple[str, ...]]:
        return Counter(tuple(ws[i : i + n]) for i in range(len(ws) - n + 1))

    h, r = grams(words(hypothesis)), grams(words(reference))
    return _f1(sum((h & r).values()), sum(h.values()), sum(r.values()))


def rouge_l(hypothesis: str, reference: str) -> float:
    h, r = words(hypothesis), words(reference)
    if not h or not r:
        return 0.0
    prev = [0] * (len(r) + 1)
    for hw in h:  # longest common subsequence, one row at a time
        cur = [0]
        for j, rw in enumerate(r, 1):
            cur.append(prev[j - 1] + 1 if hw == rw else max(prev[j], cur[j - 1]))
        prev = cur
    return _f1(prev[-1], len(h), len(r))


def rouge(hypothesis: str, reference: str) -> dict[str, float]:
    return {
        "rouge1": rouge_n(hypothesis, reference, 1),
        "rouge2": rouge_n(hypothesis, reference, 2),
        "rougeL": rouge_l(hypothesis, reference),
    }


_SENTENCE_END = ".!?\n"
_OPENERS = "\"'([“‘"


def is_sentence_start(text: str, start: int) -> bool:
    """Whether ``text[start:]`` begins a sentence: at the start of the text, or after . ! ? or a newline."""
    before = text[:start].rstrip(" \t")
    return not before or before[-1] in _SENTENCE_END or before.endswith("\n")


def starts_mid_sentence(answer: str, copied_from_sentence_start: bool | None) -> bool:
    """Whether an answer begins in the middle of a sentence.

    ``copied_from_sentence_start``: for an answer whose first characters were copied, whether
    the copy began at a sentence start of its source (None when the opening was generated).
    An opening that is generated counts as mid-sentence only if it starts lowercase or with
    punctuation that cannot open a sentence.
    """
    head = answer.lstrip()
    if not head:
        return False
    if copied_from_sentence_start is not None:
        return not copied_from_sentence_start
    first = head[0]
    return first.islower() or (not first.isalnum() and first not in _OPENERS)
