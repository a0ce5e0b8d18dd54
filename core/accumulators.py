"""The accumulator protocol: every one-pass statistic of a layer, fed from one read of each block.

An accumulator is made from a *spec* (a small frozen dataclass saying what to keep, e.g. a
sample of 2 000 rows with seed 0) and implements

- ``update(rows)``: add one block of :class:`Rows` (the selected, finite rows with their labels
  and global row numbers; the whole block and its sequence boundaries for sequence statistics);
- ``merge(other)``: add another accumulator of the same spec (another shard, another row range);
- ``to_arrays()`` / ``from_arrays(arrays)``: plain arrays for partial-statistics files;
- ``finalize()``: what metric functions consume.

Families (collapse, rank, entropy, ...) ask for specs; the engine takes the union (one
accumulator per slot, e.g. the larger of two samples with the same seed, since a seeded sample of
k rows is the first k of a larger one) and feeds them all from one read of each block. A new
statistic is one spec + one accumulator class here, and nothing else in the engine changes.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from typing import ClassVar

import numpy as np

from actgeom.core.entropy import SequenceEntropy
from actgeom.core.errors import InvalidInputError, OptionError, UsageError
from actgeom.core.probesplit import ControlSums, control_groups, is_test, is_validation, split_keys
from actgeom.core.sample import Reservoir
from actgeom.core.stats import ClassMoments, ClassStats, DirectionScatter, UnitStats
from actgeom.core.unitstats import ExpSums, GroupSums, UnitMoments


@dataclass
class Rows:
    """One block of a layer as the accumulators see it (all float64).

    X (n, D): the rows the pass uses (selected by --tokens, non-finite rows dropped);
    labels (n,): class indices, -1 = none (0 for every row of an unlabelled dump);
    index (n,): global row numbers (keys of the seeded sample);
    block / boundaries: the whole block before selection and the starts/end of the whole
    sequences in it (sequence statistics use whole sequences, whatever --tokens selects).
    """

    X: np.ndarray
    labels: np.ndarray
    index: np.ndarray
    block: np.ndarray | None = None
    boundaries: np.ndarray | None = None
    vectors: dict[str, np.ndarray] = field(default_factory=dict)  # per-row vectors a spec asked for, aligned with X

    @functools.cached_property
    def norms(self) -> np.ndarray:
        """‖x_i‖ per row, computed once per block for every accumulator that needs it."""
        return np.sqrt(np.einsum("ij,ij->i", self.X, self.X))


class Spec:
    """What one accumulator keeps. ``slot`` names it in a layer's statistics; ``union`` is the
    spec that serves two requests at once; ``covers`` says whether statistics made with this
    spec can answer a request (for statistics loaded from a file)."""

    slot: ClassVar[str]
    row_vectors: ClassVar[tuple[str, ...]] = ()  # per-row vectors the accumulator reads: "position", "token_id", ...

    def union(self, other: "Spec") -> "Spec":
        if other != self:
            raise UsageError(f"two families ask for different {self.slot} statistics: {self.record()} and {other.record()}")
        return self

    def covers(self, other: "Spec") -> bool:
        return self == other

    def build(self, n_units: int, storage_dtype: str, products: str = "float64"):
        """The accumulator for a layer of ``n_units`` stored as ``storage_dtype``; ``products``:
        how D×D products of blocks are computed (core/stats.py BlockProducts)."""
        raise NotImplementedError

    def record(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """What the statistic is, in words (for messages)."""
        raise NotImplementedError


class _Wrapper:
    """An accumulator around a statistic that merges and serialises itself (core/stats.py):
    only ``update`` (what it reads of a block) differs from one to the next."""

    kind: ClassVar[str]
    inner_class: ClassVar[type]

    def __init__(self, inner):
        self.inner = inner

    def merge(self, other: "_Wrapper") -> None:
        self.inner.merge(other.inner)

    def finalize(self):
        return self.inner

    def to_arrays(self) -> dict[str, np.ndarray]:
        return self.inner.to_arrays()

    @classmethod
    def from_arrays(cls, spec: Spec, arrays: dict[str, np.ndarray]) -> "_Wrapper":
        return cls(cls.inner_class.from_arrays(arrays))


# -- class moments ------------------------------------------------------------------------

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
        return MomentStats(classes=classes, total=total_of(classes, self.rest.finalize()))

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {f"classes/{k}": v for k, v in self.classes.to_arrays().items()}
        if self.rest is not None:
            arrays |= {f"rest/{k}": v for k, v in self.rest.to_arrays().items()}
        return arrays

    @classmethod
    def from_arrays(cls, spec: MomentsSpec, arrays: dict[str, np.ndarray]) -> "Moments":
        acc = cls(arrays["classes/ref"].shape[1], spec)
        acc.classes = ClassMoments.from_arrays(_prefixed(arrays, "classes/"))
        if acc.rest is not None:
            acc.rest = ClassMoments.from_arrays(_prefixed(arrays, "rest/"))
        return acc


def total_of(classes: ClassStats, rest: ClassStats) -> ClassStats:
    """Every row as one class, exactly from class statistics and those of the unlabelled rows:
    N Σ_T = Σ of within scatters + Σ_g n_g (μ_g − x̄)(μ_g − x̄)ᵀ over the groups g."""
    counts = np.concatenate([classes.counts, rest.counts]).astype(np.float64)
    means = np.concatenate([classes.means, rest.means])
    n = counts.sum()
    mean = counts @ means / n if n else np.zeros(means.shape[1])
    centred = (means - mean) * np.sqrt(counts)[:, None]
    scatter = classes.within_scatter + rest.within_scatter + centred.T @ centred
    sq_dev = float(classes.sq_dev.sum() + rest.sq_dev.sum() + (centred**2).sum())
    return ClassStats(counts=np.array([int(n)]), means=mean[None, :], within_scatter=scatter, sq_dev=np.array([sq_dev]))


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


class _WithNorms(_Wrapper):
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

    def union(self, other: "SampleSpec") -> "SampleSpec":
        if self.seed != other.seed:
            raise UsageError(f"two families ask for samples with different seeds ({self.seed}, {other.seed}); "
                             "give one --seed")
        return SampleSpec(size=max(self.size, other.size), seed=self.seed)

    def describe(self) -> str:
        return f"a sample of {self.size} rows with seed {self.seed} (--subsample, --seed)"

    def covers(self, other: "SampleSpec") -> bool:
        return self.seed == other.seed and self.size >= other.size

    def build(self, n_units: int, storage_dtype: str, products: str = "float64") -> "Sample":
        # The rows as stored (bfloat16 as float32, which holds it exactly): half the memory of float32
        # for float16 layers, and what a Dask task ships. Consumers compute in float64.
        dtype = {"float16": np.float16, "float64": np.float64}.get(storage_dtype, np.float32)
        return Sample(Reservoir(self.size, n_units, dtype, self.seed))


class Sample(_Wrapper):
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


class Sequences(_Wrapper):
    kind = "sequences"
    inner_class = SequenceEntropy

    def update(self, rows: Rows) -> None:
        self.inner.update(rows.block, rows.boundaries)


# -- unit-level statistics (neurons) ---------------------------------------------------------------

@dataclass(frozen=True)
class UnitMomentsSpec(Spec):
    """Per unit: mean, central sums M2..M4, min, max (core/unitstats.py); ``exp_sums``: also
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
        arrays = {f"moments/{k}": v for k, v in self.moments.to_arrays().items()}
        if self.exp_sums is not None:
            arrays |= {f"exp/{k}": v for k, v in self.exp_sums.to_arrays().items()}
        return arrays

    @classmethod
    def from_arrays(cls, spec: UnitMomentsSpec, arrays: dict[str, np.ndarray]) -> "UnitMomentsAccumulator":
        return cls(UnitMoments.from_arrays(_prefixed(arrays, "moments/")),
                   ExpSums.from_arrays(_prefixed(arrays, "exp/")) if spec.exp_sums else None)


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


