"""The accumulator of ``ood --fit-split``: the moments and a seeded sample of the fit rows of a
dump whose other rows — a seeded hashed share of its sampling units (core/metrics/ood.py
:func:`held_out`) — are the ID test rows, only counted here and scored in the second pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from actgeom.core.base.sample import Reservoir
from actgeom.core.metrics.ood import held_out
from actgeom.core.metrics.probesplit import unit_values
from actgeom.core.state.accumulators.base import Rows, Spec, nested, prefixed
from actgeom.core.state.accumulators.layer import Moments, MomentsSpec, MomentStats, Sample, SampleSpec

FIT_MOMENTS = MomentsSpec(by_class=True, all_rows=True)  # class moments of the labelled fit rows, total of all


@dataclass(frozen=True)
class FitSplitSpec(Spec):
    """Class and total moments, and a seeded sample of ``sample_size`` rows (seed ``seed``), of the
    rows that are not held out: a row is held out when the key of its unit ``split_by`` ("row": its
    global row number; "sequence": the first row of its sequence) with seed + 1 is below
    ``test_fraction``·2⁶⁴."""

    slot: ClassVar[str] = "fitsplit"
    test_fraction: float = 0.2
    seed: int = 0
    split_by: str = "row"
    sample_size: int = 10_000

    @property
    def row_vectors(self) -> tuple[str, ...]:
        return () if self.split_by == "row" else (self.split_by,)

    def describe(self) -> str:
        return (f"the moments and a sample of {self.sample_size} rows of the fit rows of a split by {self.split_by} "
                f"holding out {self.test_fraction} (seed {self.seed})")

    def state_bytes(self, n_units: int, n_classes: int) -> int:
        sample = SampleSpec(size=self.sample_size, seed=self.seed)
        return FIT_MOMENTS.state_bytes(n_units, n_classes) + sample.state_bytes(n_units, n_classes)

    def build(self, n_units: int, storage_dtype: str, products: str = "float64") -> "FitSplit":
        return FitSplit(self, FIT_MOMENTS.build(n_units, storage_dtype, products),
                        SampleSpec(size=self.sample_size, seed=self.seed).build(n_units, storage_dtype, products))


@dataclass
class FitSplitStats:
    """Finalised: the fit rows' moments, their seeded sample, the number of held-out rows."""

    moments: MomentStats
    sample: Reservoir
    n_held_out: int


class FitSplit:
    kind = "fitsplit"

    def __init__(self, spec: FitSplitSpec, moments: Moments, sample: Sample, n_held_out: int = 0):
        self.spec, self.moments, self.sample, self.n_held_out = spec, moments, sample, n_held_out

    def update(self, rows: Rows) -> None:
        test = held_out(unit_values(self.spec.split_by, rows.index, rows.vectors), self.spec.seed, self.spec.test_fraction)
        if test.any():
            self.n_held_out += int(test.sum())
            rows = Rows(X=rows.X[~test], labels=rows.labels[~test], index=rows.index[~test])
        self.moments.update(rows)
        self.sample.update(rows)

    def merge(self, other: "FitSplit") -> None:
        self.moments.merge(other.moments)
        self.sample.merge(other.sample)
        self.n_held_out += other.n_held_out

    def finalize(self) -> FitSplitStats:
        return FitSplitStats(self.moments.finalize(), self.sample.finalize(), self.n_held_out)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return nested(moments=self.moments, sample=self.sample) | {"n_held_out": np.array(self.n_held_out)}

    @classmethod
    def from_arrays(cls, spec: FitSplitSpec, arrays: dict[str, np.ndarray]) -> "FitSplit":
        sample = SampleSpec(size=spec.sample_size, seed=spec.seed)
        return cls(spec, Moments.from_arrays(FIT_MOMENTS, prefixed(arrays, "moments/")),
                   Sample.from_arrays(sample, prefixed(arrays, "sample/")), int(arrays["n_held_out"]))
