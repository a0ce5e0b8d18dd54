"""Self- and cross-moments of aligned rows of two layers, exact in float64 and mergeable.

Every similarity measure of ``actgeom compare`` that is not computed on a row sample is a
function of these sums over the rows i of a layer pair (X from one file, Y from another):

    side (per layer, accumulated once whatever the number of pairs):
        n, Σ x_i, Σ x_i x_iᵀ, Σ ‖x_i‖², Σ ‖x_i‖² x_i, Σ ‖x_i‖⁴
    cross (per layer pair):
        Σ x_i y_iᵀ, Σ ‖x_i‖² y_i, Σ ‖y_i‖² x_i, Σ ‖x_i‖² ‖y_i‖²  (+ n, Σx, Σy, Σ‖x‖², Σ‖y‖² to rebase)

Numerics (as core/base/stats.py ClassMoments): rows are shifted by a reference r (the column means
of the first block) before any product, so +1e3 offsets never meet a 1e-3 spread in one sum; a
merge re-bases the other accumulator's sums onto our references (x = x′ + δ, δ = r′ − r), and
``finalize`` re-bases them onto the exact mean (δ = −x̄ in shifted coordinates): the same
expansion serves both. The expansions of ‖x′ + δ‖² and ‖x′ + δ‖⁴ are exact algebra, so merging
any split of the rows gives the same numbers up to float64 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import blas

from actgeom.core.base.stats import column_sums


@dataclass
class Shifted:
    """One block of a layer (stream ``index``) shifted by its side's reference: z = x − r and
    k = ‖z_i‖² per row; :meth:`finish` adds the column sums every accumulator needs, Σz, Σk·z
    and Σ k_p·z for each partner p of a pair, in one pass over z (computed once per block)."""

    ref: np.ndarray
    z: np.ndarray
    k: np.ndarray
    index: int = 0
    sum: np.ndarray | None = None
    kz: np.ndarray | None = None
    ksum: float = 0.0
    partner_sums: dict[int, np.ndarray] = field(default_factory=dict)  # partner index → Σ k_partner,i z_i

    def select(self, rows: np.ndarray) -> "Shifted":
        """The same block restricted to some rows (before :meth:`finish`)."""
        return Shifted(ref=self.ref, z=self.z[rows], k=self.k[rows], index=self.index)

    def finish(self, partners: list["Shifted"] = ()) -> None:
        """Σz, Σk·z and the partners' Σk_p·z as one product zᵀ[1, k, k_p1, ...] (one read of z)."""
        n = self.z.shape[0]
        weights = np.empty((n, 2 + len(partners)))
        weights[:, 0] = 1.0
        weights[:, 1] = self.k
        for column, partner in enumerate(partners, start=2):
            weights[:, column] = partner.k
        sums = blas.dgemm(1.0, self.z.T, weights)  # z.T of a C-ordered block: Fortran order, no copy
        self.sum, self.kz, self.ksum = sums[:, 0], sums[:, 1], float(self.k.sum())
        self.partner_sums = {partner.index: sums[:, column] for column, partner in enumerate(partners, start=2)}


@dataclass
class CentredSide:
    """A layer's moments about its exact mean x̄ (x̃ = x − x̄): n, mean (D,), scatter C = Σ x̃x̃ᵀ,
    q = Σ‖x̃‖² (= tr C), qx = Σ ‖x̃‖² x̃ (D,), q2 = Σ ‖x̃‖⁴."""

    n: int
    mean: np.ndarray
    scatter: np.ndarray
    q: float
    qx: np.ndarray
    q2: float

    def __post_init__(self) -> None:
        self._eigh = None

    def eigh(self) -> tuple[np.ndarray, np.ndarray]:
        """(λ descending, V) of the covariance C/n, computed once (shared by every pair)."""
        if self._eigh is None:
            lam, vec = np.linalg.eigh(self.scatter / max(self.n, 1))
            self._eigh = (lam[::-1].copy(), vec[:, ::-1].copy())
        return self._eigh


@dataclass
class CentredCross:
    """A pair's cross-moments about the exact means: C_xy = Σ x̃ỹᵀ (D_a, D_b), kxy = Σ ‖x̃‖² ỹ
    (D_b,), kyx = Σ ‖ỹ‖² x̃ (D_a,), kk = Σ ‖x̃‖² ‖ỹ‖²."""

    scatter: np.ndarray
    kxy: np.ndarray
    kyx: np.ndarray
    kk: float

    def transposed(self) -> "CentredCross":
        """The same pair seen from the other side (Y, X)."""
        return CentredCross(scatter=self.scatter.T, kxy=self.kyx, kyx=self.kxy, kk=self.kk)

    @classmethod
    def of_itself(cls, side: CentredSide) -> "CentredCross":
        """A layer against itself (the diagonal of a checkpoint × checkpoint matrix)."""
        return cls(scatter=side.scatter, kxy=side.qx, kyx=side.qx, kk=side.q2)