class TokenSums:
    kind = "token_sums"

    def __init__(self, sums: GroupSums):
        self.sums = sums
        self._positive = np.empty((0, sums.n_units))  # reused block buffer

    def update(self, rows: Rows) -> None:
        if self._positive.shape[0] < rows.X.shape[0]:
            self._positive = np.empty(rows.X.shape)
        positive = np.maximum(rows.X, 0.0, out=self._positive[: rows.X.shape[0]])
        self.sums.update(positive, rows.vectors["token_id"], "token id", "/rows/token_id")

    def merge(self, other: "TokenSums") -> None:
        self.sums.merge(other.sums)

    def finalize(self) -> GroupSums:
        return self.sums

    def to_arrays(self) -> dict[str, np.ndarray]:
        return self.sums.to_arrays()

    @classmethod
    def from_arrays(cls, spec: TokenSumsSpec, arrays: dict[str, np.ndarray]) -> "TokenSums":
        return cls(GroupSums.from_arrays(arrays))


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


class PositionSums:
    kind = "position_sums"

    def __init__(self, sums: GroupSums, max_position: int):
        self.sums, self.max_position = sums, max_position

    def update(self, rows: Rows) -> None:
        self.sums.update(rows.X, np.minimum(rows.vectors["position"], self.max_position), "position", "/rows/position")

    def merge(self, other: "PositionSums") -> None:
        self.sums.merge(other.sums)

    def finalize(self) -> GroupSums:
        return self.sums

    def to_arrays(self) -> dict[str, np.ndarray]:
        return self.sums.to_arrays()

    @classmethod
    def from_arrays(cls, spec: PositionSumsSpec, arrays: dict[str, np.ndarray]) -> "PositionSums":
        return cls(GroupSums.from_arrays(arrays), spec.max_position)


# -- the probe's train/test split -------------------------------------------------------------

