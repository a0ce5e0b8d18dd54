"""The family protocol: what a metric family (collapse, rank, entropy, ...) declares.

A family says which accumulators it needs for given options (:class:`~actgeom.core.accumulators.Spec`),
lists its metrics in a registry (:class:`Metric`: name, what it needs, ideal value and range,
direction, invariances, source, and the test that checks it), and turns one layer's finalised
statistics into a record: metrics, unavailable metrics with the reason, notes. Running several
families runs the union of their accumulators in one pass per layer (core/api.py); a family that
needs a second pass (NC4 needs the final class means) returns a consumer for one shared second pass.

Adding a metric = one pure function + one registry entry; the common tests (tests/test_registry.py)
then check its docstring, its place in docs/metrics.md and the README, its test, its declared
invariances, and that it is finite on sample_data/.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

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


@dataclass
class LayerRecord:
    """One family's result for one layer."""

    metrics: dict = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    fields: dict = field(default_factory=dict)  # what else the family reports about the layer (counts, sizes)
    details: dict = field(default_factory=dict)  # arrays for plots (spectra, per-unit rates), on request

    def __post_init__(self) -> None:
        both = set(self.metrics) & set(self.unavailable)
        assert not both, f"a metric is either a value or unavailable, never both: {sorted(both)}"


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


def threshold_problem(ctx: LayerContext, threshold: float | None) -> str | None:
    """Why a layer has no firing threshold (the value a unit must exceed to be active), or None:
    one is given, the layer is marked ReLU (its ``activation`` attribute; 0 then), or its
    statistics were fed from memory (0 then). The one reason every family gives."""
    if threshold is not None or ctx.dump is None or str(ctx.attrs.get("activation", "")).lower() == "relu":
        return None
    return (f"layer '{ctx.name}' is not marked ReLU (attribute activation); give --threshold for the value a unit "
            "must exceed to count as active")


@dataclass(frozen=True)
class Unavailable:
    """A value a metric function returns when the metric is undefined here, with the reason."""

    reason: str


@dataclass(frozen=True)
class Family:
    """A metric family: its options, registry, accumulator needs and per-layer record.

    needs(options, facts) → specs; layer(context, options) → LayerRecord;
    second_pass(context, options) → a consumer of the shared second pass, or None;
    file_record(layer_records, options) → extra per-file entries (e.g. the separation law).
    ``facts`` is a :class:`DumpFacts`; ``context`` a :class:`LayerContext` (core/api.py).
    """

    name: str
    options_class: type
    metrics: dict[str, Metric]
    needs: Callable[..., list]  # of accumulator specs (core/accumulators/)
    layer: Callable[..., LayerRecord]
    second_pass: Callable | None = None
    file_record: Callable | None = None


@dataclass(frozen=True)
class DumpFacts:
    """What a family's needs may depend on, known before the pass."""

    token_level: bool = False  # rows are tokens with sequence offsets
    has_labels: bool = False
    has_predictions: bool = False
    row_vectors: frozenset[str] = frozenset()  # per-row vectors a pass can read: "token_id", "position", ...


@dataclass
class LayerContext:
    """Everything a family may use to make one layer's record.

    ``classifier`` is (W, b or None) when the dump's classifier reads this layer; otherwise
    ``classifier_problem`` says why there is none. ``second`` holds the results of the shared
    second pass by family name. ``dump`` is None for statistics fed from memory."""

    name: str
    n_units: int
    dtype: str
    attrs: dict
    stats: object  # LayerStats
    pass_options: object  # PassOptions
    dump: object = None  # Dump
    classifier: tuple | None = None
    classifier_problem: str | None = None
    second: dict = field(default_factory=dict)
    details: bool = False
    layers: dict = field(default_factory=dict)  # every layer's statistics by name (families relating two layers)
