"""Permutation nulls of a layer's label-dependent metrics from the same pass (DESIGN: "Inference on
the same pass"; docs/metrics.md, "Uncertainty and nulls").

The pass keeps the class sums under K seeded label permutations (core/state/accumulators/
permutations.py). Each family whose labels enter through the class moments (collapse, neurons)
re-evaluates its metrics through the same function that made the value, on a layer whose class
moments are those of permutation k; the K values are the metric's null, and its registry direction
says which values are at least as extreme (core/metrics/uncertainty.py permutation_test).

The probe's labels enter through its split's train moments and the test rows' labels: its split keeps
the train rows' class sums under the same permutations (the labels of every labelled unit permuted,
train and test alike), the shared second pass scores the probes refitted under each permutation
against the test rows' permuted labels (core/state/probe_pass.py), and the family re-evaluates its
metrics on a layer whose split and scoring are those of permutation k.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from actgeom.core.base.stats import ClassStats, pooled
from actgeom.core.families import probe as probe_family
from actgeom.core.families.protocol import DumpFacts, LayerContext, LayerRecord
from actgeom.core.metrics.uncertainty import collect, finite, permutation_test
from actgeom.core.state.accumulators import MomentStats, PermutationsSpec

PERMUTED = ("collapse", "neurons")  # families whose labels enter only through the class moments
SPLIT = "probe"  # the family whose labels enter through its split (train moments, test rows' labels)
BESIDE_LABELS = ("unit_moments", "units")  # what else their label-dependent metrics read (kept under permutation)
NO_NULL = {  # why a label-dependent metric has no permutation null
    "collapse": "the statistics hold no class sums under label permutations",
    "neurons": "the statistics hold no class sums under label permutations",
    "probe": "needs a fixed --shrinkage: with auto, the shrinkage chosen on the validation rows would have to be "
             "chosen again under every permutation",
    "entropy": "computed on the seeded sample, whose labels the permutations do not move",
    "decision": "needs the network's own decisions, compared on a second pass that is not re-run per permutation",
    "fdr": "is itself made from the permutations (per-unit p-values)",
}


def null_specs(families: dict, facts: DumpFacts, pass_options) -> dict:
    """The permutations' statistics when the pass asks for nulls (``null`` K > 0): the class sums under
    them for the families that re-evaluate the class moments, the probe's split kept under them too
    (a fixed shrinkage only); refused later, at the pass, for a dump without labels."""
    if not pass_options.null:
        return {}
    specs = {}
    if set(families) & set(PERMUTED):
        specs[PermutationsSpec.slot] = PermutationsSpec(permutations=pass_options.null, seed=pass_options.null_seed)
    probe = families.get(SPLIT)
    if probe is not None and probe.shrinkage != "auto":
        split = probe_family.needs(probe, facts)[0]
        specs[split.slot] = dataclasses.replace(split, permutations=pass_options.null, null_seed=pass_options.null_seed)
    return specs


def label_dependent(metric) -> bool:
    return "labels" in metric.needs and not metric.diagnostic


def nulls(ctx: LayerContext, families: dict, records: dict[str, LayerRecord]) -> tuple[dict, dict]:
    """({metric: {null_mean, null_sd, z, p_value, permutations}}, {metric: why it has no null}) for
    every finite label-dependent metric of ``records`` (one per family of ``families``, {name:
    (Family, options)}). Metrics that do not depend on the labels have no null and are absent."""
    split = ctx.stats.get("split") if SPLIT in records else None
    kept = dict.fromkeys(PERMUTED, "permutations" in ctx.stats.accumulators)  # what each family re-evaluates
    kept[SPLIT] = split is not None and split.permuted is not None
    wanted, reasons = {}, {}
    for name, record in records.items():
        registry = families[name][0].metrics
        for metric, value in record.metrics.items():
            if not label_dependent(registry[metric]):
                continue
            why = _no_null(name, registry[metric], kept.get(name, False))
            if why or not finite(value):
                reasons[metric] = why or "not a finite number"
            else:
                wanted[metric] = (name, float(value))
    if not wanted:
        return {}, reasons
    values = _null_values(ctx, split, families, wanted, reasons)
    out = {}
    for metric, null in values.items():
        name, value = wanted[metric]
        if np.all(np.asarray(null) == value):
            reasons[metric] = "does not change under label permutation (the labels enter it only through the class counts)"
        else:
            out[metric] = permutation_test(value, null, families[name][0].metrics[metric].direction)
    return out, reasons


def _no_null(family: str, metric, kept: bool) -> str | None:
    """Why a label-dependent metric of ``family`` has no null (None: it has one); ``kept``: whether the
    statistics hold what the family re-evaluates under the permutations."""
    if not kept:
        return NO_NULL.get(family, f"the {family} family has no permutation null")
    if "decision" in metric.needs:
        return NO_NULL["decision"]
    if metric.name.endswith("_fdr"):
        return NO_NULL["fdr"]
    return None


def _null_values(ctx: LayerContext, split, families: dict, wanted: dict, reasons: dict) -> dict[str, list[float]]:
    """Each wanted metric's K values, one per permutation; a metric without a value under some
    permutation gets the reason instead."""
    values = {name: {metric: [] for metric, (family, _) in wanted.items() if family == name}
              for name in dict.fromkeys(family for family, _ in wanted.values())}  # by family, each asked once
    permuted, moments = ctx.stats.get("permutations"), ctx.stats.get("moments")
    total = None if permuted is None else _total(moments.classes)
    fixed = None if total is None else {"total": total}  # the same for every permutation (LayerContext.permuted)
    scored = ctx.second.get(SPLIT)
    for k in range(ctx.pass_options.null):
        replaced, second = {}, {}
        if permuted is not None:
            replaced["moments"] = MomentStats(classes=permuted.stats(k, total), total=moments.total)
        if split is not None and split.permuted is not None:
            replaced["split"] = split.permutation(k)
            null = None if scored is None else scored.nulls[k]
            second = {} if null is None else {SPLIT: null}
        shuffled = dataclasses.replace(permuted_context(ctx, replaced, second), permuted=fixed)
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


def permuted_context(ctx: LayerContext, replaced: dict, second: dict) -> LayerContext:
    """The layer as if its labelled rows had the labels of one permutation: the statistics of
    ``replaced`` ({slot: finalised statistic}: the class moments, the probe's split) and the
    second-pass consumers of ``second`` (the probe's scoring) under it; of the other statistics only
    those the label-dependent metrics read besides them (unit moments and activity: the selectivity's
    conditions); no details."""
    accumulators = {slot: acc for slot, acc in ctx.stats.accumulators.items() if slot in BESIDE_LABELS}
    accumulators |= {slot: _Fixed(value) for slot, value in replaced.items()}
    stats = dataclasses.replace(ctx.stats, accumulators=accumulators, groups=None)
    return dataclasses.replace(ctx, stats=stats, second=second, details=False, replicate=True)


class _Fixed:
    """A finalised statistic standing in for its accumulator (LayerStats.get finalises)."""

    def __init__(self, value):
        self.value = value

    def finalize(self):
        return self.value