class SideMoments:
    """n, Σz, Σzzᵀ (upper triangle, dsyrk in place), Σ‖z‖², Σ‖z‖²z, Σ‖z‖⁴ of shifted rows z = x − r."""

    def __init__(self, n_units: int):
        self.n_units = n_units
        self.n = 0
        self.ref = np.zeros(n_units)
        self.s = np.zeros(n_units)
        self.S = np.zeros((n_units, n_units), order="F")
        self.q = 0.0
        self.qx = np.zeros(n_units)
        self.q2 = 0.0
        self._z = np.empty((0, n_units))  # reused block buffer

    def shift(self, X: np.ndarray, index: int = 0) -> Shifted:
        """The block shifted by this side's reference: the mean of the first finite rows seen."""
        if self.n == 0 and X.shape[0]:  # until rows are in, the reference may still move
            finite = np.isfinite(X).all(axis=1)
            if finite.any():
                self.ref = X[finite].mean(axis=0)
        if self._z.shape[0] < X.shape[0]:
            self._z = np.empty(X.shape)
        z = self._z[: X.shape[0]]
        np.subtract(X, self.ref, out=z)
        return Shifted(ref=self.ref, z=z, k=np.einsum("ij,ij->i", z, z), index=index)

    def update(self, block: Shifted) -> None:
        """Add one shifted block (from :meth:`shift`; finished here if the pass has not)."""
        if block.z.shape[0] == 0:
            return
        if block.sum is None:
            block.finish()
        self.n += block.z.shape[0]
        self.s += block.sum
        blas.dsyrk(1.0, block.z.T, beta=1.0, c=self.S, trans=0, overwrite_c=1)
        self.q += block.ksum
        self.qx += block.kz
        self.q2 += float(block.k @ block.k)

    def _full(self) -> np.ndarray:
        return np.triu(self.S) + np.triu(self.S, 1).T

    def rebased(self, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, np.ndarray, float]:
        """(Σx, Σxxᵀ, Σ‖x‖², Σ‖x‖²x, Σ‖x‖⁴) of x = z + δ, by exact expansion of the shifted sums:
        ‖z+δ‖² = ‖z‖² + 2δ·z + ‖δ‖²; the rest follows by multiplying out."""
        n, s, S, q, qx, q2 = self.n, self.s, self._full(), self.q, self.qx, self.q2
        dd, ds, Sd = float(delta @ delta), float(delta @ s), S @ delta
        s_new = s + n * delta
        S_new = S + np.outer(s, delta) + np.outer(delta, s) + n * np.outer(delta, delta)
        q_new = q + 2 * ds + n * dd
        qx_new = qx + q * delta + 2 * Sd + 2 * ds * delta + dd * s + n * dd * delta
        q2_new = q2 + 4 * float(delta @ qx) + 2 * dd * q + 4 * float(delta @ Sd) + 4 * dd * ds + n * dd * dd
        return s_new, S_new, q_new, qx_new, q2_new

    def merge(self, other: "SideMoments") -> None:
        """Add another accumulator's rows, re-based onto our reference."""
        if other.n == 0:
            return
        if self.n == 0:
            self.ref = other.ref.copy()
        s, S, q, qx, q2 = other.rebased(other.ref - self.ref)
        self.n += other.n
        self.s += s
        self.S += np.triu(S)
        self.q += q
        self.qx += qx
        self.q2 += q2

    def finalize(self) -> CentredSide:
        """The moments about the exact mean."""
        c = self.s / max(self.n, 1)
        _, S, q, qx, q2 = self.rebased(-c)
        return CentredSide(n=self.n, mean=self.ref + c, scatter=S, q=q, qx=qx, q2=q2)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"n": np.array(self.n), "ref": self.ref, "s": self.s, "S": np.triu(self.S),
                "scalars": np.array([self.q, self.q2]), "qx": self.qx}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "SideMoments":
        acc = cls(arrays["ref"].shape[0])
        acc.n = int(arrays["n"])
        acc.ref, acc.s, acc.qx = (np.array(arrays[k], dtype=np.float64) for k in ("ref", "s", "qx"))
        acc.S = np.asfortranarray(arrays["S"], dtype=np.float64)
        acc.q, acc.q2 = (float(v) for v in arrays["scalars"])
        return acc


