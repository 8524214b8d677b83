"""Optional peer (l): llama.cpp plain greedy decoding of the same GGUF, via ``llama-cpp-cffi``.

Not a dependency: :func:`load_llama_cpp` returns None when the binding is not importable
(``pip install llama-cpp-cffi``; on Debian 12's libstdc++ only its 0.3.x wheels load).
Token ids come from the same HF tokenizer, so every system decodes the same prompt.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np


class LlamaCppGreedy:
    """One llama.cpp model and context; :meth:`generate` decodes greedily from token ids."""

    def __init__(self, lib: Any, ffi: Any, gguf: Path, n_ctx: int, threads: int) -> None:
        self.lib, self.ffi = lib, ffi
        lib.llama_log_set(ffi.NULL, ffi.NULL)
        lib.llama_backend_init()
        self.model = lib.llama_load_model_from_file(str(gguf).encode(), lib.llama_model_default_params())
        if self.model == ffi.NULL:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        params = lib.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_threads, params.n_threads_batch = n_ctx, n_ctx, threads, threads
        self.context = lib.llama_new_context_with_model(self.model, params)
        self.n_vocab = int(lib.llama_n_vocab(self.model))
        self.threads = threads

    def _decode(self, tokens: list[int]) -> np.ndarray:
        buffer = self.ffi.new("llama_token[]", tokens)
        if self.lib.llama_decode(self.context, self.lib.llama_batch_get_one(buffer, len(tokens))) != 0:
            raise RuntimeError("llama_decode failed")
        logits = self.lib.llama_get_logits_ith(self.context, -1)
        return np.frombuffer(self.ffi.buffer(logits, self.n_vocab * 4), dtype=np.float32)

    def generate(self, prompt_ids: list[int], max_new_tokens: int, eos: set[int]) -> tuple[list[int], float]:
        """Greedy new tokens (EOS excluded) and the seconds taken, prompt processing included."""
        self.lib.llama_kv_cache_clear(self.context)
        t = time.perf_counter()
        logits = self._decode(list(prompt_ids))
        out: list[int] = []
        for _ in range(max_new_tokens):
            token = int(logits.argmax())
            if token in eos:
                break
            out.append(token)
            logits = self._decode([token])
        return out, time.perf_counter() - t


def load_llama_cpp(gguf: Path, n_ctx: int = 2048, threads: int | None = None) -> LlamaCppGreedy | None:
    """llama.cpp over ``gguf`` with ``threads`` (default: torch's thread count), or None if not installed."""
    try:
        from llama.llama_cpp import ffi, lib  # llama-cpp-cffi
    except (ImportError, OSError):
        return None
    if threads is None:
        import torch

        threads = torch.get_num_threads() or os.cpu_count() or 1
    return LlamaCppGreedy(lib, ffi, gguf, n_ctx, threads)
