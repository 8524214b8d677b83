"""Per-row attention of a packed batch (row_attention.py): the layout and when it is used."""

from __future__ import annotations

import types

import pytest
import torch

from nest_integrations.decode_thread import decode_thread
from nest_integrations.row_attention import (
    _gather_slots,
    query_groups,
    row_attention_forward,
    row_layout,
    selected,
    supported,
)


def test_prompts_and_long_rows_holding_their_span_get_a_view_and_the_rest_is_gathered() -> None:
    rows = [
        (0, 5, [0, 1, 2, 3, 4]),  # a whole prompt over its own span: causal, no mask
        (5, 1, [5, 6, 7]),  # one token over its own span: no mask
        (6, 2, [8, 9, 11, 12]),  # 2 tokens, one foreign slot (10) in its span: a mask
        (8, 2, [13, 30, 31]),  # thin (3 slots over a span of 19): gathered
        (10, 1, [14, 40]),  # thin: gathered
    ]
    layout = row_layout(rows, torch.float32, torch.device("cpu"), view_from=3)  # "long": 3 slots or more
    prompt, one, masked = layout.windows
    assert (prompt.start, prompt.stop, prompt.mask, prompt.causal) == (0, 5, None, True)
    assert (one.start, one.stop, one.mask, one.causal) == (5, 8, None, False)
    assert (masked.start, masked.stop) == (8, 13)
    assert (masked.mask[0, 0] == 0).int().tolist() == [[1, 1, 0, 1, 0], [1, 1, 0, 1, 1]]
    (gathered,) = layout.gathered
    assert gathered.kv_index.tolist() == [[13, 30, 31], [14, 40, 0]]
    assert (gathered.mask[:, 0] == 0).int().tolist() == [[[1, 1, 0], [1, 1, 1]], [[1, 1, 0], [1, 0, 0]]]
    assert gathered.query_index.tolist() == [[8, 9], [10, 10]]  # the padding query repeats the row's first
    assert gathered.flat_index.tolist() == [0, 1, 2] and gathered.packed_index.tolist() == [8, 9, 10]
    # With rows "long" from 1,024 slots, as by default, only the prompt keeps a view.
    layout = row_layout(rows, torch.float32, torch.device("cpu"))
    assert [w.query for w in layout.windows] == [0]
    assert [g.packed_index.tolist() for g in layout.gathered] == [list(range(5, 11))]


def test_rows_attend_as_one_masked_call_over_the_whole_cache() -> None:
    """Views and gathered rows together: the result equals softmax attention over the whole
    cache with each query masked to its own row's slots (grouped-query heads: 4 query heads
    over 2 key heads)."""
    generator = torch.Generator().manual_seed(0)
    # A prompt, a masked view, a one-token view, two gathered rows (one with 3 new tokens).
    rows = [(0, 4, [0, 1, 2, 3]), (4, 2, [4, 5, 7, 9]), (6, 1, [10, 11]), (7, 3, [6, 20, 21, 22]), (10, 1, [8, 23])]
    query = torch.randn(1, 4, 11, 8, generator=generator)
    key = torch.randn(1, 2, 24, 8, generator=generator)
    value = torch.randn(1, 2, 24, 8, generator=generator)
    layout = row_layout(rows, torch.float32, torch.device("cpu"), view_from=2)
    assert len(layout.windows) == 3 and [g.packed_index.tolist() for g in layout.gathered] == [[7, 8, 9, 10]]
    out, _ = row_attention_forward(torch.nn.Module(), query, key, value, None, scaling=0.5, nest_rows=layout)
    torch.testing.assert_close(out, _dense_reference(rows, query, key, value, 0.5), atol=1e-5, rtol=0)


def _dense_reference(rows, query, key, value, scaling):
    """Softmax attention over the whole cache, each query masked to its own row's slots."""
    mask = torch.full((query.shape[2], key.shape[2]), float("-inf"))
    for start, n, slots in rows:
        for i in range(n):
            mask[start + i, slots[: len(slots) - n + i + 1]] = 0.0
    group = query.shape[1] // key.shape[1]
    k, v = key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)
    weights = torch.softmax(query @ k.transpose(-1, -2) * scaling + mask, dim=-1)
    return (weights @ v).transpose(1, 2)