class CrossMoments:
    """Σ z_x z_yᵀ, Σ ‖z_x‖² z_y, Σ ‖z_y‖² z_x, Σ ‖z_x‖²‖z_y‖² of a layer pair's shifted rows, with
    the first-order sums (n, Σz_x, Σz_y, Σ‖z_x‖², Σ‖z_y‖²) that re-basing needs, so that a cross
    accumulator merges and finalises on its own. ``update`` takes the pair of aligned blocks."""

    def __init__(self, n_x: int, n_y: int):
        self.n = 0
        self.ref_x, self.ref_y = np.zeros(n_x), np.zeros(n_y)
        self.sx, self.sy = np.zeros(n_x), np.zeros(n_y)
        self.qx = self.qy = 0.0
        self.Sxy = np.zeros((n_x, n_y), order="F")  # Fortran order: dgemm updates it in place
        self.kxy, self.kyx = np.zeros(n_y), np.zeros(n_x)
        self.kk = 0.0

    def update(self, a: Shifted, b: Shifted) -> None:
        """Add one pair of aligned blocks (rows i of ``a`` and ``b`` are the same input)."""
        if a.z.shape[0] == 0:
            return
        if self.n == 0:
            self.ref_x, self.ref_y = a.ref.copy(), b.ref.copy()
        self.n += a.z.shape[0]
        self.sx += a.sum
        self.sy += b.sum
        self.qx += a.ksum
        self.qy += b.ksum
        # z.T of a C-ordered block is Fortran-ordered: BLAS reads both blocks without a copy
        blas.dgemm(1.0, a.z.T, b.z.T, beta=1.0, c=self.Sxy, trans_b=1, overwrite_c=1)
        for block in (a, b):
            if block.sum is None:
                block.finish()
        self.kxy += b.partner_sums[a.index] if a.index in b.partner_sums else column_sums(b.z, a.k)
        self.kyx += a.partner_sums[b.index] if b.index in a.partner_sums else column_sums(a.z, b.k)
        self.kk += float(a.k @ b.k)

    def rebased(self, dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """(Σxyᵀ, Σ‖x‖²y, Σ‖y‖²x, Σ‖x‖²‖y‖²) of x = z_x + δ_x, y = z_y + δ_y, by exact expansion."""
        n, sx, sy, S = self.n, self.sx, self.sy, self.Sxy
        ddx, ddy = float(dx @ dx), float(dy @ dy)
        dsx, dsy = float(dx @ sx), float(dy @ sy)
        Std, Sde = S.T @ dx, S @ dy  # Σ (δ·z_x) z_y, Σ (ε·z_y) z_x
        S_new = S + np.outer(sx, dy) + np.outer(dx, sy) + n * np.outer(dx, dy)
        kxy = self.kxy + self.qx * dy + 2 * Std + 2 * dsx * dy + ddx * sy + n * ddx * dy
        kyx = self.kyx + self.qy * dx + 2 * Sde + 2 * dsy * dx + ddy * sx + n * ddy * dx
        kk = (self.kk + 2 * float(dy @ self.kxy) + ddy * self.qx + 2 * float(dx @ self.kyx) + 4 * float(dx @ Sde)
              + 2 * ddy * dsx + ddx * self.qy + 2 * ddx * dsy + n * ddx * ddy)
        return S_new, kxy, kyx, kk

    def _first_order(self, dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
        n = self.n
        return (self.sx + n * dx, self.sy + n * dy, self.qx + 2 * float(dx @ self.sx) + n * float(dx @ dx),
                self.qy + 2 * float(dy @ self.sy) + n * float(dy @ dy))

    def merge(self, other: "CrossMoments") -> None:
        """Add another accumulator's rows, re-based onto our references."""
        if other.n == 0:
            return
        if self.n == 0:
            self.ref_x, self.ref_y = other.ref_x.copy(), other.ref_y.copy()
        dx, dy = other.ref_x - self.ref_x, other.ref_y - self.ref_y
        S, kxy, kyx, kk = other.rebased(dx, dy)
        sx, sy, qx, qy = other._first_order(dx, dy)
        self.n += other.n
        self.Sxy += S
        self.kxy += kxy
        self.kyx += kyx
        self.kk += kk
        self.sx += sx
        self.sy += sy
        self.qx += qx
        self.qy += qy

    def finalize(self) -> CentredCross:
        """The cross-moments about the exact means of both layers."""
        n = max(self.n, 1)
        S, kxy, kyx, kk = self.rebased(-self.sx / n, -self.sy / n)
        return CentredCross(scatter=S, kxy=kxy, kyx=kyx, kk=kk)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"n": np.array(self.n), "ref_x": self.ref_x, "ref_y": self.ref_y, "sx": self.sx, "sy": self.sy,
                "Sxy": self.Sxy, "kxy": self.kxy, "kyx": self.kyx, "scalars": np.array([self.qx, self.qy, self.kk])}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "CrossMoments":
        acc = cls(arrays["ref_x"].shape[0], arrays["ref_y"].shape[0])
        acc.n = int(arrays["n"])
        for key in ("ref_x", "ref_y", "sx", "sy", "kxy", "kyx"):
            setattr(acc, key, np.array(arrays[key], dtype=np.float64))
        acc.Sxy = np.asfortranarray(arrays["Sxy"], dtype=np.float64)
        acc.qx, acc.qy, acc.kk = (float(v) for v in arrays["scalars"])
        return acc
