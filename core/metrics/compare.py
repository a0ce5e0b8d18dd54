"""Similarity between two representations of the same inputs: pure functions (docs/metrics.md,
"Similarity between representations").

X (N × D_a) and Y (N × D_b) are aligned rows (row i of both is the same input); x̃, ỹ their rows
centred by the column means. Every measure but RSA and mutual k-NN is a function of the moments
of :mod:`actgeom.core.metrics.compare_moments` (:class:`PairInputs` ``x``, ``y``, ``cross``); those two
use a seeded row sample shared by both files (core/metrics/compare_sample.py). Eigendecompositions of each layer's covariance are
computed once per layer and shared by every pair it is in.

Rank-deficient covariances (CCA, SVCCA, PWCCA, shape distance with α < 1): Σ^{−1/2} is the
pseudo-inverse square root on the numerical range, the eigen-directions with λ > rtol·λ_1
(rtol = the storage noise of the coarser input dtype, as rank's numerical rank); canonical
correlations are those of the projections onto that range, min(rank_x, rank_y) of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from actgeom.core.base.options import CompareOptions
from actgeom.core.base.registry import Unavailable, registry
from actgeom.core.metrics.compare_moments import CentredCross, CentredSide
from actgeom.core.metrics.compare_sample import SampleView, mutual_knn, rsa
from actgeom.core.metrics.spectrum import STORAGE_RTOL


@dataclass
class PairInputs:
    """One layer pair: the centred moments of each side and of the pair, the shared row sample
    (None without --subsample), and the storage dtypes (for the numerical-range tolerance)."""

    x: CentredSide
    y: CentredSide
    cross: CentredCross
    sample_x: SampleView | None = None
    sample_y: SampleView | None = None
    rtol: float = STORAGE_RTOL["float64"]
    found: dict = field(default_factory=dict)  # what the computations report besides metrics (ranks, per-unit lists)
    cache: dict = field(default_factory=dict)  # intermediates shared by several measures of the pair

    @property
    def n(self) -> int:
        return self.x.n

    def canonical(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ρ, U, W_x) of the pair's CCA (:func:`cca`), computed once for cca and pwcca."""
        if "_canonical" not in self.cache:
            Wx = _whitener(self.x, self.rtol)
            rho, U = _canonical(Wx, _whitener(self.y, self.rtol), self.cross.scatter / self.n)
            self.cache["_canonical"] = (rho, U, Wx)
        return self.cache["_canonical"]

    def shape_cosine(self, alpha: float) -> float | None:
        """:func:`_shape_cosine`, computed once per α (shape and Procrustes distances share α = 1)."""
        if ("shape", alpha) not in self.cache:
            self.cache[("shape", alpha)] = _shape_cosine(self, alpha)
        return self.cache[("shape", alpha)]


def numerical_rtol(*dtypes: str) -> float:
    """The eigenvalue tolerance of the coarser storage dtype (float16 ≫ float64)."""
    return max(STORAGE_RTOL.get(dtype, STORAGE_RTOL["float32"]) for dtype in dtypes)


def _range(side: CentredSide, rtol: float) -> tuple[np.ndarray, np.ndarray]:
    """(λ, V) of the covariance restricted to its numerical range, λ > rtol·λ_1."""
    lam, vec = side.eigh()
    keep = lam > rtol * lam[0] if lam.size and lam[0] > 0 else np.zeros(lam.size, dtype=bool)
    return lam[keep], vec[:, keep]


def _whitener(side: CentredSide, rtol: float) -> np.ndarray:
    """W (D × r) with Wᵀ Σ W = I_r on the numerical range: Σ^{−1/2} restricted to it."""
    lam, vec = _range(side, rtol)
    return vec / np.sqrt(lam)