def test_a_long_draft_gets_its_own_gathered_call() -> None:
    """Six one-token rows of 200 slots and one 40-token draft: one call would pad every row to
    40 queries, so the draft gets a call of its own; packed order is kept within a group."""
    rows = [(i, 1, list(range(300 * i, 300 * i + 200))) for i in range(3)]
    rows.append((3, 40, list(range(900, 1100)) + list(range(2000, 2040))))
    rows += [(43 + i, 1, list(range(1200 + 250 * i, 1200 + 250 * i + 200))) for i in range(3)]
    groups = query_groups(rows)
    assert [[r[0] for r in g] for g in groups] == [[0, 1, 2, 43, 44, 45], [3]]
    assert query_groups(rows, max_calls=1) == [rows]
    with pytest.raises(ValueError, match="max_calls"):
        query_groups(rows, max_calls=0)
    # On an accelerator the draft shares the one-token rows' call: padding them costs less than a call.
    assert len(row_layout(rows, torch.float32, "meta").gathered) == 1
    # ... but a joining 900-token prompt (reusing a cached prefix, so gathered) gets its own.
    joining = (46, 900, list(range(2100, 2132)) + list(range(3000, 3900)))
    assert [len(g.packed_index) for g in row_layout([*rows, joining], torch.float32, "meta").gathered] == [46, 900]
    assert query_groups([]) == []
    same = [(i, 2, [i * 10, i * 10 + 1, i * 10 + 2]) for i in range(5)]
    assert query_groups(same) == [same]  # nothing to save: one call
    many = [(i, [1, 1, 4, 33, 9][i % 5], list(range(50 + 7 * i))) for i in range(200)]
    groups = query_groups(many)
    assert len(groups) <= 3 and sorted(r[0] for g in groups for r in g) == list(range(200))
    assert all([r[0] for r in g] == sorted(r[0] for r in g) for g in groups)  # packed order kept
    assert len({n for g in groups for n in {r[1] for r in g}}) == 4  # rows with one n share a group
    assert sum(len({r[1] for r in g}) for g in groups) == 4

    generator = torch.Generator().manual_seed(1)
    query = torch.randn(1, 6, 46, 16, generator=generator)  # 6 query heads over 2 key heads
    key = torch.randn(1, 2, 2040, 16, generator=generator)
    value = torch.randn(1, 2, 2040, 16, generator=generator)
    layout = row_layout(rows, torch.float32, torch.device("cpu"))
    assert not layout.windows and len(layout.gathered) == 2
    out, _ = row_attention_forward(torch.nn.Module(), query, key, value, None, scaling=0.25, nest_rows=layout)
    torch.testing.assert_close(out, _dense_reference(rows, query, key, value, 0.25), atol=1e-5, rtol=0)


def test_gathered_slots_are_the_cached_states_at_those_slots() -> None:
    """A cache view with spare room, as kv_cache.GrowingLayer returns it: the per-head gather
    equals advanced indexing bit for bit; off the CPU it is one call with the same shape."""
    buffer = torch.randn(1, 3, 90, 8, generator=torch.Generator().manual_seed(2)).bfloat16()
    states = buffer[:, :, :70]
    index = torch.tensor([5, 69, 0, 5, 33])
    assert torch.equal(_gather_slots(states, index), states[0][:, index])
    assert _gather_slots(states.to("meta"), index.to("meta")).shape == (3, 5, 8)


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


def test_a_plain_forward_while_it_is_selected_is_the_models_own(lm) -> None:
    """The switch is the model's: a forward without a row layout meanwhile (another thread's)
    gets SDPA and its causal mask, the same logits bit for bit."""
    ids = torch.tensor([lm.tokenizer("Who was Nero? He was a Roman emperor.")["input_ids"]])

    def forwards() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            plain = lm.model(input_ids=ids).logits
            with selected(lm.model):
                during = lm.model(input_ids=ids).logits
        return plain, during

    plain, during = decode_thread().call(forwards)
    assert torch.equal(plain, during)
    assert lm.model.config._attn_implementation == "sdpa"
