"""A comparison: similarity matrices between layers of two files, or one layer across files.

It needs cross-moments of two files' aligned rows, so it runs its own pass (core/state/
compare_pass.py) over every compared layer at once; the metrics are pure functions of the finalised
moments (core/metrics/compare.py, with the registry). Three plans:

- two files A, B: rows = A's layers (``layers``), columns = B's (``layers_b``, default: the same
  selection); one file alone is compared with itself;
- more than two files, one layer each: the file × file matrix of that layer (checkpoints);
- ``reference``: rows = layers, columns = files; each cell compares the reference's layer (A) with
  the same layer of that file (B): the drift of every layer from one checkpoint.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from actgeom.core.analysis import metrics_info
from actgeom.core.base.errors import OptionError, UsageError
from actgeom.core.base.result import Result, document_header, inference_columns, nonfinite_notes, tidy_rows
from actgeom.core.compare.cells import Inference, cell_intervals, cell_nulls, cell_records, sample_views
from actgeom.core.dump import Dump, DumpSpec
from actgeom.core.metrics.compare import REGISTRY, CompareOptions
from actgeom.core.state.compare_pass import Stream, check_alignment, compare_pass, memory_bytes, parse_bytes
from actgeom.core.state.engine import Progress
from actgeom.core.state.groups import block_factor, sampling_unit

RECORD_KEYS = ("file_a", "layer_a", "file_b", "layer_b", "metric", "value", "note")
_BLOCK_BYTES = 16 << 20  # rows per block: about 16 MiB of float64 over all compared layers together


@dataclass
class Plan:
    """Which streams are compared: row and column labels and, per cell, (row stream, column stream)."""

    mode: str
    streams: list[Stream]
    rows: list[dict]
    columns: list[dict]
    cells: dict[tuple[int, int], tuple[int, int]]
    orientation: str


class CompareResult(Result):
    """The compare document: per metric a matrix (rows = A, columns = B), and per cell the pair's
    record. ``records()``: one tidy row per cell × metric (file_a, layer_a, file_b, layer_b, metric,
    value, note, and with --ci / --null se, ci_low, ci_high, ci_method, ci_groups, ci_level /
    null_mean, null_sd, z, p_value); ``matrix(metric)``: the matrix as nested lists."""

    columns = RECORD_KEYS

    def records(self) -> list[dict]:
        """One row per cell × metric, with the inference fields when the comparison has them."""
        cells = self.document["pairs"]
        extra, ci = inference_columns(self.document, cells), (self.document.get("inference") or {}).get("ci")
        return [row for cell in cells
                for row in tidy_rows({key: cell[key] for key in RECORD_KEYS[:4]}, cell, columns=extra, ci=ci)]

    def matrix(self, name: str) -> list[list]:
        """The metric's matrix: [row][column], rows = A (see ``document['orientation']``)."""
        if name not in self.document["matrices"]:
            raise UsageError(f"no metric '{name}'; metrics: {', '.join(self.document['matrices'])}")
        return self.document["matrices"][name]

    def metric(self, name: str, *, row: int = 0, column: int = 0):
        return self.matrix(name)[row][column]

    def __repr__(self) -> str:
        d = self.document
        return f"<actgeom CompareResult: {len(d['rows'])} × {len(d['columns'])} ({d['mode']})>"


class _Streams:
    """Streams by (file, dataset), each once, however many cells use it."""

    def __init__(self):
        self.streams: list[Stream] = []
        self.keys: dict[tuple, int] = {}

    def __call__(self, dump: Dump, layer) -> int:
        key = Stream(dump, layer).key
        if key not in self.keys:
            self.keys[key] = len(self.streams)
            self.streams.append(Stream(dump, layer))
        return self.keys[key]


def plan_layers(a: Dump, b: Dump) -> Plan:
    """Two files: rows = A's layers, columns = B's."""
    stream = _Streams()
    rows = [{"file": str(a.path), "layer": layer.name, "label": layer.name} for layer in a.layers]
    columns = [{"file": str(b.path), "layer": layer.name, "label": layer.name} for layer in b.layers]
    cells = {(r, c): (stream(a, la), stream(b, lb)) for r, la in enumerate(a.layers) for c, lb in enumerate(b.layers)}
    return Plan("layers", stream.streams, rows, columns, cells,
                f"rows = layers of A ({a.path}), columns = layers of B ({b.path}); asymmetric measures "
                "(pwcca, unit_best_corr) take A from the row")


