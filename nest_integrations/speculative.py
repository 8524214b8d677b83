"""Pure math of NEST's speculative step: pick the span to propose and decide how much of it to keep.

Tensors in, tensors out. ``relaxed`` is the official code's rule (accept token w while
p_M(w) > gamma/2 * max p_M); ``strict`` is speculative decoding's exact rule for a point-mass
draft, under which the output distribution equals p_M.
"""

from __future__ import annotations

import torch


def best_neighbor(p_mix: torch.Tensor, neighbor_values: torch.Tensor) -> int:
    """Index (into the neighbor list) of the neighbor whose next token has the highest p_M.

    p_mix: (V,); neighbor_values: (r,) sorted nearest first, so ties go to the nearest.
    """
    return int(torch.argmax(p_mix[neighbor_values.long()]).item())


def relaxed_accepts(p_mix: torch.Tensor, draft: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-position test p_M_i(w_i) > gamma/2 * max_w p_M_i(w).

    p_mix: (n, V) the mixture at the position of each draft token; draft: (n,). Returns bool (n,).
    """
    chosen = p_mix.gather(-1, draft.long().unsqueeze(-1)).squeeze(-1)
    return chosen > (gamma / 2) * p_mix.max(dim=-1).values


def strict_accepts(
    p_mix: torch.Tensor, draft: torch.Tensor, *, sample: bool, generator: torch.Generator | None
) -> torch.Tensor:
    """Speculative decoding's rule for a deterministic draft: accept w with probability p_M(w).

    Greedy (sample=False) accepts exactly when w is the argmax. Returns bool (n,).
    """
    if not sample:
        return p_mix.argmax(dim=-1) == draft.long()
    chosen = p_mix.gather(-1, draft.long().unsqueeze(-1)).squeeze(-1)
    u = torch.rand(chosen.shape, generator=generator).to(chosen.device)  # CPU generator: same draws on any device
    return u < chosen


def accepted_length(accepts: torch.Tensor) -> int:
    """Length of the accepted prefix: the index of the first rejection, or n if none."""
    rejected = (~accepts).nonzero()
    return int(rejected[0].item()) if rejected.numel() else int(accepts.numel())


def residual_distribution(p_mix: torch.Tensor, rejected_token: int) -> torch.Tensor:
    """After a strict rejection of token w, sample from p_M with w removed (renormalised)."""
    p = p_mix.clone()
    p[rejected_token] = 0.0
    total = p.sum()
    return p / total if total > 0 else p_mix
