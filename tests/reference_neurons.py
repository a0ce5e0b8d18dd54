"""Slow, obviously-correct in-memory float64 references for the neurons family (loops over
units, classes, tokens and class pairs; two-pass moments about the exact mean)."""

from __future__ import annotations

import itertools
import math

import numpy as np


def moments_reference(x: np.ndarray) -> dict:
    """One unit's mean, std, min, max, skewness, excess kurtosis (population), two-pass in fsum."""
    n = x.size
    mean = math.fsum(x) / n
    d = x - mean
    m2, m3, m4 = (math.fsum(d**k) / n for k in (2, 3, 4))
    constant = x.max() == x.min()
    return {"mean": mean, "std": 0.0 if constant else math.sqrt(m2), "min": float(x.min()), "max": float(x.max()),
            "skewness": math.nan if constant else m3 / m2**1.5, "kurtosis": math.nan if constant else m4 / m2**2 - 3}


def neurons_reference(X: np.ndarray, *, labels=None, token_ids=None, positions=None, threshold=0.0,
                      max_position=512, k=5) -> dict[str, np.ndarray]:
    """Every per-unit score of the layer X (N, D), one unit at a time."""
    n, d = X.shape
    out: dict[str, list] = {}
    mean_abs = np.abs(X).mean(axis=0)
    for u in range(d):
        x = X[:, u]
        for name, value in moments_reference(x).items():
            out.setdefault(name, []).append(value)
        out.setdefault("firing_rate", []).append(float(np.sum(x > threshold)) / n)
        out.setdefault("dormant_score", []).append(mean_abs[u] / mean_abs.mean())
        if labels is not None:
            classes = sorted(set(labels[labels >= 0].tolist()))
            means = [x[labels == c].mean() for c in classes]
            top = max(means)
            rest = (sum(means) - top) / (len(means) - 1)
            out.setdefault("class_selectivity", []).append((top - rest) / (top + rest) if top + rest > 0 else math.nan)
            out.setdefault("probeless_score", []).append(sum(abs(a - b) for a, b in itertools.combinations(means, 2)))
        if token_ids is not None:
            mass = {t: np.maximum(x[token_ids == t], 0).sum() for t in set(token_ids.tolist())}
            best = sorted(mass.values(), reverse=True)[:k]
            total = sum(mass.values())
            out.setdefault("token_concentration", []).append(sum(best) / total if total > 0 else math.nan)
        if positions is not None:
            pooled = np.minimum(positions, max_position)
            mu = x.mean()
            between = sum((pooled == p).sum() * (x[pooled == p].mean() - mu) ** 2 for p in set(pooled.tolist()))
            total = ((x - mu) ** 2).sum()
            out.setdefault("position_eta2", []).append(between / total if x.max() > x.min() else math.nan)
    return {name: np.array(values) for name, values in out.items()}


def vae_kl_reference(mu: np.ndarray, logvar: np.ndarray) -> np.ndarray:
    """Mean over rows of ½(μ² + e^ℓ − ℓ − 1), per latent."""
    return 0.5 * (mu**2 + np.exp(logvar) - logvar - 1).mean(axis=0)