def plan_files(dumps: list[Dump]) -> Plan:
    """Several files, one layer each: file × file."""
    for dump in dumps:
        if len(dump.layers) != 1:
            raise OptionError("layers", None, f"must select one layer of each file when comparing {len(dumps)} files "
                                              f"(checkpoint × checkpoint); {dump.path} has "
                                              f"{', '.join(layer.name for layer in dump.layers)}")
    stream = _Streams()
    labels = [{"file": str(d.path), "layer": d.layers[0].name, "label": str(d.path)} for d in dumps]
    indices = [stream(d, d.layers[0]) for d in dumps]
    cells = {(r, c): (indices[r], indices[c]) for r in range(len(dumps)) for c in range(len(dumps))}
    return Plan("files", stream.streams, labels, labels, cells,
                "rows = files (A), columns = files (B), one layer each; asymmetric measures (pwcca, "
                "unit_best_corr) take A from the row")


def plan_reference(ref: Dump, others: list[Dump]) -> Plan:
    """Every file against the reference, layer by layer: rows = layers, columns = files."""
    stream = _Streams()
    rows = [{"file": str(ref.path), "layer": layer.name, "label": layer.name} for layer in ref.layers]
    columns = [{"file": str(d.path), "label": str(d.path)} for d in others]
    cells = {(r, c): (stream(ref, layer), stream(d, d.layer(layer.path)))
             for r, layer in enumerate(ref.layers) for c, d in enumerate(others)}
    return Plan("reference", stream.streams, rows, columns, cells,
                f"rows = layers, columns = files; cell (layer, file) compares the layer of the reference "
                f"{ref.path} (A) with the same layer of that file (B)")


