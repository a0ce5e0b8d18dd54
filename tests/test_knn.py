"""kNN's k-th largest cosine (core/metrics/knn.py): found with a float32 product, equal to the float64 one."""

from __future__ import annotations

import numpy as np
import pytest

from actgeom.core.metrics.knn import kth_largest_similarity, margin


def _unit(X: np.ndarray) -> np.ndarray:
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def _expected(Z: np.ndarray, R: np.ndarray, k: int) -> np.ndarray:
    return -np.sort(-(Z @ R.T), axis=1)[:, k - 1]


def _same(got: np.ndarray, expected: np.ndarray) -> bool:
    """Equal to the float64 product's up to the order of its sums (near ties here differ by ~1e-9)."""
    return bool(np.abs(got - expected).max() <= 1e-14)


@pytest.mark.parametrize("k", [1, 2, 7, 50])
def test_equals_the_float64_product_on_random_rows(rng, k):
    Z, R = _unit(rng.standard_normal((300, 24))), _unit(rng.standard_normal((400, 24)))
    assert _same(kth_largest_similarity(Z, R, k), _expected(Z, R, k))


def test_near_ties_below_float32_resolution_are_resolved_in_float64(rng):
    """Reference rows that differ by less than float32 can tell apart: the float32 order of the
    similarities is wrong, the float64 k-th largest is still returned."""
    base = _unit(rng.standard_normal((1, 64)))
    R = _unit(base + 1e-9 * rng.standard_normal((200, 64)))  # 200 rows within ~1e-9 of each other
    Z = _unit(np.vstack([base + 1e-3 * rng.standard_normal((50, 64)), rng.standard_normal((50, 64))]))
    for k in (1, 3, 100, 200):
        assert _same(kth_largest_similarity(Z, R, k), _expected(Z, R, k)), k


def test_exact_duplicates_and_k_equal_to_the_reference_rows(rng):
    R = _unit(np.repeat(rng.standard_normal((5, 8)), 4, axis=0))  # each row four times
    Z = _unit(rng.standard_normal((40, 8)))
    for k in (1, 4, 5, 20):
        assert _same(kth_largest_similarity(Z, R, k), _expected(Z, R, k)), k


def test_the_margin_bounds_the_float32_error(rng):
    D = 512
    Z, R = _unit(rng.standard_normal((200, D))), _unit(rng.standard_normal((200, D)))
    error = np.abs(Z.astype(np.float32) @ R.astype(np.float32).T - Z @ R.T).max()
    assert 0 < error <= margin(D)
