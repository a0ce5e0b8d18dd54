"""The one-pass statistics engine: every accumulator of a layer fed from one read of its rows.

>>> import numpy as np, tempfile, os
>>> from actgeom.core.dump import DumpWriter, Dump
>>> path = os.path.join(tempfile.mkdtemp(), "d.h5")
>>> with DumpWriter(path, layers={"h": 2}, dtype="float64") as w:
...     w.append({"h": np.array([[0., 0.], [2., 0.], [10., 10.], [12., 10.]])}, labels=[0, 0, 1, 1])
>>> from actgeom.core.state.accumulators import MomentsSpec
>>> with Dump(path) as dump:
...     stats = accumulate(dump, specs=[MomentsSpec(by_class=True)])
>>> stats["h"].get("moments").classes.means.tolist()
[[1.0, 0.0], [11.0, 10.0]]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import numpy as np

from actgeom.core.base.errors import InvalidInputError, OptionError, UsageError
from actgeom.core.base.options import NONFINITE_POLICIES, PRODUCTS
from actgeom.core.base.stats import column_sums
from actgeom.core.dump import Dump, LayerInfo
from actgeom.core.state.accumulators import ACCUMULATORS, Rows, Spec, union
from actgeom.core.state.groups import BlockSplit, Grouping, Parts, SamplingUnits, block_factor, parts_of, settle
from actgeom.core.state.stream import iter_blocks

SIXTEEN_BIT = ("float16", "bfloat16")  # the layers whose storage noise allows float32 block products
TOKEN_SELECTIONS = "all | last | from:K"

# progress(layer_name, rows_done, rows_total). It may also have a method stage(layer_name, text,
# seconds): a long step after the pass (core/base/stages.py) and its estimated duration (None: unknown).
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class PassOptions:
    """Which rows a pass reads and how; every field that shapes a number is recorded in the output.
    (What the pass keeps of them is the accumulators' specs, asked for by the families.)"""

    nonfinite: str = "error"  # "error": refuse rows with NaN/inf; "drop": skip them and count
    tokens: str = "all"  # token-level rows: all, the last of each sequence, or positions ≥ K ("from:K")
    row_range: tuple[int, int] | None = None  # rows [start, stop) of the dump; None = all
    row_offset: int = 0  # added to row numbers: this file's rows continue another's (shard files)
    block_rows: int | None = None  # rows per read block; None = about 8 MiB of float64
    products: str = "float64"  # D×D products of blocks: "float64", or "float32" for 16-bit layers (stats.BlockProducts)
    ci_groups: int = 0  # jackknife groups of sampling units (core/state/groups.py); 0: no groups, no intervals
    ci_seed: int = 0  # the seed of the groups' hash
    null: int = 0  # label permutations for the nulls (core/nulls.py); 0: none
    null_seed: int = 0  # the seed of the permutations

    def __post_init__(self) -> None:
        if self.nonfinite not in NONFINITE_POLICIES:
            raise OptionError("nonfinite", self.nonfinite, f"is not one of {', '.join(NONFINITE_POLICIES)}")
        if self.row_offset < 0:
            raise OptionError("row_offset", self.row_offset, "must be ≥ 0")
        if self.products not in PRODUCTS:
            raise OptionError("products", self.products, f"is not one of {', '.join(PRODUCTS)}")
        if self.block_rows is not None and self.block_rows < 1:
            raise OptionError("block_rows", self.block_rows, "must be ≥ 1")
        _first_position(self.tokens)  # validates `tokens`
        _ = self.grouping  # validates `ci_groups`, `ci_seed`
        if self.null < 0 or self.null_seed < 0:
            raise OptionError("null" if self.null < 0 else "null_seed", min(self.null, self.null_seed), "must be ≥ 0")
        if self.null and self.row_offset:
            raise OptionError("null", self.null, "permutes the labels of one whole dump; a shard file with a row offset "
                              "holds part of them (run --null on the dump, whose --rows ranges merge exactly)")

    @property
    def grouping(self) -> Grouping | None:
        """The jackknife groups of the pass, or None (``ci_groups`` 0)."""
        return Grouping(self.ci_groups, self.ci_seed) if self.ci_groups else None

    @property
    def first_position(self) -> int | None:
        """K of "from:K", 0 for "all", None for "last"."""
        return _first_position(self.tokens)


def _first_position(tokens: str) -> int | None:
    if tokens in ("all", "last"):
        return 0 if tokens == "all" else None
    head, _, k = tokens.partition(":")
    if head != "from" or not k.isdigit():
        raise OptionError("tokens", tokens, f"is not one of {TOKEN_SELECTIONS} (e.g. from:1 skips BOS rows)")
    return int(k)


@dataclass
class LayerStats:
    """Every accumulator of one layer (by slot) and the row counts of its pass; mergeable."""

    layer: str
    n_units: int
    dtype: str
    n_rows: int = 0  # rows used: selected by --tokens, non-finite ones dropped
    n_nonfinite: int = 0  # rows with NaN/inf, dropped
    n_unlabeled: int = 0  # rows with label -1: in unit statistics and the sample, not in class moments
    specs: dict[str, Spec] = field(default_factory=dict)
    accumulators: dict = field(default_factory=dict)
    groups: list[LayerStats] | None = None  # the same statistics per jackknife group; the total is their merge

    def get(self, slot: str):
        """The finalised statistic of a slot (None when the pass did not keep it)."""
        acc = self.accumulators.get(slot)
        return None if acc is None else acc.finalize()

    def merge(self, other: "LayerStats") -> None:
        if (other.layer, other.n_units) != (self.layer, self.n_units):
            raise InvalidInputError(
                f"cannot merge statistics of layer '{other.layer}' ({other.n_units} units) into "
                f"'{self.layer}' ({self.n_units} units)"
            )
        if other.specs != self.specs:
            raise InvalidInputError(f"cannot merge statistics of layer '{self.layer}' kept differently: "
                                    f"{_describe(self.specs)} vs {_describe(other.specs)}")
        if (self.groups is None) != (other.groups is None) or len(self.groups or ()) != len(other.groups or ()):
            raise InvalidInputError(f"cannot merge statistics of layer '{self.layer}' kept in "
                                    f"{len(self.groups or ())} and {len(other.groups or ())} jackknife groups (--ci-groups)")
        self.n_rows += other.n_rows
        self.n_nonfinite += other.n_nonfinite
        self.n_unlabeled += other.n_unlabeled
        for slot, acc in self.accumulators.items():
            acc.merge(other.accumulators[slot])
        for part, other_part in zip(self.groups or (), other.groups or ()):
            part.merge(other_part)


def _describe(specs: dict[str, Spec]) -> str:
    return ", ".join(f"{slot} {spec.record()}" for slot, spec in specs.items()) or "(nothing)"


def new_layer_stats(layer: LayerInfo, specs: dict[str, Spec], products: str = "float64", groups: int = 0) -> LayerStats:
    """Empty statistics of a layer; with ``groups``, one set per group (the total, their merge, is
    made when the pass ends: core/state/groups.py settle)."""
    if groups:
        return LayerStats(layer=layer.name, n_units=layer.n_units, dtype=layer.logical_dtype, specs=dict(specs),
                          groups=[new_layer_stats(layer, specs, products) for _ in range(groups)])
    return LayerStats(layer=layer.name, n_units=layer.n_units, dtype=layer.logical_dtype, specs=dict(specs),
                      accumulators={slot: spec.build(layer.n_units, layer.storage_dtype, products)
                                    for slot, spec in specs.items()})


def accumulate(dump: Dump, layers: list[str] | None = None, *, specs: Iterable[Spec] | dict[str, Spec],
               options: PassOptions = PassOptions(), progress: Progress | None = None,
               check: bool = True) -> dict[str, LayerStats]:
    """One pass over each selected layer (all by default), feeding every accumulator of ``specs``
    (their union: one per slot) from one read of each block → :class:`LayerStats` by layer.
    ``check=False``: leave :func:`check_rows` to the caller (a row range of a larger pass)."""
    specs = specs if isinstance(specs, dict) else union(specs)
    unknown = set(specs) - set(ACCUMULATORS)
    if unknown:
        raise UsageError(f"unknown statistics {sorted(unknown)}")
    selected = dump.layers if layers is None else [dump.layer(name) for name in layers]
    wide = [layer for layer in selected if layer.logical_dtype not in SIXTEEN_BIT]
    if options.products == "float32" and wide:
        raise OptionError("products", "float32", f"is for float16/bfloat16 layers, whose storage noise exceeds its "
                          f"rounding; layer '{wide[0].name}' in {dump.path} is {wide[0].logical_dtype}")
    start, stop = options.row_range or (0, dump.n_rows)
    if not 0 <= start <= stop <= dump.n_rows:
        raise UsageError(f"row range {start}:{stop} is outside the dump's rows 0:{dump.n_rows}")
    selection = TokenSelection(dump, options)
    offsets = dump.offsets() if "sequences" in specs else None
    if "sequences" in specs and offsets is None:
        raise InvalidInputError(f"sequence entropies need sequence offsets (--offsets) in {dump.path}")
    readers = {name: read for spec in specs.values() for name, read in spec.readers(dump).items()}
    wanted = RowVectors(dump, sorted({name for spec in specs.values() for name in spec.row_vectors}), options.row_offset,
                        readers)
    units = SamplingUnits(dump, options)
    results = {}
    for layer in selected:
        stats = new_layer_stats(layer, specs, options.products, options.ci_groups)
        split = BlockSplit()
        block_rows = options.block_rows or dump.block_rows(layer) * block_factor(options.ci_groups)
        bounds = None if offsets is None else sequence_blocks(offsets, start, stop, block_rows)
        # the reader sorts a grouped pass's rows by group, unless blocks keep sequences whole or lose rows
        arrange = units.parts if stats.groups is not None and offsets is None and selection.first == 0 else None
        for block in iter_blocks(dump, layer, start, stop, block_rows, bounds, arrange):
            end = block.start + block.X.shape[0]
            boundaries = None
            if offsets is not None:  # blocks end at sequence boundaries: whole sequences
                boundaries = np.r_[block.start, offsets[(offsets > block.start) & (offsets < end)], end] - block.start
            keep = selection.mask(block.start, end)
            X, labels = (block.X, block.labels) if keep is None else (block.X[keep], _take(block.labels, keep))
            first = options.row_offset + block.start  # the sample is keyed by global row numbers
            index = np.arange(first, first + X.shape[0]) if keep is None else first + np.flatnonzero(keep)
            vectors = wanted.read(block.start, end, keep)
            block_groups = None if block.parts is not None else units.groups(block.start, end)  # (sorted: the reader's)
            groups = block_groups if keep is None or block_groups is None else block_groups[keep]
            feed(stats, X, labels, index, block=block.X, boundaries=boundaries, vectors=vectors,
                 groups=groups, block_groups=block_groups, split=block.parts or split)
            if progress is not None:
                progress(layer.name, end - start, stop - start)
        if stats.groups is not None:
            settle(stats)
        if check:
            check_rows(stats, dump.path, options, shard=(start, stop) != (0, dump.n_rows))
        results[layer.name] = stats
    return results


def check_rows(stats: LayerStats, path, options: PassOptions, shard: bool = False) -> None:
    """Refuse a layer's statistics with NaN/inf rows (unless --nonfinite drop) or with no row left
    (``shard``, a range of the rows: a range may hold none, the merged statistics may)."""
    if stats.n_nonfinite and options.nonfinite == "error":
        raise InvalidInputError(
            f"layer '{stats.layer}' in {path} has {stats.n_nonfinite} rows with NaN or inf values; "
            "pass --nonfinite drop to skip them"
        )
    if stats.n_nonfinite and stats.n_rows == 0 and not shard:
        raise InvalidInputError(f"every row of layer '{stats.layer}' in {path} holds NaN or inf values "
                                f"({stats.n_nonfinite} dropped): nothing is left to measure")


class RowVectors:
    """The per-row vectors that specs ask for (Spec.row_vectors), read block by block: /rows/<name>
    (e.g. "position", "token_id"), and "sequence": each row's sequence, named by the global row
    number of its first row, offsets[searchsorted(offsets, row, side="right") − 1] + row_offset —
    the same in every block, row range and shard file; and those a spec reads itself (``readers``:
    {name: function of (start, stop)}, e.g. the labels under permutations)."""

    def __init__(self, dump: Dump, names, row_offset: int = 0, readers: dict | None = None):
        self.dump, self.names, self.row_offset, self.readers = dump, tuple(names), row_offset, readers or {}
        self.offsets = dump.offsets() if "sequence" in self.names else None
        if "sequence" in self.names and self.offsets is None:  # (only the probe's split asks for sequences)
            raise InvalidInputError(f"--split-by sequence needs sequence offsets (/sequences/offsets, or --offsets) "
                                    f"in {dump.path}, which has none")

    def read(self, start: int, stop: int, keep: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Each vector of rows [start, stop), selected by ``keep`` like the rows."""
        vectors = {name: self._read(name, start, stop) for name in self.names}
        return vectors if keep is None else {name: values[keep] for name, values in vectors.items()}

    def _read(self, name: str, start: int, stop: int) -> np.ndarray:
        if name in self.readers:
            return self.readers[name](start, stop)
        if name != "sequence":
            return self.dump.row_vector(name, start, stop)
        rows = np.arange(start, stop)
        return self.row_offset + self.offsets[np.searchsorted(self.offsets, rows, side="right") - 1]


def feed(stats: LayerStats, X: np.ndarray, labels: np.ndarray | None, index: np.ndarray, *,
         block: np.ndarray | None = None, boundaries: np.ndarray | None = None, vectors: dict | None = None,
         groups: np.ndarray | None = None, block_groups: np.ndarray | None = None,
         split: BlockSplit | Parts | None = None) -> None:
    """Feed one block of float64 rows (global row numbers ``index``, per-row ``vectors``) to every
    accumulator of a layer; rows with NaN/inf are dropped and counted. Grouped statistics: each
    row feeds its group's (``groups`` per row; ``block_groups`` per row of the whole block;
    ``split``: the reused buffers of a pass, :class:`~actgeom.core.state.groups.BlockSplit`, or the
    block's Parts when X's rows already are in their order: the reader put them so)."""
    vectors = vectors or {}
    y = np.zeros(X.shape[0], dtype=np.int64) if labels is None else labels
    if stats.groups is not None:
        _feed_groups(stats, Rows(X=X, labels=y, index=index, block=block, boundaries=boundaries, vectors=vectors),
                     groups, block_groups, split or BlockSplit())
        return
    if np.any(y < -1):
        bad = int(y[y < -1][0])
        raise InvalidInputError(f"label {bad} at a row of layer '{stats.layer}': labels are class indices ≥ 0, or -1 for none")
    n = X.shape[0]
    if n and not _finite(X):  # NaN/inf: find those rows (rare, so now)
        finite = np.isfinite(X).all(axis=1)
        stats.n_nonfinite += int(n - finite.sum())
        X, y, index = X[finite], y[finite], index[finite]
        vectors = {name: values[finite] for name, values in vectors.items()}
    stats.n_rows += X.shape[0]
    stats.n_unlabeled += int((y < 0).sum())
    rows = Rows(X=X, labels=y, index=index, block=block, boundaries=boundaries, vectors=vectors)
    for acc in stats.accumulators.values():
        acc.update(rows)


def _feed_groups(stats: LayerStats, rows: Rows, groups: np.ndarray, block_groups: np.ndarray | None,
                 split: BlockSplit | Parts) -> None:
    """Feed each group's statistics its rows: the block sorted once by group (stable, so each group
    keeps its rows in order: exactly the rows, in the order, a mask ``groups == g`` selects), each
    group's rows then a contiguous slice. The whole block (``rows.block``) is split only for the
    sequence statistics that read it (``rows.boundaries``)."""
    if isinstance(split, Parts):  # sorted by the reader
        parts, X = split, rows.X
    else:
        parts = parts_of(groups, len(stats.groups))
        X = split.rows(rows.X, parts.order)
    y, index = rows.labels[parts.order], rows.index[parts.order]
    vectors = {name: values[parts.order] for name, values in rows.vectors.items()}
    whole_block = rows.boundaries is not None and rows.block is not None and block_groups is not None
    present = np.unique(block_groups) if block_groups is not None else parts.present
    for g in present:
        mine = slice(parts.starts[g], parts.starts[g + 1])
        whole = None if block_groups is None or not whole_block else block_groups == g
        feed(stats.groups[g], X[mine], y[mine], index[mine], vectors={k: v[mine] for k, v in vectors.items()},
             block=rows.block[whole] if whole_block else None, boundaries=_kept_boundaries(rows.boundaries, whole))


def _kept_boundaries(boundaries: np.ndarray | None, whole: np.ndarray | None) -> np.ndarray | None:
    """The boundaries of the whole sequences a block keeps (``whole``: which rows of the block)."""
    if boundaries is None or whole is None:
        return boundaries
    lengths = np.diff(boundaries)
    kept = lengths[(lengths > 0) & whole[np.minimum(boundaries[:-1], whole.size - 1)]]
    return np.r_[0, np.cumsum(kept)].astype(boundaries.dtype)


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


def second_pass(dump: Dump, layer: LayerInfo, consumers: list, options: PassOptions,
                progress: Progress | None = None) -> None:
    """One more read of a layer, shared by every consumer that needs finalised statistics (NC4
    needs the final class means). Each consumer gets update(start, X, labels, usable): the whole
    float64 block, its labels (0 without a label dataset) and which rows the first pass used
    (selected by --tokens, finite)."""
    start, stop = options.row_range or (0, dump.n_rows)
    selection = TokenSelection(dump, options)
    for block in iter_blocks(dump, layer, start, stop, options.block_rows or dump.block_rows(layer)):
        end = block.start + block.X.shape[0]
        labels = np.zeros(block.X.shape[0], dtype=np.int64) if block.labels is None else block.labels
        selected = selection.mask(block.start, end)
        usable = np.isfinite(block.X).all(axis=1)
        if selected is not None:
            usable &= selected
        for consumer in consumers:
            consumer.update(block.start, block.X, labels, usable)
        if progress is not None:
            progress(f"{layer.name} (second pass)", end - start, stop - start)


def options_record(options: PassOptions) -> dict:
    """The pass options as plain JSON-ready values (for provenance in every output)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items()}
