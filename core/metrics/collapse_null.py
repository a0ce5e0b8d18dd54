"""Σ_W under a label permutation without a D × D matrix per permutation (issue #24: the cost of ``--null``).

Permuting the labels leaves the total moments of the labelled rows unchanged (their mean x̄ and scatter
S_T); only the class counts and means move. So the pooled within-class scatter of permutation k is
S_W = S_T − ZᵀZ, Z the (C × D) rows √n_c (μ_c − x̄) of the classes with rows: a fixed D × D matrix
minus a rank-≤ C term. With S_T = Q diag(λ) Qᵀ factorised once per layer (:func:`total_basis`),
every quantity the collapse metrics read from Σ_W = S_W/n takes C × D and C × C work per permutation
(and one product with Q):

- Tr Σ_W = (Tr S_T − ‖Z‖_F²)/n;
- vᵀ Σ_W v = (Σ_d λ_d (Qᵀv)_d² − ‖Z v‖²)/n for the C eigenvectors v of Σ_B (NC1, SS_B for the
  separation fuzziness);
- M Σ_W⁻¹ Mᵀ by Woodbury: S_W⁻¹ = S_T⁻¹ + S_T⁻¹Zᵀ(I − Z S_T⁻¹ Zᵀ)⁻¹ Z S_T⁻¹, for VCI's
  Tr(Σ_T⁻¹ Σ_B) = Tr(X (I + X)⁻¹), X = M̃ Σ_W⁻¹ M̃ᵀ/C (Σ_T = Σ_W + M̃ᵀM̃/C; Woodbury again).

VCI's definition cuts Σ_T's eigenvalues at D·eps·λ_max (a pseudo-inverse); the inverse above is that
pseudo-inverse only when no eigenvalue is cut, which :meth:`LowRankScatter.inverse_forms` certifies
before using it: λ_min(Σ_T) ≥ λ_min(S_W)/n ≥ λ_min(S_T)(1 − ρ)/n, ρ = λ_max(Z S_T⁻¹ Zᵀ) (ZᵀZ ⪯ S_T in
S_T's metric), and λ_max(Σ_T) ≤ λ_max(S_T)/n + Tr Σ_B. When the certificate fails (a singular or
nearly singular S_T, e.g. a unit that never varies, or fewer rows than units) the metric takes the
dense Σ_W it would have had (:meth:`LowRankScatter.dense`), so every value keeps its definition.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from actgeom.core.base.stats import ClassStats
from actgeom.core.base.threads import blas_threads
from actgeom.core.metrics.collapse_geometry import trace_against_inverse

# How far above the pseudo-inverse's cut-off (D·eps·λ_max) the certified smallest eigenvalue of Σ_T
# must be for the inverse to be the pseudo-inverse: covers the rounding of the bound and of eigh.
MARGIN = 1e3


@dataclass(frozen=True)
class TotalBasis:
    """The total moments of a layer's labelled rows, fixed under label permutations: their mean x̄,
    scatter S_T (dense, for the fallback) and its eigenpairs S_T = Q diag(λ) Qᵀ (λ ascending)."""

    mean: np.ndarray
    scatter: np.ndarray
    values: np.ndarray
    vectors: np.ndarray


def total_basis(total: ClassStats) -> TotalBasis:
    """The basis of ``total`` (every labelled row as one class: counts (1,), means (1, D), its scatter)."""
    scatter = total.within_scatter
    with blas_threads(scatter.shape[0]):
        values, vectors = np.linalg.eigh(scatter)
    return TotalBasis(mean=total.means[0], scatter=scatter, values=values, vectors=vectors)


def between_rows(counts: np.ndarray, means: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Z: the rows √n_c (μ_c − x̄) of the classes with rows (so S_W = S_T − ZᵀZ)."""
    present = counts > 0
    return (means[present] - mean) * np.sqrt(counts[present].astype(np.float64))[:, None]


