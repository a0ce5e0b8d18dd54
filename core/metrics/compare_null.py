"""Permutation nulls of the similarity of two layers on their seeded row sample (docs/metrics.md,
"Uncertainty and nulls").

H₀: the rows of A and of B are unrelated — which row of B goes with which row of A does not matter.
Under H₀ B's sampled rows are exchangeable, so K seeded shuffles π_1 … π_K of them give K values of
the measure under H₀; the p-value is (1 + #{null ≥ observed}) / (K + 1) (every measure here is a
similarity, direction "higher"; core/metrics/uncertainty.py ``permutation_test``).

The observed statistic is the measure on the same m sampled rows (``sample_value``, computed the
way its null values are): RSA and mutual k-NN are sample measures already; CKA (linear and debiased)
is recomputed on the sample, since the streamed value over all N rows has another null distribution
(biased CKA of unrelated layers shrinks as N grows). A shuffle changes only the pairing, so nothing
of one layer alone is recomputed: CKA and RSA are sums Σ_ij A_ij B_{π_i π_j} of two m × m matrices
(the Grams, the centred RDMs; m² products per shuffle whatever the widths), mutual k-NN takes B's
nearest rows of π_i mapped back, π⁻¹(N_B(π_i)). Memory: about four m × m float64 matrices at a time
(128 MB at the default --subsample 2 000).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from actgeom.core.base.options import CompareOptions
from actgeom.core.base.registry import Unavailable
from actgeom.core.metrics.compare import hsic_unbiased
from actgeom.core.metrics.compare_sample import SampledPair, SampleView, mutual_knn, rsa
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


def _paired(A: np.ndarray, B: np.ndarray, orders: list[np.ndarray]) -> np.ndarray:
    """Σ_ij A_ij B_{π_i π_j} for each order π: row i of A paired with row π_i of B (m × m each;
    m² products per order, whatever the layers' widths)."""
    return np.array([float(np.vdot(A, B.take(order, axis=0).take(order, axis=1))) for order in orders])


def _cka_null(x: np.ndarray, y: np.ndarray, o: CompareOptions, count: int, seed: int) -> dict:
    """Linear and debiased CKA of the sampled rows (the first value) and under each shuffle of B's
    rows, from the Grams K = X̃X̃ᵀ, L = ỸỸᵀ: ‖X̃ᵀỸ_π‖_F² = Σ_ij K_ij L_{π_i π_j}, ‖X̃ᵀX̃‖_F = ‖K‖_F,
    and the unbiased HSIC's Σ k_i l_π(i) with k = diag K (core/metrics/compare.py ``hsic_unbiased``)."""
    m = x.shape[0]
    (zx, kx), (zy, ky) = _centred(x), _centred(y)
    orders = [np.arange(m)] + permutations(m, count, seed)
    cross = _paired(zx @ zx.T, zy @ zy.T, orders)
    kk, ll = float(np.linalg.norm(zx.T @ zx)) ** 2, float(np.linalg.norm(zy.T @ zy)) ** 2
    if kk == 0 or ll == 0:
        constant = Unavailable("a layer is constant over the sampled rows")
        return {"cka_linear": (constant, []), "cka_debiased": (constant, [])}
    linear = cross / math.sqrt(kk * ll)
    found = {"cka_linear": (float(linear[0]), linear[1:].tolist())}
    if m < 4:
        return found | {"cka_debiased": (Unavailable(f"needs at least 4 sampled rows ({m})"), [])}
    sum_k, sum_l = float(kx.sum()), float(ky.sum())
    self_x, self_y = hsic_unbiased(m, kk, sum_k, sum_k, float(kx @ kx)), hsic_unbiased(m, ll, sum_l, sum_l, float(ky @ ky))
    if self_x <= 0 or self_y <= 0:
        return found | {"cka_debiased": (Unavailable("the unbiased HSIC of a layer with itself is not positive"), [])}
    debiased = hsic_unbiased(m, cross, sum_k, sum_l, np.array([kx @ ky[order] for order in orders]))
    debiased = debiased / math.sqrt(self_x * self_y)
    return found | {"cka_debiased": (float(debiased[0]), debiased[1:].tolist())}


def _rsa_null(p: SampledPair, o: CompareOptions, count: int, seed: int) -> dict:
    """RSA (Spearman, Pearson) on the rows usable in both layers (the first value) and with B's
    usable rows shuffled: the correlation of the upper triangles is half the paired sum of the
    centred, symmetric RDMs (zero diagonal) over their norms; ranks are unchanged by a shuffle."""
    reasons = rsa(p, o)
    if isinstance(reasons["rsa_spearman"], Unavailable):
        return {name: (value, []) for name, value in reasons.items()}
    usable = ~p.sample_x.constant & ~p.sample_y.constant
    (a, rank_a), (b, rank_b) = p.sample_x.rdm(usable), p.sample_y.rdm(usable)
    u = int(usable.sum())
    orders = [np.arange(u)] + permutations(u, count, seed)
    found = {}
    for name, upper_a, upper_b in (("rsa_spearman", rank_a, rank_b), ("rsa_pearson", a, b)):
        (square_a, norm_a), (square_b, norm_b) = _symmetric(upper_a, u), _symmetric(upper_b, u)
        values = _paired(square_a, square_b, orders) / (2 * norm_a * norm_b)
        found[name] = (float(values[0]), values[1:].tolist())
        del square_a, square_b
    return found


def _symmetric(upper: np.ndarray, u: int) -> tuple[np.ndarray, float]:
    """(the u × u symmetric matrix of a condensed upper triangle centred by its mean, zero on the
    diagonal; the norm of the centred triangle)."""
    centred = upper - upper.mean(dtype=np.float64)
    square = np.zeros((u, u))
    square[np.triu_indices(u, 1)] = centred
    square += square.T
    return square, float(np.sqrt(centred @ centred))


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
