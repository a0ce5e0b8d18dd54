"""The family protocol: what a metric family (collapse, rank, entropy, ...) declares.

A family says which accumulators it needs for given options (:class:`~actgeom.core.state.accumulators.Spec`),
lists its metrics in a registry (core/base/registry.py), and turns one layer's finalised statistics into a
record: metrics, unavailable metrics with the reason, notes. Running several families runs the union
of their accumulators in one pass per layer (core/analysis.py); a family that needs a second pass (NC4
needs the final class means) returns a consumer for one shared second pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from actgeom.core.base.registry import Metric


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


def threshold_problem(ctx: LayerContext, threshold: float | None) -> str | None:
    """Why a layer has no firing threshold (the value a unit must exceed to be active), or None:
    one is given, the layer is marked ReLU (its ``activation`` attribute; 0 then), or its
    statistics were fed from memory (0 then). The one reason every family gives."""
    if threshold is not None or ctx.dump is None or str(ctx.attrs.get("activation", "")).lower() == "relu":
        return None
    return (f"layer '{ctx.name}' is not marked ReLU (attribute activation); give --threshold for the value a unit "
            "must exceed to count as active")


@dataclass(frozen=True)
class Family:
    """A metric family: its options, registry, accumulator needs and per-layer record.

    needs(options, facts) → specs; layer(context, options) → LayerRecord;
    second_pass(context, options) → a consumer of the shared second pass, or None;
    file_record(layer_records, options) → extra per-file entries (e.g. the separation law).
    ``facts`` is a :class:`DumpFacts`, ``context`` a :class:`LayerContext` (both below).
    """

    name: str
    options_class: type
    metrics: dict[str, Metric]
    needs: Callable[..., list]  # of accumulator specs (core/state/accumulators/)
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
    replicate: bool = False  # the statistics leave out a jackknife group (core/inference.py): an interval's re-evaluation
    # Under label permutations (core/nulls.py): {"total": every labelled row as one ClassStats}, the same dict for
    # the K re-evaluations of a layer (the total does not move with the labels): a family may keep in it what it
    # computes once from the total (collapse: the eigenpairs of its scatter, core/metrics/collapse_null.py).
    permuted: dict | None = None
