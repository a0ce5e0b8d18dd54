"""Per-unit one-pass statistics for unit-level analyses (docs/metrics.md, "Units"), exact in float64.

- :class:`UnitMoments`: count, mean, the central sums M_k = Σ(x − mean)^k for k = 2, 3, 4, min
  and max of every unit. Each block's central sums are computed about the block mean (shifted
  once more by the block's residual Σ(x − mean), so rounding in the mean does not leak into
  M_3, M_4), then merged with Pébay's formulas (Pébay 2008, SAND2008-6212; Chan et al. 1979
  for M_2). Never from raw power sums Σx^k: under an offset of 1e3 those cancel ~12 digits of
  Σx⁴ before the kurtosis sees them.
- :class:`GroupSums`: per group (a token id, a position) and unit, the row count and Σ of the
  values, optionally shifted by a per-unit reference so group means stay exact under offsets.
- :class:`ExpSums`: Σ exp(x) per unit as exp(m)·s with m the running maximum (no overflow).

All merge exactly (up to float64 rounding) in any order and any split of the rows.
"""

from __future__ import annotations

import numpy as np

from actgeom.core.base.errors import InvalidInputError
from actgeom.core.base.stats import _buffer, _class_indicator, column_sums

GROUP_STEP = 1024  # groups added at a time: ≤ 1024 × D float64 unused (4 MiB at D = 512)
GROUP_TABLE_LIMIT = 16 << 30  # bytes of a per-group table (a token id beyond 4M at D = 512 is a broken id column)


def _sum_rows(A: np.ndarray) -> np.ndarray:
    """Σ_i A[i, :] of a block (float64). numpy's reduction, not BLAS: measured 20× faster than
    :func:`~actgeom.core.base.stats.column_sums` (threaded dgemv) on the 2-core machine under load,
    and these sums run five times per block; a block's plain sum errs by ≤ n·eps relative."""
    return np.add.reduce(A, axis=0)


class UnitMoments:
    """Per unit: n, mean, M2, M3, M4 (central sums), min, max."""

    FIELDS = ("mean", "m2", "m3", "m4", "min", "max")

    def __init__(self, n_units: int):
        self.n = 0
        self.mean = np.zeros(n_units)
        self.m2 = np.zeros(n_units)
        self.m3 = np.zeros(n_units)
        self.m4 = np.zeros(n_units)
        self.min = np.full(n_units, np.inf)
        self.max = np.full(n_units, -np.inf)
        self._d = np.empty((0, n_units))  # reused block buffers
        self._power = np.empty((0, n_units))

    def update(self, X: np.ndarray) -> None:
        """Add finite float64 rows X (n, D)."""
        n = X.shape[0]
        if n == 0:
            return
        self._d, self._power = _buffer(self._d, X.shape), _buffer(self._power, X.shape)
        d, power = self._d[:n], self._power[:n]
        mean = _sum_rows(X) / n
        np.subtract(X, mean, out=d)
        s1 = _sum_rows(d)  # ≈ 0; what rounding left in the block mean, corrected below
        np.multiply(d, d, out=power)
        s2 = _sum_rows(power)
        np.multiply(power, d, out=power)
        s3 = _sum_rows(power)
        np.multiply(power, d, out=power)
        s4 = _sum_rows(power)
        r = s1 / n  # central sums about the exact block mean, from sums about `mean`
        m2 = s2 - s1 * r
        m3 = s3 - 3 * r * s2 + 2 * r**2 * s1
        m4 = s4 - 4 * r * s3 + 6 * r**2 * s2 - 3 * r**3 * s1
        self._add(n, mean + r, m2, m3, m4)
        np.minimum(self.min, X.min(axis=0), out=self.min)
        np.maximum(self.max, X.max(axis=0), out=self.max)

    def _add(self, nb: int, mean_b, m2_b, m3_b, m4_b) -> None:
        """Pébay's pairwise update: this accumulator (a) and n_b rows' central sums (b)."""
        na = self.n
        if na == 0:
            self.n, self.mean, self.m2, self.m3, self.m4 = nb, mean_b.copy(), m2_b.copy(), m3_b.copy(), m4_b.copy()
            return
        n = na + nb
        delta = mean_b - self.mean
        m4 = (self.m4 + m4_b + delta**4 * na * nb * (na * na - na * nb + nb * nb) / n**3
              + 6 * delta**2 * (na * na * m2_b + nb * nb * self.m2) / n**2 + 4 * delta * (na * m3_b - nb * self.m3) / n)
        m3 = (self.m3 + m3_b + delta**3 * na * nb * (na - nb) / n**2 + 3 * delta * (na * m2_b - nb * self.m2) / n)
        self.m2 = self.m2 + m2_b + delta**2 * na * nb / n
        self.m3, self.m4 = m3, m4
        self.mean = self.mean + delta * nb / n
        self.n = n

    def merge(self, other: "UnitMoments") -> None:
        if other.n:
            self._add(other.n, other.mean, other.m2, other.m3, other.m4)
        np.minimum(self.min, other.min, out=self.min)
        np.maximum(self.max, other.max, out=self.max)

    @property
    def constant(self) -> np.ndarray:
        """Units with one value on every row (their M2 may hold rounding, not spread)."""
        return self.max <= self.min

    @property
    def variance(self) -> np.ndarray:
        """Population variance M2/n (0 for constant units)."""
        return np.where(self.constant, 0.0, np.maximum(self.m2, 0.0) / max(self.n, 1))

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"n": np.array(self.n, dtype=np.int64)} | {name: getattr(self, name) for name in self.FIELDS}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "UnitMoments":
        acc = cls(arrays["mean"].shape[0])
        acc.n = int(arrays["n"])
        for name in cls.FIELDS:
            setattr(acc, name, np.array(arrays[name], dtype=np.float64))
        return acc


