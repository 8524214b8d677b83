"""The step model: the LM forward that decoding needs, for a batch of sequences at once.

A decoder never calls the model itself. Each step it asks for a :class:`Forward` (drop the
sequence's cached positions from ``keep`` on, then run ``tokens``) and gets back the logits
and the hidden states the k-NN search uses. A :class:`StepModel` serves the requests of all
active sequences ("rows") of a step in one call:

- :class:`SingleStepModel`: one row, the KV cache cropped on rollback (what ``NestEngine.stream``
  uses one request at a time).
- :class:`BatchedStepModel`: B rows in one KV cache, one forward per step over all rows. Rows
  ask for different numbers of tokens (a one-token step, a 64-token draft, a new row's whole
  prompt): their tokens are packed into one sequence, not padded, and a mask keeps each row to
  its own cache slots. A rejected draft suffix is rolled back by marking its slots dead, so rows
  never need to agree on a length; each row's position ids count only its own live slots, so
  its logits are those it would get alone (up to floating-point summation order). A new row's
  prompt joins any step (continuous batching); a finished row's slots die with it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from .lm import LoadedLM

__all__ = ["BatchedStepModel", "Forward", "SingleStepModel", "StepModel", "StepOutput"]


@dataclass(frozen=True)
class Forward:
    """One row's request: truncate its cache to ``keep`` positions, then run ``tokens`` (n >= 1).

    ``outputs``: only the last this many tokens need logits and hidden states (a prompt needs
    its last one); None: all n. The LM head, a fifth of a small model's compute per token, then
    runs on those alone (transformers' ``logits_to_keep``).
    """

    tokens: Sequence[int]
    keep: int
    outputs: int | None = None

    def wanted(self) -> int:
        """How many trailing tokens get outputs."""
        n = len(self.tokens)
        return n if self.outputs is None else max(1, min(self.outputs, n))


@dataclass(frozen=True)
class StepOutput:
    """For the last k = ``Forward.wanted()`` tokens of a :class:`Forward`: logits (k, V),
    second-to-last-layer hidden states (k, D) or None."""

    logits: torch.Tensor
    hidden: torch.Tensor | None


class StepModel(Protocol):
    """Serves the forwards of one decoding step for any number of rows (keyed by the caller)."""

    def step(self, requests: Mapping[int, Forward]) -> dict[int, StepOutput]: ...

    def release(self, row: int) -> None:
        """Forget a row (finished or cancelled); its cache memory is freed."""
        ...


def _new_cache(lm: LoadedLM) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=lm.model.config)


_CACHE_ARGUMENT: dict[type, str] = {}


def _cache_argument(model_class: type) -> str:
    """The forward argument that takes the KV cache: ``cache`` from transformers 5.2x, before that
    ``past_key_values`` (still accepted, with a deprecation warning)."""
    name = _CACHE_ARGUMENT.get(model_class)
    if name is None:
        parameters = inspect.signature(model_class.forward).parameters  # type: ignore[attr-defined]
        name = _CACHE_ARGUMENT[model_class] = "cache" if "cache" in parameters else "past_key_values"
    return name


_KEEPS_LOGITS: dict[type, bool] = {}


def _takes_logits_to_keep(model_class: type) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (most transformers causal LMs do)."""
    known = _KEEPS_LOGITS.get(model_class)
    if known is None:
        parameters = inspect.signature(model_class.forward).parameters  # type: ignore[attr-defined]
        known = _KEEPS_LOGITS[model_class] = "logits_to_keep" in parameters
    return known


def run_model(
    lm: LoadedLM, cache: Any, need_hidden: bool, logits_to_keep: int | torch.Tensor = 0, **inputs: Any
) -> Any:
    """One forward of ``lm.model`` that appends to ``cache`` (a transformers ``Cache``, updated in place).

    ``logits_to_keep``: transformers' (0: every position; k: the last k; a 1-D tensor: those
    positions). A model without the argument returns every position's logits; :func:`_logits`
    picks the kept ones either way.
    """
    inputs[_cache_argument(type(lm.model))] = cache
    if _takes_logits_to_keep(type(lm.model)) and not (isinstance(logits_to_keep, int) and logits_to_keep == 0):
        inputs["logits_to_keep"] = logits_to_keep
    return lm.model(**inputs, use_cache=True, output_hidden_states=need_hidden)


def _logits(out: Any, kept: int | torch.Tensor, total: int) -> torch.Tensor:
    """(K, V) logits of the kept positions of a batch-of-one forward over ``total`` tokens."""
    logits = out.logits[0]
    if logits.shape[0] == total and not (isinstance(kept, int) and kept == 0):  # the model computed them all
        return logits[-kept:] if isinstance(kept, int) else logits[kept]
    return logits


class SingleStepModel:
    """One row at a time, its KV cache cropped on rollback."""

    def __init__(self, lm: LoadedLM, need_hidden: bool) -> None:
        self.lm = lm
        self.need_hidden = need_hidden
        self.cache: Any = _new_cache(lm)
        self.length = 0

    @torch.inference_mode()
    def step(self, requests: Mapping[int, Forward]) -> dict[int, StepOutput]:
        if len(requests) != 1:
            raise ValueError(f"SingleStepModel serves one row per step, got {len(requests)}")
        ((row, request),) = requests.items()
        if request.keep > self.length:
            raise ValueError(f"cannot keep {request.keep} positions of {self.length}")
        if request.keep < self.length:
            self.cache.crop(request.keep - self.length)  # a negative count removes that many positions
            self.length = request.keep
        ids = torch.tensor([list(request.tokens)], dtype=torch.long, device=self.lm.device)
        n, k = len(request.tokens), request.wanted()
        kept = 0 if k == n else k
        out = run_model(self.lm, self.cache, self.need_hidden, logits_to_keep=kept, input_ids=ids)
        self.length += n
        hidden = out.hidden_states[-2][0, n - k :] if self.need_hidden else None
        return {row: StepOutput(_logits(out, kept, n), hidden)}

    def release(self, row: int) -> None:
        self.cache = _new_cache(self.lm)
        self.length = 0


class BatchedStepModel:
    """B rows packed into one KV cache; one forward per step over the new tokens of every row.

    The rows' tokens are packed side by side along the sequence axis of a batch-of-one cache
    (no padding: a row with one token costs one token of compute, however long another row's
    draft is). ``owner`` (T,) says which row each cache slot belongs to (-1: none, a rolled-back
    draft or a finished row); a 4-D mask lets each token attend only to its own row's slots, in
    order, and its position id counts only those. Slots are compacted when over half are dead.
    """

    def __init__(self, lm: LoadedLM, need_hidden: bool) -> None:
        self.lm = lm
        self.need_hidden = need_hidden
        self.cache: Any = _new_cache(lm)
        self.owner = torch.zeros(0, dtype=torch.long, device=lm.device)  # (T,) row key per slot, -1 dead
        self.slots: dict[int, list[int]] = {}  # row key -> its slots, in token order

    def __len__(self) -> int:
        return len(self.slots)

    @property
    def dead_slots(self) -> int:
        """Cache slots that hold no row's token (rolled-back drafts, finished rows), until compaction."""
        return int(self.owner.numel()) - sum(len(s) for s in self.slots.values())

    @torch.inference_mode()
    def release(self, row: int) -> None:
        slots = self.slots.pop(row, None)
        if slots:
            self.owner[slots] = -1
        self._compact()

    @torch.inference_mode()
    def step(self, requests: Mapping[int, Forward]) -> dict[int, StepOutput]:
        if not requests:
            return {}
        for row, request in requests.items():
            if not request.tokens:
                raise ValueError(f"row {row}: a forward needs at least one token")
            if row < 0:
                raise ValueError(f"row keys are >= 0, got {row}")
            self._rollback(row, request.keep)
        self._compact()
        dead = self.dead_slots
        device = self.lm.device
        t = int(self.owner.numel())
        ids: list[int] = []
        positions: list[int] = []
        query_owner: list[int] = []
        offsets: dict[int, tuple[int, int]] = {}
        for row, request in requests.items():
            slots = self.slots.setdefault(row, [])
            n = len(request.tokens)
            offsets[row] = (len(ids), n)
            positions.extend(range(len(slots), len(slots) + n))
            slots.extend(range(t + len(ids), t + len(ids) + n))
            ids.extend(request.tokens)
            query_owner.extend([row] * n)
        new_owner = torch.tensor(query_owner, dtype=torch.long, device=device)
        owner = torch.cat([self.owner, new_owner])
        n_new = len(ids)
        mask = None  # one row and no dead slot: plain causal attention, exactly as SingleStepModel runs it
        if len(self.slots) > 1 or dead:
            # Token i may see slot s when s holds its own row's token and s is not after it.
            same_row = owner[None, :] == new_owner[:, None]  # (N, T + N)
            query_slot = t + torch.arange(n_new, device=device)
            not_after = torch.arange(t + n_new, device=device)[None, :] <= query_slot[:, None]
            allowed = (same_row & not_after)[None, None]
            # Additive, in the model's dtype: eager attention adds it; SDPA takes it as is.
            mask = torch.zeros(allowed.shape, dtype=self.lm.dtype, device=device)
            mask.masked_fill_(~allowed, torch.finfo(self.lm.dtype).min)
        # Logits only where rows want them: each row's last k tokens (as one row alone asks for them).
        wanted = {row: request.wanted() for row, request in requests.items()}
        kept: int | torch.Tensor = 0
        if len(requests) == 1:
            ((row, k),) = wanted.items()
            kept = 0 if k == n_new else k
        elif any(k < offsets[row][1] for row, k in wanted.items()):
            kept = torch.tensor(
                [i for row, (start, n) in offsets.items() for i in range(start + n - wanted[row], start + n)],
                dtype=torch.long,
                device=device,
            )
        out = run_model(
            self.lm,
            self.cache,
            self.need_hidden,
            logits_to_keep=kept,
            input_ids=torch.tensor([ids], dtype=torch.long, device=device),
            attention_mask=mask,
            position_ids=torch.tensor([positions], dtype=torch.long, device=device),
        )
        self.owner = owner
        logits = _logits(out, kept, n_new)
        hidden = out.hidden_states[-2][0] if self.need_hidden else None
        # Rows' logits come in row order, k each (with every position kept, k = n and they start at ``start``).
        results, at = {}, 0
        for row, (start, n) in offsets.items():
            k = wanted[row]
            results[row] = StepOutput(
                logits[at : at + k], None if hidden is None else hidden[start + n - k : start + n]
            )
            at += k
        return results

    def _rollback(self, row: int, keep: int) -> None:
        """Drop a row's positions from ``keep`` on: cropped off the cache when they are its last
        slots (always so for a lone row), else marked dead."""
        slots = self.slots.get(row, [])
        if keep > len(slots):
            raise ValueError(f"row {row}: cannot keep {keep} positions of {len(slots)}")
        dropped = slots[keep:]
        if not dropped:
            return
        total = int(self.owner.numel())
        if dropped == list(range(total - len(dropped), total)):
            self.cache.crop(-len(dropped))
            self.owner = self.owner[: total - len(dropped)]
        else:
            self.owner[dropped] = -1
        del slots[keep:]

    def _compact(self) -> None:
        """Drop dead slots when they are over half the cache (each row's slots keep their order)."""
        total = int(self.owner.numel())
        if self.dead_slots * 2 <= total:
            return
        live = (self.owner >= 0).nonzero().squeeze(1)
        new_slot = torch.full((total,), -1, dtype=torch.long)
        new_slot[live.cpu()] = torch.arange(live.numel())
        for layer in self.cache.layers:
            if getattr(layer, "keys", None) is not None and layer.keys.numel():
                layer.keys = layer.keys.index_select(2, live)
                layer.values = layer.values.index_select(2, live)
        self.owner = self.owner[live]
        for row, slots in self.slots.items():
            self.slots[row] = new_slot[slots].tolist()
