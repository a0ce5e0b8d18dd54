"""Intervals of a layer's metrics from the same pass (DESIGN: "Inference on the same pass"): every
family evaluates its metrics on the statistics without each jackknife group, through the same
function that made the value; the G values give the interval (core/metrics/uncertainty.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from actgeom.core.families.protocol import LayerContext, LayerRecord
from actgeom.core.metrics.uncertainty import collect, finite, jackknife
from actgeom.core.state.groups import each_left_out, leave_out


def intervals(ctx: LayerContext, families: dict, records: dict[str, LayerRecord]) -> tuple[dict, dict, dict]:
    """({metric: {se, ci_low, ci_high, bias}}, {metric: why it has no interval}, {metric: its G values
    θ₋g in group order, kept for a baseline's paired difference}) for every finite scalar metric of
    ``records`` (one :class:`LayerRecord` per family of ``families``, {name: (Family, options)});
    diagnostics (counts, sizes) have none. The layer's statistics must be grouped."""
    diagnostic = {metric for name, record in records.items() for metric in record.metrics
                  if families[name][0].metrics[metric].diagnostic}
    wanted = {metric: value for record in records.values() for metric, value in record.metrics.items()
              if metric not in diagnostic}
    reasons = {metric: "not a finite number" for metric, value in wanted.items() if not finite(value)}
    reasons |= dict.fromkeys(diagnostic, "a count or size that says how another metric was computed, not an estimate")
    replicates = {name: {metric: [] for metric in record.metrics if metric in wanted and metric not in reasons}
                  for name, record in records.items()}  # by family: what each family's record is asked for
    if not any(replicates.values()):  # (the ood family makes its sets' intervals itself)
        return {}, reasons, {}
    for g, without in enumerate(each_left_out(ctx.stats)):  # G·log₂G merges, not G·(G−2)
        left = replicate(ctx, g, without)
        for name, (family, options) in families.items():
            record = family.layer(left, options)
            collect(replicates[name], reasons, record.metrics, record.unavailable, f"without jackknife group {g}",
                    "its value is not finite without one group")
    kept = {metric: values for family in replicates.values() for metric, values in family.items()}
    return {metric: jackknife(float(wanted[metric]), values) for metric, values in kept.items()}, reasons, kept


def replicate(ctx: LayerContext, g: int, without=None) -> LayerContext:
    """The layer as if the rows of group ``g`` were not in the dump: its statistics (``without``, when
    made already) and any other layer's a family reads without the group, the second pass's consumers
    left out likewise (a consumer without ``leave_out`` is dropped: its metrics have no interval)."""
    second = {name: consumer.leave_out(g) for name, consumer in ctx.second.items() if hasattr(consumer, "leave_out")}
    return dataclasses.replace(ctx, stats=leave_out(ctx.stats, g) if without is None else without, second=second,
                               details=False, replicate=True, layers=_LeftOut(ctx.layers, g))


class _LeftOut(Mapping):
    """Every layer's statistics without group ``g``, made when a family asks for a layer."""

    def __init__(self, layers: Mapping, g: int):
        self.layers, self.g, self.made = layers, g, {}

    def __getitem__(self, name):
        if name not in self.made:
            self.made[name] = leave_out(self.layers[name], self.g)
        return self.made[name]

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)
