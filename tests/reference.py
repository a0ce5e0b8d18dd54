"""Slow, obviously-correct in-memory float64 statistics, to check the streamed engine against."""

from __future__ import annotations

import numpy as np


def class_statistics(X: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Counts, class means, pooled within-class scatter Σ (x−μ_y)(x−μ_y)ᵀ, per-class Σ‖x−μ_c‖².

    Two-pass per class (mean first, then deviations), everything in float64.
    """
    X = np.asarray(X, dtype=np.float64)
    n_classes = int(y.max()) + 1
    n_units = X.shape[1]
    counts = np.zeros(n_classes, dtype=np.int64)
    means = np.zeros((n_classes, n_units))
    within = np.zeros((n_units, n_units))
    sq_dev = np.zeros(n_classes)
    for c in range(n_classes):
        rows = X[y == c]
        counts[c] = rows.shape[0]
        if counts[c] == 0:
            continue
        means[c] = rows.mean(axis=0)
        dev = rows - means[c]
        within += dev.T @ dev
        sq_dev[c] = (dev * dev).sum()
    return {"counts": counts, "means": means, "within_scatter": within, "sq_dev": sq_dev}


def unit_statistics(X: np.ndarray, threshold: float = 0.0) -> dict[str, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    norms = np.linalg.norm(X, axis=1)
    nonzero = norms > 0
    return {
        "n_active": (X > threshold).sum(axis=0),
        "sum": X.sum(axis=0),
        "sum_abs": np.abs(X).sum(axis=0),
        "unit_vector_sum": (X[nonzero] / norms[nonzero, None]).sum(axis=0),
    }


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """‖actual − expected‖_F / ‖expected‖_F (0 when both are 0)."""
    scale = np.linalg.norm(expected)
    diff = np.linalg.norm(np.asarray(actual, dtype=np.float64) - expected)
    return float(diff / scale) if scale else float(diff)
