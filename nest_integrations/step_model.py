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

from . import row_attention

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
    """A KV cache that appends in place (:mod:`~nest_integrations.kv_cache`), not by concatenation."""
    from .kv_cache import growing_cache

    return growing_cache(lm.model.config)


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


PREFIX_BLOCK = 8  # prompt tokens per shared prefix block
_SHARED = -2  # ``owner`` of a cache slot in a shared prefix block


@dataclass
class _PrefixBlock:
    """``PREFIX_BLOCK`` prompt tokens whose cached keys and values every row with that prompt
    prefix reads (prefix caching). Found by ``key`` = (the previous block's id, its tokens)."""

    id: int
    key: tuple[int, tuple[int, ...]]
    slots: list[int]
    rows: int = 0  # live rows reading it
    last_used: int = 0  # the step it was last claimed or let go


class BatchedStepModel:
    """B rows packed into one KV cache; one forward per step over the new tokens of every row.

    The rows' tokens are packed side by side along the sequence axis of a batch-of-one cache
    (no padding: a row with one token costs one token of compute, however long another row's
    draft is). ``owner`` (T,) says which row each cache slot belongs to (-1: none, a rolled-back
    draft or a finished row); a 4-D mask lets each token attend only to its own row's slots, in
    order, and its position id counts only those. Slots are compacted when over half are dead.
    Where the model's attention is plain causal SDPA (``per_row_attention``, the default), each
    row's queries attend over its own slots alone, a view of them or a gathered copy
    (:mod:`~nest_integrations.row_attention`), not over the whole cache behind that mask.

    Prefix caching (as vLLM's automatic prefix caching, in blocks of ``PREFIX_BLOCK`` tokens): a
    new row's prompt reads the cached slots of the longest run of whole blocks that an earlier
    prompt began with (chat templates start every prompt with the same system turn), and its
    own whole blocks are kept for later rows. Blocks no live row reads are dropped oldest first
    past ``max_idle_prefix_tokens``. ``prefix_tokens_reused`` counts the prompt tokens not run.
    """

    def __init__(
        self,
        lm: LoadedLM,
        need_hidden: bool,
        *,
        prefix_cache: bool = True,
        max_idle_prefix_tokens: int = 2048,
        per_row_attention: bool = True,
    ) -> None:
        self.lm = lm
        self.need_hidden = need_hidden
        self.cache: Any = _new_cache(lm)
        self.owner = torch.zeros(0, dtype=torch.long, device=lm.device)  # (T,) row key per slot, -1 dead
        self.slots: dict[int, list[int]] = {}  # row key -> its slots (shared prefix blocks first), in token order
        self.prefix_cache = prefix_cache
        self.max_idle_prefix_tokens = max_idle_prefix_tokens
        self.prefix_tokens_reused = 0
        self._blocks: dict[tuple[int, tuple[int, ...]], _PrefixBlock] = {}
        self._row_blocks: dict[int, list[_PrefixBlock]] = {}
        self._next_block = 0
        self._steps = 0
        # Per-row attention (row_attention.py) where the model's attention is plain SDPA; else one masked call.
        self._row_attention = per_row_attention and row_attention.supported(lm.model)

    def __len__(self) -> int:
        return len(self.slots)

    @property
    def dead_slots(self) -> int:
        """Cache slots that hold no row's token (rolled-back drafts, finished rows), until compaction."""
        return int((self.owner == -1).sum())

    @torch.inference_mode()
    def release(self, row: int) -> None:
        slots = self.slots.pop(row, None)
        blocks = self._row_blocks.pop(row, [])
        for block in blocks:
            block.rows -= 1
            block.last_used = self._steps
        own = slots[len(blocks) * PREFIX_BLOCK :] if slots else []
        if own:
            self.owner[own] = -1
        self._evict_idle_blocks()
        self._compact()

    @torch.inference_mode()
    def step(self, requests: Mapping[int, Forward]) -> dict[int, StepOutput]:
        if not requests:
            return {}
        self._steps += 1
        run: dict[int, Sequence[int]] = {}  # the tokens each row runs now
        new_prompts: dict[int, int] = {}  # rows starting with a prompt -> its tokens read from the prefix cache
        for row, request in requests.items():
            if not request.tokens:
                raise ValueError(f"row {row}: a forward needs at least one token")
            if row < 0:
                raise ValueError(f"row keys are >= 0, got {row}")
            self._rollback(row, request.keep)
            run[row] = request.tokens
            if request.keep == 0 and self.prefix_cache and not self.slots.get(row):
                reused = self._reuse_prefix(row, request.tokens, request.wanted())
                new_prompts[row] = reused
                run[row] = request.tokens[reused:]
        self._compact()
        device = self.lm.device
        t = int(self.owner.numel())
        ids: list[int] = []
        positions: list[int] = []
        query_owner: list[int] = []
        query_row: list[int] = []  # each token's row, as an index into ``requests``
        offsets: dict[int, tuple[int, int]] = {}
        for i, row in enumerate(requests):
            tokens = run[row]
            slots = self.slots.setdefault(row, [])
            n = len(tokens)
            offsets[row] = (len(ids), n)
            positions.extend(range(len(slots), len(slots) + n))
            slots.extend(range(t + len(ids), t + len(ids) + n))
            ids.extend(tokens)
            query_owner.extend([row] * n)
            query_row.extend([i] * n)
        new_owner = torch.tensor(query_owner, dtype=torch.long, device=device)
        owner = torch.cat([self.owner, new_owner])
        n_new = len(ids)
        mask = None  # one row holding the whole cache: plain causal attention, exactly as SingleStepModel runs it
        layout = None
        shared_cache = len(self.slots) > 1 or len(next(iter(self.slots.values()))) != t + n_new
        if shared_cache and self._row_attention:
            # Each row attends over its own slots alone (row_attention.py); the model builds no mask.
            rows = [(offsets[row][0], offsets[row][1], self.slots[row]) for row in requests]
            layout = row_attention.row_layout(rows, self.lm.dtype, device)
            mask = torch.zeros((1, 1, 1, 1), dtype=self.lm.dtype, device=device)  # unused: skips transformers' mask
        elif shared_cache:
            # Token i may see slot s when s holds its own row's token (or a prefix block its row reads)
            # and s is not after it.
            same_row = owner[None, :] == new_owner[:, None]  # (N, T + N)
            reads = [(i, row) for i, row in enumerate(requests) if self._row_blocks.get(row)]
            if reads:
                shared = torch.zeros((len(requests), t + n_new), dtype=torch.bool, device=device)
                for i, row in reads:
                    shared[i, self.slots[row][: len(self._row_blocks[row]) * PREFIX_BLOCK]] = True
                same_row |= shared[torch.tensor(query_row, device=device)]
            query_slot = t + torch.arange(n_new, device=device)
            not_after = torch.arange(t + n_new, device=device)[None, :] <= query_slot[:, None]
            mask = row_attention.additive_mask((same_row & not_after)[None, None], self.lm.dtype)
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
        inputs: dict[str, Any] = {
            "input_ids": torch.tensor([ids], dtype=torch.long, device=device),
            "attention_mask": mask,
            "position_ids": torch.tensor([positions], dtype=torch.long, device=device),
        }
        if layout is None:
            out = run_model(self.lm, self.cache, self.need_hidden, logits_to_keep=kept, **inputs)
        else:
            with row_attention.selected(self.lm.model):
                out = run_model(self.lm, self.cache, self.need_hidden, logits_to_keep=kept, nest_rows=layout, **inputs)
        self.owner = owner
        for row, reused in new_prompts.items():
            self._share_prompt(row, requests[row].tokens, reused)
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

    def _reuse_prefix(self, row: int, tokens: Sequence[int], wanted: int) -> int:
        """Give a new row the cached blocks its prompt starts with; returns how many tokens they hold.

        The ``wanted`` last tokens (those whose outputs are asked for) are always run."""
        blocks: list[_PrefixBlock] = []
        parent = -1
        for start in range(0, len(tokens) - wanted - PREFIX_BLOCK + 1, PREFIX_BLOCK):
            block = self._blocks.get((parent, tuple(tokens[start : start + PREFIX_BLOCK])))
            if block is None:
                break
            blocks.append(block)
            parent = block.id
        if not blocks:
            return 0
        for block in blocks:
            block.rows += 1
            block.last_used = self._steps
        self._row_blocks[row] = blocks
        self.slots[row] = [s for block in blocks for s in block.slots]
        reused = len(blocks) * PREFIX_BLOCK
        self.prefix_tokens_reused += reused
        return reused

    def _share_prompt(self, row: int, tokens: Sequence[int], reused: int) -> None:
        """Keep the whole blocks of a prompt just run (after the ``reused`` ones) for later rows."""
        blocks = self._row_blocks.setdefault(row, [])
        parent = blocks[-1].id if blocks else -1
        slots = self.slots[row]
        for start in range(reused, len(tokens) - PREFIX_BLOCK + 1, PREFIX_BLOCK):
            key = (parent, tuple(tokens[start : start + PREFIX_BLOCK]))
            if key in self._blocks:  # a row of the same step ran the same prefix first: keep this copy private
                break
            block = _PrefixBlock(self._next_block, key, slots[start : start + PREFIX_BLOCK], 1, self._steps)
            self._next_block += 1
            self._blocks[key] = block
            self.owner[block.slots] = _SHARED
            blocks.append(block)
            parent = block.id
        if not blocks:
            del self._row_blocks[row]

    def _evict_idle_blocks(self) -> None:
        """Drop blocks no live row reads, least recently used first, past ``max_idle_prefix_tokens``."""
        idle = [b for b in self._blocks.values() if b.rows == 0]
        excess = len(idle) * PREFIX_BLOCK - self.max_idle_prefix_tokens
        if excess <= 0:
            return
        for block in sorted(idle, key=lambda b: b.last_used)[: -(-excess // PREFIX_BLOCK)]:
            del self._blocks[block.key]  # its descendants can no longer be found; they are idle too
            self.owner[block.slots] = -1

    def _rollback(self, row: int, keep: int) -> None:
        """Drop a row's positions from ``keep`` on: cropped off the cache when they are its last
        slots (always so for a lone row), else marked dead."""
        slots = self.slots.get(row, [])
        if keep > len(slots):
            raise ValueError(f"row {row}: cannot keep {keep} positions of {len(slots)}")
        shared = len(self._row_blocks.get(row, ())) * PREFIX_BLOCK
        if keep < shared:
            raise ValueError(f"row {row}: cannot drop its prompt's first {shared} positions (a shared prefix)")
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
        live = (self.owner != -1).nonzero().squeeze(1)
        new_slot = torch.full((total,), -1, dtype=torch.long)
        new_slot[live.cpu()] = torch.arange(live.numel())
        for layer in self.cache.layers:
            if getattr(layer, "keys", None) is not None and layer.keys.numel():
                layer.keys = layer.keys.index_select(2, live)
                layer.values = layer.values.index_select(2, live)
        self.owner = self.owner[live]
        for row, slots in self.slots.items():
            self.slots[row] = new_slot[slots].tolist()
        for block in self._blocks.values():
            block.slots = new_slot[block.slots].tolist()
