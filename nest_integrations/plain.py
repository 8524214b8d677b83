"""Plain decoding through an already loaded model: the baselines NEST is measured against.

Greedy ``model.generate`` with the dynamic (eager) KV cache or a static, preallocated one
(``cache_implementation="static"``; transformers compiles its decode step on CUDA), and
optional prompt-lookup drafting. No retrieval, no citations.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .lm import LoadedLM


@dataclass(frozen=True)
class PlainOutput:
    """New tokens (EOS dropped), their text, and the seconds ``generate`` took (synchronised on CUDA)."""

    token_ids: list[int]
    text: str
    seconds: float


def plain_generate(
    lm: LoadedLM,
    prompt_ids: list[int],
    max_new_tokens: int,
    *,
    static_cache: bool = False,
    compile: bool | None = None,
    prompt_lookup_num_tokens: int | None = None,
    min_new_tokens: int = 0,
) -> PlainOutput:
    """Greedy decoding of up to ``max_new_tokens`` after ``prompt_ids`` (a list of token ids).

    ``static_cache``: a preallocated KV cache sized for prompt + new tokens (compiled by
    transformers on CUDA). ``compile`` (static cache only): None leaves it to transformers
    (compiled on CUDA), True compiles the decode step on any device, False never.
    ``prompt_lookup_num_tokens``: draft that many tokens by n-gram
    look-up in the prompt (transformers' prompt-lookup decoding). Output is the same greedy text
    either way, up to floating-point differences between kernels. ``min_new_tokens``: EOS is
    suppressed until that many tokens exist (fixed-length speed runs).
    """
    import torch

    extra: dict[str, Any] = {}
    if static_cache:
        extra["cache_implementation"] = "static"
        if compile is False:
            extra["disable_compile"] = True
        elif compile:
            from transformers import CompileConfig

            config = CompileConfig()
            config._compile_all_devices = True  # type: ignore[assignment]  # transformers: compile off CUDA too
            extra["compile_config"] = config
    if min_new_tokens:
        extra["min_new_tokens"] = min_new_tokens
    if prompt_lookup_num_tokens:
        extra["prompt_lookup_num_tokens"] = prompt_lookup_num_tokens
    inputs = torch.tensor([prompt_ids], device=lm.device)
    sync = torch.cuda.synchronize if lm.device.type == "cuda" else (lambda: None)
    with torch.inference_mode(), warnings.catch_warnings():
        # generate() warns that sampling-only fields of the model's generation config are unused.
        warnings.filterwarnings("ignore", message=".*generation flags are not valid.*")
        sync()
        t = time.perf_counter()
        out = lm.model.generate(
            inputs,
            attention_mask=torch.ones_like(inputs),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad if (pad := lm.tokenizer.pad_token_id) is not None else min(lm.eos_token_ids, default=None),
            **extra,
        )
        sync()
        seconds = time.perf_counter() - t
    new = [int(x) for x in out[0, len(prompt_ids) :].tolist() if int(x) not in lm.eos_token_ids]
    return PlainOutput(new, lm.tokenizer.decode(new, skip_special_tokens=True), seconds)
