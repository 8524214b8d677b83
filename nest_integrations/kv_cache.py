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
    forward instead of O(cache). ``keys``/``values``: (B, H_kv, T, d) views of the buffers.

    As in transformers' static caches, a view returned by :meth:`update` may be overwritten by a
    later update after a ``crop``: read it before the next forward, do not keep it. Assigning
    ``keys``/``values`` anything but a view of the buffers (a compaction's ``index_select``,
    ``reset``) lets the buffers go at once."""

    def __init__(self, **kwargs: Any) -> None:
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None
        super().__init__(**kwargs)

    @property
    def keys(self) -> torch.Tensor | None:
        return self._keys

    @keys.setter
    def keys(self, value: torch.Tensor | None) -> None:
        self._keys = value
        if not _views(value, self._key_buffer):
            self._key_buffer = None

    @property
    def values(self) -> torch.Tensor | None:
        return self._values

    @values.setter
    def values(self, value: torch.Tensor | None) -> None:
        self._values = value
        if not _views(value, self._value_buffer):
            self._value_buffer = None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys, values = self.keys, self.values
        assert keys is not None and values is not None  # set by lazy_initialization
        length = keys.shape[-2] if keys.dim() == 4 else 0
        needed = length + key_states.shape[-2]
        if not self._has_room(key_states, needed):
            capacity = needed + max(needed // 2, _MIN_SPARE)
            key_buffer = _buffer_with(keys, key_states, length, capacity)
            value_buffer = _buffer_with(values, value_states, length, capacity)
            self._key_buffer, self._value_buffer = key_buffer, value_buffer
        assert self._key_buffer is not None and self._value_buffer is not None
        self._key_buffer[:, :, length:needed] = key_states
        self._value_buffer[:, :, length:needed] = value_states
        self.keys = self._key_buffer[:, :, :needed]
        self.values = self._value_buffer[:, :, :needed]
        return self.keys, self.values

    def _has_room(self, new: torch.Tensor, needed: int) -> bool:
        """Whether the buffers (set only while they back ``keys``/``values``) fit ``needed`` positions of ``new``."""
        buffer = self._key_buffer
        if buffer is None or self._value_buffer is None or needed > buffer.shape[-2]:
            return False
        same_layout = buffer.shape[:2] == new.shape[:2] and buffer.shape[-1] == new.shape[-1]
        return same_layout and buffer.dtype == new.dtype and buffer.device == new.device


def _views(tensor: torch.Tensor | None, buffer: torch.Tensor | None) -> bool:
    """Whether ``tensor`` is the start of ``buffer`` (what :meth:`GrowingLayer.update` returns, or a crop of it)."""
    return tensor is not None and buffer is not None and tensor.dim() == 4 and tensor.data_ptr() == buffer.data_ptr()


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
