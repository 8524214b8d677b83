import pytest
import torch
from scipy.stats import chisquare

from nest_integrations.speculative import (
    accepted_length,
    best_neighbor,
    relaxed_accepts,
    residual_distribution,
    strict_accepts,
)


def test_relaxed_acceptance_threshold_is_half_gamma_times_max() -> None:
    p = torch.tensor([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1], [0.6, 0.3, 0.1]])
    draft = torch.tensor([1, 2, 2])
    # gamma = 0.5: threshold 0.15 -> 0.3 accepted, 0.1 rejected.
    assert relaxed_accepts(p, draft, gamma=0.5).tolist() == [True, False, False]
    # gamma = 0.2: threshold 0.06 -> 0.1 accepted too.
    assert relaxed_accepts(p, draft, gamma=0.2).tolist() == [True, True, True]


def test_accepted_length_stops_at_first_rejection() -> None:
    assert accepted_length(torch.tensor([True, True, False, True])) == 2
    assert accepted_length(torch.tensor([True, True])) == 2
    assert accepted_length(torch.tensor([False])) == 0


def test_best_neighbor_picks_highest_mixture_value_nearest_on_ties() -> None:
    p = torch.tensor([0.1, 0.5, 0.4])
    assert best_neighbor(p, torch.tensor([2, 1, 1, 0])) == 1
    assert best_neighbor(p, torch.tensor([0, 2, 2])) == 1


def test_strict_greedy_accepts_only_argmax() -> None:
    p = torch.tensor([[0.2, 0.7, 0.1], [0.2, 0.7, 0.1]])
    assert strict_accepts(p, torch.tensor([1, 0]), sample=False, generator=None).tolist() == [True, False]


def test_strict_sampling_keeps_output_distribution_equal_to_mixture() -> None:
    """Speculative decoding's guarantee for a point-mass draft, checked with a chi-square test."""
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    draft_token = 1
    g = torch.Generator().manual_seed(0)
    n = 20000
    counts = torch.zeros(4)
    accepts = strict_accepts(p.expand(n, 4), torch.full((n,), draft_token), sample=True, generator=g)
    counts[draft_token] += accepts.sum()
    residual = residual_distribution(p, draft_token)
    rejected = int((~accepts).sum())
    counts += torch.bincount(torch.multinomial(residual, rejected, replacement=True, generator=g), minlength=4)
    assert counts.sum() == n
    result = chisquare(counts.numpy(), (p * n).numpy())
    assert result.pvalue > 1e-3
    # And the relaxed rule, by contrast, over-accepts the draft (it is not distribution-preserving).
    assert relaxed_accepts(p.unsqueeze(0), torch.tensor([3]), gamma=5e-4).item()


def test_residual_removes_rejected_token() -> None:
    r = residual_distribution(torch.tensor([0.5, 0.25, 0.25]), 0)
    assert r.tolist() == pytest.approx([0.0, 0.5, 0.5])
