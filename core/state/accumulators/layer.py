"""The accumulators of collapse, rank and entropy: class moments, unit statistics, Σ uuᵀ of the
normalised rows, the seeded sample, per-sequence entropies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from actgeom.core.base.errors import OptionError, UsageError
from actgeom.core.base.options import check_seed
from actgeom.core.base.row_stats import DirectionScatter, UnitStats
from actgeom.core.base.sample import Reservoir
from actgeom.core.base.stats import ClassMoments, ClassStats, pooled, product_rows
from actgeom.core.state.accumulators.base import Rows, Spec, Wrapper, nested, prefixed
from actgeom.core.state.accumulators.sequences import SequenceEntropy


@dataclass(frozen=True)
class MomentsSpec(Spec):
    """Shifted first and second moments. ``by_class``: per class of the labelled rows (collapse);
    else every row in one class (spectra). ``all_rows`` with ``by_class``: also the unlabelled
    rows, in an accumulator of their own, so the total moments cover every row."""

    slot: ClassVar[str] = "moments"
    by_class: bool = True
    all_rows: bool = False
    scatter: bool = True  # False: class counts and means only, no D×D product per block

    def union(self, other: "MomentsSpec") -> "MomentsSpec":
        scatter = self.scatter or other.scatter
        if not self.by_class and not other.by_class:
            return MomentsSpec(by_class=False, scatter=scatter)
        return MomentsSpec(by_class=True, all_rows=(self.all_rows or not self.by_class) or (other.all_rows or not other.by_class),
                           scatter=scatter)

    def describe(self) -> str:
        if not self.by_class:
            return "the moments of all rows"
        kept = "class means" if not self.scatter else "class moments"
        return kept + (" and the moments of unlabelled rows" if self.all_rows else " (labelled rows only)")

    def covers(self, other: "MomentsSpec") -> bool:
        if other.scatter and not self.scatter:
            return False
        if not other.by_class:  # total moments: from one class of every row, or classes + the unlabelled rest
            return not self.by_class or self.all_rows
        return self.by_class

    def state_bytes(self, n_units: int, n_classes: int) -> int:
        waiting = 3 * product_rows(n_units) // 2 * n_units  # shifted rows waiting for their D×D product (a batch and a share)
        return 8 * (n_units * n_units * self.scatter + 3 * (n_classes + self.all_rows) * n_units + waiting * self.scatter)

    def build(self, n_units: int, storage_dtype: str, products: str = "float64") -> "Moments":
        return Moments(n_units, self, products)


@dataclass
class MomentStats:
    """Finalised moments: the labelled rows' class statistics (None without ``by_class``) and
    the total moments of every row (None when the unlabelled rows were not kept)."""

    classes: ClassStats | None
    total: ClassStats | None  # one class holding every row: counts (1,), means (1, D), within scatter


class Moments:
    """Class moments of the labelled rows (or of every row as one class), plus the unlabelled rest."""

    kind = "moments"

    def __init__(self, n_units: int, spec: MomentsSpec, products: str = "float64"):
        self.spec = spec
        self.classes = ClassMoments(n_units, scatter=spec.scatter, products=products)
        self.rest = ClassMoments(n_units, scatter=spec.scatter, products=products) if spec.by_class and spec.all_rows else None

    def update(self, rows: Rows) -> None:
        if not self.spec.by_class:
            self.classes.update(rows.X, np.zeros(rows.X.shape[0], dtype=np.int64))
            return
        labelled = rows.labels >= 0
        if labelled.all():
            self.classes.update(rows.X, rows.labels)
            return
        self.classes.update(rows.X[labelled], rows.labels[labelled])
        if self.rest is not None:
            self.rest.update(rows.X[~labelled], np.zeros(int((~labelled).sum()), dtype=np.int64))

    def merge(self, other: "Moments") -> None:
        self.classes.merge(other.classes)
        if self.rest is not None:
            self.rest.merge(other.rest)

    def finalize(self) -> MomentStats:
        classes = self.classes.finalize()
        if not self.spec.by_class:
            return MomentStats(classes=None, total=classes)
        if self.rest is None:
            return MomentStats(classes=classes, total=None)
        return MomentStats(classes=classes, total=pooled(classes, self.rest.finalize()))

    def to_arrays(self) -> dict[str, np.ndarray]:
        return nested(classes=self.classes, rest=self.rest)

    @classmethod
    def from_arrays(cls, spec: MomentsSpec, arrays: dict[str, np.ndarray]) -> "Moments":
        acc = cls(arrays["classes/ref"].shape[1], spec)
        acc.classes = ClassMoments.from_arrays(prefixed(arrays, "classes/"))
        if acc.rest is not None:
            acc.rest = ClassMoments.from_arrays(prefixed(arrays, "rest/"))
        return acc


# -- unit statistics ------------------------------------------------------------------------

@dataclass(frozen=True)
class UnitsSpec(Spec):
    """Per unit: rows above ``threshold``, Σx, Σ|x| (``activity``), and Σ x/‖x‖ over rows."""

    slot: ClassVar[str] = "units"
    threshold: float = 0.0
    activity: bool = True

    def union(self, other: "UnitsSpec") -> "UnitsSpec":
        if self.activity and other.activity and self.threshold != other.threshold:
            raise UsageError(f"two families count active units with different thresholds: {self.threshold} and {other.threshold}")
        threshold = self.threshold if self.activity else other.threshold
        return UnitsSpec(threshold=threshold, activity=self.activity or other.activity)

    def describe(self) -> str:
        return f"unit activity above {self.threshold} (--threshold)" if self.activity else "Σ x/‖x‖ over rows"

    def covers(self, other: "UnitsSpec") -> bool:
        return not other.activity or (self.activity and self.threshold == other.threshold)

    def build(self, n_units: int, storage_dtype: str, products: str = "float64") -> "Units":
        return Units(UnitStats(n_units, self.threshold, activity=self.activity))


class _WithNorms(Wrapper):
    """A statistic fed the rows and their norms (computed once per block for every accumulator)."""

    def update(self, rows: Rows) -> None:
        self.inner.update(rows.X, norms=rows.norms)


class Units(_WithNorms):
    kind = "units"
    inner_class = UnitStats


# -- Σ uuᵀ of normalised rows -------------------------------------------------------------------

@dataclass(frozen=True)
class DirectionsSpec(Spec):
    """Σ u uᵀ, u = x/‖x‖: the D×D side of the Gram of L2-normalised rows (dataset entropy)."""

    slot: ClassVar[str] = "directions"

    def describe(self) -> str:
        return "Σuuᵀ of the normalised rows (stats --entropy-alpha)"

    def state_bytes(self, n_units: int, n_classes: int) -> int:
        return 8 * n_units * n_units

    def build(self, n_units: int, storage_dtype: str, products: str = "float64") -> "Directions":
        return Directions(DirectionScatter(n_units, products))


class Directions(_WithNorms):
    kind = "directions"
    inner_class = DirectionScatter


# -- the seeded sample --------------------------------------------------------------------------

@dataclass(frozen=True)
class SampleSpec(Spec):
    """A seeded uniform sample of ``size`` rows (the rows with the smallest keys of the seed)."""

    slot: ClassVar[str] = "sample"
    size: int = 2_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.size < 0:
            raise OptionError("subsample", self.size, "must be ≥ 0")
        check_seed(self.seed)

    def union(self, other: "SampleSpec") -> "SampleSpec":
        if self.seed != other.seed:
            raise UsageError(f"two families ask for samples with different seeds ({self.seed}, {other.seed}); "
                             "give one --seed")
        return SampleSpec(size=max(self.size, other.size), seed=self.seed)

    def describe(self) -> str:
        return f"a sample of {self.size} rows with seed {self.seed} (--subsample, --seed)"

    def covers(self, other: "SampleSpec") -> bool:
        return self.seed == other.seed and self.size >= other.size

    def state_bytes(self, n_units: int, n_classes: int) -> int:
        return self.size * (4 * n_units + 24)

    def build(self, n_units: int, storage_dtype: str, products: str = "float64") -> "Sample":
        # The rows as stored (bfloat16 as float32, which holds it exactly): half the memory of float32
        # for float16 layers, and what a Dask task ships. Consumers compute in float64.
        dtype = {"float16": np.float16, "float64": np.float64}.get(storage_dtype, np.float32)
        return Sample(Reservoir(self.size, n_units, dtype, self.seed))


class Sample(Wrapper):
    kind = "sample"
    inner_class = Reservoir

    def update(self, rows: Rows) -> None:
        self.inner.update(rows.X, rows.labels, rows.index)


# -- per-sequence entropies -----------------------------------------------------------------------

@dataclass(frozen=True)
class SequencesSpec(Spec):
    """Token-level: per-sequence Rényi entropies of order ``alpha`` and Σ v vᵀ of sequence vectors."""

    slot: ClassVar[str] = "sequences"
    alpha: float = 1.0

    def describe(self) -> str:
        return f"sequence entropies of order {self.alpha} (--alpha; stats --entropy-alpha)"

    def build(self, n_units: int, storage_dtype: str, products: str = "float64") -> "Sequences":
        return Sequences(SequenceEntropy(n_units, self.alpha))


class Sequences(Wrapper):
    kind = "sequences"
    inner_class = SequenceEntropy

    def update(self, rows: Rows) -> None:
        self.inner.update(rows.block, rows.boundaries)
