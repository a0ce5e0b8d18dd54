"""Slow, obviously-correct in-memory float64 probes: every formula of METRICS.md §7 applied to the
rows themselves (no moments, no streaming), to check the streamed path against."""

from __future__ import annotations

import numpy as np

from actgeom.core.base.sample import row_keys


def sequence_starts(offsets: np.ndarray) -> np.ndarray:
    """Each row's sequence named by its first row: offsets[s] repeated over the rows of sequence s."""
    return np.repeat(offsets[:-1], np.diff(offsets))


def held_out(n_rows: int, seed: int, test_fraction: float, keys_of=None) -> np.ndarray:
    """Which rows are test rows: key < test_fraction·2⁶⁴, key = splitmix64 of the row number
    (or of ``keys_of[i]``, e.g. sample ids or :func:`sequence_starts`, one value at a time)."""
    if keys_of is None:
        keys = row_keys(0, n_rows, seed)
    else:
        unsigned = [int(v) % 2**64 for v in keys_of]  # int64 ids as their two's-complement bits
        keys = np.array([row_keys(u, u + 1, seed)[0] for u in unsigned], dtype=np.uint64)
    return np.array([int(k) < int(test_fraction * 2.0**64) for k in keys])


def lda(X: np.ndarray, y: np.ndarray, shrinkage: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(classes, W, b): w_c = Σ_s⁻¹μ_c, b_c = −½μ_cᵀΣ_s⁻¹μ_c + log π_c, Σ_s = (1−s)Σ_W + s·tr(Σ_W)/D·I."""
    classes = np.unique(y)
    means = np.array([X[y == c].mean(axis=0) for c in classes])
    dev = X - means[np.searchsorted(classes, y)]
    sigma = dev.T @ dev / X.shape[0]
    d = X.shape[1]
    shrunk = (1 - shrinkage) * sigma + shrinkage * np.trace(sigma) / d * np.eye(d)
    W = np.linalg.solve(shrunk, means.T).T
    priors = np.array([(y == c).mean() for c in classes])
    b = -0.5 * np.einsum("ij,ij->i", means, W) + np.log(priors)
    return classes, W, b


def ridge(X: np.ndarray, y: np.ndarray, ridge_lambda: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(classes, W, b) minimising ‖Y − XWᵀ − 1bᵀ‖² + α‖W‖², α = λ·tr(S_T)/D, by one direct solve of
    the augmented normal equations [X 1]ᵀ[X 1] + diag(α…α, 0) (the intercept is not penalised)."""
    classes = np.unique(y)
    Y = (y[:, None] == classes[None, :]).astype(np.float64)
    centred = X - X.mean(axis=0)
    alpha = ridge_lambda * np.trace(centred.T @ centred) / X.shape[1]
    A = np.hstack([X, np.ones((X.shape[0], 1))])
    penalty = np.diag(np.r_[np.full(X.shape[1], alpha), 0.0])
    beta = np.linalg.solve(A.T @ A + penalty, A.T @ Y)
    return classes, beta[:-1].T, beta[-1]


def predict(classes: np.ndarray, W: np.ndarray, b: np.ndarray, X: np.ndarray) -> np.ndarray:
    return classes[np.argmax(X @ W.T + b, axis=1)]


def nearest_mean(X_train: np.ndarray, y_train: np.ndarray, X: np.ndarray) -> np.ndarray:
    classes = np.unique(y_train)
    means = np.array([X_train[y_train == c].mean(axis=0) for c in classes])
    distances = ((X[:, None, :] - means[None, :, :]) ** 2).sum(axis=2)
    return classes[np.argmin(distances, axis=1)]


def control_labels(groups: np.ndarray, y_train: np.ndarray, seed: int, mode: str) -> np.ndarray:
    """Hewitt & Liang control classes: group (token id, or bucket of 1024) → u → inverse CDF of the
    train class frequencies, one group at a time."""
    counts = np.bincount(y_train)
    cdf = np.cumsum(counts) / counts.sum()
    out = []
    for g in groups:
        if mode == "token":
            u = int(row_keys(int(g), int(g) + 1, seed + 1)[0] >> np.uint64(11)) / 2.0**53
        else:
            u = (int(g) + 0.5) / 1024
        out.append(next(c for c in range(counts.size) if cdf[c] > u))
    return np.array(out)


def row_buckets(n_rows: int, seed: int, keys_of=None) -> np.ndarray:
    """The control bucket of each row: the top 10 bits of its key with seed + 1 (the key of its row
    number, or of ``keys_of[i]``, one value at a time)."""
    if keys_of is None:
        keys = row_keys(0, n_rows, seed + 1)
    else:
        keys = np.array([row_keys(int(v), int(v) + 1, seed + 1)[0] for v in keys_of], dtype=np.uint64)
    return (keys >> np.uint64(54)).astype(np.int64)
