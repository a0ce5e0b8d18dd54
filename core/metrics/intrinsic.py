"""Intrinsic dimension from nearest neighbours of a seeded sample of rows (docs/metrics.md)."""

from __future__ import annotations

import numpy as np

from actgeom.core.base.threads import blas_threads

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
    dropped, fit −log(1 − F(μ)) = d·log μ through the origin, F the empirical CDF (i/n).
    Raises ValueError with the reason when fewer than 2 ratios are kept or every kept μ is 1
    (each row's two nearest neighbours equally far: the fit has no slope)."""
    mu = np.sort(distances[:, 1] / distances[:, 0])
    n = mu.size
    keep = int(np.floor((1 - discard) * n))
    if keep < 2:
        raise ValueError(f"{n} distinct sampled rows keep {keep} distance ratio(s) after dropping the top "
                         f"{discard:.0%}; TwoNN needs 2")
    x = np.log(mu[:keep])
    if not x @ x > 0:
        raise ValueError("every sampled row's two nearest neighbours are equally far (r₂ = r₁): TwoNN's fit has no slope")
    y = -np.log(1.0 - np.arange(1, keep + 1) / n)
    return float((x @ y) / (x @ x))


def mle(distances: np.ndarray, *, k: int = 20) -> float:
    """Levina–Bickel MLE with k neighbours, combined over points as MacKay & Ghahramani
    suggest: m̂ = 1 / mean_x[(1/(k−1)) Σ_{j<k} log(T_k(x)/T_j(x))]. Raises ValueError with the
    reason when every row's k nearest neighbours are equally far (the mean log ratio is 0)."""
    T = distances[:, :k]
    inverse = np.log(T[:, -1:] / T[:, :-1]).sum(axis=1) / (k - 1)
    mean_inverse = float(inverse.mean())
    if not mean_inverse > 0:
        raise ValueError(f"every sampled row's {k} nearest neighbours are equally far: the MLE divides by 0")
    return 1.0 / mean_inverse
