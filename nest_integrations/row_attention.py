"""Attention for a packed batch: each row's queries attend over its own cache slots alone.

:class:`~nest_integrations.step_model.BatchedStepModel` packs every row's new tokens into one
sequence over one KV cache (no padding in the linear layers, where a small model spends most
of its time). Attention over that whole cache behind one mask scores every query against every
row's slots, copies the whole cache per layer for grouped-query heads, and runs a joining
row's prompt through a dense N x T mask instead of SDPA's causal kernel. Here:

- a joining row's whole prompt attends over a view of its slots, causally, as it would alone;
- a long row (``VIEW_FROM_SLOTS`` slots or more) that fills at least half its span attends
  over a view of that span, masked to its own slots;
- the other rows' slots are gathered, padded to the longest, into one SDPA call per group of
  rows with similar query counts (:func:`query_groups`).

Session 12, 2 CPU cores: a 4.9k-token prompt batched with a short one, 14.7 s instead of
20.4 s; 8 concurrent requests of the throughput benchmark, no measurable change
(benchmarks/RESULTS.md).

It is a transformers attention function (``AttentionInterface``), selected for one forward by
:func:`selected`; the model's layers pass it the :class:`RowLayout` given as ``nest_rows``.
Used only for models whose attention is plain causal SDPA (:func:`supported`): a sliding
window, logit soft-capping or attention sinks would be lost, so those keep the masked path.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import combinations, pairwise
from typing import Any

import torch

__all__ = [
    "ROW_ATTENTION",
    "GatheredRows",
    "RowLayout",
    "RowWindow",
    "additive_mask",
    "query_groups",
    "row_layout",
    "selected",
    "supported",
]

ROW_ATTENTION = "nest_rows"

Row = tuple[int, int, Sequence[int]]  # (first query in the packed sequence, n new tokens, its slots)

# Model types whose attention is plain causal SDPA when their config has no sliding window.
_PLAIN_ATTENTION = frozenset({"llama", "mistral", "qwen2", "qwen3", "granite", "olmo2", "smollm3"})


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask as attention adds it: 0 where allowed, the dtype's minimum elsewhere
    (eager attention adds it; SDPA takes it as is). Same shape and device."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, torch.finfo(dtype).min)


_sdpa = torch.nn.functional.scaled_dot_product_attention
_SDPA_TAKES_GQA = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


def _grouped(keys: torch.Tensor, group: int) -> torch.Tensor:
    """Keys (or values) for ``group`` query heads each: as they are where SDPA takes grouped
    heads (torch >= 2.5, no copy), else repeated."""
    return keys if group == 1 or _SDPA_TAKES_GQA else keys.repeat_interleave(group, dim=1)


def _gqa(grouped: bool) -> dict[str, bool]:
    return {"enable_gqa": True} if grouped and _SDPA_TAKES_GQA else {}


@dataclass(frozen=True)
class RowWindow:
    """A row that attends over a view of the cache: its ``n`` queries start at ``query`` in the
    packed sequence; its slots all lie in [``start``, ``stop``), where ``mask`` (1, 1, n,
    stop - start), additive in the model's dtype, lets query i see the row's own slots up to its
    own token. No mask where the row holds the whole window: it runs one token (it sees every
    slot) or its whole window, a prompt (``causal``: SDPA's causal kernel, as a row alone)."""

    query: int
    n: int
    start: int
    stop: int
    mask: torch.Tensor | None
    causal: bool = False
    _stacked: dict[int, torch.Tensor] = field(default_factory=dict, compare=False, repr=False)

    def stacked_mask(self, group: int) -> torch.Tensor | None:
        """``mask`` for queries stacked ``group`` heads deep, made once a step, not once a layer."""
        return _stacked(self.mask, group, self._stacked) if self.mask is not None else None


@dataclass(frozen=True)
class GatheredRows:
    """Rows whose slots are scattered thinly over the cache: gathered, padded, one SDPA call.

    ``query_index`` (R, n_max): each row's queries in the packed sequence (padding repeats its
    first); ``kv_index`` (R, L_max): its slots (padding: slot 0); ``mask`` (R, 1, n_max, L_max)
    additive; ``flat_index`` (M,): the real queries in the flattened (R x n_max) output, and
    ``packed_index`` (M,): where each sits in the packed sequence."""

    query_index: torch.Tensor
    kv_index: torch.Tensor
    mask: torch.Tensor
    flat_index: torch.Tensor
    packed_index: torch.Tensor
    _stacked: dict[int, torch.Tensor] = field(default_factory=dict, compare=False, repr=False)

    def stacked_mask(self, group: int) -> torch.Tensor:
        """``mask`` for queries stacked ``group`` heads deep, (R, 1, group x n_max, L_max): made
        once a step, not once a layer."""
        return _stacked(self.mask, group, self._stacked)


def _stacked(mask: torch.Tensor, group: int, made: dict[int, torch.Tensor]) -> torch.Tensor:
    """An additive mask (R, 1, n, L) repeated for queries stacked ``group`` heads deep, (R, 1,
    group x n, L); kept in ``made`` (the layers of one step share it)."""
    if group == 1:
        return mask
    if group not in made:
        made[group] = mask.repeat(1, 1, group, 1)
    return made[group]


@dataclass(frozen=True)
class RowLayout:
    """How the rows of one packed step attend: views for prompts and long rows that hold most
    of their span, gathered calls for the rest (one per group of :func:`query_groups`)."""

    windows: list[RowWindow]
    gathered: list[GatheredRows]


# A row of at least this many slots attends over a view of its span rather than having its slots
# gathered: gathering copies every slot in every layer each step. Shorter rows are gathered, all
# in one call: one call per row costs more than it saves there (session 12, 8 concurrent
# requests: 181-198 tokens/s with a view for every row filling half its span, 201-203 gathered).
VIEW_FROM_SLOTS = 1024


def row_layout(
    rows: Sequence[Row],
    dtype: torch.dtype,
    device: torch.device | str,
    view_from: int = VIEW_FROM_SLOTS,
) -> RowLayout:
    """The layout of rows given as (first query in the packed sequence, n new tokens, all its
    slots in increasing order, the n new ones last), in packed order.

    A whole prompt over its own span (a row joining) attends over a view of it, causally. A row
    of ``view_from`` slots or more that fills at least half its span attends over a view of the
    span (no copy, at most 2x the attention work). The others' slots are gathered, in groups of
    similar query counts (:func:`query_groups`; on an accelerator only where padding is huge)."""
    device = torch.device(device)
    windows: list[RowWindow] = []
    thin: list[Row] = []
    for query, n, slots in rows:
        start, stop = int(slots[0]), int(slots[-1]) + 1
        length = len(slots)
        if stop - start == length and n == length:
            windows.append(RowWindow(query, n, start, stop, None, causal=n > 1))
        elif length < view_from or stop - start > 2 * length:
            thin.append((query, n, slots))
        elif stop - start == length and n == 1:
            windows.append(RowWindow(query, n, start, stop, None))
        else:
            own = torch.tensor(slots, dtype=torch.long) - start
            allowed = torch.zeros((n, stop - start), dtype=torch.bool)
            allowed[:, own[: length - n]] = True
            allowed[:, own[length - n :]] = torch.ones((n, n), dtype=torch.bool).tril()
            windows.append(RowWindow(query, n, start, stop, additive_mask(allowed, dtype)[None, None].to(device)))
    groups = query_groups(thin, call_cost=CALL_COST_PAIRS if device.type == "cpu" else CALL_COST_PAIRS_ACCELERATOR)
    return RowLayout(windows, [_gathered(group, dtype, device) for group in groups])


# What one more gathered SDPA call costs, in padded query-slot pairs (query rows x key slots):
# on 2 CPU cores a call costs ~35 us and each pair ~0.01 us (session 14, bf16, 8 rows of 170
# slots: 7 one-token rows with one 33-token draft took 591 us in one call, 167 us in two).
CALL_COST_PAIRS = 3500
# On an accelerator padded pairs are nearly free next to a call's launches, so rows are split
# only where padding would be huge (an estimate, not measured: a 1,000-token joining prompt
# padding 15 one-token rows of ~330 slots is 16.5 M pairs, and its (stacked) mask ~190 MiB).
CALL_COST_PAIRS_ACCELERATOR = 4_000_000
MAX_GATHERED_CALLS = 3


def query_groups(
    rows: Sequence[Row], call_cost: int = CALL_COST_PAIRS, max_calls: int = MAX_GATHERED_CALLS
) -> list[list[Row]]:
    """Rows (first query, n new tokens, slots) split into groups, each gathered into one call
    padded to its largest n and slot count: of the splits of the rows ordered by n into at most
    ``max_calls`` runs (rows with the same n stay together), the one with the least padded work
    (query rows x key slots), each run costing ``call_cost`` more, so that a row with a 33-token
    draft does not pad seven one-token rows to 33 queries. Each group keeps the rows' packed order."""
    if max_calls < 1:
        raise ValueError(f"max_calls must be at least 1, got {max_calls}")
    if not rows:
        return []
    if max_calls == 1 or len(rows) == 1:
        return [list(rows)]
    # Runs of rows with the same n, in increasing n: (n, the rows' indices, their longest slot count).
    by_n: dict[int, list[int]] = {}
    for k, row in enumerate(rows):
        by_n.setdefault(row[1], []).append(k)
    runs = [(n, ks, max(len(rows[k][2]) for k in ks)) for n, ks in sorted(by_n.items())]
    m = len(runs)
    # cost[i][j]: runs i..j-1 in one call.
    cost = [[0] * (m + 1) for _ in range(m)]
    for i in range(m):
        count = longest = 0
        for j in range(i + 1, m + 1):
            n, ks, length = runs[j - 1]
            count, longest = count + len(ks), max(longest, length)
            cost[i][j] = call_cost + count * n * longest
    # Cut the runs in at most max_calls - 1 places, fewest cuts first (they win ties).
    splits = (cuts for c in range(min(max_calls, m)) for cuts in combinations(range(1, m), c))
    cuts = min(splits, key=lambda cuts: sum(cost[i][j] for i, j in pairwise((0, *cuts, m))))
    return [[rows[k] for k in sorted(k for run in runs[i:j] for k in run[1])] for i, j in pairwise((0, *cuts, m))]


def _gathered(rows: Sequence[Row], dtype: torch.dtype, device: torch.device) -> GatheredRows:
    """Query i of a row with L slots may see its slot j <= L - n + i (causal among its new
    tokens). Padding queries see slot 0 alone, so no softmax row is empty; their outputs are dropped."""
    n = torch.tensor([r[1] for r in rows], dtype=torch.long)
    length = torch.tensor([len(r[2]) for r in rows], dtype=torch.long)
    n_max, l_max = int(n.max()), int(length.max())
    kv = [list(slots) + [0] * (l_max - len(slots)) for _, _, slots in rows]
    i = torch.arange(n_max)[None, :, None]
    j = torch.arange(l_max)[None, None, :]
    padding = i >= n[:, None, None]
    allowed = (j < length[:, None, None]) & (j <= (length - n)[:, None, None] + i)
    allowed = torch.where(padding, j == 0, allowed)
    starts = torch.tensor([r[0] for r in rows], dtype=torch.long)
    query_index = starts[:, None] + torch.where(padding[:, :, 0], 0, torch.arange(n_max)[None, :])
    real = ~padding[:, :, 0]
    return GatheredRows(
        query_index.to(device),
        torch.tensor(kv, dtype=torch.long, device=device),
        additive_mask(allowed, dtype)[:, None].to(device),
        real.reshape(-1).nonzero().squeeze(1).to(device),
        query_index[real].to(device),
    )


def _gather_queries(query: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Queries (1, H, N, d) at ``index`` (M,) of the packed sequence -> (M, H, d)."""
    return query[0].transpose(0, 1).index_select(0, index)


def _gather_slots(states: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Cached keys or values (1, H_kv, T, d) at slots ``index`` (M,) -> (H_kv, M, d).

    On a CPU, one ``index_select`` of whole d-vectors per head: the same copy as
    ``states[0][:, index]``, about 3x faster (session 14, 8 rows of ~170 slots: 33 vs 99 us a
    layer). Elsewhere one call for all heads (a kernel launch per head would cost more)."""
    if states.device.type != "cpu":
        return states[0].index_select(1, index)
    out = states.new_empty((states.shape[1], index.shape[0], states.shape[3]))
    for head in range(states.shape[1]):
        torch.index_select(states[0, head], 0, index, out=out[head])
    return out


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
    (1, N, H, d). Without ``nest_rows`` (a forward outside a packed step): SDPA as configured.

    Grouped-query heads: with a mask, the queries of the H / H_kv heads that share a key head
    are stacked as more queries of it (no copy of the keys); a causal prompt repeats its keys."""
    if nest_rows is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    heads, kv_heads, dim = query.shape[1], key.shape[1], query.shape[3]
    group = heads // kv_heads
    out = query.new_empty((query.shape[2], heads, dim))  # (N, H, d)
    for row in nest_rows.windows:
        k, v = key[:, :, row.start : row.stop], value[:, :, row.start : row.stop]
        if row.causal:  # a whole prompt: stacked heads would not be causal
            q = query[:, :, row.query : row.query + row.n]
            k, v = _grouped(k, group), _grouped(v, group)
            mask = None
        else:
            q = query[:, :, row.query : row.query + row.n].reshape(1, kv_heads, group * row.n, dim)
            mask = row.stacked_mask(group)
        o = _sdpa(q, k, v, attn_mask=mask, scale=scaling, is_causal=row.causal, **_gqa(row.causal and group > 1))
        out[row.query : row.query + row.n] = o.reshape(heads, row.n, dim).transpose(0, 1)
    for gathered in nest_rows.gathered:
        (rows, n_max), l_max = gathered.query_index.shape, gathered.kv_index.shape[1]
        # (R, n_max, H, d) -> (R, H_kv, group x n_max, d): the query heads that share a key head
        # are stacked as more queries of it (no enable_gqa: 1.3-1.8x faster from 4 queries a row).
        q = _gather_queries(query, gathered.query_index.view(-1)).view(rows, n_max, kv_heads, group, dim)
        q = q.permute(0, 2, 3, 1, 4).reshape(rows, kv_heads, group * n_max, dim)
        k = _gather_slots(key, gathered.kv_index.view(-1)).view(kv_heads, rows, l_max, dim).transpose(0, 1)
        v = _gather_slots(value, gathered.kv_index.view(-1)).view(kv_heads, rows, l_max, dim).transpose(0, 1)
        o = _sdpa(q, k, v, attn_mask=gathered.stacked_mask(group), scale=scaling)
        o = o.reshape(rows, heads, n_max, dim).transpose(1, 2).reshape(-1, heads, dim)
        o = o.index_select(0, gathered.flat_index)
        out.index_copy_(0, gathered.packed_index, o)
    return out.unsqueeze(0), None


_registered = False


def _register() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(ROW_ATTENTION, row_attention_forward)
        # A forward that runs meanwhile on another thread (the switch is the model's) gets SDPA's mask.
        AttentionMaskInterface.register(ROW_ATTENTION, sdpa_mask)
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
