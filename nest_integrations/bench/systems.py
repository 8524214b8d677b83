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

from ..citations import NestResult
from ..config import NestConfig
from ..engine import NestEngine
from ..lm import build_prompt_ids, normalize_messages
from .claims import claim_counts
from .first_stages import FirstStage, built_in
from .metrics import is_sentence_start, starts_mid_sentence
from .tasks import Prompt


@dataclass(frozen=True)
class CitedSpan:
    """What the benchmark needs of one citation: its source article and size."""

    document_id: str | None
    chars: int


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
    cited: list[CitedSpan] = field(default_factory=list)
    mid_sentence_start: bool = False
    claims: dict[str, int] | None = None  # ClaimCounts.as_dict() for systems that cite (claims.py)


def measurement_from_dict(d: dict[str, Any]) -> Measurement:
    """Inverse of ``dataclasses.asdict`` for a Measurement (results read back from JSON)."""
    return Measurement(**{**d, "cited": [CitedSpan(**c) for c in d.get("cited", [])]})


@dataclass(frozen=True)
class System:
    name: str
    run: Callable[[Prompt], Measurement]


def _chat(prompt: Prompt) -> bool:
    return prompt.task != "completion"  # completion is raw text continuation; entity and squad are questions


def plain_generate(engine: NestEngine, max_new_tokens: int, name: str = "a: plain generate") -> System:
    def run(prompt: Prompt) -> Measurement:
        ids = build_prompt_ids(engine.lm.tokenizer, normalize_messages(prompt.text), chat=_chat(prompt))
        return _hf_generate(engine, name, prompt, ids, max_new_tokens, {}, 0.0)

    return System(name, run)


def in_context_rag(engine: NestEngine, max_new_tokens: int, prompt_lookup: bool, stage: FirstStage) -> System:
    name = "c: in-context RAG + prompt lookup" if prompt_lookup else "b: in-context RAG"
    extra = {"prompt_lookup_num_tokens": 10} if prompt_lookup else {}

    def run(prompt: Prompt) -> Measurement:
        t = time.perf_counter()
        passages = stage(prompt)
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


def nest(
    engine: NestEngine,
    max_new_tokens: int,
    name: str,
    cold: bool,
    stage: FirstStage | None = None,
    **overrides: Any,
) -> System:
    """NEST with the engine's config and ``overrides``; passages from ``stage`` (default: the engine's retriever)."""
    stage = stage or built_in(engine)

    def run(prompt: Prompt) -> Measurement:
        t = time.perf_counter()
        given = stage(prompt)
        first_stage = time.perf_counter() - t
        kwargs = {"passages": given, "query": _query(prompt), "chat": _chat(prompt), **overrides}
        if cold:
            engine.encoder.clear()
        else:
            engine.generate(prompt.text, max_new_tokens=1, **kwargs)
        t = time.perf_counter()
        r = engine.generate(prompt.text, max_new_tokens=max_new_tokens, **kwargs)
        seconds = time.perf_counter() - t + first_stage
        s = r.stats
        return Measurement(
            system=name,
            task=prompt.task,
            prompt=prompt.text,
            document_id=prompt.document_id,
            text=r.text,
            tokens=s.tokens_generated,
            seconds=seconds,
            first_stage_s=s.first_stage_seconds + first_stage,
            token_index_s=s.token_index_seconds,
            decoding_s=s.decoding_seconds,
            tokens_copied=s.tokens_copied,
            spans_proposed=s.spans_proposed,
            spans_accepted=s.spans_accepted,
            accepted_tokens=s.mean_accepted_span * s.spans_accepted,
            cited=[CitedSpan(c.document_id, len(c.quote)) for c in r.citations],
            mid_sentence_start=_opens_mid_sentence(r),
            claims=claim_counts(r).as_dict(),
        )

    return System(name, run)


def _opens_mid_sentence(r: NestResult) -> bool:
    """Whether the answer begins mid-sentence, judged on its source when its opening was copied."""
    lead = len(r.text) - len(r.text.lstrip())
    opening = next((c for c in r.citations if c.output_start == lead), None)
    from_start = None
    if opening is not None:
        texts = {s.passage.id: s.passage.text for s in r.passages}
        from_start = is_sentence_start(texts[opening.passage_id], opening.passage_start)
    return starts_mid_sentence(r.text, from_start)


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
    text = lm.tokenizer.decode(new, skip_special_tokens=True)
    return Measurement(
        system=name,
        task=prompt.task,
        prompt=prompt.text,
        document_id=prompt.document_id,
        text=text,
        tokens=len(new),
        seconds=first_stage + decoding,
        first_stage_s=first_stage,
        decoding_s=decoding,
        mid_sentence_start=starts_mid_sentence(text, None),
    )


def paper_settings() -> dict[str, Any]:
    """The paper's defaults for every NEST knob (the guards added in this project off)."""
    return {k: v for k, v in NestConfig.paper().model_dump().items() if k != "max_new_tokens"}


def standard_systems(engine: NestEngine, max_new_tokens: int, stage: FirstStage | None = None) -> list[System]:
    """All systems of the comparison, in report order; NEST runs with the engine's config
    (for the embedded model: its calibrated one), plus (e0) the paper's settings when they differ."""
    stage = stage or built_in(engine)
    systems = [
        plain_generate(engine, max_new_tokens),
        in_context_rag(engine, max_new_tokens, prompt_lookup=False, stage=stage),
        in_context_rag(engine, max_new_tokens, prompt_lookup=True, stage=stage),
        nest(engine, max_new_tokens, "d: NEST cold cache", cold=True, stage=stage),
        nest(engine, max_new_tokens, "e: NEST warm cache", cold=False, stage=stage),
    ]
    paper = paper_settings()
    if any(getattr(engine.config, k) != v for k, v in paper.items()):
        systems.append(nest(engine, max_new_tokens, "e0: NEST warm, paper settings", cold=False, stage=stage, **paper))
    return [
        *systems,
        nest(engine, max_new_tokens, "f1: fixed lambda 0.3 (no RRC)", cold=False, stage=stage, fixed_lambda=0.3),
        nest(engine, max_new_tokens, "f2: no span selection (kNN-LM)", cold=False, stage=stage, beta=0.0),
        nest(engine, max_new_tokens, "f3: strict acceptance", cold=False, stage=stage, acceptance="strict"),
    ]
