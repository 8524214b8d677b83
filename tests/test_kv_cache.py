"""GrowingLayer: a KV cache layer that appends in place holds exactly what concatenation would."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from nest_integrations.kv_cache import GrowingLayer, growing_cache


def states(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, n, 8, generator=g), torch.randn(1, 3, n, 8, generator=g)


def test_appends_crops_and_replacements_hold_what_concatenation_holds() -> None:
    growing, plain = GrowingLayer(), DynamicLayer()
    buffers = set()
    for step, (n, crop) in enumerate([(90, 0), (1, 0), (5, -3), (64, 0), (1, -40), (200, 0), (2, 0)]):
        if crop:
            growing.crop(crop)
            plain.crop(crop)
        k, v = states(n, step)
        got_k, got_v = growing.update(k, v)
        want_k, want_v = plain.update(k, v)
        assert torch.equal(got_k, want_k) and torch.equal(got_v, want_v)
        assert growing.get_seq_length() == plain.get_seq_length()
        buffers.add(growing._key_buffer.data_ptr())
        if step == 4:  # a caller replaces the keys (BatchedStepModel's compaction): the next update copes
            live = torch.tensor([i for i in range(plain.get_seq_length()) if i % 3])
            growing.keys, growing.values = growing.keys.index_select(2, live), growing.values.index_select(2, live)
            plain.keys, plain.values = plain.keys.index_select(2, live), plain.values.index_select(2, live)
            assert growing._key_buffer is None and growing._value_buffer is None  # the old buffers go at once
    assert len(buffers) < 7  # most appends wrote into the buffer they found


def test_reset_lets_the_buffers_go_and_the_layer_is_reusable() -> None:
    layer = GrowingLayer()
    layer.update(*states(50, 0))
    layer.reset()
    assert layer._key_buffer is None and layer.get_seq_length() == 0
    k, v = states(3, 1)
    got_k, got_v = layer.update(k, v)
    assert torch.equal(got_k, k) and torch.equal(got_v, v)


def test_buffer_room_is_bounded() -> None:
    layer = GrowingLayer()
    for step in range(300):
        layer.update(*states(1, step))
    assert layer.get_seq_length() == 300
    assert layer._key_buffer.shape[-2] <= 300 * 3 // 2 + 64


def test_growing_cache_replaces_plain_layers_only() -> None:
    from transformers import LlamaConfig

    config = LlamaConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=4, intermediate_size=64)
    cache = growing_cache(config)
    assert [type(layer) for layer in cache.layers] == [GrowingLayer] * 3