def _canonical(Wx: np.ndarray, Wy: np.ndarray, cov_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ρ descending, U): singular values of Wxᵀ Σ_xy Wy (clipped to [0, 1]) and their left vectors."""
    if Wx.shape[1] == 0 or Wy.shape[1] == 0:
        return np.zeros(0), np.zeros((Wx.shape[1], 0))
    U, rho, _ = np.linalg.svd(Wx.T @ cov_xy @ Wy, full_matrices=False)
    return np.clip(rho, 0.0, 1.0), U


# -- the metrics ------------------------------------------------------------------------------

def cka_linear(p: PairInputs, o: CompareOptions) -> dict:
    """Linear CKA (Kornblith et al., ICML 2019): ‖X̃ᵀỸ‖_F² / (‖X̃ᵀX̃‖_F ‖ỸᵀỸ‖_F).

    Similarity in [0, 1], 1 when Y = X·Q·s + t (Q orthogonal). Invariant to orthogonal maps,
    isotropic scaling and shifts of either side. Undefined when a side is constant.
    """
    denominator = np.linalg.norm(p.x.scatter) * np.linalg.norm(p.y.scatter)
    if denominator == 0:
        return {"cka_linear": Unavailable("a layer is constant over the rows")}
    return {"cka_linear": float(np.linalg.norm(p.cross.scatter) ** 2 / denominator)}


def hsic_unbiased(n: int, cross_fro2: float, sum_k: float, sum_l: float, sum_kl: float) -> float:
    """Song et al.'s unbiased HSIC of linear kernels K = X̃X̃ᵀ, L = ỸỸᵀ from moments.

    HSIC_u = [tr(K̄L̄) + (1ᵀK̄1)(1ᵀL̄1)/((N−1)(N−2)) − 2/(N−2)·1ᵀK̄L̄1] / (N(N−3)), K̄ = K with a
    zero diagonal. HSIC_u is invariant to shifts of the rows (its U-statistic kernel is made of
    double differences ⟨x_i − x_r, x_j − x_q⟩), so centred rows may be used; with Σx̃_i = 0 and
    k_i = ‖x̃_i‖², l_i = ‖ỹ_i‖²:  tr(K̄L̄) = ‖X̃ᵀỸ‖_F² − Σ k_i l_i,  1ᵀK̄1 = −Σ k_i,  1ᵀK̄L̄1 = Σ k_i l_i
    (since (K̄1)_i = x̃_i·Σ_j x̃_j − k_i = −k_i).
    """
    trace = cross_fro2 - sum_kl
    return (trace + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * sum_kl) / (n * (n - 3))


def cka_debiased(p: PairInputs, o: CompareOptions) -> dict:
    """Debiased linear CKA (Song et al., JMLR 2012; Nguyen, Raghu & Kornblith, ICLR 2021):
    HSIC_u(K, L) / √(HSIC_u(K, K) · HSIC_u(L, L)), K = XXᵀ, L = YYᵀ (:func:`hsic_unbiased`).

    ≈ 0 for independent representations at any N and D (biased CKA is not); 1 for
    Y = X·Q·s + t. May leave [0, 1] slightly by estimation noise. Needs N ≥ 4.
    """
    n = p.n
    if n < 4:
        return {"cka_debiased": Unavailable(f"needs at least 4 rows ({n})")}
    kl = hsic_unbiased(n, float(np.linalg.norm(p.cross.scatter) ** 2), p.x.q, p.y.q, p.cross.kk)
    kk = hsic_unbiased(n, float(np.linalg.norm(p.x.scatter) ** 2), p.x.q, p.x.q, p.x.q2)
    ll = hsic_unbiased(n, float(np.linalg.norm(p.y.scatter) ** 2), p.y.q, p.y.q, p.y.q2)
    if kk <= 0 or ll <= 0:
        return {"cka_debiased": Unavailable("the unbiased HSIC of a layer with itself is not positive "
                                            "(too few rows, or a constant layer)")}
    return {"cka_debiased": float(kl / math.sqrt(kk * ll))}


def _partial_whitening(side: CentredSide, alpha: float, rtol: float) -> np.ndarray:
    """M = αI + (1−α)Σ^{−1/2} (Σ = X̃ᵀX̃/N, its pseudo-inverse root on the numerical range)."""
    eye = np.eye(side.scatter.shape[0])
    if alpha == 1:
        return eye
    lam, vec = _range(side, rtol)
    return alpha * eye + (1 - alpha) * (vec / np.sqrt(lam)) @ vec.T


def _shape_cosine(p: PairInputs, alpha: float) -> float | None:
    """‖φ_α(X)ᵀ φ_α(Y)‖_* with φ_α(X) = X̃M_x / ‖X̃M_x‖_F (None when a side is constant)."""
    Mx, My = _partial_whitening(p.x, alpha, p.rtol), _partial_whitening(p.y, alpha, p.rtol)
    norm_x = float(np.einsum("ij,ij->", Mx, p.x.scatter @ Mx))  # ‖X̃M‖_F² = tr(Mᵀ X̃ᵀX̃ M)
    norm_y = float(np.einsum("ij,ij->", My, p.y.scatter @ My))
    if norm_x <= 0 or norm_y <= 0:
        return None
    inner = Mx.T @ p.cross.scatter @ My
    return float(np.linalg.svd(inner, compute_uv=False).sum() / math.sqrt(norm_x * norm_y))


def _at_rounding(cosine: float, p: PairInputs) -> float:
    """The shape cosine, set to exactly 1 when it is within rounding of 1: ≥ 1 − 16·√D·ε, D the
    wider side, ε = 2⁻⁵². The ratio is a sum of D singular values over √(‖·‖_F²‖·‖_F²), each
    with errors that accumulate like √D·ε (Higham & Mary 2019, probabilistic rounding analysis;
    measured ≤ 15ε for a layer with itself at D = 4 … 2048). arccos(1 − δ) ≈ √(2δ) would turn
    one ulp into a distance of 2.1e-8, so distances below √(32·√D·ε) (1.6e-7 at D = 12,
    6.7e-7 at D = 4096) are not resolved and read 0; larger ones are kept."""
    width = max(p.x.scatter.shape[0], p.y.scatter.shape[0])
    return 1.0 if cosine >= 1.0 - 16 * math.sqrt(width) * np.finfo(np.float64).eps else cosine


def shape_distance(p: PairInputs, o: CompareOptions) -> dict:
    """Angular shape distance (Williams et al., NeurIPS 2021; netrep ``LinearMetric``):
    arccos ‖φ_α(X)ᵀ φ_α(Y)‖_*,  φ_α(X) = X̃(αI + (1−α)(X̃ᵀX̃/N)^{−1/2}) scaled to unit Frobenius norm.

    Distance in [0, π/2], 0 when Y = X·Q·s + t (exactly 0 for a layer with itself: a ratio within
    rounding of 1 is 1, :func:`_at_rounding`). ``--alpha`` 1 (default): orthogonal Procrustes,
    invariant to rotations, scaling and shifts; 0: CCA, invariant to invertible linear maps.
    Different widths: the nuclear norm of the D_a × D_b cross matrix (netrep's zero padding).
    Conventions vs netrep: Σ is the covariance X̃ᵀX̃/N (netrep whitens with X̃ᵀX̃, which for
    0 < α < 1 weighs α against a √N-larger term), and its inverse root is taken on the numerical
    range (netrep clips eigenvalues at 1e-7); α ∈ {0, 1} agree exactly.
    """
    cosine = p.shape_cosine(o.alpha)
    if cosine is None:
        return {"shape_distance": Unavailable("a layer is constant over the rows")}
    return {"shape_distance": math.acos(max(_at_rounding(cosine, p), 0.0))}  # clip: arccos domain


def procrustes_distance(p: PairInputs, o: CompareOptions) -> dict:
    """Orthogonal Procrustes distance of the unit-norm centred representations:
    √(2 − 2‖φ₁(X)ᵀ φ₁(Y)‖_*) (φ₁ = :func:`shape_distance`'s φ with α = 1).

    Distance in [0, √2], 0 when Y = X·Q·s + t (the ratio clipped as for the shape distance);
    invariant to rotations, scaling and shifts.
    """
    cosine = p.shape_cosine(1.0)
    if cosine is None:
        return {"procrustes_distance": Unavailable("a layer is constant over the rows")}
    return {"procrustes_distance": math.sqrt(max(2.0 - 2.0 * _at_rounding(cosine, p), 0.0))}


def cca(p: PairInputs, o: CompareOptions) -> dict:
    """Canonical correlation analysis: ρ_i = singular values of Σ_xx^{−1/2} Σ_xy Σ_yy^{−1/2}
    (Hotelling 1936), i ≤ min(rank_x, rank_y) on the numerical ranges (module docstring).

    cca_mean_corr = mean ρ_i, cca_r2 = mean ρ_i²; similarities in [0, 1], 1 when one side is an
    invertible linear map of the other (plus a shift); invariant to invertible linear maps.
    """
    rho, _, _ = p.canonical()
    p.found["cca_n_correlations"] = int(rho.size)
    if rho.size == 0:
        reason = Unavailable("a layer is constant over the rows")
        return {"cca_mean_corr": reason, "cca_r2": reason}
    return {"cca_mean_corr": float(rho.mean()), "cca_r2": float((rho**2).mean())}


def _top_components(side: CentredSide, keep: float, rtol: float) -> np.ndarray:
    """V_k: the top principal directions explaining ≥ ``keep`` of the variance (smallest such k)."""
    lam, vec = _range(side, rtol)
    if lam.size == 0:
        return vec
    k = int(np.searchsorted(np.cumsum(lam) / lam.sum(), keep - 1e-12)) + 1  # 1e-12: keep = 1 despite rounding
    return vec[:, : min(k, lam.size)]


def svcca(p: PairInputs, o: CompareOptions) -> dict:
    """SVCCA (Raghu et al., NeurIPS 2017): mean canonical correlation after reducing each side to
    its top principal components explaining ``--svcca-keep`` (0.99) of its variance.

    Similarity in [0, 1]; invariant to rotations, scaling and shifts (not to general linear maps,
    which change the principal components).
    """
    Vx, Vy = _top_components(p.x, o.svcca_keep, p.rtol), _top_components(p.y, o.svcca_keep, p.rtol)
    p.found["svcca_components"] = [int(Vx.shape[1]), int(Vy.shape[1])]
    if Vx.shape[1] == 0 or Vy.shape[1] == 0:
        return {"svcca": Unavailable("a layer is constant over the rows")}
    lam_x = np.diag(Vx.T @ p.x.scatter @ Vx) / p.n  # the covariance is diagonal in its own PCs
    lam_y = np.diag(Vy.T @ p.y.scatter @ Vy) / p.n
    rho, _ = _canonical(np.diag(lam_x**-0.5), np.diag(lam_y**-0.5), Vx.T @ (p.cross.scatter / p.n) @ Vy)
    return {"svcca": float(rho.mean())}


def pwcca(p: PairInputs, o: CompareOptions) -> dict:
    """Projection-weighted CCA (Morcos, Raghu & Bengio, NeurIPS 2018): Σ w_i ρ_i / Σ w_i,
    w_i = Σ_j |⟨h_i, x̃_j⟩|, h_i = X̃a_i / ‖X̃a_i‖ the canonical variates of A, x̃_j A's centred units.

    Asymmetric: the weights come from A (the rows of the matrix). With Σ_xx a_i computed from the
    moments, ⟨h_i, x̃_j⟩ = √N (Σ_xx a_i)_j for unit-variance variates (√N cancels in the ratio).
    Similarity in [0, 1]; invariant to scaling and shifts.
    """
    rho, U, Wx = p.canonical()
    if rho.size == 0:
        return {"pwcca": Unavailable("a layer is constant over the rows")}
    directions = Wx @ U[:, : rho.size]  # a_i, with a_iᵀ Σ_xx a_i = 1
    weights = np.abs((p.x.scatter / p.n) @ directions).sum(axis=0)
    return {"pwcca": float(weights @ rho / weights.sum())}


def unit_best_corr(p: PairInputs, o: CompareOptions) -> dict:
    """Universal-neuron summary (Gurnee et al. 2024): for each unit a of A, its best-correlated unit
    of B, max_b Pearson(x_a, y_b) over rows; the metric is the fraction of A's units whose best
    correlation exceeds ``--unit-threshold`` (0.5). Units constant over the rows have no correlation
    and are left out of the fraction; ``--units`` lists every unit (JSON).

    Similarity in [0, 1]; invariant to scaling (s > 0) and shifts of units (not to rotations).
    """
    sd_x, sd_y = np.sqrt(np.diag(p.x.scatter)), np.sqrt(np.diag(p.y.scatter))
    varying_x, varying_y = sd_x > 0, sd_y > 0
    p.found["units_constant_a"], p.found["units_constant_b"] = int((~varying_x).sum()), int((~varying_y).sum())
    if not varying_x.any() or not varying_y.any():
        return {"unit_best_corr": Unavailable("every unit of a layer is constant over the rows")}
    corr = p.cross.scatter[np.ix_(varying_x, varying_y)] / np.outer(sd_x[varying_x], sd_y[varying_y])
    best = corr.argmax(axis=1)
    value = np.clip(corr[np.arange(best.size), best], -1.0, 1.0)
    if o.units:
        units_b = np.flatnonzero(varying_y)
        p.found["units"] = [{"unit_a": int(a), "unit_b": int(units_b[b]), "corr": float(c)}
                            for a, b, c in zip(np.flatnonzero(varying_x), best, value)]
    return {"unit_best_corr": float((value > o.unit_threshold).mean())}


_REF = "tests/test_compare.py::test_every_measure_matches_the_in_memory_reference"
_ISOMETRY = frozenset({"scale", "rotation", "shift"})

REGISTRY = registry(
    "compare",
    dict(name="cka_linear", formula="‖X̃ᵀỸ‖_F² / (‖X̃ᵀX̃‖_F ‖ỸᵀỸ‖_F), X̃, Ỹ the aligned rows of two files centred",
         compute=cka_linear, ideal=1.0, range=(0, 1), direction="higher", invariant=_ISOMETRY,
         source="Kornblith et al., ICML 2019", test=_REF),
    dict(name="cka_debiased",
         formula="HSIC_u(K, L) / √(HSIC_u(K, K) HSIC_u(L, L)), K = XXᵀ, L = YYᵀ, "
                 "HSIC_u Song et al.'s unbiased estimator (from moments)",
         compute=cka_debiased, ideal=1.0, direction="higher", invariant=_ISOMETRY,
         source="Song et al., JMLR 2012; Nguyen, Raghu & Kornblith, ICLR 2021", test=_REF),
    dict(name="shape_distance",
         formula="arccos ‖φ_α(X)ᵀφ_α(Y)‖_*, φ_α(X) = X̃(αI + (1−α)(X̃ᵀX̃/N)^(−1/2)) of unit Frobenius norm (`--alpha`, 1); "
                 "a ratio within 16·√D·ε of 1 (rounding) is 1: a layer with itself is at 0",
         compute=shape_distance, ideal=0.0, range=(0, math.pi / 2), direction="lower",
         invariant=_ISOMETRY, source="Williams et al., NeurIPS 2021", test=_REF),
    dict(name="procrustes_distance",
         formula="√(2 − 2‖φ₁(X)ᵀφ₁(Y)‖_*), φ₁(X) = X̃/‖X̃‖_F (the ratio clipped at rounding as for shape_distance)",
         compute=procrustes_distance, ideal=0.0, range=(0, math.sqrt(2)),
         direction="lower", invariant=_ISOMETRY, source="Williams et al., NeurIPS 2021; Ding et al. 2021", test=_REF),
    dict(name="cca_mean_corr", formula="mean ρ_i, ρ = singular values of Σ_xx^(−1/2) Σ_xy Σ_yy^(−1/2) (on the numerical ranges)",
         compute=cca, ideal=1.0, range=(0, 1), direction="higher",
         invariant=_ISOMETRY | {"affine"}, source="Hotelling 1936; Raghu et al., NeurIPS 2017", test=_REF),
    dict(name="cca_r2", formula="mean ρ_i² of the canonical correlations",
         compute=cca, ideal=1.0, range=(0, 1), direction="higher", invariant=_ISOMETRY | {"affine"},
         source="Hotelling 1936; Kornblith et al., ICML 2019 (R²_CCA)", test=_REF),
    dict(name="svcca",
         formula="mean canonical correlation of each side's top PCs explaining `--svcca-keep` (0.99) of its variance",
         compute=svcca, ideal=1.0, range=(0, 1), direction="higher", invariant=_ISOMETRY,
         source="Raghu et al., NeurIPS 2017", test=_REF),
    dict(name="pwcca",
         formula="Σ w_i ρ_i / Σ w_i, w_i = Σ_j |⟨h_i, x̃_j⟩|, h_i the unit-norm canonical variates of A "
                 "(weights from A, the row)",
         compute=pwcca, ideal=1.0, range=(0, 1), direction="higher",
         invariant=frozenset({"scale", "shift"}), source="Morcos, Raghu & Bengio, NeurIPS 2018", test=_REF),
    dict(name="rsa_spearman",
         formula="Spearman correlation of the upper triangles of the RDMs 1 − corr(x_i, x_j) of A and B (seeded row sample)",
         compute=rsa, needs=("sample",), ideal=1.0, range=(-1, 1), direction="higher",
         invariant=frozenset({"scale"}), source="Kriegeskorte et al. 2008", test=_REF),
    dict(name="rsa_pearson",
         formula="Pearson correlation of the upper triangles of the RDMs 1 − corr(x_i, x_j) of A and B (seeded row sample)",
         compute=rsa, needs=("sample",), ideal=1.0, range=(-1, 1), direction="higher",
         invariant=frozenset({"scale"}), source="Kriegeskorte et al. 2008", test=_REF),
    dict(name="mutual_knn",
         formula="mean over sampled rows of |N_A(i) ∩ N_B(i)| / k, N the k (`--knn-k`, 10) nearest rows by cosine",
         compute=mutual_knn, needs=("sample",), ideal=1.0, range=(0, 1), direction="higher",
         invariant=frozenset({"scale", "rotation"}), source="Huh et al., ICML 2024", test=_REF),
    dict(name="unit_best_corr", formula="fraction of A's units a with max_b Pearson(x_a, y_b) > `--unit-threshold` (0.5)",
         compute=unit_best_corr, ideal=1.0, range=(0, 1), direction="higher",
         invariant=frozenset({"scale", "shift"}), source="Gurnee et al. 2024 (universal neurons)", test=_REF),
)