def run(paths, *, layers: tuple[str, ...] = (), layers_b: tuple[str, ...] = (), reference=None, ids: str | None = None,
        options: CompareOptions = CompareOptions(), allow_incomplete: bool = False, nonfinite: str = "error",
        max_memory="4GiB", block_rows: int | None = None, inference: Inference = Inference(),
        progress: Progress | None = None, backend=None) -> CompareResult:
    """Compare the files' layers (module docstring) in one pass → :class:`CompareResult`.
    ``inference``: jackknife intervals and permutation nulls of the cells (off by default).
    ``backend``: None (this process), or an opened core.backends executor (tasks over row ranges)."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    reference = None if reference is None else Path(reference)
    if not paths:
        raise OptionError("paths", None, "must name at least one file")
    if layers_b and (reference is not None or len(paths) > 2):
        raise OptionError("layers_b", layers_b, "selects the layers of B when comparing two files")
    if nonfinite not in ("error", "drop"):
        raise OptionError("nonfinite", nonfinite, "is not one of error, drop")
    limit = parse_bytes(max_memory)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        the_plan, opened = _plan(stack, paths, reference, layers, layers_b, allow_incomplete)
        streams, groups = the_plan.streams, inference.groups
        pairs = sorted({(min(i, j), max(i, j)) for i, j in the_plan.cells.values() if i != j})
        per_block = _BLOCK_BYTES * block_factor(groups)  # grouped: each group's products on enough rows
        rows_per_block = block_rows or max(1, per_block // (8 * sum(s.layer.n_units for s in streams)))
        rows_per_block = min(rows_per_block, max(opened[0].n_rows, 1))  # buffers never exceed the file
        sample = min(options.subsample, opened[0].n_rows)  # a sample ≤ the rows
        need = memory_bytes(streams, pairs, rows_per_block, sample, groups)
        if need > limit:
            raise OptionError("max_memory", max_memory, f"is below what this comparison holds: {need / 2**30:.2f} GiB "
                              f"(8 bytes × (Σ D_a·D_b over {len(pairs)} pairs + Σ D² over {len(streams)} layers)"
                              f"{f' × ({groups} jackknife groups + 3)' if groups else ''} + read buffers and samples); "
                              f"select fewer layers{', fewer --ci-groups' if groups else ''} or raise --max-memory")
        alignment = check_alignment(opened, ids)
        if groups:
            _check_units(opened[0], groups)
        found = compare_pass(streams, pairs, block_rows=rows_per_block, subsample=options.subsample, seed=options.seed,
                             nonfinite=nonfinite, ci_groups=groups, ci_seed=inference.ci_seed, progress=progress,
                             backend=backend)
        cells, matrices = _cells(the_plan, found, options, inference)
        files = [{"file": str(d.path), "checkpoint": d.attrs.get("checkpoint"), "step": d.attrs.get("step"),
                  "model": d.attrs.get("model"), "n_rows": d.n_rows, "layers": [layer.name for layer in d.layers]}
                 | ({"sampling_unit": sampling_unit(opened[0])} if groups else {}) for d in opened]
    document = document_header("compare", started=started, options={"compare": options}, pass_record={
        "nonfinite": nonfinite, "block_rows": rows_per_block, "rows_used": found.n_rows,
        "n_nonfinite_dropped": found.n_nonfinite, "memory_bytes": need})
    document |= {"metrics_info": metrics_info(["compare"]),
                 "mode": the_plan.mode, "orientation": the_plan.orientation, "alignment": alignment,
                 "inference": inference.record(), "files": files, "rows": the_plan.rows, "columns": the_plan.columns,
                 "matrices": matrices, "pairs": cells}
    return CompareResult(document)


def _plan(stack: contextlib.ExitStack, paths: list[Path], reference: Path | None, layers: tuple[str, ...],
          layers_b: tuple[str, ...], allow_incomplete: bool) -> tuple[Plan, list[Dump]]:
    """The files opened (closed with ``stack``) and the plan of their comparison (module docstring)."""
    def open_dump(path: Path, chosen: tuple[str, ...]) -> Dump:
        return stack.enter_context(Dump(path, DumpSpec(layers=tuple(chosen), allow_incomplete=allow_incomplete)))

    if reference is not None:
        ref = open_dump(reference, layers)
        chosen = tuple(layer.path for layer in ref.layers)
        others = [open_dump(path, chosen) for path in paths if path != reference]
        if not others:
            raise OptionError("reference", str(reference), "needs at least one other file to compare with")
        return plan_reference(ref, others), [ref] + others
    if len(paths) <= 2:
        a = open_dump(paths[0], layers)
        b = open_dump(paths[-1], layers_b or layers) if len(paths) == 2 or layers_b else a
        return plan_layers(a, b), [a, b]
    opened = [open_dump(path, layers) for path in paths]
    return plan_files(opened), opened


def _check_units(dump: Dump, groups: int) -> None:
    """Refuse more jackknife groups than sampling units (rows, or sequences of a token-level dump)."""
    unit = sampling_unit(dump)
    units = dump.n_rows if unit == "row" else len(dump.offsets()) - 1
    if groups > units:
        raise OptionError("ci_groups", groups, f"is more than the {units} {unit}s of {dump.path}: every jackknife "
                                               "group needs one")


def _cells(the_plan: Plan, found, options: CompareOptions, inference: Inference) -> tuple[list[dict], dict]:
    """Every cell's record (its measures, their intervals and nulls when asked) and the matrices."""
    streams, order = the_plan.streams, sorted(the_plan.cells.items())
    pairs, dtypes = [pair for _, pair in order], [s.layer.logical_dtype for s in streams]
    views = sample_views(found)
    records = cell_records(found, views, pairs, dtypes, options)
    intervals = cell_intervals(found, views, pairs, dtypes, options, records) if inference.groups else None
    nulls = cell_nulls(found, views, pairs, options, inference.null, inference.null_seed) if inference.null else None
    matrices = {name: [[None] * len(the_plan.columns) for _ in the_plan.rows] for name in REGISTRY}
    cells = []
    for n, (((r, c), (i, j)), record) in enumerate(zip(order, records)):
        for name, value in record.metrics.items():
            matrices[name][r][c] = value
        a, b = streams[i], streams[j]
        cell = {"row": r, "column": c, "file_a": str(a.dump.path), "layer_a": a.layer.name,
                "file_b": str(b.dump.path), "layer_b": b.layer.name, "n_units_a": a.layer.n_units,
                "n_units_b": b.layer.n_units, "metrics": record.metrics, "unavailable": record.unavailable,
                "nonfinite": nonfinite_notes(record.metrics), "notes": record.notes, "compare": record.fields}
        if intervals is not None:
            cell["intervals"], cell["intervals_unavailable"] = intervals[n]
        if nulls is not None:
            cell["nulls"], cell["nulls_unavailable"] = nulls[n]
        cells.append(cell)
    return cells, matrices

