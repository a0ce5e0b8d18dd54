"""Slow, obviously-correct in-memory float64 implementations of every compare measure.

Textbook forms on the full matrices: N × N Gram matrices for the kernel measures (CKA, unbiased
HSIC), QR-based CCA (Björck & Golub) instead of the moments'
Σ^{−1/2}, explicit loops and sets for the neighbourhoods. Full-rank test data only (N > D).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from actgeom.core.base.sample import row_keys


def centred(X: np.ndarray) -> np.ndarray:
    return X - X.mean(axis=0)


def cka_linear(X, Y) -> float:
    H = np.eye(X.shape[0]) - 1.0 / X.shape[0]
    K, L = H @ X @ X.T @ H, H @ Y @ Y.T @ H
    return float(np.sum(K * L) / math.sqrt(np.sum(K * K) * np.sum(L * L)))


def hsic_unbiased(K, L) -> float:
    """Song et al. 2012, eq. (5), on explicit N × N kernels."""
    n = K.shape[0]
    K, L = K.copy(), L.copy()
    np.fill_diagonal(K, 0.0)
    np.fill_diagonal(L, 0.0)
    one = np.ones(n)
    value = np.trace(K @ L) + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (one @ K @ L @ one)
    return float(value / (n * (n - 3)))


def cka_debiased(X, Y) -> float:
    # Linear kernels of centred rows: the estimator is shift invariant (checked on raw rows with small
    # offsets in test_compare.py), but raw Grams of +1e3-offset rows lose ~1e-4 to rounding.
    K, L = centred(X) @ centred(X).T, centred(Y) @ centred(Y).T
    return hsic_unbiased(K, L) / math.sqrt(hsic_unbiased(K, K) * hsic_unbiased(L, L))


def _inverse_sqrt(S):
    lam, V = np.linalg.eigh(S)
    return V @ np.diag(lam**-0.5) @ V.T


def phi(X, alpha: float) -> np.ndarray:
    Xc = centred(X)
    M = alpha * np.eye(X.shape[1]) + (1 - alpha) * _inverse_sqrt(Xc.T @ Xc / X.shape[0])
    Z = Xc @ M
    return Z / np.linalg.norm(Z)


def shape_distance(X, Y, alpha: float = 1.0) -> float:
    nuclear = np.linalg.svd(phi(X, alpha).T @ phi(Y, alpha), compute_uv=False).sum()
    return math.acos(min(nuclear, 1.0))


def procrustes_distance(X, Y) -> float:
    nuclear = np.linalg.svd(phi(X, 1.0).T @ phi(Y, 1.0), compute_uv=False).sum()
    return math.sqrt(max(2 - 2 * nuclear, 0.0))


def _cca(Xc, Yc):
    """QR-based CCA: ρ = singular values of Q_xᵀ Q_y; h = Q_x U, the unit-norm canonical variates of X."""
    Qx, _ = np.linalg.qr(Xc)
    Qy, _ = np.linalg.qr(Yc)
    U, rho, _ = np.linalg.svd(Qx.T @ Qy, full_matrices=False)
    return np.clip(rho, 0, 1), Qx @ U


def cca(X, Y) -> tuple[float, float]:
    rho, _ = _cca(centred(X), centred(Y))
    return float(rho.mean()), float((rho**2).mean())


def svcca(X, Y, keep: float = 0.99) -> float:
    def reduced(Z):
        Zc = centred(Z)
        U, s, _ = np.linalg.svd(Zc, full_matrices=False)
        k = int(np.searchsorted(np.cumsum(s**2) / np.sum(s**2), keep - 1e-12)) + 1
        return U[:, :k] * s[:k]

    rho, _ = _cca(reduced(X), reduced(Y))
    return float(rho.mean())


def pwcca(X, Y) -> float:
    Xc = centred(X)
    rho, h = _cca(Xc, centred(Y))
    weights = np.abs(h.T @ Xc).sum(axis=1)
    return float(weights @ rho / weights.sum())


def sample_rows(n_rows: int, size: int, seed: int) -> np.ndarray:
    """The seeded sample: the ``size`` rows with the smallest keys, in row order."""
    return np.sort(np.argsort(row_keys(0, n_rows, seed))[:size])


def rsa(X, Y) -> tuple[float, float]:
    upper = np.triu_indices(X.shape[0], 1)
    a, b = (1 - np.corrcoef(X))[upper], (1 - np.corrcoef(Y))[upper]
    return float(stats.spearmanr(a, b)[0]), float(stats.pearsonr(a, b)[0])


def mutual_knn(X, Y, k: int = 10) -> float:
    def neighbours(Z):
        out = []
        for i in range(Z.shape[0]):
            similarity = [(Z[i] @ Z[j]) / (np.linalg.norm(Z[i]) * np.linalg.norm(Z[j])) for j in range(Z.shape[0])]
            order = [j for j in np.argsort(similarity)[::-1] if j != i]
            out.append(set(order[:k]))
        return out

    return float(np.mean([len(a & b) / k for a, b in zip(neighbours(X), neighbours(Y))]))


def unit_best_corr(X, Y, threshold: float = 0.5) -> tuple[float, list[tuple[int, float]]]:
    best = []
    for a in range(X.shape[1]):
        corrs = [stats.pearsonr(X[:, a], Y[:, b])[0] for b in range(Y.shape[1])]
        best.append((int(np.argmax(corrs)), float(np.max(corrs))))
    return float(np.mean([c > threshold for _, c in best])), best


def every_measure(X, Y, *, alpha: float = 1.0, keep: float = 0.99, subsample: int = 2000, seed: int = 0,
                  k: int = 10, threshold: float = 0.5) -> dict[str, float]:
    rows = sample_rows(X.shape[0], subsample, seed)
    spearman, pearson = rsa(X[rows], Y[rows])
    mean_corr, r2 = cca(X, Y)
    return {"cka_linear": cka_linear(X, Y), "cka_debiased": cka_debiased(X, Y),
            "shape_distance": shape_distance(X, Y, alpha), "procrustes_distance": procrustes_distance(X, Y),
            "cca_mean_corr": mean_corr, "cca_r2": r2, "svcca": svcca(X, Y, keep), "pwcca": pwcca(X, Y),
            "rsa_spearman": spearman, "rsa_pearson": pearson, "mutual_knn": mutual_knn(X[rows], Y[rows], k),
            "unit_best_corr": unit_best_corr(X, Y, threshold)[0]}
