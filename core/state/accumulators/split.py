"""The accumulator of ``probe``: class moments of the train rows (and the validation rows), control
groups, the test rows counted, by a seeded split that the second pass finds again; with --null, the
train rows' class sums under the label permutations (core/state/accumulators/permutations.py)."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from actgeom.core.base.errors import UsageError
from actgeom.core.base.stats import ClassMoments, ClassStats, pooled
from actgeom.core.metrics.probesplit import (
    SPLIT_UNITS,
    ControlSums,
    control_groups,
    is_test,
    is_validation,
    split_keys,
    unit_values,
)
from actgeom.core.state.accumulators.base import Rows, Spec, nested, prefixed
from actgeom.core.state.accumulators.permutations import ROW_VECTOR, Permutations, PermutationsSpec, PermutedClasses

REFITTED_PROBES = 4  # C × D models made per permutation by the probe's null (core/state/probe_pass.py)


@dataclass(frozen=True)
class SplitSpec(Spec):
    """Class moments of the *train* rows of a seeded split (core/metrics/probesplit.py): a labelled row is
    a test row when the key of its unit ``split_by`` — "row" (its global row number), "sequence"
    (the row vector "sequence": the first row of its sequence) or "sample_id" (/rows/sample_id),
    never "auto": the family resolves it — is below ``test_fraction``·2⁶⁴; test rows are only
    counted. ``control``: also the count and Σx of the train rows per control group (token id, or
    hash bucket of the unit). ``validation``: the validation rows of the train rows (--shrinkage
    auto) in class moments of their own. ``permutations`` K > 0 (--null): also the train rows' class
    counts and sums under K label permutations of seed ``null_seed`` — the permutations of every
    labelled unit, train and test (the same as collapse's), restricted to the train rows."""

    slot: ClassVar[str] = "split"
    test_fraction: float = 0.2
    seed: int = 0
    split_by: str = "row"
    control: str | None = None
    validation: bool = False
    permutations: int = 0
    null_seed: int = 0

    def __post_init__(self) -> None:
        if self.split_by not in SPLIT_UNITS:
            raise UsageError(f"a split's unit is one of {', '.join(SPLIT_UNITS)}, not '{self.split_by}' "
                             "(core/metrics/probesplit.py split_unit resolves 'auto')")
        if self.permutations and self.validation:
            raise UsageError("a split keeps its train rows under label permutations only for a fixed shrinkage "
                             "(the validation rows' choice of s is not re-made per permutation)")

    @property
    def row_vectors(self) -> tuple[str, ...]:
        return ((() if self.split_by == "row" else (self.split_by,)) + (("token_id",) if self.control == "token" else ())
                + ((ROW_VECTOR,) if self.permutations else ()))

    def readers(self, dump) -> dict:
        """The labels under the permutations (refused on a dump without labels, or without memory for them
        and for the probes refitted per permutation: LDA, ridge, nearest class mean and the control task's
        LDA, C × D each, beside the class sums' two copies)."""
        return self.null_spec.readers(dump, copies=2 + REFITTED_PROBES) if self.permutations else {}

    @property
    def null_spec(self) -> PermutationsSpec:
        """The permutations this split keeps the train rows under (K ≥ 1)."""
        return PermutationsSpec(permutations=self.permutations, seed=self.null_seed)

    def covers(self, other: "SplitSpec") -> bool:
        """The same split; and the same permutations when ``other`` asks for them."""
        return self == other or bool(not other.permutations and self.permutations
                                     and dataclasses.replace(self, permutations=0, null_seed=0) == other)

    def describe(self) -> str:
        nulls = f", under {self.permutations} label permutations (seed {self.null_seed})" if self.permutations else ""
        return (f"train-row class moments of a split by {self.split_by} with test fraction {self.test_fraction}, "
                f"seed {self.seed}{nulls}")

    def state_bytes(self, n_units: int, n_classes: int) -> int:
        nulls = self.null_spec.state_bytes(n_units, n_classes) if self.permutations else 0
        return (1 + self.validation) * 8 * (n_units * n_units + 3 * n_classes * n_units) + nulls

    def build(self, n_units: int, storage_dtype: str, products: str = "float64") -> "Split":
        return Split(n_units, self, products)


@dataclass
class SplitStats:
    """Finalised split: the train rows' class statistics, the number of labelled test rows, the
    control groups' sums (None without a control task) and, with validation rows, the class
    statistics of the other train rows (``fit``) and the number of validation rows; with --null, the
    train rows' class sums under each permutation (``permuted``)."""

    train: ClassStats
    n_test: int
    groups: ControlSums | None
    fit: ClassStats | None = None
    n_validation: int = 0
    permuted: PermutedClasses | None = None

    @functools.cached_property
    def train_total(self) -> ClassStats:
        """Every train row as one class (:func:`pooled`): the train rows' total moments, which no
        permutation changes."""
        return pooled(self.train)

    def permutation(self, k: int) -> "SplitStats":
        """The split as if the labels were those of permutation k (``permuted``): the train rows' class
        statistics under it (exact from the train total moments, :meth:`PermutedClasses.stats`), the
        same test rows and control groups; no validation rows (the nulls need a fixed shrinkage)."""
        return SplitStats(train=self.permuted.stats(k, self.train_total), n_test=self.n_test, groups=self.groups)


class Split:
    kind = "split"

    def __init__(self, n_units: int, spec: SplitSpec, products: str = "float64"):
        self.spec = spec
        self.train = ClassMoments(n_units, products=products)  # without the validation rows, when they are kept apart
        self.validation = ClassMoments(n_units, products=products) if spec.validation else None
        self.n_test = 0
        self.groups = ControlSums(n_units) if spec.control else None
        self.permuted = Permutations(n_units, spec.permutations) if spec.permutations else None

    def update(self, rows: Rows) -> None:
        units = unit_values(self.spec.split_by, rows.index, rows.vectors)
        test = is_test(split_keys(units, self.spec.seed), self.spec.test_fraction)
        labelled = rows.labels >= 0
        train = labelled & ~test
        self.n_test += int((labelled & test).sum())
        if self.groups is not None:
            groups = control_groups(self.spec.control, units, rows.vectors.get("token_id"), self.spec.seed)
            self.groups.update(groups[train], rows.X[train])
        if self.permuted is not None:
            self.permuted.update(Rows(X=rows.X[train], labels=rows.labels[train], index=rows.index[train],
                                      vectors={ROW_VECTOR: rows.vectors[ROW_VECTOR][train]}))
        if self.validation is not None:
            validation = train & is_validation(units, self.spec.seed)
            self.validation.update(rows.X[validation], rows.labels[validation])
            train &= ~validation
        self.train.update(rows.X if train.all() else rows.X[train], rows.labels[train])

    def merge(self, other: "Split") -> None:
        self.train.merge(other.train)
        self.n_test += other.n_test
        if self.groups is not None:
            self.groups.merge(other.groups)
        if self.validation is not None:
            self.validation.merge(other.validation)
        if self.permuted is not None:
            self.permuted.merge(other.permuted)

    def finalize(self) -> SplitStats:
        permuted = None if self.permuted is None else self.permuted.finalize()
        if self.validation is None:
            return SplitStats(train=self.train.finalize(), n_test=self.n_test, groups=self.groups, permuted=permuted)
        whole = ClassMoments.from_arrays(self.train.to_arrays())  # a copy: the fit rows stay apart
        whole.merge(self.validation)
        return SplitStats(train=whole.finalize(), n_test=self.n_test, groups=self.groups, fit=self.train.finalize(),
                          n_validation=int(self.validation.counts.sum()))

    def to_arrays(self) -> dict[str, np.ndarray]:
        return (nested(train=self.train, groups=self.groups, validation=self.validation, permuted=self.permuted)
                | {"n_test": np.array(self.n_test)})

    @classmethod
    def from_arrays(cls, spec: SplitSpec, arrays: dict[str, np.ndarray]) -> "Split":
        acc = cls(arrays["train/ref"].shape[1], spec)
        acc.train = ClassMoments.from_arrays(prefixed(arrays, "train/"))
        acc.n_test = int(arrays["n_test"])
        if acc.groups is not None:
            acc.groups = ControlSums.from_arrays(prefixed(arrays, "groups/"))
        if acc.validation is not None:
            acc.validation = ClassMoments.from_arrays(prefixed(arrays, "validation/"))
        if acc.permuted is not None:
            acc.permuted = Permutations.from_arrays(spec.null_spec, prefixed(arrays, "permuted/"))
        return acc
