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
statistic is one spec + one accumulator class (base.py's protocol; layer.py, neurons.py, split.py hold
the existing ones) and a line in the registry below; nothing else in the engine changes.
"""

from __future__ import annotations

from actgeom.core.base.errors import InvalidInputError
from actgeom.core.state.accumulators.base import Rows, Spec
from actgeom.core.state.accumulators.fitsplit import FitSplit, FitSplitSpec, FitSplitStats
from actgeom.core.state.accumulators.layer import (
    Directions,
    DirectionsSpec,
    Moments,
    MomentsSpec,
    MomentStats,
    Sample,
    SampleSpec,
    Sequences,
    SequencesSpec,
    Units,
    UnitsSpec,
)
from actgeom.core.state.accumulators.neurons import (
    PositionSums,
    PositionSumsSpec,
    TokenSums,
    TokenSumsSpec,
    UnitMomentsAccumulator,
    UnitMomentsSpec,
)
from actgeom.core.state.accumulators.permutations import Permutations, PermutationsSpec, PermutedClasses
from actgeom.core.state.accumulators.split import Split, SplitSpec, SplitStats

__all__ = ["ACCUMULATORS", "SPECS", "Directions", "DirectionsSpec", "FitSplit", "FitSplitSpec", "FitSplitStats",
           "MomentStats", "Moments", "MomentsSpec", "Permutations",
           "PermutationsSpec", "PermutedClasses", "PositionSums",
           "PositionSumsSpec", "Rows", "Sample", "SampleSpec", "Sequences", "SequencesSpec", "Spec", "Split", "SplitSpec",
           "SplitStats", "TokenSums", "TokenSumsSpec", "UnitMomentsAccumulator", "UnitMomentsSpec", "Units", "UnitsSpec",
           "spec_from_record", "union"]

_PAIRS = ((MomentsSpec, Moments), (UnitsSpec, Units), (DirectionsSpec, Directions), (SampleSpec, Sample),
          (SequencesSpec, Sequences), (UnitMomentsSpec, UnitMomentsAccumulator), (TokenSumsSpec, TokenSums),
          (PositionSumsSpec, PositionSums), (SplitSpec, Split), (PermutationsSpec, Permutations),
          (FitSplitSpec, FitSplit))
SPECS: dict[str, type[Spec]] = {spec.slot: spec for spec, _ in _PAIRS}  # by slot: what each statistic is made from
ACCUMULATORS = {spec.slot: accumulator for spec, accumulator in _PAIRS}  # by slot: the class that keeps it


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
