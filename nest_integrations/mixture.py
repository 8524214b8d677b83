"""Pure math of NEST's token-level mixture: k-NN distribution, Relative Retrieval Confidence, mixture.

Tensors in, tensors out; no model, no index. Equations follow NEST (Li et al. 2024, Sec. 3.1,
and its official code): distances are squared L2, scores are -distance.
"""

from __future__ import annotations

import math

import torch


def knn_distribution(
    distances: torch.Tensor, values: torch.Tensor, vocab_size: int, temperature: float
) -> torch.Tensor:
    """p_kNN(w) = sum over neighbors j with value w of softmax(-d_j / temperature).

    distances: (..., r) squared L2 distances of the r neighbors; values: (..., r) their next tokens.
    Returns (..., vocab_size). Neighbors with infinite distance get zero weight.
    """
    weights = torch.softmax(-distances.float() / temperature, dim=-1)
    weights = torch.nan_to_num(weights, nan=0.0)
    out = torch.zeros(*distances.shape[:-1], vocab_size, dtype=weights.dtype, device=weights.device)
    return out.scatter_add_(-1, values.long(), weights)


def relative_retrieval_confidence(distances: torch.Tensor, alpha: float, tau: float) -> torch.Tensor:
    """lambda = sigmoid((d_nearest / d_farthest - alpha) / tau) over the r neighbors.

    distances: (..., r), sorted or not. Small lambda means the retriever is confident.
    Returns (...,). With one neighbor or zero distance the ratio is taken as 1 (not confident)
    unless the nearest distance is exactly zero, where it is 0 (an exact match).
    """
    d = distances.float()
    finite = torch.where(torch.isfinite(d), d, torch.full_like(d, -math.inf))
    d_far = finite.max(dim=-1).values
    d_near = d.min(dim=-1).values
    ratio = torch.where(d_far > 0, d_near / d_far.clamp(min=1e-12), torch.ones_like(d_far))
    return torch.sigmoid((ratio - alpha) / tau)


def lm_distribution(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """p_LM = softmax(logits / temperature), in float32."""
    logits = logits.float()
    if temperature != 1.0:  # x / 1.0 == x: skip a pass over the vocabulary
        logits = logits / temperature
    return torch.softmax(logits, dim=-1)


def mix(p_lm: torch.Tensor, p_knn: torch.Tensor, lam: torch.Tensor | float) -> torch.Tensor:
    """p_M = lambda * p_LM + (1 - lambda) * p_kNN; lambda broadcasts over the vocabulary."""
    if isinstance(lam, torch.Tensor):
        lam = lam.unsqueeze(-1)
    return lam * p_lm + (1 - lam) * p_knn


def mix_on_support(p_lm: torch.Tensor, p_knn: torch.Tensor, lam: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """:func:`mix`, bit for bit, when p_kNN (n, V) is zero outside ``support`` (n, s) token ids
    (the k neighbors' values, repeats allowed): lambda * p_LM everywhere, and the k-NN term
    added at the support alone (elsewhere it is 0, and x + 0 == x). Saves two passes over the
    vocabulary per position. lam: (n,)."""
    lam = lam.unsqueeze(-1)
    out = lam * p_lm
    knn_term = (1 - lam) * p_knn.gather(-1, support)
    return out.scatter_(-1, support, out.gather(-1, support) + knn_term)
