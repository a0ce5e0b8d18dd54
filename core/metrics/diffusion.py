"""Diffusion spectral entropy and mutual information (Liao et al. 2023) of sampled rows, in bits
(docs/metrics.md, "Entropy and neuron activity"): pure functions on an N×N kernel."""

from __future__ import annotations

import numpy as np
from scipy import linalg

from actgeom.core.base.threads import blas_threads

KERNEL_NEAR_IDENTITY = 0.01  # off-diagonal share of K's mass below this: σ is small for the data, DSE ≈ log₂ N
DSE_PROB_FLOOR = 2.22e-16  # added to every p before the log, as Liao et al.'s code does


def diffusion_spectral_entropy(X: np.ndarray, *, sigma: float, t: float) -> dict:
    """Diffusion spectral entropy in bits (Liao et al. 2023): G_ij = exp(−‖x_i − x_j‖²/(2σ²)),
    K = D^{-1/2} G D^{-1/2} with D = diag(rowsum G), p ∝ |eig K|^t, p += 2.22e-16,
    H = −Σ p log₂ p. Between 0 (σ → ∞: one cluster) and log₂ N (σ → 0: K = I).

    Holds one N×N float64 matrix: the kernel is built in place from the Gram matrix and handed
    to LAPACK's eigensolver to overwrite (no copy); the median distance is selected without
    copying it (see :func:`_median_offdiagonal`). Also returns the median pairwise distance and the mean
    off-diagonal entry of K (and the off-diagonal share of K's mass: near 0 means K ≈ I, σ too
    small for the data, DSE ≈ log₂ N), which say whether σ suits the data's scale.
    """
    with blas_threads(X.shape[0]):
        return _diffusion_spectral_entropy(X, sigma=sigma, t=t)


def _diffusion_spectral_entropy(X: np.ndarray, *, sigma: float, t: float, diagnostics: bool = True) -> dict:
    n = X.shape[0]
    Z = X - X.mean(axis=0)
    sq = np.einsum("ij,ij->i", Z, Z)
    kernel = Z @ Z.T  # becomes ‖x_i − x_j‖², then G, then K, in place
    kernel *= -2.0
    kernel += sq[:, None]
    kernel += sq[None, :]
    np.maximum(kernel, 0.0, out=kernel)
    np.fill_diagonal(kernel, 0.0)
    median_distance = _median_offdiagonal(kernel) if n > 1 and diagnostics else float("nan")
    kernel *= -1.0 / (2.0 * sigma**2)
    np.exp(kernel, out=kernel)
    root = 1.0 / np.sqrt(kernel.sum(axis=1))
    kernel *= root[:, None]
    kernel *= root[None, :]
    total, diagonal = float(kernel.sum()), float(np.trace(kernel))
    off_diagonal = (total - diagonal) / (n * (n - 1)) if n > 1 else float("nan")
    # K is symmetric, so its transpose (a Fortran-ordered view) is K itself: LAPACK works in place
    eigenvalues = linalg.eigh(kernel.T, eigvals_only=True, overwrite_a=True, check_finite=False)
    del kernel
    p = np.abs(eigenvalues) ** t
    p = p / p.sum() + DSE_PROB_FLOOR
    return {"dse": float(-(p * np.log2(p)).sum()), "dse_median_distance": median_distance,
            "dse_offdiag_mass": off_diagonal, "dse_offdiag_fraction": (total - diagonal) / total, "dse_rows": n}


_MEDIAN_SAMPLE = 200_000  # upper-triangle entries sampled to bracket the median
_MEDIAN_ROWS = 256  # rows scanned at a time (bounded temporaries)


def _median_offdiagonal(squared: np.ndarray) -> float:
    """√ of the median off-diagonal entry of a symmetric matrix of squared distances, exactly,
    without an N×N copy.

    The off-diagonal entries are the upper triangle's, each twice, so their median is the median
    of the triangle (the mean of its two middle values when the count is even). A seeded sample
    of the triangle brackets the median; one scan counts the entries below the bracket and keeps
    those inside it (a few thousand), where the exact order statistics are selected. Should the
    bracket miss (it is ±6 standard errors wide), the scan is repeated on the whole range.
    """
    n = squared.shape[0]
    m = n * (n - 1) // 2  # entries in the upper triangle
    middle = [(m - 1) // 2, m // 2]
    if m <= _MEDIAN_SAMPLE:  # small (DSMI's per-class kernels): the triangle itself is cheaper than a sample
        values = squared[np.triu_indices(n, 1)]
        values.partition(middle)
        return float(np.sqrt(values[middle].mean()))
    rng = np.random.default_rng(0)
    i = rng.integers(0, n - 1, _MEDIAN_SAMPLE)
    j = rng.integers(0, n - 1, _MEDIAN_SAMPLE)
    i, j = np.minimum(i, j), np.maximum(i, j) + 1
    sample = squared[i, j]
    spread = 6 * 0.5 / np.sqrt(_MEDIAN_SAMPLE)
    bracket = np.quantile(sample, [max(0.5 - spread, 0.0), min(0.5 + spread, 1.0)])
    for low, high in ((bracket[0], bracket[1]), (-np.inf, np.inf)):
        below, inside = 0, []
        for start in range(0, n, _MEDIAN_ROWS):
            rows = squared[start : start + _MEDIAN_ROWS]
            upper = np.arange(n)[None, :] > np.arange(start, start + rows.shape[0])[:, None]
            values = rows[upper]
            below += int((values < low).sum())
            inside.append(values[(values >= low) & (values <= high)])
        inside = np.concatenate(inside)
        wanted = [k - below for k in middle]
        if 0 <= wanted[0] and wanted[1] < inside.size:
            inside.partition(wanted)
            return float(np.sqrt(inside[wanted].mean()))
    raise AssertionError("the whole range always holds the median")


def dsmi(X: np.ndarray, y: np.ndarray, *, sigma: float, t: float, repeats: int, seed: int) -> float:
    """Diffusion spectral mutual information in bits (Liao et al. 2023):
    Σ_c (n_c/N)[mean over ``repeats`` random subsets of size n_c of DSE − DSE(rows of class c)].
    Subsets come from ``np.random.default_rng(seed)``; classes with one row are skipped."""
    rng = np.random.default_rng(seed)
    total = 0.0
    labelled = y >= 0
    X, y = X[labelled], y[labelled]
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        if rows.size < 2:
            continue
        random = np.mean([_dse_bits(X[rng.choice(y.size, rows.size, replace=False)], sigma=sigma, t=t)
                          for _ in range(repeats)])
        total += rows.size / y.size * (random - _dse_bits(X[rows], sigma=sigma, t=t))
    return float(total)


def _dse_bits(X: np.ndarray, *, sigma: float, t: float) -> float:
    """DSE alone, without the diagnostics (DSMI's many kernels need no median distance)."""
    with blas_threads(X.shape[0]):
        return _diffusion_spectral_entropy(X, sigma=sigma, t=t, diagnostics=False)["dse"]
