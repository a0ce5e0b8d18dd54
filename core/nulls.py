"""Permutation nulls of a layer's label-dependent metrics from the same pass (DESIGN: "Inference on
the same pass"; docs/metrics.md, "Uncertainty and nulls").

The pass keeps the class sums under K seeded label permutations (core/state/accumulators/
permutations.py). Each family whose labels enter through the class moments (collapse, neurons)
re-evaluates its metrics through the same function that made the value, on a layer whose class
moments are those of permutation k; the K values are the metric's null, and its registry direction
says which values are at least as extreme (core/metrics/uncertainty.py permutation_test).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from actgeom.core.base.stats import ClassStats, pooled
from actgeom.core.families.protocol import DumpFacts, LayerContext, LayerRecord
from actgeom.core.metrics.uncertainty import collect, finite, permutation_test
from actgeom.core.state.accumulators import MomentStats, PermutationsSpec

PERMUTED = ("collapse", "neurons")  # families whose labels enter only through the class moments
BESIDE_LABELS = ("unit_moments", "units")  # what else their label-dependent metrics read (kept under permutation)
NO_NULL = {  # why a label-dependent metric has no permutation null
    "probe": "the probe is fitted on its split's class statistics, which the permutations do not keep "
             "(a refit on every permutation)",
    "entropy": "computed on the seeded sample, whose labels the permutations do not move",
    "decision": "needs the network's own decisions, compared on a second pass that is not re-run per permutation",
    "fdr": "is itself made from the permutations (per-unit p-values)",
}


def null_specs(families: dict, facts: DumpFacts, pass_options) -> dict:
    """The permutations' statistic when the pass asks for nulls (``null`` K > 0) and a family has
    metrics they re-evaluate (refused later, at the pass, for a dump without labels)."""
    if not pass_options.null or not set(families) & set(PERMUTED):
        return {}
    return {PermutationsSpec.slot: PermutationsSpec(permutations=pass_options.null, seed=pass_options.null_seed)}


def label_dependent(metric) -> bool:
    return "labels" in metric.needs and not metric.diagnostic


def nulls(ctx: LayerContext, families: dict, records: dict[str, LayerRecord]) -> tuple[dict, dict]:
    """({metric: {null_mean, null_sd, z, p_value, permutations}}, {metric: why it has no null}) for
    every finite label-dependent metric of ``records`` (one per family of ``families``, {name:
    (Family, options)}). Metrics that do not depend on the labels have no null and are absent."""
    permuted = ctx.stats.get("permutations")
    wanted, reasons = {}, {}
    for name, record in records.items():
        registry = families[name][0].metrics
        for metric, value in record.metrics.items():
            if not label_dependent(registry[metric]):
                continue
            why = _no_null(name, registry[metric])
            if why or not finite(value):
                reasons[metric] = why or "not a finite number"
            else:
                wanted[metric] = (name, float(value))
    if permuted is None or not wanted:
        return {}, reasons
    values = _null_values(ctx, permuted, families, wanted, reasons)
    out = {}
    for metric, null in values.items():
        name, value = wanted[metric]
        if np.all(np.asarray(null) == value):
            reasons[metric] = "does not change under label permutation (the labels enter it only through the class counts)"
        else:
            out[metric] = permutation_test(value, null, families[name][0].metrics[metric].direction)
    return out, reasons


def _no_null(family: str, metric) -> str | None:
    if family not in PERMUTED:
        return NO_NULL.get(family, f"the {family} family has no permutation null")
    if "decision" in metric.needs:
        return NO_NULL["decision"]
    if metric.name.endswith("_fdr"):
        return NO_NULL["fdr"]
    return None


def _null_values(ctx: LayerContext, permuted, families: dict, wanted: dict, reasons: dict) -> dict[str, list[float]]:
    """Each wanted metric's K values, one per permutation; a metric without a value under some
    permutation gets the reason instead."""
    values = {name: {metric: [] for metric, (family, _) in wanted.items() if family == name}
              for name in dict.fromkeys(family for family, _ in wanted.values())}  # by family, each asked once
    moments = ctx.stats.get("moments")
    total = _total(moments.classes)
    for k in range(permuted.permutations):
        shuffled = permuted_context(ctx, MomentStats(classes=permuted.stats(k, total), total=moments.total))
        for name, asked in values.items():
            family, options = families[name]
            record = family.layer(shuffled, options)
            collect(asked, reasons, record.metrics, record.unavailable, f"under label permutation {k}")
    return {metric: null for asked in values.values() for metric, null in asked.items()}


def _total(classes: ClassStats) -> ClassStats:
    """Every labelled row as one class (:func:`pooled`); with class means only (no scatter kept),
    its mean alone."""
    if classes.within_scatter is not None:
        return pooled(classes)
    mean = classes.counts @ classes.means / max(classes.n, 1)
    return ClassStats(counts=np.array([classes.n]), means=mean[None, :], within_scatter=None, sq_dev=np.zeros(1))


def permuted_context(ctx: LayerContext, moments: MomentStats) -> LayerContext:
    """The layer as if its labelled rows had the class moments of ``moments`` (under one permutation):
    of the other statistics only those the label-dependent metrics read besides the class moments
    (unit moments and activity: the selectivity's conditions), no second pass, no details."""
    accumulators = {slot: acc for slot, acc in ctx.stats.accumulators.items() if slot in BESIDE_LABELS}
    accumulators["moments"] = _Fixed(moments)
    stats = dataclasses.replace(ctx.stats, accumulators=accumulators, groups=None)
    return dataclasses.replace(ctx, stats=stats, second={}, details=False, replicate=True)


class _Fixed:
    """A finalised statistic standing in for its accumulator (LayerStats.get finalises)."""

    def __init__(self, value):
        self.value = value

    def finalize(self):
        return self.value
