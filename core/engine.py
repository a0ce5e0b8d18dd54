"""The one-pass statistics engine: every accumulator of a layer fed from one read of its rows.

>>> import numpy as np, tempfile, os
>>> from actgeom.core.dump import DumpWriter, Dump
>>> path = os.path.join(tempfile.mkdtemp(), "d.h5")
>>> with DumpWriter(path, layers={"h": 2}, dtype="float64") as w:
...     w.append({"h": np.array([[0., 0.], [2., 0.], [10., 10.], [12., 10.]])}, labels=[0, 0, 1, 1])
>>> with Dump(path) as dump:
...     stats = accumulate(dump)
>>> stats["h"].classes.finalize().means.tolist()
[[1.0, 0.0], [11.0, 10.0]]
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from actgeom.core.dump import Dump
from actgeom.core.entropy import SequenceEntropy
from actgeom.core.errors import InvalidInputError, UsageError
from actgeom.core.stats import ClassMoments, DirectionScatter, Reservoir, UnitStats, column_sums
from actgeom.core.stream import iter_blocks

NONFINITE_POLICIES = ("error", "drop")
TOKEN_SELECTIONS = "all | last | from:K"
UNIT_STATS = ("all", "directions", "none")

# progress(layer_name, rows_done, rows_total)
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class PassOptions:
    """What one pass computes; every field that shapes a number is recorded in the output."""

    threshold: float = 0.0  # a unit is active on a row when its value > threshold
    reservoir: int = 0  # rows kept in the seeded sample (0 = no sample)
    seed: int = 0
    nonfinite: str = "error"  # "error": refuse rows with NaN/inf; "drop": skip them and count
    row_range: tuple[int, int] | None = None  # rows [start, stop) of the dump; None = all
    row_offset: int = 0  # added to row numbers: this file's rows continue another's (shard files)
    block_rows: int | None = None  # rows per read block; None = about 8 MiB of float64
    use_labels: bool = True  # False: every row in one class (spectra need no labels)
    units: str = "all"  # per-unit statistics: "all", "directions" (only Σ x/‖x‖), or "none"
    class_moments: bool = True  # False: no class statistics (labels still reach the sample)
    direction_scatter: bool = False
    sequence_alpha: float | None = None  # token-level: per-sequence entropies of this Rényi order (needs offsets)  # also Σ uuᵀ of the L2-normalised rows (dataset entropy: one more GEMM)
    tokens: str = "all"  # token-level rows: all, the last of each sequence, or positions ≥ K ("from:K")

    def __post_init__(self) -> None:
        if self.nonfinite not in NONFINITE_POLICIES:
            raise UsageError(f"--nonfinite '{self.nonfinite}' is not one of {', '.join(NONFINITE_POLICIES)}")
        if self.reservoir < 0:
            raise UsageError(f"reservoir size must be ≥ 0, got {self.reservoir}")
        if self.row_offset < 0:
            raise UsageError(f"--row-offset must be ≥ 0, got {self.row_offset}")
        if self.block_rows is not None and self.block_rows < 1:
            raise UsageError(f"block rows must be ≥ 1, got {self.block_rows}")
        _first_position(self.tokens)  # validates `tokens`
        if self.units not in UNIT_STATS:
            raise UsageError(f"unit statistics '{self.units}' is not one of {', '.join(UNIT_STATS)}")

    @property
    def first_position(self) -> int | None:
        """K of "from:K", 0 for "all", None for "last"."""
        return _first_position(self.tokens)


def _first_position(tokens: str) -> int | None:
    if tokens in ("all", "last"):
        return 0 if tokens == "all" else None
    head, _, k = tokens.partition(":")
    if head != "from" or not k.isdigit():
        raise UsageError(f"--tokens '{tokens}' is not one of {TOKEN_SELECTIONS} (e.g. from:1 skips BOS rows)")
    return int(k)


@dataclass
class LayerStats:
    """Every sufficient statistic of one layer; mergeable across row ranges and shards."""

    layer: str
    n_units: int
    dtype: str
    n_rows: int  # rows used: selected by --tokens, non-finite ones dropped
    n_nonfinite: int  # rows with NaN/inf, dropped
    n_unlabeled: int  # rows with label -1: in unit statistics and the sample, not in class moments
    classes: ClassMoments
    units: UnitStats
    reservoir: Reservoir
    directions: DirectionScatter | None = None
    sequences: SequenceEntropy | None = None

    def merge(self, other: "LayerStats") -> None:
        if (other.layer, other.n_units) != (self.layer, self.n_units):
            raise InvalidInputError(
                f"cannot merge statistics of layer '{other.layer}' ({other.n_units} units) into "
                f"'{self.layer}' ({self.n_units} units)"
            )
        self.n_rows += other.n_rows
        self.n_nonfinite += other.n_nonfinite
        self.n_unlabeled += other.n_unlabeled
        self.classes.merge(other.classes)
        self.units.merge(other.units)
        self.reservoir.merge(other.reservoir)
        for family in ("directions", "sequences"):
            if getattr(self, family) is not None and getattr(other, family) is not None:
                getattr(self, family).merge(getattr(other, family))


def accumulate(dump: Dump, layers: list[str] | None = None, *, options: PassOptions = PassOptions(),
               progress: Progress | None = None) -> dict[str, LayerStats]:
    """One pass over each selected layer (all by default) → its :class:`LayerStats`."""
    selected = dump.layers if layers is None else [dump.layer(name) for name in layers]
    start, stop = options.row_range or (0, dump.n_rows)
    if not 0 <= start <= stop <= dump.n_rows:
        raise UsageError(f"row range {start}:{stop} is outside the dump's rows 0:{dump.n_rows}")
    selection = TokenSelection(dump, options)
    offsets = dump.offsets() if options.sequence_alpha is not None else None
    results = {}
    for layer in selected:
        stats = LayerStats(
            layer=layer.name, n_units=layer.n_units, dtype=layer.logical_dtype, n_rows=0, n_nonfinite=0,
            n_unlabeled=0, classes=ClassMoments(layer.n_units),
            units=UnitStats(layer.n_units, options.threshold, activity=options.units == "all"),
            reservoir=Reservoir(options.reservoir, layer.n_units, _sample_dtype(layer.storage_dtype), options.seed),
            directions=DirectionScatter(layer.n_units) if options.direction_scatter else None,
            sequences=None if offsets is None else SequenceEntropy(layer.n_units, options.sequence_alpha),
        )
        block_rows = options.block_rows or dump.block_rows(layer)
        bounds = None if offsets is None else sequence_blocks(offsets, start, stop, block_rows)
        for block in iter_blocks(dump, layer, start, stop, block_rows, bounds):
            if stats.sequences is not None:  # blocks end at sequence boundaries: whole sequences
                end = block.start + block.X.shape[0]
                inside = offsets[(offsets > block.start) & (offsets < end)]
                stats.sequences.update(block.X, np.r_[block.start, inside, end] - block.start)
            keep = selection.mask(block.start, block.start + block.X.shape[0])
            X, labels = (block.X, block.labels) if keep is None else (block.X[keep], _take(block.labels, keep))
            first = options.row_offset + block.start  # the sample is keyed by global row numbers
            _feed(stats, first, X, labels if options.use_labels else None,
                  index=None if keep is None else first + np.flatnonzero(keep), unit_stats=options.units != "none",
                  class_moments=options.class_moments)
            if progress is not None:
                progress(layer.name, block.start + block.X.shape[0] - start, stop - start)
        if stats.n_nonfinite and options.nonfinite == "error":
            raise InvalidInputError(
                f"layer '{layer.name}' in {dump.path} has {stats.n_nonfinite} rows with NaN or inf values; "
                "pass --nonfinite drop to skip them"
            )
        results[layer.name] = stats
    return results


def sequence_blocks(offsets: np.ndarray, start: int, stop: int, block_rows: int) -> list[tuple[int, int]]:
    """Row blocks of about ``block_rows`` that end at sequence boundaries (a sequence longer
    than a block is a block of its own); sequences cut by [start, stop) keep the part inside."""
    cuts = offsets[(offsets > start) & (offsets < stop)]
    bounds, a = [], start
    while a < stop:
        limit = a + block_rows
        inside = cuts[(cuts > a) & (cuts <= limit)]
        b = int(inside[-1]) if inside.size else int(cuts[cuts > a][0]) if (cuts > a).any() else stop
        b = stop if limit >= stop else b
        bounds.append((a, b))
        a = b
    return bounds


def _sample_dtype(storage_dtype: str) -> type:
    """float32 holds every float16, bfloat16 and float32 value exactly (and casts to it are fast)."""
    return np.float64 if storage_dtype == "float64" else np.float32


class TokenSelection:
    """Which rows of a token-level dump a pass uses (PassOptions.tokens), block by block."""

    def __init__(self, dump: Dump, options: PassOptions):
        self.dump, self.first = dump, options.first_position
        self.offsets = None
        if options.tokens != "all" and (self.first is None or dump.positions_path is None):
            self.offsets = dump.offsets()
            if self.offsets is None:
                raise InvalidInputError(f"--tokens {options.tokens} needs token positions (/rows/position) or "
                                        f"sequence offsets (--offsets) in {dump.path}")

    def mask(self, start: int, stop: int) -> np.ndarray | None:
        """Boolean mask of the selected rows in [start, stop), or None for all of them."""
        if self.first == 0:
            return None
        rows = np.arange(start, stop)
        if self.first is None:  # the last row of each sequence: the row before the next boundary
            return np.isin(rows + 1, self.offsets[1:])
        positions = self.dump.positions(start, stop) if self.offsets is None else \
            rows - self.offsets[np.searchsorted(self.offsets, rows, side="right") - 1]
        return positions >= self.first


def _take(values: np.ndarray | None, keep: np.ndarray) -> np.ndarray | None:
    return None if values is None else values[keep]


def _finite(x: np.ndarray) -> bool:
    """Whether every value is finite, from one matrix-vector product (inf/NaN propagate)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return bool(np.isfinite(column_sums(x)).all())