@dataclass(frozen=True)
class SplitSpec(Spec):
    """Class moments of the *train* rows of a seeded split (core/probesplit.py): a labelled row is
    a test row when its key (of the row number, or of /rows/sample_id with ``split_by``) is below
    ``test_fraction``·2⁶⁴; test rows are only counted. ``control``: also the count and Σx of the
    train rows per control group (token id, or hash bucket of the row). ``validation``: the
    validation rows of the train rows (--shrinkage auto) in class moments of their own."""

    slot: ClassVar[str] = "split"
    test_fraction: float = 0.2
    seed: int = 0
    split_by: str = "row"
    control: str | None = None
    validation: bool = False

    @property
    def row_vectors(self) -> tuple[str, ...]:
        return (("sample_id",) if self.split_by == "sample_id" else ()) + (("token_id",) if self.control == "token" else ())

    def describe(self) -> str:
        return f"train-row class moments of a split with test fraction {self.test_fraction}, seed {self.seed}"

    def build(self, n_units: int, storage_dtype: str, products: str = "float64") -> "Split":
        return Split(n_units, self, products)


@dataclass
class SplitStats:
    """Finalised split: the train rows' class statistics, the number of labelled test rows, the
    control groups' sums (None without a control task) and, with validation rows, the class
    statistics of the other train rows (``fit``) and the number of validation rows."""

    train: ClassStats
    n_test: int
    groups: ControlSums | None
    fit: ClassStats | None = None
    n_validation: int = 0


class Split:
    kind = "split"

    def __init__(self, n_units: int, spec: SplitSpec, products: str = "float64"):
        self.spec = spec
        self.train = ClassMoments(n_units, products=products)  # without the validation rows, when they are kept apart
        self.validation = ClassMoments(n_units, products=products) if spec.validation else None
        self.n_test = 0
        self.groups = ControlSums(n_units) if spec.control else None

    def update(self, rows: Rows) -> None:
        ids = rows.vectors.get("sample_id")
        if ids is None and self.spec.split_by == "sample_id":
            raise InvalidInputError("--split-by sample_id needs /rows/sample_id; rows fed from memory have none")
        test = is_test(split_keys(rows.index, ids, self.spec.seed), self.spec.test_fraction)
        labelled = rows.labels >= 0
        train = labelled & ~test
        self.n_test += int((labelled & test).sum())
        if self.groups is not None:
            groups = control_groups(self.spec.control, rows.index, ids, rows.vectors.get("token_id"), self.spec.seed)
            self.groups.update(groups[train], rows.X[train])
        if self.validation is not None:
            validation = train & is_validation(rows.index, ids, self.spec.seed)
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

    def finalize(self) -> SplitStats:
        if self.validation is None:
            return SplitStats(train=self.train.finalize(), n_test=self.n_test, groups=self.groups)
        whole = ClassMoments.from_arrays(self.train.to_arrays())  # a copy: the fit rows stay apart
        whole.merge(self.validation)
        return SplitStats(train=whole.finalize(), n_test=self.n_test, groups=self.groups, fit=self.train.finalize(),
                          n_validation=int(self.validation.counts.sum()))

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {f"train/{k}": v for k, v in self.train.to_arrays().items()} | {"n_test": np.array(self.n_test)}
        if self.groups is not None:
            arrays |= {f"groups/{k}": v for k, v in self.groups.to_arrays().items()}
        if self.validation is not None:
            arrays |= {f"validation/{k}": v for k, v in self.validation.to_arrays().items()}
        return arrays

    @classmethod
    def from_arrays(cls, spec: SplitSpec, arrays: dict[str, np.ndarray]) -> "Split":
        acc = cls(arrays["train/ref"].shape[1], spec)
        acc.train = ClassMoments.from_arrays(_prefixed(arrays, "train/"))
        acc.n_test = int(arrays["n_test"])
        if acc.groups is not None:
            acc.groups = ControlSums.from_arrays(_prefixed(arrays, "groups/"))
        if acc.validation is not None:
            acc.validation = ClassMoments.from_arrays(_prefixed(arrays, "validation/"))
        return acc


SPECS: dict[str, type[Spec]] = {spec.slot: spec for spec in (MomentsSpec, UnitsSpec, DirectionsSpec, SampleSpec, SequencesSpec,
                                                               UnitMomentsSpec, TokenSumsSpec, PositionSumsSpec)}
ACCUMULATORS = {"moments": Moments, "units": Units, "directions": Directions, "sample": Sample, "sequences": Sequences,
                "unit_moments": UnitMomentsAccumulator, "token_sums": TokenSums, "position_sums": PositionSums}
SPECS[SplitSpec.slot] = SplitSpec
ACCUMULATORS[SplitSpec.slot] = Split


def union(requests) -> dict[str, Spec]:
    """One spec per slot serving every request."""
    chosen: dict[str, Spec] = {}
    for spec in requests:
        chosen[spec.slot] = chosen[spec.slot].union(spec) if spec.slot in chosen else spec
    return chosen


def spec_from_record(slot: str, record: dict) -> Spec:
    if slot not in SPECS:
        raise InvalidInputError(f"unknown statistic '{slot}' in a partial-statistics file")
    return SPECS[slot](**record)


def _prefixed(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {key[len(prefix):]: value for key, value in arrays.items() if key.startswith(prefix)}
