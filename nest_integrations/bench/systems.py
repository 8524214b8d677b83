"""The systems compared by the benchmark, each measured the same way on the same prompts.

(a) plain greedy ``generate`` (eager, dynamic KV cache); (s) the same with a static KV cache
(compiled by transformers on CUDA); (l) llama.cpp on the same GGUF when installed; (b)
in-context RAG with the same passages; (c) (b) with prompt-lookup decoding; (d) NEST with a
cold passage cache; (e) NEST warm; (f) ablations. (a), (s) and (l) are the plain systems.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..citations import NestResult
from ..config import NestConfig
from ..engine import NestEngine
from ..hooks import clear_passage_cache
from ..lm import build_prompt_ids, normalize_messages
from ..plain import plain_generate as plain_decode
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


PLAIN_SYSTEMS = ("a:", "s:", "l:")  # name prefixes of the plain (no retrieval) systems


def plain_generate(engine: NestEngine, max_new_tokens: int, name: str = "a: plain generate", **options: Any) -> System:
    """Plain greedy decoding; ``options`` go to :func:`nest_integrations.plain.plain_generate`."""

    def run(prompt: Prompt) -> Measurement:
        ids = build_prompt_ids(engine.lm.tokenizer, normalize_messages(prompt.text), chat=_chat(prompt))
        return _hf_generate(engine, name, prompt, ids, max_new_tokens, options, 0.0)

    return System(name, run)


def static_cache(engine: NestEngine, max_new_tokens: int) -> System:
    """(s): plain greedy decoding with a static KV cache (compiled on CUDA, where it pays)."""
    return plain_generate(engine, max_new_tokens, "s: plain, static cache", static_cache=True)


def llama_cpp(engine: NestEngine, max_new_tokens: int) -> System | None:
    """(l): llama.cpp greedy decoding of the embedded GGUF, if a binding is installed (CPU only)."""
    from ..lm import EMBEDDED_MODEL_NAME, find_embedded_gguf
    from .llama_cpp import load_llama_cpp

    if engine.lm.name != EMBEDDED_MODEL_NAME or engine.lm.device.type != "cpu":
        return None
    runner = load_llama_cpp(find_embedded_gguf(), n_ctx=engine.lm.context_length)
    if runner is None:
        return None
    name = f"l: llama.cpp, {runner.threads} threads"

    def run(prompt: Prompt) -> Measurement:
        ids = build_prompt_ids(engine.lm.tokenizer, normalize_messages(prompt.text), chat=_chat(prompt))
        new, seconds = runner.generate(ids, max_new_tokens, engine.lm.eos_token_ids)
        text = engine.lm.tokenizer.decode(new, skip_special_tokens=True)
        return Measurement(
            system=name,
            task=prompt.task,
            prompt=prompt.text,
            document_id=prompt.document_id,
            text=text,
            tokens=len(new),
            seconds=seconds,
            decoding_s=seconds,
            mid_sentence_start=starts_mid_sentence(text, None),
        )

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
            clear_passage_cache(engine)
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


def _hf_generate(
    engine: NestEngine,
    name: str,
    prompt: Prompt,
    ids: list[int],
    max_new_tokens: int,
    extra: dict[str, Any],
    first_stage: float,
) -> Measurement:
    out = plain_decode(engine.lm, ids, max_new_tokens, **extra)
    return Measurement(
        system=name,
        task=prompt.task,
        prompt=prompt.text,
        document_id=prompt.document_id,
        text=out.text,
        tokens=len(out.token_ids),
        seconds=first_stage + out.seconds,
        first_stage_s=first_stage,
        decoding_s=out.seconds,
        mid_sentence_start=starts_mid_sentence(out.text, None),
    )


def paper_settings() -> dict[str, Any]:
    """The paper's defaults for every NEST knob (the guards added in this project off)."""
    return {k: v for k, v in NestConfig.paper().model_dump().items() if k != "max_new_tokens"}


def standard_systems(engine: NestEngine, max_new_tokens: int, stage: FirstStage | None = None) -> list[System]:
    """All systems of the comparison, in report order; NEST runs with the engine's config
    (for the embedded model: its calibrated one), plus (e0) the paper's settings when they differ."""
    stage = stage or built_in(engine)
    peer = llama_cpp(engine, max_new_tokens)
    systems = [
        plain_generate(engine, max_new_tokens),
        static_cache(engine, max_new_tokens),
        *([peer] if peer is not None else []),
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
