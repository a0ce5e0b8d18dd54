"""Mergeable one-pass statistics of a layer beside the class moments (core/base/stats.py): per-unit
activity (UnitStats) and Σ uuᵀ of the L2-normalised rows (DirectionScatter), exact in float64."""

from __future__ import annotations

import numpy as np

from actgeom.core.base.stats import BlockProducts, _buffer, _symmetric, column_sums, pack_upper, unpack_upper


class UnitStats:
    """Per unit: rows above a threshold, Σx and Σ|x|; over rows: Σ x/‖x‖ (for the mean cosine).

    These feed dead/dormant fractions, firing entropy, SAE effective features and anisotropy.
    Per-unit variances come exactly from the class moments (the diagonal of the scatter); raw
    Σx², min and max are not kept: no metric needs them and each costs a pass over every block.
    """

    FIELDS = ("n_active", "sum", "sum_abs", "unit_vector_sum")

    def __init__(self, n_units: int, threshold: float = 0.0, *, activity: bool = True):
        self.threshold = float(threshold)
        self.activity = activity  # False: only Σ x/‖x‖ (n_active, sum and sum_abs stay 0)
        self.n_rows = 0
        self.n_zero_rows = 0  # rows with ‖x‖ = 0 have no direction; they add nothing to Σ x/‖x‖
        self.n_active = np.zeros(n_units, dtype=np.int64)
        self.sum = np.zeros(n_units)
        self.sum_abs = np.zeros(n_units)
        self.unit_vector_sum = np.zeros(n_units)
        self._abs = np.empty((0, n_units))  # reused block buffers
        self._active = np.empty((0, n_units), dtype=bool)

    def update(self, X: np.ndarray, norms: np.ndarray | None = None) -> None:
        """Add finite rows X (n, D) float64 (``norms``: their ‖x‖, when already computed)."""
        n = X.shape[0]
        if n == 0:
            return
        norms = np.sqrt(np.einsum("ij,ij->i", X, X)) if norms is None else norms
        zero = norms == 0
        self.n_rows += n
        self.n_zero_rows += int(zero.sum())
        self.unit_vector_sum += column_sums(X, np.divide(1.0, norms, out=np.zeros(n), where=~zero))
        if self.activity:
            self._abs = _buffer(self._abs, X.shape)
            self._active = _buffer(self._active, X.shape)
            magnitude, active = self._abs[:n], self._active[:n]
            self.sum += column_sums(X)
            np.abs(X, out=magnitude)
            self.sum_abs += column_sums(magnitude)
            np.greater(X, self.threshold, out=active)
            self.n_active += np.add.reduce(active, axis=0, dtype=np.int64)

    def merge(self, other: "UnitStats") -> None:
        self.n_rows += other.n_rows
        self.n_zero_rows += other.n_zero_rows
        for name in self.FIELDS:
            getattr(self, name).__iadd__(getattr(other, name))

    def to_arrays(self) -> dict[str, np.ndarray]:
        scalars = np.array([self.n_rows, self.n_zero_rows], dtype=np.int64)
        return {"scalars": scalars, "threshold": np.array(self.threshold), "activity": np.array(self.activity)} | \
            {f: getattr(self, f) for f in self.FIELDS}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "UnitStats":
        acc = cls(arrays["sum"].shape[0], float(arrays["threshold"]), activity=bool(arrays["activity"]))
        acc.n_rows, acc.n_zero_rows = (int(v) for v in arrays["scalars"])
        for name in cls.FIELDS:
            setattr(acc, name, np.array(arrays[name]))
        return acc


class DirectionScatter:
    """Σ u uᵀ over rows, u = x/‖x‖ (rows with ‖x‖ = 0 add nothing): the D×D side of the Gram
    matrix of L2-normalised rows, whose nonzero eigenvalues it shares (dataset entropy).

    With float32 products the rows are first shifted by a reference direction r (the first
    block's mean of u), so the rounded product holds only their spread:
    Σ uuᵀ = Σ wwᵀ + (Σw) rᵀ + r (Σw)ᵀ + n r rᵀ with w = u − r, the corrections in float64.
    Directions concentrated around one (activations far from the origin) would otherwise lose
    their small eigenvalues to float32 rounding of the large one.
    """

    def __init__(self, n_units: int, products: str = "float64"):
        self.n_rows = 0
        self.scatter = np.zeros((n_units, n_units), order="F")  # upper triangle of Σ wwᵀ, updated in place
        self._products = BlockProducts(n_units, products)
        self.ref = None if products == "float64" else np.zeros(0)  # r; set from the first block
        self.shifted_sum = np.zeros(n_units)  # Σ w over the rows added since the last merge
        self.shifted_rows = 0  # every row of those blocks, zero rows too (for them w = −r: they add 0)
        self._u = np.empty((0, n_units))

    def update(self, X: np.ndarray, norms: np.ndarray | None = None) -> None:
        """Add rows X (n, D) float64 (``norms``: their ‖x‖, when already computed)."""
        n = X.shape[0]
        if n == 0:
            return
        self._u = _buffer(self._u, X.shape)
        u = self._u[:n]
        norms = np.sqrt(np.einsum("ij,ij->i", X, X)) if norms is None else norms
        np.divide(X, np.where(norms == 0, np.inf, norms)[:, None], out=u)  # zero rows stay zero
        self.n_rows += int((norms > 0).sum())
        if self.ref is not None:
            if self.ref.size == 0:
                self.ref = column_sums(u) / n
            u -= self.ref
            self.shifted_sum += column_sums(u)
            self.shifted_rows += n
        self._products.add(self.scatter, u)

    def merge(self, other: "DirectionScatter") -> None:
        self.n_rows += other.n_rows
        if self.ref is None:
            self.scatter += np.triu(other.matrix())
            return
        self.scatter = np.asfortranarray(np.triu(self.matrix() + other.matrix()))  # now Σ uuᵀ: no shift pending
        self.shifted_sum[:] = 0.0
        self.shifted_rows = 0

    def matrix(self) -> np.ndarray:
        total = _symmetric(self.scatter)
        if self.ref is not None and self.shifted_rows:
            cross = np.outer(self.shifted_sum, self.ref)
            total += cross + cross.T + self.shifted_rows * np.outer(self.ref, self.ref)
        return total

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"scatter": pack_upper(self.matrix()), "n_rows": np.array(self.n_rows)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "DirectionScatter":
        scatter = unpack_upper(arrays["scatter"])
        acc = cls(scatter.shape[0])
        acc.scatter = scatter
        acc.n_rows = int(arrays["n_rows"])
        return acc
