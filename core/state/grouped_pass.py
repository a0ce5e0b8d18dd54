"""A second-pass consumer with its jackknife twins, all fed by the one shared second pass
(docs/metrics.md, "Uncertainty and nulls").

On grouped statistics (``LayerStats.groups``) a family's consumer — the probe's scoring of the
test rows, collapse's NC4 — comes with G twins: twin g is made by the same factory from the
statistics without group g (:func:`~actgeom.core.state.groups.leave_out`) and sees only the rows
outside group g (a row's group: the hash of its sampling unit, exactly as in the first pass,
:class:`~actgeom.core.state.groups.SamplingUnits`). So twin g holds what the consumer would hold
on a dump without the group's rows — the probes fitted without the group's train rows, scored
on the other groups' test rows; NC4 against the class means without the group — and the
interval's re-evaluation reads it through :meth:`LeftOutPass.leave_out`. Cost per row: the
consumer's work G + 1 times (the probe: G more scorings of its C×D models).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from actgeom.core.state.groups import SamplingUnits, each_left_out


class LeftOutPass:
    """A second-pass consumer and its G leave-one-group-out twins (None where the statistics
    without the group make no consumer). Reads of anything else go to the consumer itself, so a
    family's ``layer()`` reads this as it reads its consumer."""

    def __init__(self, consumer, twins: list, units: SamplingUnits):
        self.consumer, self.twins, self.units = consumer, twins, units

    def update(self, start: int, X: np.ndarray, labels: np.ndarray, usable: np.ndarray) -> None:
        """Feed the block to the consumer, and to twin g its rows outside group g."""
        self.consumer.update(start, X, labels, usable)
        groups = self.units.groups(start, start + X.shape[0])
        for g, twin in enumerate(self.twins):
            if twin is not None:
                twin.update(start, X, labels, usable & (groups != g))

    def partial(self) -> dict:
        """The consumer's and every twin's part (plain values), for :meth:`merge`."""
        return {"consumer": self.consumer.partial(),
                "twins": [None if twin is None else twin.partial() for twin in self.twins]}

    def merge(self, part: dict) -> None:
        """Add the :meth:`partial` of another row range's LeftOutPass (made from the same statistics)."""
        self.consumer.merge(part["consumer"])
        for twin, theirs in zip(self.twins, part["twins"]):
            if twin is not None:
                twin.merge(theirs)

    def leave_out(self, g: int):
        """The consumer as if the rows of group ``g`` were not in the dump (None: it would make none)."""
        return self.twins[g]

    def __getattr__(self, name: str):
        consumer = self.__dict__.get("consumer")
        if consumer is None:
            raise AttributeError(name)
        return getattr(consumer, name)


def with_twins(stats, slots: tuple[str, ...], make: Callable, dump, pass_options, wrap: Callable = LeftOutPass):
    """``make(stats)``'s consumer (None: no second pass); on grouped statistics wrapped with the
    twins ``make`` builds from the statistics without each group (the groups of ``pass_options``:
    those the statistics were kept in). ``slots``: the statistics the
    consumer reads (the others are not merged for the twins). ``wrap``: LeftOutPass or a subclass
    (the ood family's groups the rows of other dumps by their own units)."""
    consumer = make(stats)
    if consumer is None or stats.groups is None or pass_options.grouping is None:
        return consumer
    twins = [make(left) for left in each_left_out(only_slots(stats, slots))]
    return wrap(consumer, twins, SamplingUnits(dump, pass_options))


def only_slots(stats, slots: tuple[str, ...]):
    """A LayerStats (and its groups) with only these slots."""
    groups = None if stats.groups is None else [only_slots(part, slots) for part in stats.groups]
    return dataclasses.replace(stats, specs={s: stats.specs[s] for s in slots},
                               accumulators={s: stats.accumulators[s] for s in slots if s in stats.accumulators},
                               groups=groups)
