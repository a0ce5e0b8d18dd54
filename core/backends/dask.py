"""The Dask backend: the same pass as tasks over row ranges on a dask.distributed cluster.

Each file is cut into row ranges of whole HDF5 chunks (in token-level dumps, whole sequences),
one task each (core/backends/tasks.py: the task opens the file itself and returns plain arrays);
the seeded sample is keyed by global row numbers, so the merged statistics are those of one
pass. Results merge pairwise in a tree of tasks that grows as
they come (the merge is associative and, up to float64 rounding, commutative; the sample keeps the
rows with the smallest keys whatever the order), so merging overlaps the tasks still running and
little is left when the last one ends. A layer whose families need a second pass (NC4, the
probe's test rows) gets a second wave over the same ranges, with the finalised statistics it
needs broadcast; each task returns its consumers' parts, merged here in row order.

``compare`` runs its own pass over aligned files: a task is (the files with their dump specs, the
compared layers and pairs, the pass settings, a row range of whole chunks of every compared
layer) → core/state/compare_pass.py's moments of those rows as plain arrays; they merge in the same tree
and are finalised on the client as in a local run.

Failures: a task whose worker dies is run again by Dask; one that keeps failing (``retries``)
becomes one error naming the file and the row range. User errors found by a task (NaN rows, bad
labels) are returned, not raised, so they are not retried, and surface as in a local run. With
``--save-stats DIR`` every finished task's result is kept (core/backends/saved.py) and a re-run
submits only the tasks whose result is missing.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import uuid
from dataclasses import replace
from pathlib import Path

from actgeom.core.analysis import FAMILIES, facts_of
from actgeom.core.backends.saved import SavedTasks, task_id
from actgeom.core.backends.shutdown import closed_connections_dropped, drop_closed_connections
from actgeom.core.backends.tasks import (
    common_chunk_rows,
    compare_rows,
    first_wave,
    merge_compare,
    merge_pair,
    row_ranges,
    second_wave,
    task_ranges,
)
from actgeom.core.base.errors import ActgeomError, UsageError
from actgeom.core.dump import Dump
from actgeom.core.state.compare_pass import CompareMoments, Stream
from actgeom.core.state.engine import LayerStats, PassOptions, Progress, check_rows
from actgeom.core.state.grouped_pass import only_slots
from actgeom.core.state.partial import dump_fingerprint, stats_arrays, stats_from_arrays

SCHEDULER_TIMEOUT = "20s"  # to connect to --scheduler: a cluster's scheduler may be busy, not minutes
CLOSE_TIMEOUT_S = 10  # closing the client, then our LocalCluster: the results are written, a stuck shutdown must not hold them
MERGE_PRIORITY = 1  # merges run before the first-wave tasks still queued (Dask's default priority: 0)
# A LocalCluster's worker has a thread for the merges beside the one for row ranges: a range task
# holds this resource (one per worker), a merge does not, so it never waits behind a running range.
RANGE_SLOT = "actgeom-range"
# Workers that cannot load a task (e.g. actgeom changed under a running command) close themselves and a
# LocalCluster does not replace them: with none left for this long, a wait on our own cluster ends in an
# error instead of lasting for ever (a nanny restarts a crashed worker within seconds, even under load).
WORKERS_GONE_S = 60
# A crashed worker's nanny starts it again; a LocalCluster closes that nanny for good when the worker
# has not registered again within distributed.deploy.lost-worker-timeout (15 s: exceeded on a loaded
# machine, and the cluster shrank for the rest of the run). Our own cluster waits this long instead.
LOST_WORKER_WAIT = "300s"
WORKERS_CHECK_S = 5  # how often a wait asks the scheduler for workers
ROWS_PER_TASK = 1 << 20  # at most this many rows per first-wave task by default: a failure costs little to redo


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
        import dask
        from distributed import Client, LocalCluster

        self.options = options
        self.cluster = None
        self.timings: dict = {}  # of the last first wave: ranges, seconds of the tasks and of the merge
        self._pending: dict = {}  # first waves started by submit(), by file, statistics and pass options
        self.saved = SavedTasks(options.save_stats)  # --save-stats DIR: each task's result, reused by a re-run
        if options.save_stats is not None and Path(options.save_stats).exists() and not Path(options.save_stats).is_dir():
            raise UsageError(f"--save-stats {options.save_stats} is a file; with --backend dask it names a directory "
                             "that keeps one partial-statistics file per task")
        try:
            if options.scheduler is not None:
                self.client = Client(options.scheduler, timeout=SCHEDULER_TIMEOUT)
            else:
                self._restarts_awaited = dask.config.set({"distributed.deploy.lost-worker-timeout": LOST_WORKER_WAIT})
                self.cluster = LocalCluster(n_workers=options.workers or os.cpu_count() or 1, threads_per_worker=2,
                                            resources={RANGE_SLOT: 1}, processes=True, dashboard_address=":0",
                                            silence_logs=logging.ERROR)
                self.client = Client(self.cluster)
        except (OSError, ValueError) as exc:  # no scheduler there (a timeout is an OSError), or not an address
            raise UsageError(f"--scheduler {options.scheduler}: cannot reach a Dask scheduler ({exc})") from None
        info = self.client.scheduler_info()
        # Another scheduler's cluster: the slot only when every worker there at connection declares
        # it (tasks asking for a slot no worker has would wait for ever)
        workers = info.get("workers", {}).values()
        declared = bool(workers) and all(RANGE_SLOT in w.get("resources", {}) for w in workers)
        self._range = {"resources": {RANGE_SLOT: 1}} if self.cluster is not None or declared else {}
        services = info.get("services", {})
        self.dashboard_link = self.client.dashboard_link if "dashboard" in services else None

    def __enter__(self) -> "DaskBackend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """The client, then the LocalCluster we started, each within CLOSE_TIMEOUT_S. A worker's
        heartbeat in flight when the cluster closes fails with CommClosedError, which distributed
        logs with a traceback after a run that succeeded: such records of connections closed by
        the shutdown are dropped, here and on our own workers, from now on only (another
        scheduler's workers are left as they are)."""
        with closed_connections_dropped():
            if self.cluster is not None:
                with contextlib.suppress(Exception):  # a worker already gone: nothing of it to quieten
                    self.client.run(drop_closed_connections)
            with contextlib.suppress(TimeoutError):
                self.client.close(timeout=CLOSE_TIMEOUT_S)
            if self.cluster is not None:
                with contextlib.suppress(TimeoutError):  # worker processes still alive die with this one
                    self.cluster.close(timeout=CLOSE_TIMEOUT_S)
                self._restarts_awaited.__exit__(None, None, None)

    @property
    def n_workers(self) -> int:
        return max(1, len(self.client.scheduler_info().get("workers", {})))

    def _n_ranges(self, n_rows: int) -> int:
        """--ranges, else two per worker and at most ROWS_PER_TASK rows each."""
        return self.options.ranges or max(2 * self.n_workers, math.ceil(n_rows / ROWS_PER_TASK))

    def ranges(self, dump: Dump) -> list[tuple[int, int]]:
        return task_ranges(dump, self._n_ranges(dump.n_rows))

    def _ranges_of(self, dump: Dump, options: PassOptions) -> list[tuple[int, int]]:
        """The task ranges inside the pass's own row range (e.g. a shard's --rows). With
        --save-stats, the ranges saved by an earlier run are kept whole (whatever number of workers
        cut them) and only the rows between them are cut anew: a re-run on another cluster size
        still reuses every saved range."""
        start, stop = options.row_range or (0, dump.n_rows)
        cuts = {a for a, _ in self.ranges(dump)}
        for a, b in self.saved.first_wave_ranges(dump):
            if start <= a < b <= stop:
                cuts = {c for c in cuts if not a < c < b} | {a, b}
        bounds = sorted({start, stop} | {c for c in cuts if start < c < stop})
        return list(zip(bounds, bounds[1:])) or [(start, stop)]

    # -- first wave: the statistics --------------------------------------------------------------
    def submit(self, dump: Dump, specs: dict, options: PassOptions) -> None:
        """Start the first wave of ``dump`` without waiting for it (core.analysis.run starts every file's
        before it waits for the first: the workers then always have tasks, even with one range per file)."""
        self._pending[_wave_key(dump, specs, options)] = (time.perf_counter(), *self._submit(dump, specs, options))

    def _submit(self, dump: Dump, specs: dict, options: PassOptions):
        run = _run_id(dump.path)
        ranges = self._ranges_of(dump, options)
        futures, saved = {}, {}
        for a, b in ranges:
            task_options = replace(options, row_range=(a, b))
            arrays = self.saved.first_wave(dump, specs, task_options)
            if arrays is not None:
                saved[(a, b)] = self.client.scatter([arrays])[0]  # a list: a dict would scatter its items
            else:
                futures[(a, b)] = self.client.submit(first_wave, str(dump.path), task_spec(dump), specs, task_options,
                                                     retries=self.options.retries, pure=False,
                                                     key=f"actgeom-rows-{run}-{a}-{b}", **self._range)
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
                self.saved.save_first_wave(dump, rows, future.result())
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
        for future in self._as_finished(pool):  # the tree grows as results come: merges overlap the tasks still running
            rows = where.get(future.key)
            if future.status != "finished":
                raise self._failure(files, rows, future)
            if rows is not None:
                finished(rows, future)
                tasks_done = time.perf_counter()
            ready.append(future)
            self._pair(ready, pool, merge)
        return ready[0].result(), tasks_done

    def _as_finished(self, pool):
        """The futures of ``pool`` (an as_completed) as they finish. On a LocalCluster of ours, no
        worker for WORKERS_GONE_S ends the wait with an error; another scheduler's cluster may be
        scaling up (a batch queue), so there the wait goes on."""
        next_check, gone_since = time.monotonic() + WORKERS_CHECK_S, None
        while not pool.is_empty():
            batch = pool.next_batch(block=False)
            if batch:
                yield from batch
                continue
            time.sleep(0.05)
            now = time.monotonic()
            if self.cluster is None or now < next_check:
                continue
            next_check = now + WORKERS_CHECK_S
            if self.client.nthreads():
                gone_since = None
            elif gone_since is None:
                gone_since = now
            elif now - gone_since >= WORKERS_GONE_S:
                raise TaskFailed(f"every worker of the Dask LocalCluster has closed and none came back within "
                                 f"{WORKERS_GONE_S} s (their log above says why, e.g. a task they could not load "
                                 "because actgeom changed under the running command)")

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

    # -- second wave: the consumers of the shared second pass ---------------------------------------
    def second_pass(self, dump: Dump, layer, families: dict, layer_stats: LayerStats, consumers: dict,
                    options: PassOptions, progress: Progress | None) -> None:
        """Fill ``consumers`` (built here from the same statistics) from one task per row range."""
        from distributed import as_completed

        facts = facts_of(dump)
        slots = {spec.slot for name in consumers for spec in FAMILIES[name].needs(families[name], facts)}
        needed = only_slots(layer_stats, tuple(slots))  # and its jackknife groups: the twins' statistics
        chosen = {name: families[name] for name in consumers}
        statistics = stats_arrays({layer.name: needed})
        identity = self.saved.second_identity(dump, needed, statistics, chosen, options)
        ranges = self._ranges_of(dump, options)
        parts = {rows: self.saved.second_wave(dump, identity, rows) for rows in ranges}  # saved by an earlier run
        missing = [rows for rows in ranges if parts[rows] is None]
        label, total = f"{layer.name} (second pass)", sum(b - a for a, b in ranges)
        done = total - sum(b - a for a, b in missing)
        if progress is not None:
            progress(label, done, total)
        if missing:
            shared = self.client.scatter([statistics], broadcast=True)[0]
            run = _run_id(dump.path)
            futures = {self.client.submit(second_wave, str(dump.path), task_spec(dump), layer.name, chosen, shared,
                                          replace(options, row_range=rows), retries=self.options.retries, pure=False,
                                          key=f"actgeom-second-{run}-{rows[0]}-{rows[1]}", **self._range): rows
                       for rows in missing}
            for future in self._as_finished(as_completed(futures)):
                rows = futures[future]
                if future.status != "finished":
                    raise self._failure(str(dump.path), rows, future)
                result = future.result()
                _raise_if_error(result)
                parts[rows] = result["parts"]
                self.saved.save_second_wave(dump, identity, rows, parts[rows])
                done += rows[1] - rows[0]
                if progress is not None:
                    progress(label, done, total)
        for rows in ranges:  # in row order: the parts join as one pass would have made them
            for name, part in parts[rows].items():
                consumers[name].merge(part)

    # -- compare: one pass over aligned files --------------------------------------------------------
    def compare(self, streams: list[Stream], pairs: list[tuple[int, int]], *, block_rows: int, subsample: int,
                seed: int, progress: Progress | None, ci_groups: int = 0, ci_seed: int = 0) -> CompareMoments:
        """core/state/compare_pass.py's moments from one task per row range (whole chunks of every
        compared layer), each opening the files itself, merged in a tree. The caller finalises."""
        dumps = list({id(s.dump): s.dump for s in streams}.values())
        number = {id(d): f for f, d in enumerate(dumps)}
        files = [(str(d.path), task_spec(d)) for d in dumps]
        layers = [[number[id(s.dump)], s.layer.path] for s in streams]
        settings = {"block_rows": block_rows, "subsample": subsample, "seed": seed}
        settings |= {"ci_groups": ci_groups, "ci_seed": ci_seed} if ci_groups else {}  # jackknife groups kept apart
        identity = {"files": [[path, dump_fingerprint(d)] for (path, _), d in zip(files, dumps)], "layers": layers,
                    "pairs": [list(p) for p in pairs], **settings}
        n_rows = dumps[0].n_rows
        ranges = row_ranges(n_rows, self._n_ranges(n_rows), common_chunk_rows([s.layer for s in streams], n_rows))
        named = ", ".join(dict.fromkeys(path for path, _ in files))
        run, started = _run_id(named), time.perf_counter()
        futures, saved = {}, {}
        for a, b in ranges:
            meta = identity | {"rows": [[a, b]]}
            arrays = self.saved.compare(identity, meta)
            if arrays is not None:
                saved[(a, b)] = self.client.scatter([arrays])[0]
            else:
                futures[(a, b)] = self.client.submit(compare_rows, files, layers, identity["pairs"], settings, meta,
                                                     retries=self.options.retries, pure=False,
                                                     key=f"actgeom-compare-{run}-{a}-{b}", **self._range)
        done, total = sum(b - a for a, b in saved), n_rows
        if progress is not None:
            progress("the compared layers", done, total)

        def finished(rows: tuple[int, int], future) -> None:
            nonlocal done
            if self.options.save_stats is not None:
                self.saved.save_compare(identity, rows, [d.path for d in dumps], future.result())
            done += rows[1] - rows[0]
            if progress is not None:
                progress("the compared layers", done, total)

        result, tasks_done = self._tree(futures, saved, merge_compare, named, finished)
        self.timings = {"ranges": len(ranges), "tasks_s": tasks_done - started, "merge_s": time.perf_counter() - tasks_done}
        _raise_if_error(result)
        return CompareMoments.from_arrays(result)[0]


def task_spec(dump: Dump):
    """The dump spec a task opens ``dump`` with: the user's, and the label and prediction ranges
    this client found (a task does not scan those vectors again: O(rows) per task)."""
    return replace(dump.spec, class_ranges=dump.class_ranges)


def _raise_if_error(result: dict) -> None:
    if "error" in result:
        raise _TaskError(*result["error"])


def _wave_key(dump: Dump, specs: dict, options: PassOptions) -> tuple:
    return str(Path(dump.path).resolve()), dump.spec, tuple(specs.items()), options


def _run_id(path: Path) -> str:
    """Task keys of one wave: the file's id and a fresh part (a re-run with other options never
    meets the tasks of an earlier one still held by the scheduler)."""
    return f"{task_id(path)}-{uuid.uuid4().hex[:8]}"
