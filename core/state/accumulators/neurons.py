"""The accumulators of ``neurons``: per-unit moments (by class too), per-token and per-position sums."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from actgeom.core.metrics.unitstats import ExpSums, GroupSums, UnitMoments
from actgeom.core.state.accumulators.base import Rows, Spec, Wrapper, nested, prefixed


@dataclass(frozen=True)
class UnitMomentsSpec(Spec):
    """Per unit: mean, central sums M2..M4, min, max (core/metrics/unitstats.py); ``exp_sums``: also
    Σ exp(x) (the log-variance layer of a VAE)."""

    slot: ClassVar[str] = "unit_moments"
    exp_sums: bool = False

    def union(self, other: "UnitMomentsSpec") -> "UnitMomentsSpec":
        return UnitMomentsSpec(exp_sums=self.exp_sums or other.exp_sums)

    def covers(self, other: "UnitMomentsSpec") -> bool:
        return self.exp_sums or not other.exp_sums

    def describe(self) -> str:
        return "per-unit moments up to the fourth" + (" and Σ exp(x) (neurons --logvar)" if self.exp_sums else "")

    def build(self, n_units: int, storage_dtype: str, products: str = "float64") -> "UnitMomentsAccumulator":
        return UnitMomentsAccumulator(UnitMoments(n_units), ExpSums(n_units) if self.exp_sums else None)


@dataclass
class UnitMomentStats:
    moments: UnitMoments
    exp_sums: ExpSums | None


class UnitMomentsAccumulator:
    kind = "unit_moments"

    def __init__(self, moments: UnitMoments, exp_sums: ExpSums | None):
        self.moments, self.exp_sums = moments, exp_sums

    def update(self, rows: Rows) -> None:
        self.moments.update(rows.X)
        if self.exp_sums is not None:
            self.exp_sums.update(rows.X)

    def merge(self, other: "UnitMomentsAccumulator") -> None:
        self.moments.merge(other.moments)
        if self.exp_sums is not None:
            self.exp_sums.merge(other.exp_sums)

    def finalize(self) -> UnitMomentStats:
        return UnitMomentStats(self.moments, self.exp_sums)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return nested(moments=self.moments, exp=self.exp_sums)

    @classmethod
    def from_arrays(cls, spec: UnitMomentsSpec, arrays: dict[str, np.ndarray]) -> "UnitMomentsAccumulator":
        return cls(UnitMoments.from_arrays(prefixed(arrays, "moments/")),
                   ExpSums.from_arrays(prefixed(arrays, "exp/")) if spec.exp_sums else None)


@dataclass(frozen=True)
class TokenSumsSpec(Spec):
    """Per token id and unit: Σ max(x, 0) over its rows (token detectors). Memory V × D float64,
    V = the largest token id + 1 (50 000 × 512: 205 MB)."""

    slot: ClassVar[str] = "token_sums"
    row_vectors: ClassVar[tuple[str, ...]] = ("token_id",)

    def describe(self) -> str:
        return "Σ max(x, 0) per token id and unit (neurons, /rows/token_id)"

    def build(self, n_units: int, storage_dtype: str, products: str = "float64") -> "TokenSums":
        return TokenSums(GroupSums(n_units, shifted=False))


class TokenSums(Wrapper):
    kind = "token_sums"
    inner_class = GroupSums

    def __init__(self, sums: GroupSums):
        super().__init__(sums)
        self._positive = np.empty((0, sums.n_units))  # reused block buffer

    def update(self, rows: Rows) -> None:
        if self._positive.shape[0] < rows.X.shape[0]:
            self._positive = np.empty(rows.X.shape)
        positive = np.maximum(rows.X, 0.0, out=self._positive[: rows.X.shape[0]])
        self.inner.update(positive, rows.vectors["token_id"], "token id", "/rows/token_id")


@dataclass(frozen=True)
class PositionSumsSpec(Spec):
    """Per token position (positions ≥ ``max_position`` pooled into one) and unit: row counts and
    shifted Σ x (positional units)."""

    slot: ClassVar[str] = "position_sums"
    row_vectors: ClassVar[tuple[str, ...]] = ("position",)
    max_position: int = 512

    def describe(self) -> str:
        return f"Σ x per token position, positions ≥ {self.max_position} pooled (neurons --max-position)"

    def build(self, n_units: int, storage_dtype: str, products: str = "float64") -> "PositionSums":
        return PositionSums(GroupSums(n_units, shifted=True), self.max_position)


class PositionSums(Wrapper):
    kind = "position_sums"
    inner_class = GroupSums

    def __init__(self, sums: GroupSums, max_position: int):
        super().__init__(sums)
        self.max_position = max_position

    def update(self, rows: Rows) -> None:
        self.inner.update(rows.X, np.minimum(rows.vectors["position"], self.max_position), "position", "/rows/position")

    @classmethod
    def from_arrays(cls, spec: PositionSumsSpec, arrays: dict[str, np.ndarray]) -> "PositionSums":
        return cls(GroupSums.from_arrays(arrays), spec.max_position)
