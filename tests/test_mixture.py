import math

import pytest
import torch

from nest_integrations.mixture import (
    knn_distribution,
    lm_distribution,
    mix,
    mix_on_support,
    relative_retrieval_confidence,
)


def test_knn_distribution_sums_softmax_weights_per_value_token() -> None:
    distances = torch.tensor([1.0, 2.0, 4.0])
    values = torch.tensor([3, 1, 3])
    p = knn_distribution(distances, values, vocab_size=5, temperature=2.0)
    w = torch.softmax(torch.tensor([-0.5, -1.0, -2.0]), dim=0)
    assert p[3] == pytest.approx(float(w[0] + w[2]))
    assert p[1] == pytest.approx(float(w[1]))
    assert p[[0, 2, 4]].sum() == 0
    assert p.sum() == pytest.approx(1.0)


def test_knn_distribution_ignores_masked_neighbors() -> None:
    p = knn_distribution(torch.tensor([[1.0, math.inf]]), torch.tensor([[0, 1]]), vocab_size=2, temperature=1.0)
    assert p.tolist() == [[1.0, 0.0]]


def test_rrc_is_sigmoid_of_nearest_over_farthest() -> None:
    d = torch.tensor([[2.0, 4.0, 10.0], [9.0, 9.5, 10.0]])
    lam = relative_retrieval_confidence(d, alpha=0.3, tau=0.1)
    expected = [1 / (1 + math.exp(-(0.2 - 0.3) / 0.1)), 1 / (1 + math.exp(-(0.9 - 0.3) / 0.1))]
    assert lam.tolist() == pytest.approx(expected)
    # A close nearest neighbor relative to the farthest means confident retrieval: small lambda.
    assert lam[0] < 0.5 < lam[1]


def test_rrc_skips_infinite_distances() -> None:
    lam = relative_retrieval_confidence(torch.tensor([2.0, 4.0, math.inf]), alpha=0.3, tau=0.1)
    assert float(lam) == pytest.approx(1 / (1 + math.exp(-(0.5 - 0.3) / 0.1)))


def test_mixture_interpolates_with_lambda() -> None:
    p_lm = torch.tensor([[0.5, 0.5, 0.0]])
    p_knn = torch.tensor([[0.0, 0.0, 1.0]])
    out = mix(p_lm, p_knn, torch.tensor([0.25]))
    assert out[0].tolist() == pytest.approx([0.125, 0.125, 0.75])
    assert mix(p_lm, p_knn, 1.0).tolist() == p_lm.tolist()


def test_lm_distribution_applies_temperature() -> None:
    logits = torch.tensor([1.0, 2.0])
    assert lm_distribution(logits, 0.5).tolist() == pytest.approx(torch.softmax(logits / 0.5, -1).tolist())


def test_mix_on_support_is_mix_bit_for_bit() -> None:
    """p_M from the k-NN support alone equals the dense mixture exactly (neighbors sharing a
    value, a zero-weight neighbor, a row locked onto one token)."""
    generator = torch.Generator().manual_seed(0)
    n, vocab, k = 5, 300, 8
    p_lm = torch.softmax(torch.randn(n, vocab, generator=generator) * 4, dim=-1)
    values = torch.randint(0, 40, (n, k), generator=generator)  # repeats within a row
    distances = torch.rand(n, k, generator=generator) * 10
    distances[1, 3] = math.inf
    p_knn = knn_distribution(distances, values, vocab, temperature=3.0)
    support = values.clone()
    p_knn[2] = 0.0
    p_knn[2, 123] = 1.0  # a locked sentence's next token
    support[2] = 123
    lam = torch.rand(n, generator=generator)
    assert torch.equal(mix_on_support(p_lm, p_knn, lam, support), mix(p_lm, p_knn, lam))


def test_lm_distribution_at_temperature_one_is_the_softmax_of_the_logits() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(1))
    assert torch.equal(lm_distribution(logits, 1.0), torch.softmax(logits / 1.0, dim=-1))
