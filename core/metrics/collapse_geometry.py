"""The kept classes of one layer (:class:`Geometry`) and the algebra the collapse metrics share:
eigenpairs through the smaller Gram, pseudo-inverse ranks, ETF and frame errors, and the reasons a
degenerate layer (coincident class means, one row per class) leaves a metric undefined."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy.linalg import lapack

from actgeom.core.base.options import CollapseOptions
from actgeom.core.base.registry import Unavailable
from actgeom.core.base.stats import ClassStats, weighted_gram
from actgeom.core.base.threads import blas_threads
from actgeom.core.metrics.pairwise import pair_stats


@dataclass(frozen=True)
class Geometry:
    """The kept classes of one layer, everything float64.

    classes: original class indices (C,); counts n_c; means μ_c (C, D); global_mean μ_G;
    centred m_c = μ_c − μ_G; sigma_w = Σ_W (pooled over the kept rows, divided by their
    number); variances v_c = E_{x∈c}‖x − μ_c‖²; weight W (C, D) and bias b (C,) or None.
    """

    classes: np.ndarray
    counts: np.ndarray
    means: np.ndarray
    global_mean: np.ndarray
    sigma_w: np.ndarray
    variances: np.ndarray
    weight: np.ndarray | None
    bias: np.ndarray | None
    nc4: float | None = None  # NC4 mismatch from the second pass, when there is a decision source

    @property
    def n_classes(self) -> int:
        return int(self.counts.size)

    @property
    def n_units(self) -> int:
        return int(self.means.shape[1])

    @functools.cached_property
    def centred(self) -> np.ndarray:
        """m_c = μ_c − μ_G (C, D), made once: at C = 32 000, D = 4 096 each copy is 1 GiB."""
        return self.means - self.global_mean

    @functools.cached_property
    def centred_gram(self) -> np.ndarray:
        """M̃ᵀM̃ (D, D) of the centred means, made once: C·D² flops (NC1, VCI, NC2 and the frame of the means)."""
        m = self.centred
        return m.T @ m

    @property
    def sample_mean(self) -> np.ndarray:
        return self.counts @ self.means / self.counts.sum()

    @functools.cached_property
    def pairs_means(self):
        """Pair statistics of the centred means (cosines, distances, CDNV), computed once."""
        return pair_stats(self.centred, self.variances)

    @functools.cached_property
    def pairs_weights(self):
        return pair_stats(self.weight)


def kept_classes(counts: np.ndarray, min_count: int) -> np.ndarray:
    """Indices of the classes with at least ``min_count`` rows (and at least one)."""
    return np.flatnonzero(counts >= max(min_count, 1))


def geometry(stats: ClassStats, options: CollapseOptions, *, weight: np.ndarray | None = None,
             bias: np.ndarray | None = None, dropped_scatter: np.ndarray | None = None,
             nc4: float | None = None) -> Geometry:
    """The kept classes' geometry. ``dropped_scatter`` = Σ over rows of dropped classes of
    (x − μ_c)(x − μ_c)ᵀ (from a second pass), removed from the pooled scatter."""
    kept = kept_classes(stats.counts, options.min_count)
    counts = stats.counts[kept].astype(np.float64)
    means = stats.means if kept.size == stats.counts.size else stats.means[kept]  # (no copy of C × D when all are kept)
    scatter = stats.within_scatter if dropped_scatter is None else stats.within_scatter - dropped_scatter
    n = counts.sum()
    mu_g = means.mean(axis=0) if options.global_mean == "class" else counts @ means / n
    return Geometry(classes=kept, counts=counts, means=means, global_mean=mu_g, sigma_w=scatter / n,
                    variances=stats.sq_dev[kept] / counts,
                    weight=None if weight is None else weight[kept],
                    bias=None if bias is None else bias[kept], nc4=nc4)


# -- linear algebra helpers -----------------------------------------------------------------

def eig_of_gram(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs (descending) of rowsᵀrows (D×D) through the smaller of the two Grams."""
    C, D = rows.shape
    if C < D:  # eigenvectors of RᵀR from those of RRᵀ: v = Rᵀu / √λ
        lam, u = np.linalg.eigh(rows @ rows.T)
        lam, u = lam[::-1], u[:, ::-1]
        positive = lam > 0
        vectors = np.zeros((D, C))
        vectors[:, positive] = rows.T @ u[:, positive] / np.sqrt(lam[positive])
        return np.maximum(lam, 0.0), vectors
    lam, v = np.linalg.eigh(rows.T @ rows)
    return np.maximum(lam[::-1], 0.0), v[:, ::-1]


def row_norms(a: np.ndarray) -> np.ndarray:
    """‖a_c‖ of every row, without the C × D temporary of ``np.linalg.norm(a, axis=1)``."""
    return np.sqrt(np.einsum("ij,ij->i", a, a))


def weighted_between(g: Geometry, weights: np.ndarray) -> np.ndarray:
    """Σ_c w_c² (μ_c − x̄)(μ_c − x̄)ᵀ (D, D), a tile of classes at a time: no C × D temporary."""
    return weighted_gram(g.means, weights, g.sample_mean)


