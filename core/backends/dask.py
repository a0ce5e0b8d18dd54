"""The Dask backend: the same pass as tasks over row ranges on a dask.distributed cluster.

A first-wave task is (file, dump spec, accumulator specs, pass options with a row range): it
opens the file itself, runs the engine over its rows and returns the statistics as plain arrays
(core/partial.py's file format, never h5py objects). Ranges are whole HDF5 chunks and, in
token-level dumps, whole sequences; the seeded sample is keyed by global row numbers, so the
merged statistics are those of one pass. Results merge pairwise in a tree of tasks that grows as
they come (the merge is associative and, up to float64 rounding, commutative; the sample keeps the
rows with the smallest keys whatever the order), so merging overlaps the tasks still running and
little is left when the last one ends. A layer whose families need a second pass (NC4, the
probe's test rows) gets a second wave over the same ranges, with the finalised statistics it
needs broadcast; each task returns its consumers' parts, merged here in row order.

``compare`` runs its own pass over aligned files: a task is (the files with their dump specs, the
compared layers and pairs, the pass settings, a row range of whole chunks of every compared
layer) → core/compare_pass.py's moments of those rows as plain arrays; they merge in the same tree
and are finalised on the client as in a local run.

Failures: a task whose worker dies is run again by Dask; one that keeps failing (``retries``)
becomes one error naming the file and the row range. User errors found by a task (NaN rows, bad
labels) are returned, not raised, so they are not retried, and surface as in a local run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np

from actgeom.core.api import FAMILIES, facts_of, layer_context, second_pass_consumers
from actgeom.core.compare_pass import CompareMoments, Stream, accumulate_rows
from actgeom.core.dump import Dump
from actgeom.core.dump.reader import safe_name
from actgeom.core.engine import LayerStats, PassOptions, Progress, accumulate, check_rows, second_pass
from actgeom.core.errors import ActgeomError, InvalidInputError, UsageError
from actgeom.core.partial import (
    dump_fingerprint,
    load_partial,
    merge_partials,
    provenance,
    save_arrays,
    stats_arrays,
    stats_from_arrays,
)

SCHEDULER_TIMEOUT = "20s"  # to connect to --scheduler: a cluster's scheduler may be busy, not minutes
MERGE_PRIORITY = 1  # merges run before the first-wave tasks still queued (Dask's default priority: 0)
ROWS_PER_TASK = 1 << 20  # at most this many rows per first-wave task by default: a failure costs little to redo


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
    """Rows of a whole chunk in every layer of the dump (see :func:`_common_chunk_rows`)."""
    return _common_chunk_rows(dump.layers, dump.n_rows)


def _common_chunk_rows(layers, n_rows: int) -> int:
    """Rows of a whole chunk in every one of ``layers`` (their least common multiple; the largest
    chunk when that exceeds the rows), 1 when contiguous."""
    rows = 1
    for layer in layers:
        rows = math.lcm(rows, layer.chunk_rows or 1)
    return rows if rows <= max(n_rows, 1) else max(layer.chunk_rows or 1 for layer in layers)


# -- the tasks (run on the workers) ----------------------------------------------------------------

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


class TaskFailed(ActgeomError):
    """A task that kept failing (its worker died, or a bug): exit code 1, a runtime failure."""

    exit_code = 1


class _TaskError(ActgeomError):
    """An error a task found in the input, raised again here with its exit code."""

    def __init__(self, exit_code: int, message: str):
        super().__init__(message)
        self.exit_code = exit_code


# -- the client side -----------------------------------------------------------------------------

class DaskBackend:
    """A dask.distributed client (to ``scheduler``, or to a LocalCluster it starts) running passes."""

    def __init__(self, options):
        from distributed import Client, LocalCluster

        self.options = options
        self.cluster = None
        self.timings: dict = {}  # of the last first wave: ranges, seconds of the tasks and of the merge
        self._pending: dict = {}  # first waves started by submit(), by file, statistics and pass options
        if options.save_stats is not None and Path(options.save_stats).exists() and not Path(options.save_stats).is_dir():
            raise UsageError(f"--save-stats {options.save_stats} is a file; with --backend dask it names a directory "
                             "that keeps one partial-statistics file per task")
        try:
            if options.scheduler is not None:
                self.client = Client(options.scheduler, timeout=SCHEDULER_TIMEOUT)
            else:
                self.cluster = LocalCluster(n_workers=options.workers or os.cpu_count() or 1, threads_per_worker=1,
                                            processes=True, dashboard_address=":0", silence_logs=logging.ERROR)
                self.client = Client(self.cluster)
        except (OSError, ValueError) as exc:  # no scheduler there (a timeout is an OSError), or not an address
            raise UsageError(f"--scheduler {options.scheduler}: cannot reach a Dask scheduler ({exc})") from None
        services = self.client.scheduler_info().get("services", {})
        self.dashboard_link = self.client.dashboard_link if "dashboard" in services else None

    def __enter__(self) -> "DaskBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    @property
    def n_workers(self) -> int:
        return max(1, len(self.client.scheduler_info().get("workers", {})))

    def _n_ranges(self, n_rows: int) -> int:
        """--ranges, else two per worker and at most ROWS_PER_TASK rows each."""
        return self.options.ranges or max(2 * self.n_workers, math.ceil(n_rows / ROWS_PER_TASK))

    def ranges(self, dump: Dump) -> list[tuple[int, int]]:
        return task_ranges(dump, self._n_ranges(dump.n_rows))

    def _ranges_of(self, dump: Dump, options: PassOptions) -> list[tuple[int, int]]:
        """The task ranges inside the pass's own row range (e.g. a shard's --rows)."""
        start, stop = options.row_range or (0, dump.n_rows)
        inside = [(max(a, start), min(b, stop)) for a, b in self.ranges(dump)]
        return [(a, b) for a, b in inside if b > a] or [(start, stop)]

    # -- first wave: the statistics --------------------------------------------------------------
    def submit(self, dump: Dump, specs: dict, options: PassOptions) -> None:
        """Start the first wave of ``dump`` without waiting for it (core.api.run starts every file's
        before it waits for the first: the workers then always have tasks, even with one range per file)."""
        self._pending[_wave_key(dump, specs, options)] = (time.perf_counter(), *self._submit(dump, specs, options))

    def _submit(self, dump: Dump, specs: dict, options: PassOptions):
        run = _run_id(dump.path)
        ranges = self._ranges_of(dump, options)
        futures, saved = {}, {}
        for a, b in ranges:
            task_options = replace(options, row_range=(a, b))
            arrays = self._reuse(dump, specs, task_options)
            if arrays is not None:
                saved[(a, b)] = self.client.scatter([arrays])[0]  # a list: a dict would scatter its items
            else:
                futures[(a, b)] = self.client.submit(first_wave, str(dump.path), dump.spec, specs, task_options,
                                                     retries=self.options.retries, pure=False,
                                                     key=f"actgeom-rows-{run}-{a}-{b}")
        return ranges, futures, saved

    def accumulate(self, dump: Dump, specs: dict, options: PassOptions, progress: Progress | None) -> dict[str, LayerStats]:
        """Every layer's statistics of ``dump``, from one task per row range (started now, or by
        :meth:`submit`), merged in a tree."""
        pending = self._pending.pop(_wave_key(dump, specs, options), None)
        started, ranges, futures, saved = pending or (time.perf_counter(), *self._submit(dump, specs, options))
        label = f"{dump.path.name} ({len(dump.layers)} layers, {len(ranges)} row range{'s' if len(ranges) > 1 else ''})"
        total = sum(b - a for a, b in ranges)
        done = sum(b - a for a, b in saved)
        if progress is not None:
            progress(label, done, total)

        def finished(rows: tuple[int, int], future) -> None:
            nonlocal done
            if self.options.save_stats is not None:
                self._save(self._partial_path(dump, rows), [dump.path], future.result())
            done += rows[1] - rows[0]
            if progress is not None:
                progress(label, done, total)

        result, tasks_done = self._tree(futures, saved, merge_pair, str(dump.path), finished)
        self.timings = {"ranges": len(ranges), "tasks_s": tasks_done - started, "merge_s": time.perf_counter() - tasks_done}
        _raise_if_error(result)
        stats, _ = stats_from_arrays(result)
        for layer_stats in stats.values():
            check_rows(layer_stats, dump.path, options)
        return stats

    def _tree(self, futures: dict, saved: dict, merge, files: str, finished) -> tuple[dict, float]:
        """Every range's result (``futures`` by rows, and ``saved`` results already here) merged
        pairwise by ``merge`` tasks as they come → (the merged result, when the last range ended).
        ``finished(rows, future)`` is called as each range's task ends; ``files`` names the input in
        the error of a task that kept failing."""
        from distributed import as_completed

        where = {future.key: rows for rows, future in futures.items()}
        pool, ready = as_completed(), list(saved.values())  # ready: results (futures) not yet merged
        for future in futures.values():
            pool.add(future)
        tasks_done = time.perf_counter()
        self._pair(ready, pool, merge)
        for future in pool:  # the tree grows as results come: merges overlap the tasks still running
            rows = where.get(future.key)
            if future.status != "finished":
                raise self._failure(files, rows, future)
            if rows is not None:
                finished(rows, future)
                tasks_done = time.perf_counter()
            ready.append(future)
            self._pair(ready, pool, merge)
        return ready[0].result(), tasks_done

    def _pair(self, ready: list, pool, merge) -> None:
        """Merge the results that are ready two by two, as tasks whose results join the pool."""
        while len(ready) >= 2:  # before any range still queued: the tree keeps up with the tasks
            pool.add(self.client.submit(merge, ready.pop(0), ready.pop(0), retries=self.options.retries,
                                        pure=False, priority=MERGE_PRIORITY, key=f"actgeom-merge-{uuid.uuid4().hex}"))

    def _failure(self, files: str, rows: tuple[int, int] | None, future) -> ActgeomError:
        """A task that kept failing: one error naming the file(s) and its rows (None: a merge task)."""
        try:
            reason = str(future.exception()) or type(future.exception()).__name__
        except Exception as exc:  # the exception itself could not come back
            reason = type(exc).__name__
        what = f"rows {rows[0]}:{rows[1]} of {files}" if rows is not None else f"a merge of statistics of {files}"
        return TaskFailed(f"{what} failed on the Dask workers, retried in vain: {reason.splitlines()[0]}")

    # -- --save-stats DIR: one partial-statistics file per task ------------------------------------
    def _partial_path(self, dump: Dump, rows: tuple[int, int]) -> Path:
        return Path(self.options.save_stats) / f"{safe_name(dump.path.stem)}-{_task_id(dump.path)}.rows{rows[0]}-{rows[1]}.npz"

    def _reuse(self, dump: Dump, specs: dict, options: PassOptions) -> dict | None:
        """A saved task's arrays when they hold exactly this task: same dump, rows, pass and statistics."""
        if self.options.save_stats is None:
            return None
        path = self._partial_path(dump, options.row_range)
        if not path.exists():
            return None
        try:
            stats, meta = load_partial(path)
        except InvalidInputError:
            return None  # unreadable (e.g. written by another version): made again
        wanted = provenance(dump, options)
        if (meta.get("fingerprint") != wanted["fingerprint"] or meta.get("rows") != wanted["rows"]
                or meta.get("pass") != wanted["pass"] or set(stats) != {layer.name for layer in dump.layers}
                or any(layer_stats.specs != specs for layer_stats in stats.values())):
            return None
        return stats_arrays(stats, meta)

    def _save(self, path: Path, inputs: list, arrays: dict) -> None:
        if "error" in arrays:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        save_arrays(path, arrays, inputs=inputs)

    # -- second wave: the consumers of the shared second pass ---------------------------------------
    def second_pass(self, dump: Dump, layer, families: dict, layer_stats: LayerStats, consumers: dict,
                    options: PassOptions, progress: Progress | None) -> None:
        """Fill ``consumers`` (built here from the same statistics) from one task per row range."""
        from distributed import as_completed

        facts = facts_of(dump)
        slots = {spec.slot for name in consumers for spec in FAMILIES[name].needs(families[name], facts)}
        needed = replace(layer_stats, specs={s: layer_stats.specs[s] for s in slots},
                         accumulators={s: layer_stats.accumulators[s] for s in slots})
        shared = self.client.scatter([stats_arrays({layer.name: needed})], broadcast=True)[0]
        chosen = {name: families[name] for name in consumers}
        ranges = self._ranges_of(dump, options)
        run = _run_id(dump.path)
        futures = [self.client.submit(second_wave, str(dump.path), dump.spec, layer.name, chosen, shared,
                                      replace(options, row_range=rows), retries=self.options.retries, pure=False,
                                      key=f"actgeom-second-{run}-{rows[0]}-{rows[1]}")
                   for rows in ranges]
        label, total, done = f"{layer.name} (second pass)", sum(b - a for a, b in ranges), 0
        where = {future.key: rows for rows, future in zip(ranges, futures)}
        for future in as_completed(futures):
            if future.status != "finished":
                raise self._failure(str(dump.path), where[future.key], future)
            a, b = where[future.key]
            done += b - a
            if progress is not None:
                progress(label, done, total)
        for future in futures:  # in row order: the parts join as one pass would have made them
            result = future.result()
            _raise_if_error(result)
            for name, part in result["parts"].items():
                consumers[name].merge(part)

    # -- compare: one pass over aligned files --------------------------------------------------------
    def compare(self, streams: list[Stream], pairs: list[tuple[int, int]], *, block_rows: int, subsample: int,
                seed: int, progress: Progress | None) -> CompareMoments:
        """core/compare_pass.py's moments from one task per row range (whole chunks of every
        compared layer), each opening the files itself, merged in a tree. The caller finalises."""
        dumps = list({id(s.dump): s.dump for s in streams}.values())
        number = {id(d): f for f, d in enumerate(dumps)}
        files = [(str(d.path), d.spec) for d in dumps]
        layers = [[number[id(s.dump)], s.layer.path] for s in streams]
        settings = {"block_rows": block_rows, "subsample": subsample, "seed": seed}
        identity = {"files": [[path, dump_fingerprint(d)] for (path, _), d in zip(files, dumps)], "layers": layers,
                    "pairs": [list(p) for p in pairs], **settings}
        n_rows = dumps[0].n_rows
        ranges = row_ranges(n_rows, self._n_ranges(n_rows), _common_chunk_rows([s.layer for s in streams], n_rows))
        named = ", ".join(dict.fromkeys(path for path, _ in files))
        run, started = _run_id(named), time.perf_counter()
        futures, saved = {}, {}
        for a, b in ranges:
            meta = identity | {"rows": [[a, b]]}
            arrays = self._reuse_compare(identity, meta)
            if arrays is not None:
                saved[(a, b)] = self.client.scatter([arrays])[0]
            else:
                futures[(a, b)] = self.client.submit(compare_rows, files, layers, identity["pairs"], settings, meta,
                                                     retries=self.options.retries, pure=False,
                                                     key=f"actgeom-compare-{run}-{a}-{b}")
        done, total = sum(b - a for a, b in saved), n_rows
        if progress is not None:
            progress("the compared layers", done, total)

        def finished(rows: tuple[int, int], future) -> None:
            nonlocal done
            if self.options.save_stats is not None:
                self._save(self._compare_path(identity, rows), [d.path for d in dumps], future.result())
            done += rows[1] - rows[0]
            if progress is not None:
                progress("the compared layers", done, total)

        result, tasks_done = self._tree(futures, saved, merge_compare, named, finished)
        self.timings = {"ranges": len(ranges), "tasks_s": tasks_done - started, "merge_s": time.perf_counter() - tasks_done}
        _raise_if_error(result)
        return CompareMoments.from_arrays(result)[0]

    def _compare_path(self, identity: dict, rows: tuple[int, int]) -> Path:
        return Path(self.options.save_stats) / f"compare-{_task_id(json.dumps(identity))}.rows{rows[0]}-{rows[1]}.npz"

    def _reuse_compare(self, identity: dict, meta: dict) -> dict | None:
        """A saved compare task's arrays when their header holds exactly this task (files and their
        fingerprints, layers, pairs, pass settings, rows); else None (made again)."""
        if self.options.save_stats is None:
            return None
        path = self._compare_path(identity, meta["rows"][0])
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
            held = json.loads(str(arrays["header"]))["meta"]
        except (OSError, ValueError, KeyError):  # absent, unreadable or not ours
            return None
        return arrays if held == meta else None


def _raise_if_error(result: dict) -> None:
    if "error" in result:
        raise _TaskError(*result["error"])


def _wave_key(dump: Dump, specs: dict, options: PassOptions) -> tuple:
    return str(Path(dump.path).resolve()), dump.spec, tuple(specs.items()), options


def _run_id(path: Path) -> str:
    """Task keys of one wave: the file's id and a fresh part (a re-run with other options never
    meets the tasks of an earlier one still held by the scheduler)."""
    return f"{_task_id(path)}-{uuid.uuid4().hex[:8]}"


def _task_id(text) -> str:
    """A short stable id of a file path or layer name (task keys, saved partials' names)."""
    return hashlib.sha256(str(Path(text).resolve() if isinstance(text, Path) else text).encode()).hexdigest()[:8]
