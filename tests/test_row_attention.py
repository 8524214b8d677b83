"""Per-row attention of a packed batch (row_attention.py): the layout and when it is used."""

from __future__ import annotations

import types

import torch

from nest_integrations.row_attention import row_attention_forward, row_layout, supported


def test_each_query_sees_its_own_slots_causally_and_padding_sees_one_slot() -> None:
    # Row 0: 2 new tokens over slots [4, 0, 7] (its new ones last); row 1: 1 new token over [1, 2, 3, 5].
    layout = row_layout([(0, 2, [4, 0, 7]), (2, 1, [1, 2, 3, 5])], torch.float32, torch.device("cpu"))
    allowed = (layout.mask[:, 0] == 0).int().tolist()
    assert allowed[0] == [[1, 1, 0, 0], [1, 1, 1, 0]]  # causal among the new tokens; padded slot hidden
    assert allowed[1] == [[1, 1, 1, 1], [1, 0, 0, 0]]  # the padding query sees slot 0 alone
    assert layout.kv_index.tolist() == [[4, 0, 7, 0], [1, 2, 3, 5]]
    assert layout.query_index.tolist() == [[0, 1], [2, 2]]
    assert layout.output_index.tolist() == [0, 1, 2]


def test_rows_attend_as_one_masked_call_over_the_whole_cache() -> None:
    """The per-row result equals softmax attention over the whole cache with each query masked
    to its own row's slots (grouped-query heads: 4 query heads over 2 key heads)."""
    generator = torch.Generator().manual_seed(0)
    rows = [(0, 3, [0, 1, 5, 6, 7]), (3, 1, [2, 3, 4, 8])]
    query = torch.randn(1, 4, 4, 8, generator=generator)
    key = torch.randn(1, 2, 9, 8, generator=generator)
    value = torch.randn(1, 2, 9, 8, generator=generator)
    layout = row_layout(rows, torch.float32, torch.device("cpu"))
    out, _ = row_attention_forward(torch.nn.Module(), query, key, value, None, scaling=0.5, nest_rows=layout)
    mask = torch.full((4, 9), float("-inf"))
    for start, n, slots in rows:
        for i in range(n):
            visible = slots[: len(slots) - n + i + 1]
            mask[start + i, visible] = 0.0
    k, v = key.repeat_interleave(2, dim=1), value.repeat_interleave(2, dim=1)
    weights = torch.softmax(query @ k.transpose(-1, -2) * 0.5 + mask, dim=-1)
    torch.testing.assert_close(out, (weights @ v).transpose(1, 2), atol=1e-5, rtol=0)


def test_only_plain_causal_sdpa_models_use_it(lm) -> None:
    assert supported(lm.model)  # the embedded SmolLM2 (llama)

    def model(**config: object) -> types.SimpleNamespace:
        base = {"_attn_implementation": "sdpa", "model_type": "llama"}
        return types.SimpleNamespace(config=types.SimpleNamespace(**(base | config)), _supports_attention_backend=True)

    assert supported(model())
    assert not supported(model(_attn_implementation="eager"))
    assert not supported(model(model_type="gemma2", attn_logit_softcapping=50.0))
    assert not supported(model(model_type="mistral", sliding_window=4096))
    assert not supported(model(model_type="qwen2", layer_types=["full_attention", "sliding_attention"]))
    assert supported(model(model_type="qwen2", sliding_window=4096, use_sliding_window=False))
