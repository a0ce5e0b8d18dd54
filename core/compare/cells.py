"""The cells of a comparison: every registered measure of each compared pair, its jackknife interval
and its permutation null (docs/metrics.md, "Similarity between representations" and "Uncertainty
and nulls").

A cell is a pair of streams (i, j) of the compare pass (core/state/compare_pass.py). Intervals: the
measures are evaluated again on each leave-one-group-out pass (:meth:`PassResult.leave_out`: the
moments of the rows outside group g, the sample without g's rows) through the same function that
made the value; the G values give the delete-a-group jackknife (core/metrics/uncertainty.py). Nulls:
CKA, RSA and mutual k-NN under K seeded shuffles of B's sampled rows (core/metrics/compare_null.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from actgeom.core.base.errors import OptionError
from actgeom.core.base.registry import evaluate
from actgeom.core.families.protocol import LayerRecord
from actgeom.core.metrics.compare import REGISTRY, CompareOptions, PairInputs, SampleView, numerical_rtol
from actgeom.core.metrics.compare_null import TESTED, pair_nulls
from actgeom.core.metrics.uncertainty import collect, finite, inference_record, jackknife
from actgeom.core.state.compare_pass import PassResult
from actgeom.core.state.groups import Grouping


@dataclass(frozen=True)
class Inference:
    """What a comparison reports beside its values: jackknife intervals from ``groups`` groups of
    sampling units hashed with ``ci_seed`` (0 groups: none), and permutation nulls from ``null``
    shuffles seeded with ``null_seed`` (0: none)."""

    groups: int = 0
    ci_seed: int = 0
    null: int = 0
    null_seed: int = 0

    def __post_init__(self) -> None:
        if self.groups:
            Grouping(self.groups, self.ci_seed)  # validates ci_groups ≥ 2, ci_seed ≥ 0
        if self.null < 0:
            raise OptionError("null", self.null, "must be ≥ 1 permutations (0: no null)")
        if self.null_seed < 0:
            raise OptionError("null_seed", self.null_seed, "must be ≥ 0")

    def record(self) -> dict:
        """The document's ``inference``: how its intervals and nulls were made (None: not made)."""
        return inference_record(self.groups, self.ci_seed, self.null, self.null_seed,
                                shuffled="the sampled rows of B (the column)")


def sample_views(found: PassResult) -> list[SampleView | None]:
    """Each stream's sampled rows with what the sample measures derive from them (None: no sample)."""
    return [None if rows is None else SampleView(rows) for rows in found.samples]


def pair_inputs(found: PassResult, views: list, i: int, j: int, dtypes: list[str]) -> PairInputs:
    """What the measures read of cell (i, j): rows = stream i (A), columns = stream j (B)."""
    return PairInputs(x=found.sides[i], y=found.sides[j], cross=found.cross(i, j), sample_x=views[i], sample_y=views[j],
                      rtol=numerical_rtol(dtypes[i], dtypes[j]))


def cell_records(found: PassResult, views: list, cells: list[tuple[int, int]], dtypes: list[str],
                 options: CompareOptions) -> list[LayerRecord]:
    """Every registered measure of each cell (i, j) → its record (metrics, unavailable, fields)."""
    rows = [0 if sample is None else sample.shape[0] for sample in found.samples]
    return [pair_record(pair_inputs(found, views, i, j, dtypes), options, sample_rows=rows[i]) for i, j in cells]


def pair_record(inputs: PairInputs, options: CompareOptions, *, sample_rows: int) -> LayerRecord:
    """Every registered measure of one pair → metrics, unavailable (with reasons), fields."""
    missing = {}
    if inputs.sample_x is None:
        missing["sample"] = "no row sample (--subsample 0)"
    values, unavailable = evaluate(REGISTRY, inputs, options, missing)
    fields = {"n_rows": inputs.n, "sample_rows": sample_rows, "sample_seed": options.seed,
              "numerical_rtol": inputs.rtol} | inputs.found
    return LayerRecord(metrics=values, unavailable=unavailable, fields=fields)


def cell_intervals(found: PassResult, views: list, cells: list[tuple[int, int]], dtypes: list[str],
                   options: CompareOptions, records: list[LayerRecord]) -> list[tuple[dict, dict]]:
    """Per cell ({metric: {se, ci_low, ci_high, bias}}, {metric: why it has no interval}) for every
    finite measure of its record, from the G leave-one-group-out passes (``found.parts``); the
    samples without a group are parts of ``views`` (their RDMs taken from those already made)."""
    quiet = dataclasses.replace(options, units=False)  # the replicates need no per-unit lists
    reasons = [{name: "not a finite number" for name, value in record.metrics.items() if not finite(value)}
               for record in records]
    replicates = [{name: [] for name in record.metrics if name not in why and not REGISTRY[name].diagnostic}
                  for record, why in zip(records, reasons)]
    for g in range(len(found.parts)):
        left, keep = found.leave_out(g), found.sample_groups != g
        parts = [None if view is None else view.without(keep) for view in views]
        for values, why, record in zip(replicates, reasons, cell_records(left, parts, cells, dtypes, quiet)):
            collect(values, why, record.metrics, record.unavailable, f"without jackknife group {g}",
                    "its value is not finite without one group")
    return [({name: jackknife(float(record.metrics[name]), values[name]) for name in values}, why)
            for record, values, why in zip(records, replicates, reasons)]


def cell_nulls(found: PassResult, views: list, cells: list[tuple[int, int]], options: CompareOptions,
               count: int, seed: int) -> list[tuple[dict, dict]]:
    """Per cell ({measure: null_mean, null_sd, z, p_value, permutations, sample_value}, {measure: why
    it has none}) of CKA, RSA and mutual k-NN under ``count`` shuffles of B's sampled rows."""
    out = []
    for i, j in cells:
        if views[i] is None:
            out.append(({}, {name: "no row sample (--subsample 0): the null shuffles the sampled rows" for name in TESTED}))
        else:
            out.append(pair_nulls(views[i], views[j], options, count, seed))
    return out