def _feed(stats: LayerStats, start: int, x: np.ndarray, labels: np.ndarray | None,
          index: np.ndarray | None = None, unit_stats: bool = True, class_moments: bool = True) -> None:
    """Feed one block of float64 rows (global row numbers ``index``, default start, start+1, …)
    to every accumulator of a layer."""
    n = x.shape[0]
    index = np.arange(start, start + n) if index is None else index
    y = np.zeros(n, dtype=np.int64) if labels is None else labels
    if np.any(y < -1):
        bad = int(y[y < -1][0])
        raise InvalidInputError(f"label {bad} at a row of layer '{stats.layer}': labels are class indices ≥ 0, or -1 for none")
    if not (stats.units.update(x) if unit_stats else _finite(x)):  # NaN/inf: find those rows (rare, so now)
        finite = np.isfinite(x).all(axis=1)
        stats.n_nonfinite += int(n - finite.sum())
        x, y, index = x[finite], y[finite], index[finite]
        if unit_stats:
            stats.units.update(x)
    stats.n_rows += x.shape[0]
    stats.reservoir.update(x, y, index)
    if stats.directions is not None:
        stats.directions.update(x)
    labelled = y >= 0
    if not labelled.all():
        stats.n_unlabeled += int((~labelled).sum())
        x, y = x[labelled], y[labelled]
    if class_moments:
        stats.classes.update(x, y)


def options_record(options: PassOptions) -> dict:
    """The pass options as plain JSON-ready values (for provenance in every output)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items()}
