"""Evaluation prompts from the default corpus: text completion and entity prompts, seeded samples.

Completion (the paper's WikiText-103 task): the prompt is the first part of a paragraph, the
reference its continuation. Entity: "Tell me about <title>.", referenced by the article's lead.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..corpus import default_corpus


@dataclass(frozen=True)
class Prompt:
    task: str  # "completion" | "entity"
    text: str
    reference: str
    document_id: str


def completion_prompts(n: int | None, seed: int = 0, prompt_words: int = 40, min_words: int = 120) -> list[Prompt]:
    """Paragraphs of at least ``min_words`` words: the first ``prompt_words`` words, then the rest."""
    out = []
    for doc in default_corpus():
        for para in doc.text.split("\n\n"):
            ws = para.split(" ")
            if len(ws) >= min_words:
                out.append(Prompt("completion", " ".join(ws[:prompt_words]), " ".join(ws[prompt_words:]), doc.id))
    random.Random(seed).shuffle(out)
    return out if n is None else out[:n]


def entity_prompts(n: int | None, seed: int = 0) -> list[Prompt]:
    docs = default_corpus()
    random.Random(seed).shuffle(docs)
    out = [Prompt("entity", f"Tell me about {d.title}.", d.text.split("\n\n")[0], d.id) for d in docs]
    return out if n is None else out[:n]
