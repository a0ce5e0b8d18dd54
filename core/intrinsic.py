"""Intrinsic dimension from nearest neighbours of a seeded sample of rows (docs/metrics.md)."""

from __future__ import annotations

import numpy as np

from actgeom.core.threads import blas_threads

_QUERY_ROWS = 512  # distances are computed for this many rows at a time (memory: 512 × n)


def distinct_rows(X: np.ndarray) -> tuple[np.ndarray, int]:
    """(rows without duplicates, how many duplicates were dropped): a zero distance has no log."""
    X = np.ascontiguousarray(X)
    as_bytes = X.view(np.dtype((np.void, X.dtype.itemsize * X.shape[1]))).ravel()  # 3× faster than axis=0
    first = np.sort(np.unique(as_bytes, return_index=True)[1])
    return X[first], X.shape[0] - first.size


def nearest_distances(X: np.ndarray, k: int) -> np.ndarray:
    """Distances (n, k) from each row to its k nearest other rows, ascending.

    Squared distances come from ‖a‖² + ‖b‖² − 2a·b on rows centred first (so a common offset
    does not cancel digits away); the row itself is excluded.
    """
    Z = X - X.mean(axis=0)
    sq = np.einsum("ij,ij->i", Z, Z)
    out = np.empty((Z.shape[0], k))
    for start in range(0, Z.shape[0], _QUERY_ROWS):
        rows = slice(start, min(start + _QUERY_ROWS, Z.shape[0]))
        with blas_threads(Z.shape[1]):  # the products' inner side
            d2 = np.maximum(sq[rows, None] + sq[None, :] - 2.0 * Z[rows] @ Z.T, 0.0)
        d2[np.arange(d2.shape[0]), np.arange(rows.start, rows.stop)] = np.inf  # not itself
        nearest = np.partition(d2, k - 1, axis=1)[:, :k]
        out[rows] = np.sqrt(np.sort(nearest, axis=1))
    return out


def twonn(distances: np.ndarray, *, discard: float = 0.1) -> float:
    """TwoNN (Facco et al. 2017): μ_i = r2/r1; with the largest ``discard`` fraction of μ
    dropped, fit −log(1 − F(μ)) = d·log μ through the origin, F the empirical CDF (i/n)."""
    mu = np.sort(distances[:, 1] / distances[:, 0])
    n = mu.size
    keep = int(np.floor((1 - discard) * n))
    if keep < 2:
        return float("nan")
    x = np.log(mu[:keep])
    y = -np.log(1.0 - np.arange(1, keep + 1) / n)
    return float((x @ y) / (x @ x)) if x @ x > 0 else float("nan")


def mle(distances: np.ndarray, *, k: int = 20) -> float:
    """Levina–Bickel MLE with k neighbours, combined over points as MacKay & Ghahramani
    suggest: m̂ = 1 / mean_x[(1/(k−1)) Σ_{j<k} log(T_k(x)/T_j(x))]."""
    T = distances[:, :k]
    inverse = np.log(T[:, -1:] / T[:, :-1]).sum(axis=1) / (k - 1)
    mean_inverse = float(inverse.mean())
    return 1.0 / mean_inverse if mean_inverse > 0 else float("nan")