class LowRankScatter:
    """The within-class scatter (S_T − ZᵀZ)/divisor of one permutation, kept as its factors.

    It stands where a Geometry holds Σ_W (``geometry`` divides the scatter by n); ``dense`` is the
    same matrix formed in D × D (the class statistics' own within scatter), used only when a metric
    cannot be computed from the factors."""

    def __init__(self, basis: TotalBasis, z: np.ndarray, dense: np.ndarray, divisor: float = 1.0):
        self.basis, self.z, self._dense, self.divisor = basis, z, dense, divisor

    def __truediv__(self, n: float) -> LowRankScatter:
        return LowRankScatter(self.basis, self.z, self._dense, self.divisor * n)

    @functools.cached_property
    def _dense_divided(self) -> np.ndarray:
        return self._dense / self.divisor if self.divisor != 1.0 else self._dense

    def dense(self) -> np.ndarray:
        """The D × D matrix, exactly as the dense statistics give it."""
        return self._dense_divided

    def trace(self) -> float:
        return (float(self.basis.values.sum()) - float(np.einsum("ij,ij->", self.z, self.z))) / self.divisor

    def any(self) -> bool:
        """Whether any entry is non-zero (ndarray.any): a trace clearly above the rounding of S_T says
        so without the matrix."""
        if self.trace() > 1e-8 * abs(float(self.basis.values.sum())) / self.divisor:
            return True
        return bool(self.dense().any())

    def quadratic_forms(self, vectors: np.ndarray) -> np.ndarray:
        """vⱼᵀ Σ vⱼ for each column vⱼ of ``vectors`` (D × k)."""
        rotated = self.basis.vectors.T @ vectors
        zv = self.z @ vectors
        return (self.basis.values @ rotated**2 - np.einsum("ij,ij->j", zv, zv)) / self.divisor

    def inverse_forms(self, rows: np.ndarray, between_trace: float) -> np.ndarray | None:
        """rows Σ⁻¹ rowsᵀ (rows: M, k × D) when Σ + (a PSD matrix of trace ``between_trace``) certainly
        has no eigenvalue below the pseudo-inverse cut-off D·eps·λ_max (module docstring); else None."""
        values, q = self.basis.values, self.basis.vectors
        size = values.size
        if values[0] <= 0:
            return None
        inverse = 1.0 / values
        a_rot, z_rot = rows @ q, self.z @ q
        zs = z_rot * inverse
        c = zs @ z_rot.T  # Z S_T⁻¹ Zᵀ: eigenvalues in [0, 1) when S_W is positive definite
        rho = float(np.linalg.eigvalsh(c)[-1]) if c.size else 0.0
        lowest = values[0] * (1.0 - rho) / self.divisor
        highest = values[-1] / self.divisor + between_trace
        if not lowest > MARGIN * size * np.finfo(np.float64).eps * highest:
            return None
        a = (a_rot * inverse) @ a_rot.T
        b = (a_rot * inverse) @ z_rot.T
        forms = a + b @ np.linalg.solve(np.eye(c.shape[0]) - c, b.T) if c.size else a
        return self.divisor * forms


def trace_ratio(x: np.ndarray) -> float:
    """Tr(X (I + X)⁻¹) of a symmetric positive semi-definite X: with X = R Σ_W⁻¹ Rᵀ, R = M̃/√C, this is
    Tr(R (Σ_W + RᵀR)⁻¹ Rᵀ) = Tr(Σ_T⁻¹ Σ_B) (Woodbury)."""
    return float(np.trace(np.linalg.solve(np.eye(x.shape[0]) + x, x)))


# -- Σ_W as a matrix or, under a label permutation, as its factors ------------------------------------

def dense(sigma) -> np.ndarray:
    return sigma.dense() if isinstance(sigma, LowRankScatter) else sigma


def trace(sigma) -> float:
    return sigma.trace() if isinstance(sigma, LowRankScatter) else float(np.trace(sigma))


def trace_against(sigma, eigenvalues: np.ndarray, vectors: np.ndarray, k: int) -> float:
    """Tr(Σ A⁺), A⁺ from the first k eigenpairs of A (:func:`trace_against_inverse`)."""
    if not isinstance(sigma, LowRankScatter) or k == 0:
        return trace_against_inverse(dense(sigma), eigenvalues, vectors, k)
    return float(sigma.quadratic_forms(vectors[:, :k]) @ (1.0 / eigenvalues[:k]))
