"""Permutation nulls of the similarity of two layers on their seeded row sample (docs/metrics.md,
"Uncertainty and nulls").

H₀: the rows of A and of B are unrelated — which row of B goes with which row of A does not matter.
Under H₀ B's sampled rows are exchangeable, so K seeded shuffles π_1 … π_K of them give K values of
the measure under H₀; the p-value is (1 + #{null ≥ observed}) / (K + 1) (every measure here is a
similarity, direction "higher"; core/metrics/uncertainty.py ``permutation_test``).

The observed statistic is the measure on the same m sampled rows (``sample_value``): RSA and mutual
k-NN are sample measures already; CKA (linear and debiased) is recomputed from the sample's moments,
since the streamed value over all N rows has another null distribution (biased CKA of unrelated
layers shrinks as N grows). A shuffle changes only the pairing, so nothing of one layer alone is
recomputed: CKA's cross moments of x̃_i and ỹ_π(i); RSA's RDM of B with rows and columns permuted
(its upper triangle gathered at (π_i, π_j), ranks unchanged); B's k nearest rows of i, π⁻¹(N_B(π_i)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from actgeom.core.base.options import CompareOptions
from actgeom.core.base.registry import Unavailable
from actgeom.core.metrics.compare import PairInputs, cka_debiased, cka_linear
from actgeom.core.metrics.compare_moments import CentredCross, CentredSide
from actgeom.core.metrics.compare_sample import SampledPair, SampleView, mutual_knn, pearson, rsa
from actgeom.core.metrics.uncertainty import permutation_test

TESTED = ("cka_linear", "cka_debiased", "rsa_spearman", "rsa_pearson", "mutual_knn")  # the measures with a null


def permutations(size: int, count: int, seed: int) -> list[np.ndarray]:
    """``count`` seeded permutations of range(size): the same for every pair of the same size."""
    rng = np.random.default_rng(seed)
    return [rng.permutation(size) for _ in range(count)]


@dataclass
class _Sampled:
    """A pair's sampled rows (a :class:`SampledPair`)."""

    sample_x: SampleView
    sample_y: SampleView
    found: dict = field(default_factory=dict)


def pair_nulls(sample_x: SampleView, sample_y: SampleView, o: CompareOptions, count: int, seed: int) -> tuple[dict, dict]:
    """({measure: permutation_test fields | sample_value}, {measure: why it has no null}) of the
    measures of :data:`TESTED` between A's sampled rows and B's, under ``count`` shuffles of B's
    rows seeded with ``seed``."""
    p = _Sampled(sample_x, sample_y)
    found = _cka_null(p.sample_x.rows, p.sample_y.rows, o, count, seed) | _rsa_null(p, o, count, seed) \
        | _knn_null(p, o, count, seed)
    nulls, unavailable = {}, {}
    for name in TESTED:
        observed, null = found[name]
        if isinstance(observed, Unavailable):
            unavailable[name] = observed.reason
        elif not all(math.isfinite(value) for value in null):
            unavailable[name] = "not a number under some permutation of the sampled rows"
        else:
            nulls[name] = permutation_test(observed, null, "higher") | {"sample_value": observed}
    return nulls, unavailable


def _centred(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x̃ = rows − their column means, k_i = ‖x̃_i‖²)."""
    z = rows - rows.mean(axis=0)
    return z, np.einsum("ij,ij->i", z, z)


def _side(z: np.ndarray, k: np.ndarray) -> CentredSide:
    return CentredSide(n=z.shape[0], mean=np.zeros(z.shape[1]), scatter=z.T @ z, q=float(k.sum()), qx=z.T @ k,
                       q2=float(k @ k))


def _cka_null(x: np.ndarray, y: np.ndarray, o: CompareOptions, count: int, seed: int) -> dict:
    """Linear and debiased CKA of the sampled rows, and under each shuffle of B's rows."""
    (zx, kx), (zy, ky) = _centred(x), _centred(y)
    side_x, side_y = _side(zx, kx), _side(zy, ky)

    def values(order) -> dict:
        wy, ly = zy[order], ky[order]
        cross = CentredCross(scatter=zx.T @ wy, kxy=wy.T @ kx, kyx=zx.T @ ly, kk=float(kx @ ly))
        inputs = PairInputs(x=side_x, y=side_y, cross=cross)
        return cka_linear(inputs, o) | cka_debiased(inputs, o)

    observed = values(np.arange(x.shape[0]))
    null = [values(order) for order in permutations(x.shape[0], count, seed)]
    return {name: (observed[name], [_number(values[name]) for values in null]) for name in observed}


def _rsa_null(p: SampledPair, o: CompareOptions, count: int, seed: int) -> dict:
    """RSA (Spearman, Pearson) on the rows usable in both layers, and with B's usable rows shuffled."""
    observed = rsa(p, o)
    if isinstance(observed["rsa_spearman"], Unavailable):
        return {name: (value, []) for name, value in observed.items()}
    usable = ~p.sample_x.constant & ~p.sample_y.constant
    (a, rank_a), (b, rank_b) = p.sample_x.rdm(usable), p.sample_y.rdm(usable)
    u = int(usable.sum())
    first, second = np.triu_indices(u, 1)
    by_rank, by_value = [], []
    for order in permutations(u, count, seed):
        low, high = np.minimum(order[first], order[second]), np.maximum(order[first], order[second])
        at = low * u - low * (low + 1) // 2 + (high - low - 1)  # (low, high)'s place in the upper triangle
        by_rank.append(pearson(rank_a, rank_b[at]))
        by_value.append(pearson(a, b[at]))
    return {"rsa_spearman": (observed["rsa_spearman"], by_rank), "rsa_pearson": (observed["rsa_pearson"], by_value)}


def _knn_null(p: SampledPair, o: CompareOptions, count: int, seed: int) -> dict:
    """Mutual k-NN, and with B's rows shuffled: row i's neighbours in B become π⁻¹(N_B(π_i))."""
    observed = mutual_knn(p, o)["mutual_knn"]
    if isinstance(observed, Unavailable):
        return {"mutual_knn": (observed, [])}
    m, k = p.sample_x.rows.shape[0], o.knn_k
    in_a = np.zeros((m, m), dtype=bool)
    in_a[np.arange(m)[:, None], p.sample_x.knn(k)] = True
    neighbours_b = p.sample_y.knn(k)
    null = []
    for order in permutations(m, count, seed):
        inverse = np.empty(m, dtype=np.int64)
        inverse[order] = np.arange(m)
        null.append(float(in_a[np.arange(m)[:, None], inverse[neighbours_b[order]]].sum() / (m * k)))
    return {"mutual_knn": (observed, null)}


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) else math.nan