class GroupSums:
    """Per group g ≥ 0 and unit: n_g and Σ_{i∈g} v_i. ``shifted``: the sums are of v − ref, ref
    a per-unit reference (the first block's mean), so that group means ref + S_g/n_g keep their
    digits under large offsets. Memory: (largest group + 1) × D float64."""

    def __init__(self, n_units: int, shifted: bool):
        self.n_units, self.shifted = n_units, shifted
        self.counts = np.zeros(0, dtype=np.int64)
        self.sums = np.zeros((0, n_units))
        self.ref = np.zeros(n_units)
        self.has_ref = False

    def update(self, values: np.ndarray, groups: np.ndarray, what: str, source: str) -> None:
        """Add rows ``values`` (n, D) float64 of groups (n,) ints; ``what`` (e.g. "token id") and
        ``source`` (e.g. "/rows/token_id") name the groups in errors."""
        n = values.shape[0]
        if n == 0:
            return
        if groups.min() < 0:
            raise InvalidInputError(f"{source} holds {what} {int(groups.min())}; {what}s are indices ≥ 0")
        largest = int(groups.max())
        if (largest + 1) * self.n_units * 8 > GROUP_TABLE_LIMIT:
            raise InvalidInputError(f"{source} holds {what} {largest}: a table of {largest + 1} × {self.n_units} "
                                    f"float64 ({(largest + 1) * self.n_units * 8 / 2**30:.1f} GiB) is more than "
                                    f"{GROUP_TABLE_LIMIT / 2**30:.0f} GiB")
        present, inverse, block_counts = np.unique(groups, return_inverse=True, return_counts=True)
        self._ensure(largest + 1)
        if self.shifted and not self.has_ref:
            self.ref, self.has_ref = column_sums(values) / n, True
        z = values - self.ref if self.shifted else values
        self.sums[present] += _class_indicator(inverse, present.size) @ z
        self.counts[present] += block_counts

    def _ensure(self, rows: int) -> None:
        """Room for ``rows`` groups, rounded up to a multiple of GROUP_STEP (not stats._grow's
        doubling, which would leave up to half of a V × D token table unused). Random token ids
        reach their maximum in the first blocks: one allocation; ids that keep growing (sorted)
        cost a copy per step, and twice the table while copying."""
        have = self.counts.shape[0]
        if rows <= have:
            return
        rows = -(-rows // GROUP_STEP) * GROUP_STEP
        counts, sums = np.zeros(rows, dtype=np.int64), np.zeros((rows, self.n_units))
        counts[:have], sums[:have] = self.counts, self.sums
        self.counts, self.sums = counts, sums

    def merge(self, other: "GroupSums") -> None:
        k = other.counts.shape[0]
        self._ensure(k)
        shift = np.zeros(self.n_units)
        if self.shifted and other.has_ref:
            if not self.has_ref:
                self.ref, self.has_ref = other.ref.copy(), True
            shift = other.ref - self.ref  # v − ref_ours = (v − ref_theirs) + (ref_theirs − ref_ours)
        self.sums[:k] += other.sums + other.counts[:, None] * shift
        self.counts[:k] += other.counts

    @property
    def n_groups(self) -> int:
        """One more than the largest group seen."""
        seen = np.flatnonzero(self.counts)
        return int(seen[-1]) + 1 if seen.size else 0

    def totals(self) -> tuple[np.ndarray, np.ndarray]:
        """(counts (G,), Σ v (G, D)) unshifted, over groups 0..G−1."""
        g = self.n_groups
        if not self.shifted:  # a view: the token table can be hundreds of MB
            return self.counts[:g], self.sums[:g]
        return self.counts[:g].copy(), self.sums[:g] + self.counts[:g, None] * self.ref

    def means(self) -> tuple[np.ndarray, np.ndarray]:
        """(counts (G,), group means (G, D), 0 for empty groups), from the shifted sums."""
        g = self.n_groups
        counts = self.counts[:g].copy()
        means = np.where(counts[:, None] > 0, self.ref + self.sums[:g] / np.maximum(counts, 1)[:, None], 0.0)
        return counts, means

    @property
    def nbytes(self) -> int:
        return int(self.sums.nbytes + self.counts.nbytes)

    def to_arrays(self) -> dict[str, np.ndarray]:
        g = self.n_groups
        return {"counts": self.counts[:g], "sums": self.sums[:g], "ref": self.ref,
                "flags": np.array([self.shifted, self.has_ref])}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "GroupSums":
        shifted, has_ref = (bool(v) for v in arrays["flags"])
        acc = cls(arrays["ref"].shape[0], shifted)
        acc.counts = np.array(arrays["counts"], dtype=np.int64)
        acc.sums = np.array(arrays["sums"], dtype=np.float64).reshape(-1, acc.n_units)
        acc.ref, acc.has_ref = np.array(arrays["ref"], dtype=np.float64), has_ref
        return acc


class ExpSums:
    """Per unit: Σ exp(x) = exp(m)·s, m the largest value seen (so no exp overflows)."""

    def __init__(self, n_units: int):
        self.m = np.full(n_units, -np.inf)
        self.s = np.zeros(n_units)

    def update(self, X: np.ndarray) -> None:
        if X.shape[0] == 0:
            return
        top = np.maximum(self.m, X.max(axis=0))
        self._add(top, _sum_rows(np.exp(X - top)), rebase_block=False)  # the block's sums already relative to `top`

    def _add(self, m_b: np.ndarray, s_b: np.ndarray, rebase_block: bool = True) -> None:
        m = np.maximum(self.m, m_b)
        with np.errstate(invalid="ignore"):  # −inf − (−inf) for units with no rows on either side
            ours = np.where(np.isfinite(self.m), self.s * np.exp(self.m - m), 0.0)
            theirs = np.where(np.isfinite(m_b), s_b * np.exp(m_b - m), 0.0) if rebase_block else s_b
        self.m, self.s = m, ours + theirs

    def merge(self, other: "ExpSums") -> None:
        self._add(other.m, other.s)

    def log_mean(self, n: int) -> np.ndarray:
        """log( (1/n) Σ exp(x) ) per unit."""
        with np.errstate(divide="ignore"):
            return self.m + np.log(self.s) - np.log(max(n, 1))

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"m": self.m, "s": self.s}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "ExpSums":
        acc = cls(arrays["m"].shape[0])
        acc.m, acc.s = np.array(arrays["m"], dtype=np.float64), np.array(arrays["s"], dtype=np.float64)
        return acc
