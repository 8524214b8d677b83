"""Fixtures shared by the core tests and both adapters' tests (pytest loads this file for all of them)."""

from __future__ import annotations

from collections.abc import Callable

import pytest


def _same_but_score_noise(a: object, b: object) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(
            abs(a[k] - b[k]) < 1e-4 if k == "score" else _same_but_score_noise(a[k], b[k]) for k in a
        )
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_but_score_noise(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.fixture(scope="session")
def same_citations() -> Callable[[object, object], bool]:
    """Whether two answers' citations (as dicts) are the same, scores (mean 1 - lambda) to float
    noise: a prompt whose start another request cached (prefix caching) sums its attention in
    another order (differences up to ~1e-6 seen)."""
    return _same_but_score_noise
