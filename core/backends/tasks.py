"""The tasks of the Dask backend, run on the workers, and the row ranges they cover.

A first-wave task is (file, dump spec, accumulator specs, pass options with a row range): it opens
the file itself, runs the engine over its rows and returns the statistics as plain arrays
(core/state/partial.py's format, never h5py objects). Merge tasks join two adjacent ranges' results. A
second-wave task runs a layer's second pass (NC4, the probe's test rows) over one range with the
finalised statistics it was sent. A compare task runs core/state/compare_pass.py over one range of
aligned files. User errors a task finds (NaN rows, bad labels) are returned, not raised, so Dask
does not retry them.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

from actgeom.core.analysis import layer_context, second_pass_consumers
from actgeom.core.base.errors import ActgeomError
from actgeom.core.dump import Dump
from actgeom.core.state.compare_pass import CompareMoments, Stream, accumulate_rows
from actgeom.core.state.engine import PassOptions, accumulate, second_pass
from actgeom.core.state.partial import merge_partials, provenance, stats_arrays, stats_from_arrays


def row_ranges(n_rows: int, n_ranges: int, chunk_rows: int = 1, offsets: np.ndarray | None = None) -> list[tuple[int, int]]:
    """About ``n_ranges`` consecutive ranges covering rows [0, n_rows): each cut on a multiple of
    ``chunk_rows`` (whole HDF5 chunks), moved to the next sequence boundary of ``offsets`` when
    given (token-level dumps: no sequence is cut)."""
    step = max(1, math.ceil(n_rows / max(n_ranges, 1)))
    step = math.ceil(step / chunk_rows) * chunk_rows
    cuts = np.arange(step, n_rows, step)
    if offsets is not None and cuts.size:
        cuts = np.unique(offsets[np.minimum(np.searchsorted(offsets, cuts), offsets.size - 1)])
        cuts = cuts[(cuts > 0) & (cuts < n_rows)]
    bounds = [0, *map(int, cuts), n_rows]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a] or [(0, 0)]


def task_ranges(dump: Dump, n_ranges: int) -> list[tuple[int, int]]:
    """The first-wave ranges of a dump: :func:`row_ranges` on its chunks and sequence offsets."""
    return row_ranges(dump.n_rows, n_ranges, _chunk_rows(dump), dump.offsets())


def _chunk_rows(dump: Dump) -> int:
    """Rows of a whole chunk in every layer of the dump (see :func:`common_chunk_rows`)."""
    return common_chunk_rows(dump.layers, dump.n_rows)


def common_chunk_rows(layers, n_rows: int) -> int:
    """Rows of a whole chunk in every one of ``layers`` (their least common multiple; the largest
    chunk when that exceeds the rows), 1 when contiguous."""
    rows = 1
    for layer in layers:
        rows = math.lcm(rows, layer.chunk_rows or 1)
    return rows if rows <= max(n_rows, 1) else max(layer.chunk_rows or 1 for layer in layers)


def _error(exc: ActgeomError) -> dict:
    return {"error": [exc.exit_code, exc.for_cli() if hasattr(exc, "for_cli") else str(exc)]}


def first_wave(path: str, spec, specs: dict, options: PassOptions) -> dict:
    """Statistics of one row range of one file, as plain arrays with their provenance."""
    try:
        with Dump(path, spec) as dump:
            stats = accumulate(dump, specs=specs, options=options, check=False)
            return stats_arrays(stats, provenance(dump, options))
    except ActgeomError as exc:
        return _error(exc)


def merge_pair(a: dict, b: dict) -> dict:
    """Two adjacent ranges' statistics → those of both (provenance checked and joined)."""
    if "error" in a or "error" in b:
        return a if "error" in a else b
    merged, meta = merge_partials([("a range", *stats_from_arrays(a)), ("the next range", *stats_from_arrays(b))])
    return stats_arrays(merged, meta)


def second_wave(path: str, spec, layer: str, families: dict, layer_arrays: dict, options: PassOptions) -> dict:
    """One row range of a layer's second pass → each consumer's part (plain values), by family."""
    try:
        with Dump(path, spec) as dump:
            stats, _ = stats_from_arrays(layer_arrays)
            ctx = layer_context(dump, layer, stats, options, dump.classifier())
            consumers = second_pass_consumers(ctx, families)
            second_pass(dump, dump.layer(layer), list(consumers.values()), options)
            return {"parts": {name: consumer.partial() for name, consumer in consumers.items()}}
    except ActgeomError as exc:
        return _error(exc)


def compare_rows(files: list, layers: list, pairs: list, settings: dict, meta: dict) -> dict:
    """The compare pass over one row range (``meta["rows"]``) of aligned files → its moments as plain
    arrays. ``files``: (path, dump spec); ``layers``: (file index, dataset path) of each stream."""
    try:
        with contextlib.ExitStack() as stack:
            dumps = [stack.enter_context(Dump(path, spec)) for path, spec in files]
            streams = [Stream(dumps[f], dumps[f].layer(name)) for f, name in layers]
            moments = accumulate_rows(streams, [tuple(p) for p in pairs], rows=tuple(meta["rows"][0]), **settings)
            return moments.to_arrays(meta)
    except ActgeomError as exc:
        return _error(exc)


def merge_compare(a: dict, b: dict) -> dict:
    """Two row ranges' compare moments → those of both (their rows joined in the header)."""
    if "error" in a or "error" in b:
        return a if "error" in a else b
    (moments, meta), (other, other_meta) = CompareMoments.from_arrays(a), CompareMoments.from_arrays(b)
    moments.merge(other)
    return moments.to_arrays(meta | {"rows": sorted(meta["rows"] + other_meta["rows"])})
