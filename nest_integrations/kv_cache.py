"""A KV cache whose layers append in place, with spare room, instead of concatenating.

transformers' ``DynamicLayer`` appends a forward's keys and values with ``torch.cat``: every
forward copies each layer's whole cache. Decoding token by token that is O(T) bytes moved per
layer per step; a batch packs every row into one cache (``BatchedStepModel``), so T is the sum
of all rows' lengths. :class:`GrowingLayer` keeps each layer's keys and values in a buffer with
spare room and writes only the new tokens; the cache it returns is a view of the buffer's first
T positions, as ``DynamicLayer``'s would be after ``cat``. Rolling back (``crop``) shortens the
view; a caller that replaces ``keys``/``values`` (compaction, ``index_select``) gets a new buffer
at the next update. The values stored are the same; attention reads them from a strided view.

Session 13, 2 CPU cores, float32, one decoding step after 1,000-token prompts: a lone row
46-50 ms instead of 53-67 ms; 8 rows of one token each 185-191 ms instead of 214-229 ms. After
120-token prompts, no measurable change (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

__all__ = ["GrowingLayer", "growing_cache"]

# Spare room when a buffer is (re)allocated: half its needed length, at least this many positions.
_MIN_SPARE = 64


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` that appends into a buffer with spare room: amortised O(new tokens) a
    forward instead of O(cache). ``keys``/``values``: (B, H_kv, T, d) views of the buffers."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys, values = self.keys, self.values
        assert keys is not None and values is not None  # set by lazy_initialization
        length = keys.shape[-2] if keys.dim() == 4 else 0
        needed = length + key_states.shape[-2]
        if not self._holds(keys, key_states, needed):
            capacity = needed + max(needed // 2, _MIN_SPARE)
            self._key_buffer = _buffer_with(keys, key_states, length, capacity)
            self._value_buffer = _buffer_with(values, value_states, length, capacity)
        assert self._key_buffer is not None and self._value_buffer is not None
        self._key_buffer[:, :, length:needed] = key_states
        self._value_buffer[:, :, length:needed] = value_states
        self.keys = self._key_buffer[:, :, :needed]
        self.values = self._value_buffer[:, :, :needed]
        return self.keys, self.values

    def _holds(self, keys: torch.Tensor, new: torch.Tensor, needed: int) -> bool:
        """Whether the buffer still backs ``keys`` (not replaced since) and has room for ``needed``."""
        buffer = self._key_buffer
        if buffer is None or needed > buffer.shape[-2] or buffer.dtype != new.dtype or buffer.device != new.device:
            return False
        if buffer.shape[:2] != new.shape[:2] or buffer.shape[-1] != new.shape[-1]:
            return False
        return keys.dim() != 4 or keys.shape[-2] == 0 or keys.data_ptr() == buffer.data_ptr()

    def reset(self) -> None:
        self._key_buffer = self._value_buffer = None
        super().reset()


def _buffer_with(old: torch.Tensor, new: torch.Tensor, length: int, capacity: int) -> torch.Tensor:
    """A (B, H, capacity, d) buffer holding ``old``'s first ``length`` positions."""
    buffer = new.new_empty((*new.shape[:2], capacity, new.shape[-1]))
    if length:
        buffer[:, :, :length] = old
    return buffer


def growing_cache(config: Any) -> DynamicCache:
    """A ``DynamicCache`` for ``config`` whose plain (full-attention) layers are :class:`GrowingLayer`
    (sliding-window and other special layers are kept as transformers makes them)."""
    cache = DynamicCache(config=config)
    if cache.layer_class_to_replicate is DynamicLayer:
        cache.layer_class_to_replicate = GrowingLayer
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