def eig_between(g: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """Eigenpairs (descending) of Σ_B = M̃ᵀM̃/C, from the shared Gram when C ≥ D."""
    if g.n_classes < g.n_units:
        return eig_of_gram(g.centred / math.sqrt(g.n_classes))
    with blas_threads(g.n_units):
        lam, vectors = np.linalg.eigh(g.centred_gram / g.n_classes)
    return np.maximum(lam[::-1], 0.0), vectors[:, ::-1]


def pinv_rank(eigenvalues: np.ndarray, size: int) -> int:
    """How many eigenvalues a pseudo-inverse keeps: > max(size)·eps·λ_max (numpy's default)."""
    if eigenvalues.size == 0 or eigenvalues[0] <= 0:
        return 0
    return int((eigenvalues > size * np.finfo(np.float64).eps * eigenvalues[0]).sum())


def trace_against_regular_inverse(sigma: np.ndarray, a: np.ndarray, size: int) -> float | None:
    """Tr(Σ A⁻¹) from A's Cholesky factor (A⁻¹ by LAPACK's potri), or None unless A is so far from
    singular that its pseudo-inverse (cut at size·eps·λ_max, :func:`pinv_rank`) keeps every
    eigenvalue, when A⁺ = A⁻¹. The bound is rigorous: λ_max ≤ ‖A‖_F and 1/λ_min ≤ Tr A⁻¹, and it must
    clear the cut by a factor of 1 000. About D³ flops against a D × D eigensolve's ~10 D³ with its
    eigenvectors (measured 60 s at D = 4 096: the bulk of collapse at that width)."""
    factor, info = lapack.dpotrf(a, lower=1, clean=1)
    if info != 0:  # not positive definite
        return None
    lower, info = lapack.dpotri(factor, lower=1)
    if info != 0:
        return None
    inverse = np.tril(lower) + np.tril(lower, -1).T
    if not float(np.linalg.norm(a)) * float(np.trace(inverse)) * 1000.0 * size * np.finfo(np.float64).eps < 1.0:
        return None
    return float(np.einsum("ij,ij->", inverse, sigma))  # Tr(Σ A⁻¹) = Σ_ij (A⁻¹)_ij Σ_ij, both symmetric


def trace_against_inverse(sigma: np.ndarray, eigenvalues: np.ndarray, vectors: np.ndarray, k: int) -> float:
    """Tr(Σ A⁺) with A⁺ built from the first k eigenpairs of A: Σ_j v_jᵀ Σ v_j / λ_j."""
    if k == 0:
        return float("nan")
    v = vectors[:, :k]
    return float(np.einsum("ij,ij->j", v, sigma @ v) @ (1.0 / eigenvalues[:k]))


def etf_error(gram_trace: float, gram_sum: float, gram_fro: float, C: int) -> float:
    """‖A/‖A‖_F − (I − 11ᵀ/C)/√(C−1)‖_F from Tr A, 1ᵀA1 and ‖A‖_F (no C×C matrix):
    both terms have unit norm, so the squared error is 2 − 2⟨A, E⟩/‖A‖_F."""
    if C < 2 or gram_fro == 0:
        return float("nan")
    inner = (gram_trace - gram_sum / C) / math.sqrt(C - 1)
    return math.sqrt(max(2.0 - 2.0 * inner / gram_fro, 0.0))


def frame_error(gram_trace: float, gram_fro: float, C: int) -> float:
    """‖G/‖G‖_F − I/√C‖_F for a Gram G (Dang et al.): √(2 − 2 Tr G/(√C ‖G‖_F))."""
    if gram_fro == 0:
        return float("nan")
    return math.sqrt(max(2.0 - 2.0 * gram_trace / (math.sqrt(C) * gram_fro), 0.0))


def std_over_mean(values: np.ndarray) -> float:
    """std (ddof 1) / mean; NaN for fewer than 2 values."""
    return float(np.std(values, ddof=1) / np.mean(values)) if values.size > 1 else float("nan")


def variance(values: np.ndarray, ddof: int) -> float:
    """np.var with ``ddof``; NaN when there are not more values than ``ddof``."""
    return float(np.var(values, ddof=ddof)) if values.size > ddof else float("nan")


# -- degenerate layers: what a metric cannot be computed from, and why --------------------------

_RESOLUTION = 8 * np.finfo(np.float64).eps  # centred means below this (relative to the means) are rounding


def why_no_spread(g: Geometry) -> str | None:
    """Why the class means have no spread (Σ_B = 0 up to rounding: every m_c ≈ 0), or None."""
    if _largest_magnitude(g.centred) > _RESOLUTION * _largest_magnitude(g.means):
        return None
    if not g.sigma_w.any():
        return "all rows are identical: the class means coincide (Σ_B = 0)"
    return "every class has the same mean: no between-class spread (Σ_B = 0)"


def _largest_magnitude(a: np.ndarray) -> float:
    return max(float(a.max()), -float(a.min())) if a.size else 0.0  # max |a| without a copy of a


def why_no_within(g: Geometry) -> str | None:
    """Why within-class variability is undefined (every kept class has one row), or None."""
    if (g.counts > 1).any():
        return None
    return "every class has one row: within-class variability needs 2 rows in a class"


def unavailable_all(names: tuple[str, ...], why: str) -> dict:
    """Each of ``names`` unavailable for the same reason."""
    return dict.fromkeys(names, Unavailable(why))
