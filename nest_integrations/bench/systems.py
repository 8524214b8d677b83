"""The systems compared by the benchmark, each measured the same way on the same prompts.

(a) plain greedy ``generate``; (b) in-context RAG with the same passages; (c) (b) with
prompt-lookup decoding; (d) NEST with a cold passage cache; (e) NEST warm; (f) ablations.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..engine import NestEngine
from ..lm import build_prompt_ids, normalize_messages
from .tasks import Prompt


@dataclass
class Measurement:
    system: str
    task: str
    prompt: str
    document_id: str
    text: str
    tokens: int
    seconds: float
    first_stage_s: float = 0.0
    token_index_s: float = 0.0
    decoding_s: float = 0.0
    tokens_copied: int = 0
    spans_proposed: int = 0
    spans_accepted: int = 0
    accepted_tokens: float = 0.0
    cited_documents: list[str | None] = field(default_factory=list)


@dataclass(frozen=True)
class System:
    name: str
    run: Callable[[Prompt], Measurement]


def _chat(prompt: Prompt) -> bool:
    return prompt.task == "entity"  # completion is raw text continuation


def plain_generate(engine: NestEngine, max_new_tokens: int, name: str = "a: plain generate") -> System:
    def run(prompt: Prompt) -> Measurement:
        ids = build_prompt_ids(engine.lm.tokenizer, normalize_messages(prompt.text), chat=_chat(prompt))
        return _hf_generate(engine, name, prompt, ids, max_new_tokens, {}, 0.0)

    return System(name, run)


def in_context_rag(engine: NestEngine, max_new_tokens: int, prompt_lookup: bool) -> System:
    name = "c: in-context RAG + prompt lookup" if prompt_lookup else "b: in-context RAG"
    extra = {"prompt_lookup_num_tokens": 10} if prompt_lookup else {}

    def run(prompt: Prompt) -> Measurement:
        t = time.perf_counter()
        passages = engine.retrieve(_query(prompt))
        first_stage = time.perf_counter() - t
        context = "\n\n".join(f"{s.passage.title}: {s.passage.text}" for s in passages)
        if _chat(prompt):
            messages = [{"role": "user", "content": f"Context:\n{context}\n\n{prompt.text}"}]
            ids = build_prompt_ids(engine.lm.tokenizer, messages, chat=True)
        else:
            text = [{"role": "user", "content": f"{context}\n\n{prompt.text}"}]
            ids = build_prompt_ids(engine.lm.tokenizer, text, chat=False)
        budget = engine.lm.context_length - max_new_tokens
        return _hf_generate(engine, name, prompt, ids[-budget:], max_new_tokens, extra, first_stage)

    return System(name, run)


def nest(engine: NestEngine, max_new_tokens: int, name: str, cold: bool, **overrides: Any) -> System:
    def run(prompt: Prompt) -> Measurement:
        if cold:
            engine.encoder.clear()
        else:
            engine.generate(prompt.text, query=_query(prompt), chat=_chat(prompt), max_new_tokens=1, **overrides)
        t = time.perf_counter()
        r = engine.generate(
            prompt.text, query=_query(prompt), chat=_chat(prompt), max_new_tokens=max_new_tokens, **overrides
        )
        seconds = time.perf_counter() - t
        s = r.stats
        return Measurement(
            system=name,
            task=prompt.task,
            prompt=prompt.text,
            document_id=prompt.document_id,
            text=r.text,
            tokens=s.tokens_generated,
            seconds=seconds,
            first_stage_s=s.first_stage_seconds,
            token_index_s=s.token_index_seconds,
            decoding_s=s.decoding_seconds,
            tokens_copied=s.tokens_copied,
            spans_proposed=s.spans_proposed,
            spans_accepted=s.spans_accepted,
            accepted_tokens=s.mean_accepted_span * s.spans_accepted,
            cited_documents=[c.document_id for c in r.citations],
        )

    return System(name, run)


def _query(prompt: Prompt) -> str:
    return prompt.text


@torch.inference_mode()
def _hf_generate(
    engine: NestEngine,
    name: str,
    prompt: Prompt,
    ids: list[int],
    max_new_tokens: int,
    extra: dict[str, Any],
    first_stage: float,
) -> Measurement:
    lm = engine.lm
    inputs = torch.tensor([ids], device=lm.device)
    t = time.perf_counter()
    out = lm.model.generate(
        inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_new_tokens, do_sample=False, **extra
    )
    decoding = time.perf_counter() - t
    new = [x for x in out[0, len(ids) :].tolist() if x not in lm.eos_token_ids]
    return Measurement(
        system=name,
        task=prompt.task,
        prompt=prompt.text,
        document_id=prompt.document_id,
        text=lm.tokenizer.decode(new, skip_special_tokens=True),
        tokens=len(new),
        seconds=first_stage + decoding,
        first_stage_s=first_stage,
        decoding_s=decoding,
    )


def standard_systems(engine: NestEngine, max_new_tokens: int) -> list[System]:
    """All systems of the comparison, in report order."""
    return [
        plain_generate(engine, max_new_tokens),
        in_context_rag(engine, max_new_tokens, prompt_lookup=False),
        in_context_rag(engine, max_new_tokens, prompt_lookup=True),
        nest(engine, max_new_tokens, "d: NEST cold cache", cold=True),
        nest(engine, max_new_tokens, "e: NEST warm cache", cold=False),
        nest(engine, max_new_tokens, "f1: fixed lambda 0.3 (no RRC)", cold=False, fixed_lambda=0.3),
        nest(engine, max_new_tokens, "f2: no span selection (kNN-LM)", cold=False, beta=0.0),
        nest(engine, max_new_tokens, "f3: strict acceptance (no relaxation)", cold=False, acceptance="strict"),
    ]
