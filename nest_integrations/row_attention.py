"""Attention for a packed batch: each row's queries attend over its own cache slots alone.

:class:`~nest_integrations.step_model.BatchedStepModel` packs every row's new tokens into one
sequence over one KV cache (no padding in the linear layers, where a small model spends most
of its time). Attention over that whole cache with a mask scores every query against every
row's slots: R rows of L slots cost R times the needed work, and grouped-query heads make
transformers copy the whole cache per layer. Here each row's keys and values are gathered
(padded to the longest row) and its queries (padded to the row with the most tokens) attend in
one SDPA call over R rows: attention costs R x n x L, not N x R x L. Session 12, 2 CPU cores,
rows of ~92 slots: a step of 8 rows x 5 tokens 142.6 -> 131.7 ms, 8 x 20 331.9 -> 272.7 ms,
16 x 3 189.9 -> 155.4 ms (benchmarks/RESULTS.md).

It is a transformers attention function (``AttentionInterface``), selected for one forward by
:func:`selected`; the model's layers pass it the :class:`RowLayout` given as ``nest_rows``.
Used only for models whose attention is plain causal SDPA (:func:`supported`): a sliding
window, logit soft-capping or attention sinks would be lost, so those keep the masked path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["ROW_ATTENTION", "RowLayout", "row_layout", "selected", "supported"]

ROW_ATTENTION = "nest_rows"

# Model types whose attention is plain causal SDPA when their config has no sliding window.
_PLAIN_ATTENTION = frozenset({"llama", "mistral", "qwen2", "qwen3", "granite", "olmo2", "smollm3"})

_GQA_ARGUMENT = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


@dataclass(frozen=True)
class RowLayout:
    """Where each of R rows' queries and keys sit in a packed step of N new tokens.

    ``query_index`` (R, n_max): each row's queries in the packed sequence (padding repeats its
    first). ``kv_index`` (R, L_max): each row's cache slots in token order, its new tokens last
    (padding: slot 0). ``mask`` (R, 1, n_max, L_max): additive, in the model's dtype.
    ``output_index`` (N,): for each packed query, its place in the flattened (R x n_max) output.
    """

    query_index: torch.Tensor
    kv_index: torch.Tensor
    mask: torch.Tensor
    output_index: torch.Tensor


def row_layout(rows: Sequence[tuple[int, int, Sequence[int]]], dtype: torch.dtype, device: torch.device) -> RowLayout:
    """The layout of rows given as (first query in the packed sequence, n new tokens, all its
    slots in token order, the n new ones last), in packed order.

    Query i of a row with L slots may see slot j <= L - n + i (causal among its new tokens).
    Padding queries see slot 0 alone, so no softmax row is empty; their outputs are dropped.
    """
    n = torch.tensor([r[1] for r in rows], dtype=torch.long)
    length = torch.tensor([len(r[2]) for r in rows], dtype=torch.long)
    n_max, l_max = int(n.max()), int(length.max())
    kv = [list(slots) + [0] * (l_max - len(slots)) for _, _, slots in rows]
    i = torch.arange(n_max)[None, :, None]
    j = torch.arange(l_max)[None, None, :]
    padding = i >= n[:, None, None]
    allowed = (j < length[:, None, None]) & (j <= (length - n)[:, None, None] + i)
    allowed = torch.where(padding, j == 0, allowed)
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    starts = torch.tensor([r[0] for r in rows], dtype=torch.long)
    query_index = starts[:, None] + torch.where(padding[:, :, 0], 0, torch.arange(n_max)[None, :])
    output_index = torch.cat([r * n_max + torch.arange(int(k)) for r, k in enumerate(n.tolist())])
    return RowLayout(
        query_index.to(device),
        torch.tensor(kv, dtype=torch.long, device=device),
        mask[:, None].to(device),
        output_index.to(device),
    )


def row_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    nest_rows: RowLayout | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: query (1, H, N, d), key and value (1, H_kv, T, d) ->
    (1, N, H, d). Without ``nest_rows`` (a forward outside a packed step): SDPA as configured."""
    if nest_rows is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    layout = nest_rows
    q = query[0][:, layout.query_index].transpose(0, 1)  # (R, H, n_max, d)
    k = key[0][:, layout.kv_index].transpose(0, 1)  # (R, H_kv, L_max, d)
    v = value[0][:, layout.kv_index].transpose(0, 1)
    grouped = q.shape[1] != k.shape[1]
    if grouped and not _GQA_ARGUMENT:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    extra = {"enable_gqa": True} if grouped and _GQA_ARGUMENT else {}
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=layout.mask, scale=scaling, **extra)
    heads, dim = out.shape[1], out.shape[3]
    out = out.transpose(1, 2).reshape(-1, heads, dim).index_select(0, layout.output_index)  # (N, H, d)
    return out.unsqueeze(0), None


_registered = False


def _register() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(ROW_ATTENTION, row_attention_forward)
        _registered = True


def supported(model: Any) -> bool:
    """Whether ``model``'s attention is plain causal SDPA through transformers' attention interface."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    if not getattr(model, "_supports_attention_backend", False):
        return False
    if getattr(config, "model_type", None) not in _PLAIN_ATTENTION:
        return False
    layer_types = getattr(config, "layer_types", None) or ()
    if any(t != "full_attention" for t in layer_types):
        return False
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False
    return not any(getattr(config, name, None) for name in ("attn_logit_softcapping", "attention_sink"))


@contextmanager
def selected(model: Any) -> Iterator[None]:
    """Make ``model`` use :func:`row_attention_forward` for the forwards inside (on this thread:
    any other forward meanwhile falls back to plain SDPA, what the model had)."""
    _register()
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = ROW_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = previous
