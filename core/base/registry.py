"""The metric registry: what a metric declares and how a family's metrics are evaluated.

A family lists its metrics in a registry (:class:`Metric`: name, what it needs, ideal value and
range, direction, invariances, source, and the test that checks it); :func:`evaluate` computes
every metric whose needs are met for one layer and says why the others are unavailable; a metric
function returns :class:`Unavailable` with the reason when its metric is undefined on the data.

Adding a metric = one pure function + one registry entry; the common tests (tests/test_registry.py)
then check its docstring, its place in docs/metrics.md and the README, its test, its declared
invariances, and that it is finite on sample_data/.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

DIRECTIONS = ("lower", "higher", "neither")  # which way is better; "neither": a description, not a score
INVARIANCES = ("scale", "rotation", "shift", "affine")  # of the rows: x → s·x, Q·x, x + t, A·x + t
NEEDS = ("labels", "weight", "bias", "decision", "sample", "offsets", "threshold", "layer_width", "dump",
         "token_ids", "positions", "vae_mu", "vae_logvar")


@dataclass(frozen=True)
class Metric:
    """A registry entry. ``compute(inputs, options)`` returns a dict of values, possibly for
    several entries sharing the function (one eigendecomposition, several numbers); it is called
    once per layer however many entries name it."""

    name: str
    family: str
    compute: Callable
    formula: str = ""  # the definition in one line (docs/metrics.md); the function's docstring has the details
    needs: tuple[str, ...] = ()
    ideal: float | None = None
    range: tuple[float, float] = (-math.inf, math.inf)
    direction: str = "lower"
    invariant: frozenset[str] = frozenset()
    source: str = ""
    test: str = ""  # "tests/test_x.py::test_name": its closed-form or slow-reference check
    exempt: str = ""  # why no such test exists (instead of ``test``)
    log_scale: bool = False  # spans decades: plot on a log axis
    diagnostic: bool = False  # describes how another metric was computed (a count, a size), not a score

    def __post_init__(self) -> None:
        assert self.direction in DIRECTIONS, self.direction
        assert set(self.invariant) <= set(INVARIANCES), self.invariant
        assert set(self.needs) <= set(NEEDS), self.needs

    def info(self) -> dict:
        """JSON-ready description (the document's ``metrics_info``)."""
        low, high = self.range
        return {"family": self.family, "ideal": self.ideal,
                "range": [None if math.isinf(low) else low, None if math.isinf(high) else high],
                "direction": self.direction, "invariant": sorted(self.invariant), "source": self.source,
                "log_scale": self.log_scale, "diagnostic": self.diagnostic}


def registry(family: str, *entries: dict) -> dict[str, Metric]:
    """A family's registry from entries written as dicts (their ``family`` filled in)."""
    metrics = [Metric(family=family, **entry) for entry in entries]
    return {metric.name: metric for metric in metrics}


def evaluate(metrics: dict[str, Metric], inputs, options, missing: dict[str, str]) -> tuple[dict, dict[str, str]]:
    """Every registered metric whose needs are met → (values, reasons for the others).

    ``missing`` maps a need (labels, weight, sample, ...) to why it is not met for this layer."""
    values: dict = {}
    unavailable: dict[str, str] = {}
    done: set[Callable] = set()
    for metric in metrics.values():
        absent = [need for need in metric.needs if need in missing]
        if absent:
            unavailable[metric.name] = missing[absent[0]]
            continue
        if metric.compute not in done:
            done.add(metric.compute)
            values.update(metric.compute(inputs, options))
    for name in list(values):  # a computation may find a metric undefined: it says why
        if isinstance(values[name], Unavailable):
            unavailable.setdefault(name, values.pop(name).reason)
    # a shared computation also returns the metrics whose needs are not met: they stay unavailable
    return {name: values[name] for name in metrics if name in values and name not in unavailable}, unavailable


@dataclass(frozen=True)
class Unavailable:
    """A value a metric function returns when the metric is undefined here, with the reason."""

    reason: str
