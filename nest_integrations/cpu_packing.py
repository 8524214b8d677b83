"""bfloat16 linear layers on a CPU with their weights packed once for oneDNN.

On a CPU, torch runs a bfloat16 ``nn.Linear`` through oneDNN, which first copies the weight
into its own blocked layout, on every call. Packing each weight once at load time
(``torch.ops.mkldnn._reorder_linear_weight``, what ``torch.compile``'s CPU backend does for
frozen models) runs the same kernel without that copy, so the outputs are the same bit for bit
(checked at load, and by ``tests/test_lm.py``). On 2 cores with AMX (session 11), the embedded
model's 210 decoder-layer products took 18.8 ms instead of 28.1 ms for one token and 22.1 ms
instead of 33.0 ms for 64.

The ops are private to torch: if they are missing or a packed layer's output differs from the
unpacked one, nothing is packed.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

__all__ = ["PackedLinear", "pack_linear_weights"]

log = logging.getLogger(__name__)

PACK_BATCH_HINT = 8  # rows oneDNN lays the packed weight out for; any row count runs (tested 1-200)


class PackedLinear(torch.nn.Module):
    """``nn.Linear`` with its weight in oneDNN's packed layout (bfloat16 on a CPU).

    Input (..., in_features) -> output (..., out_features), as the layer it replaces.
    ``weight``: the original weight when it is shared with another module (tied embeddings),
    else None (the packed copy replaces it).
    """

    def __init__(self, linear: torch.nn.Linear, keep_weight: bool) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), PACK_BATCH_HINT)
        self.bias = linear.bias
        self.weight = linear.weight if keep_weight else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def _same_outputs(linear: torch.nn.Linear, packed: PackedLinear) -> bool:
    """Whether the packed layer gives the unpacked one's outputs bit for bit (a few row counts)."""
    generator = torch.Generator().manual_seed(0)
    for rows in (1, 5, 37):
        x = torch.randn(1, rows, linear.in_features, generator=generator).to(linear.weight.dtype)
        if not torch.equal(linear(x), packed(x)):
            return False
    return True


@torch.inference_mode()
def pack_linear_weights(model: Any) -> int:
    """Replace every bfloat16 ``nn.Linear`` of a CPU ``model`` by a :class:`PackedLinear`, in place.

    Returns how many were replaced (0: torch lacks the ops, the model is not bfloat16 on a CPU,
    or a packed layer did not reproduce its layer's outputs exactly).
    """
    linears = [(name, m) for name, m in model.named_modules() if type(m) is torch.nn.Linear]
    if not linears or any(m.weight.dtype != torch.bfloat16 or m.weight.device.type != "cpu" for _, m in linears):
        return 0
    if not torch.backends.mkldnn.is_available():
        return 0
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    shared = {id(embeddings.weight)} if embeddings is not None else set()
    try:
        first = PackedLinear(linears[0][1], keep_weight=False)
        if not _same_outputs(linears[0][1], first):
            log.info("oneDNN's packed bf16 linear differs from the unpacked one here; weights left unpacked")
            return 0
    except (AttributeError, RuntimeError) as e:  # the private ops are missing or refuse this CPU
        log.info("bf16 linear weights left unpacked: %s", e)
        return 0
    for name, linear in linears:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, PackedLinear(linear, keep_weight=id(linear.weight) in shared))
    return len(linears)
