"""--backend dask: tasks over row ranges on a LocalCluster of 2 processes give the numbers of one
local pass; a killed worker changes nothing; per-task statistics are reused after a crash."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import sys

import numpy as np
import pytest
from conftest import class_data, write_dump

from actgeom.core import api
from actgeom.core.backends import DASK_MISSING, BackendOptions, open_backend
from actgeom.core.base.errors import UsageError
from actgeom.core.dump import Dump, DumpSpec, DumpWriter
from actgeom.core.state.accumulators import MomentsSpec, SampleSpec, UnitsSpec
from actgeom.core.state.engine import PassOptions, accumulate

HAS_DASK = importlib.util.find_spec("distributed") is not None
needs_dask = pytest.mark.skipif(not HAS_DASK, reason="the dask extra is not installed (pip install '.[dask]'); "
                                                     ".ci/run installs it")

# A run on row ranges merges shifted float64 sums in another order than one pass: the metrics
# agree to rounding, far inside 1e-12 relative (the bar). Counts and the sample are exact.
DASK_RTOL = 1e-12
DASK_ATOL = 1e-13  # metrics whose value is ~0 (e.g. a mean cosine of centred rows): absolute rounding
CHUNK_ROWS = 32  # small chunks: several chunk-aligned ranges per file
RANGES = 5
ENTROPY = {"subsample": 200, "threshold": 0.0, "dsmi_repeats": 2}  # small DSE/DSMI kernels: a fast test


# -- dumps ---------------------------------------------------------------------------------------

def _sample_dump(path, rng, step: int) -> str:
    """3 layers, 4 classes, a classifier on the last layer (NC4 by logits: a second pass), chunks of 32 rows."""
    X, y = class_data(rng, [70, 60, 50, 40], 6, separation=2.0 + step)
    hidden = np.maximum(X @ rng.standard_normal((6, 8)), 0.0)
    last = hidden @ rng.standard_normal((8, 5)) + 1.5
    with DumpWriter(path, layers={"in": 6, "hidden": 8, "last": 5}, dtype="float64", step=step,
                    checkpoint=f"c{step}", chunk_bytes=CHUNK_ROWS * 8 * 8) as writer:
        writer.append({"in": X, "hidden": hidden, "last": last}, labels=y)
        writer.set_classifier(rng.standard_normal((4, 5)), rng.standard_normal(4), layer="last")
    return str(path)


def _token_dump(path, rng) -> str:
    """Token-level: 60 sequences of 1..12 tokens, positions, labels, chunks of 32 rows."""
    lengths = rng.integers(1, 13, size=60)
    n = int(lengths.sum())
    X = rng.standard_normal((n, 6)) + np.repeat(rng.standard_normal((60, 6)), lengths, axis=0)
    y = rng.integers(0, 3, size=n)
    with DumpWriter(path, layers={"a": 6, "b": 4}, dtype="float64", level="token", chunk_bytes=CHUNK_ROWS * 6 * 8) as writer:
        writer.append({"a": X, "b": np.tanh(X[:, :4])}, labels=y, position=np.concatenate([np.arange(k) for k in lengths]))
        writer.add_sequences(lengths)
    return str(path)


@pytest.fixture(scope="module")
def dumps(tmp_path_factory):
    rng = np.random.default_rng(7)
    root = tmp_path_factory.mktemp("dask")
    return {"samples": [_sample_dump(root / f"ckpt{i}.h5", rng, i) for i in range(2)],
            "tokens": [_token_dump(root / "tokens.h5", rng)]}


@pytest.fixture(scope="module")
def cluster():
    """One LocalCluster of 2 worker processes for the module, made as `--workers 2` makes it: a row
    range at a time per worker, a second thread for merges (the fault tests' cluster has neither)."""
    if not HAS_DASK:
        pytest.skip("the dask extra is not installed (pip install '.[dask]')")
    import logging

    from distributed import LocalCluster

    from actgeom.core.backends.dask import RANGE_SLOT

    with LocalCluster(n_workers=2, threads_per_worker=2, resources={RANGE_SLOT: 1}, processes=True,
                      dashboard_address=":0", silence_logs=logging.ERROR) as running:
        yield running


def _dask(cluster, **more) -> BackendOptions:
    return BackendOptions("dask", scheduler=cluster.scheduler_address, ranges=RANGES, **more)


def assert_same_numbers(local: dict, dask: dict) -> int:
    """Every metric of every layer of every file equal to DASK_RTOL; returns how many were compared."""
    compared = 0
    assert [f["file"] for f in local["files"]] == [f["file"] for f in dask["files"]]
    for file_local, file_dask in zip(local["files"], dask["files"]):
        assert [la["layer"] for la in file_local["layers"]] == [la["layer"] for la in file_dask["layers"]]
        for a, b in zip(file_local["layers"], file_dask["layers"]):
            assert a.get("n_rows") == b.get("n_rows")
            assert a["unavailable"] == b["unavailable"], a["layer"]
            assert a["metrics"].keys() == b["metrics"].keys(), a["layer"]
            for name, value in a["metrics"].items():
                other = b["metrics"][name]
                if isinstance(value, float) and math.isnan(value):
                    assert math.isnan(other), (a["layer"], name)
                else:
                    assert other == pytest.approx(value, rel=DASK_RTOL, abs=DASK_ATOL), (a["layer"], name)
                compared += 1
    return compared


# -- the ranges ------------------------------------------------------------------------------------

@needs_dask
def test_ranges_are_whole_chunks_and_whole_sequences():
    from actgeom.core.backends.tasks import row_ranges

    ranges = row_ranges(1000, 4, chunk_rows=64)
    assert ranges == [(0, 256), (256, 512), (512, 768), (768, 1000)]
    offsets = np.array([0, 100, 250, 300, 700, 1000])
    ranges = row_ranges(1000, 4, chunk_rows=64, offsets=offsets)
    assert ranges == [(0, 300), (300, 700), (700, 1000)]  # cuts moved on to the next sequence start
    assert {a for a, _ in ranges} <= set(offsets.tolist())
    assert row_ranges(10, 100) == [(i, i + 1) for i in range(10)]


# -- the same numbers ------------------------------------------------------------------------------

@needs_dask
@pytest.mark.parametrize("kind", ["samples", "tokens"])
def test_collapse_rank_entropy_equal_a_local_run(cluster, dumps, kind):
    paths = dumps[kind]
    options = {"entropy": ENTROPY}
    families = ("collapse", "rank", "entropy")
    local = api.analyze(paths, families=families, options=options).to_dict()
    with open_backend(_dask(cluster)) as backend:
        started = []
        submit = backend.submit
        backend.submit = lambda dump, *more: (started.append(dump.path.name), submit(dump, *more))
        dask = api.analyze(paths, families=families, options=options, backend=backend).to_dict()
        assert backend._pending == {}  # every file's first wave, started before any was awaited, was used
    assert started == [os.path.basename(p) for p in paths]
    assert assert_same_numbers(local, dask) > 50
    ran_by = {"name": "dask", "scheduler": cluster.scheduler_address, "workers": 2}  # recorded (#22 item 16)
    assert (local["pass"]["backend"], dask["pass"]["backend"]) == ({"name": "local"}, ran_by)
    if kind == "samples":  # NC4 came from the second wave
        assert all("nc4_mismatch" in layer["metrics"] for file in dask["files"] for layer in file["layers"][-1:])


@needs_dask
@pytest.mark.parametrize("kind", ["samples", "tokens"])
def test_intervals_equal_a_local_run(cluster, dumps, kind):
    """Jackknife groups travel with each task's statistics: the intervals of a Dask run are a local run's."""
    paths, families = dumps[kind][:1], ("collapse", "rank")
    local = api.analyze(paths, families=families, ci=True, ci_groups=4).to_dict()
    with open_backend(_dask(cluster)) as backend:
        dask = api.analyze(paths, families=families, ci=True, ci_groups=4, backend=backend).to_dict()
    compared = 0
    for a, b in zip(local["files"][0]["layers"], dask["files"][0]["layers"]):
        assert a["intervals"].keys() == b["intervals"].keys() and a["intervals_unavailable"] == b["intervals_unavailable"]
        for name, interval in a["intervals"].items():
            assert b["intervals"][name] == pytest.approx(interval, rel=1e-10, abs=1e-12), (a["layer"], name)
            compared += 1
    assert compared > 10


@needs_dask
def test_the_seeded_sample_and_counts_are_identical(cluster, dumps):
    specs = {"moments": MomentsSpec(by_class=True, all_rows=True), "units": UnitsSpec(), "sample": SampleSpec(size=150, seed=3)}
    for path in dumps["samples"] + dumps["tokens"]:
        with Dump(path) as dump, open_backend(_dask(cluster)) as backend:
            assert len(backend._ranges_of(dump, PassOptions())) >= 3
            local = accumulate(dump, specs=specs)
            dask = backend.accumulate(dump, specs, PassOptions(), None)
        for name, stats in local.items():
            a, b = stats.get("sample"), dask[name].get("sample")
            np.testing.assert_array_equal(np.sort(a.keys), np.sort(b.keys))
            order_a, order_b = np.argsort(a.keys), np.argsort(b.keys)
            for field in ("index", "labels", "rows"):
                np.testing.assert_array_equal(getattr(a, field)[order_a], getattr(b, field)[order_b])
            np.testing.assert_array_equal(stats.get("moments").classes.counts, dask[name].get("moments").classes.counts)
            assert (stats.n_rows, stats.n_unlabeled) == (dask[name].n_rows, dask[name].n_unlabeled)


@needs_dask
def test_probe_and_neurons_equal_a_local_run(cluster, dumps):
    for family in ("probe", "neurons"):
        local = getattr(api, family)(dumps["samples"]).to_dict()
        dask = getattr(api, family)(dumps["samples"], backend=_dask(cluster)).to_dict()
        assert assert_same_numbers(local, dask) > 10


@needs_dask
def test_report_numbers_equal_a_local_run(cluster, dumps):
    from actgeom.cli.report.data import ReportOptions, gather
    from actgeom.core.dump import DumpSpec
    from actgeom.core.metrics.entropy import EntropyOptions

    options = ReportOptions(entropy=EntropyOptions(**ENTROPY))
    local = gather(dumps["samples"], DumpSpec(), options)
    with open_backend(_dask(cluster)) as backend:
        dask = gather(dumps["samples"], DumpSpec(), options, backend=backend)
    assert assert_same_numbers(local, dask) > 50


@needs_dask
def test_cli_prints_the_dashboard_and_the_same_numbers(cluster, dumps, cli):
    path = dumps["samples"][0]
    code, out, err = cli("collapse", path, "--backend", "dask", "--scheduler", cluster.scheduler_address, "--format", "json")
    assert code == 0, err
    assert "actgeom: Dask dashboard: http" in err
    import json

    local = cli.json("collapse", path, "--quiet")
    assert assert_same_numbers(local, json.loads(out)) > 20


def test_a_task_opens_its_dump_without_scanning_labels_again(dumps, monkeypatch):
    """The client scans the label and prediction vectors once; a task's dump takes the ranges from
    its spec (a scan per task would read O(rows) for every range) and decides the same."""
    from actgeom.core.backends.dask import task_spec
    from actgeom.core.dump import validate

    with Dump(dumps["samples"][0]) as dump:
        spec, client_view = task_spec(dump), (dump.labels_path, dump.predictions_path, dump.class_ranges)
    assert spec.class_ranges == (client_view[2]) and spec.class_ranges[0] == (0, 3)

    def scanned(*args, **kwargs):
        raise AssertionError("the labels were scanned again")

    monkeypatch.setattr(validate, "class_ranges", scanned)
    with Dump(dumps["samples"][0], spec) as dump:
        assert (dump.labels_path, dump.predictions_path, dump.class_ranges) == client_view


@needs_dask
def test_ranges_take_the_slot_only_where_every_worker_has_it(cluster, fragile_cluster):
    """A row range holds a worker's range slot (merges then run beside it, never behind it); on a
    cluster whose workers do not declare the slot, tasks ask for no resource (they would wait for ever)."""
    from actgeom.core.backends.dask import RANGE_SLOT

    with open_backend(_dask(cluster)) as backend:
        assert backend._range == {"resources": {RANGE_SLOT: 1}}
    with open_backend(_dask(fragile_cluster)) as backend:
        assert backend._range == {}


# -- compare: one pass over aligned files, as tasks over row ranges -----------------------------------

COMPARE_ROWS = 230  # 8 chunks of 32 rows: RANGES ranges of whole chunks
COMPARE_SAMPLE = {"subsample": 120, "seed": 5}  # RSA and mutual k-NN on: the sample must be the same rows


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    """Three checkpoints of the same 230 inputs (row ids, 3 layers each, chunks of 32 rows) and a
    copy of the first with two NaN rows."""
    rng = np.random.default_rng(11)
    root = tmp_path_factory.mktemp("compare")
    X = rng.standard_normal((COMPARE_ROWS, 6))
    ids = np.arange(COMPARE_ROWS) * 3
    paths = []
    for step in range(3):  # well-conditioned layers (covariance condition < 1e3): CCA's whitening keeps rounding small
        inputs = X + 0.3 * step * rng.standard_normal(X.shape)
        hidden = np.tanh(inputs @ rng.standard_normal((6, 7)) * (0.2 + 0.1 * step))
        last = hidden @ rng.standard_normal((7, 4)) + 0.1 * (1 + step) * rng.standard_normal((COMPARE_ROWS, 4))
        paths.append(write_dump(root / f"step{step}.h5", {"in": inputs + 2.0, "hidden": hidden, "last": last},
                                chunk_rows=CHUNK_ROWS, sample_id=ids))
    bad = {"in": X + 2.0, "hidden": np.tanh(0.3 * X @ rng.standard_normal((6, 7))), "last": X[:, :4] ** 2}
    bad["hidden"][[40, 200]] = np.nan
    return {"steps": paths, "nan": write_dump(root / "nan.h5", bad, chunk_rows=CHUNK_ROWS, sample_id=ids)}


def assert_same_comparison(local: dict, dask: dict) -> int:
    """Every matrix cell and every per-pair field equal to DASK_RTOL; returns how many numbers were compared."""
    assert (local["rows"], local["columns"], local["mode"]) == (dask["rows"], dask["columns"], dask["mode"])
    ran_by = [{k: v for k, v in document["pass"].items() if k != "backend"} for document in (local, dask)]
    assert ran_by[0] == ran_by[1]  # rows used, dropped, block rows: exact
    assert len(local["pairs"]) == len(dask["pairs"])
    cells = [(local["matrices"], dask["matrices"])] + [(a, b) for a, b in zip(local["pairs"], dask["pairs"])]
    return sum(_same(a, b, "") for a, b in cells)


# shape/procrustes distance of a layer with itself (the diagonal of checkpoint × checkpoint): arccos
# and √(2 − 2c) at c = 1 turn the float64 rounding of c (~1e-16) into ~√(2e-16) ≈ 1.5e-8 absolute,
# in a local run as on Dask; elsewhere the distances are held to DASK_RTOL.
SELF_DISTANCE_ATOL = 1e-7
SELF_DISTANCE_BELOW = 1e-6  # a distance this small is a layer against itself (the test data has no other)


def _same(a, b, where: str) -> int:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        return sum(_same(a[k], b[k], f"{where}/{k}") for k in a)
    if isinstance(a, list):
        assert len(a) == len(b), where
        return sum(_same(x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b)))
    if isinstance(a, float) and not isinstance(a, bool):
        if math.isnan(a):
            assert math.isnan(b), where
        elif "distance" in where and abs(a) < SELF_DISTANCE_BELOW:
            assert b == pytest.approx(a, abs=SELF_DISTANCE_ATOL), where
        else:
            assert b == pytest.approx(a, rel=DASK_RTOL, abs=DASK_ATOL), where
        return 1
    assert a == b, where
    return 0


@needs_dask
@pytest.mark.parametrize("plan", ["layers", "files", "reference"])
def test_compare_equals_a_local_run(cluster, aligned, plan):
    """Two files × 3 layers (3 × 3 cells), 3 checkpoints × 1 layer, and layers × files against a
    reference: every matrix and per-pair number of a local run, from RANGES ranges."""
    steps = aligned["steps"]
    given = {"layers": ([steps[0], steps[2]], {}), "files": (steps, {"layers": "hidden"}),
             "reference": (steps, {"reference": steps[1], "layers": ["in", "last"]})}
    paths, where = given[plan]
    local = api.compare(paths, **where, **COMPARE_SAMPLE, units=True).to_dict()
    with open_backend(_dask(cluster)) as backend:
        dask = api.compare(paths, **where, **COMPARE_SAMPLE, units=True, backend=backend).to_dict()
        assert backend.timings["ranges"] >= 3  # whole chunks of every compared layer
    assert dask["pass"]["backend"] == {"name": "dask", "scheduler": cluster.scheduler_address, "workers": 2}
    assert local["pairs"][0]["compare"]["sample_rows"] == COMPARE_SAMPLE["subsample"]
    assert not any(cell["unavailable"] for cell in local["pairs"])  # every measure, the sample-based ones too
    assert assert_same_comparison(local, dask) > 100


@needs_dask
def test_compare_sample_and_counts_are_identical(cluster, aligned):
    from actgeom.core.state.compare_pass import Stream, accumulate_rows

    with Dump(aligned["steps"][0]) as a, Dump(aligned["steps"][1], DumpSpec(layers=("last",))) as b, \
            open_backend(_dask(cluster)) as backend:
        streams = [Stream(a, layer) for layer in a.layers] + [Stream(b, b.layers[0])]
        pairs = [(0, 3), (1, 3), (2, 3), (0, 1)]
        settings = {"block_rows": 20, "subsample": 90, "seed": 3}
        local = accumulate_rows(streams, pairs, **settings).result(streams, "error")
        dask = backend.compare(streams, pairs, **settings, progress=None).result(streams, "error")
        assert backend.timings["ranges"] >= 3
    assert (local.n_rows, local.n_nonfinite) == (dask.n_rows, dask.n_nonfinite) == (COMPARE_ROWS, 0)
    for mine, theirs in zip(local.samples, dask.samples):
        np.testing.assert_array_equal(mine, theirs)  # the same rows, in the same (row) order, bit for bit
    for pair in pairs:
        np.testing.assert_allclose(dask.crosses[pair].scatter, local.crosses[pair].scatter, rtol=DASK_RTOL, atol=DASK_ATOL)


@needs_dask
def test_compare_nan_rows_are_the_local_error_or_dropped_alike(cluster, aligned, cli):
    files = [aligned["steps"][0], aligned["nan"]]
    scheduler = ("--backend", "dask", "--scheduler", cluster.scheduler_address)
    local = cli("compare", *files, "--quiet")
    dask = cli("compare", *files, *scheduler, "--quiet")
    assert local[0] == 3 and local[2].startswith("Error: 2 rows have NaN or inf values in a compared layer (")
    assert dask == local
    local = api.compare(files, nonfinite="drop", **COMPARE_SAMPLE).to_dict()
    dask = api.compare(files, nonfinite="drop", **COMPARE_SAMPLE, backend=_dask(cluster)).to_dict()
    assert dask["pass"]["n_nonfinite_dropped"] == 2
    assert assert_same_comparison(local, dask) > 100


@needs_dask
def test_compare_cli_on_dask_writes_the_same_numbers(cluster, aligned, cli, tmp_path):
    import json

    paths = aligned["steps"]
    code, out, err = cli("compare", *paths, "-l", "last", "--backend", "dask", "--scheduler", cluster.scheduler_address,
                         "--save-stats", tmp_path / "tasks", "--format", "json")
    assert code == 0, err
    assert "actgeom: Dask dashboard: http" in err
    local = cli.json("compare", *paths, "-l", "last", "--quiet")
    assert assert_same_comparison(local, json.loads(out)) > 50
    saved = sorted((tmp_path / "tasks").iterdir())
    assert len(saved) >= 3 and all(f.name.startswith("compare-") and ".rows" in f.name for f in saved)


@needs_dask
def test_compare_saved_task_moments_are_reused_and_checked(cluster, aligned, tmp_path):
    saved, paths = tmp_path / "tasks", aligned["steps"][:2]
    first = api.compare(paths, **COMPARE_SAMPLE, backend=_dask(cluster, save_stats=saved)).to_dict()
    files = sorted(saved.iterdir())
    assert len(files) >= 3 and all(f.suffix == ".npz" for f in files)
    stamps = {f.name: f.stat().st_mtime_ns for f in files}
    gone, tampered = files[0], files[-1]
    gone.unlink()  # a crash before this task finished
    tampered.write_bytes(files[1].read_bytes())  # another range's moments under this range's name
    again = api.compare(paths, **COMPARE_SAMPLE, backend=_dask(cluster, save_stats=saved)).to_dict()
    assert assert_same_comparison(first, again) > 100
    now = {f.name: f.stat().st_mtime_ns for f in saved.iterdir()}
    assert now.keys() == stamps.keys()  # the missing one made again
    assert {name for name in now if now[name] != stamps[name]} == {gone.name, tampered.name}  # the others reused
    other = api.compare(paths, subsample=0, backend=_dask(cluster, save_stats=saved)).to_dict()  # other settings
    assert len(list(saved.iterdir())) == 2 * len(files) and other["pairs"][0]["compare"]["sample_rows"] == 0


# A command whose workers each have a heartbeat in flight when the cluster closes (the scheduler
# answers heartbeats 5 s late once the command is closing; it closes after 1.5 s, three heartbeat
# intervals): before the quiet shutdown, each worker logged "Failed to communicate with scheduler
# during heartbeat" with a CommClosedError traceback, after a run that succeeded (1 run in 10 by chance).
HEARTBEAT_IN_FLIGHT = """
import asyncio, sys, time
from distributed.scheduler import Scheduler
from actgeom.cli.app import main
from actgeom.core.backends.dask import DaskBackend

closing, heartbeat, close = [], Scheduler.heartbeat_worker, DaskBackend.__exit__

def late_heartbeat(self, **kwargs):  # the scheduler calls it too (sync) when a worker joins
    if not closing:
        return heartbeat(self, **kwargs)

    async def late():  # the handler awaits it
        await asyncio.sleep(5)
        return heartbeat(self, **kwargs)

    return late()

def closing_with_heartbeats_in_flight(self, *exc):
    closing.append(True)
    time.sleep(1.5)
    close(self, *exc)

Scheduler.heartbeat_worker = late_heartbeat
DaskBackend.__exit__ = closing_with_heartbeats_in_flight
if __name__ == "__main__":
    sys.argv[0] = "actgeom"
    main()
"""
SUBPROCESS_TIMEOUT_S = 240  # a command on a LocalCluster of one worker: ~10 s, ~60 s on a loaded 2-core machine


@needs_dask
def test_a_successful_dask_command_closes_its_cluster_quietly(aligned, tmp_path):
    """compare --backend dask -q, closing while each worker's heartbeat is in flight: exit 0, the
    numbers, and nothing on stderr (no CommClosedError traceback)."""
    import subprocess

    script = tmp_path / "late_heartbeats.py"
    script.write_text(HEARTBEAT_IN_FLIGHT)
    run = subprocess.run([sys.executable, str(script), "compare", *aligned["steps"][:2], "-l", "last", "--backend", "dask",
                          "--workers", "1", "-q", "--format", "json"], capture_output=True, text=True,
                         timeout=SUBPROCESS_TIMEOUT_S, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert '"cka_linear"' in run.stdout
    assert run.stderr == ""


# A Dask task that kept failing after a warning was given (distributed warns, e.g. of a large
# graph or a lost worker): the CLI showed the other warnings inside its catch_warnings(record=True),
# where showing one records it again in the list being shown — a loop for ever, with idle workers.
WARNING_THEN_FAILURE = """
import sys, warnings
from actgeom.cli.app import main
from actgeom.core.backends.dask import DaskBackend, TaskFailed

def warned_then_failed(self, *args, **kwargs):
    warnings.warn("a warning given during the run", UserWarning)
    raise TaskFailed("rows 0:32 of a.h5 failed on the Dask workers, retried in vain: KilledWorker")

DaskBackend.compare = warned_then_failed
if __name__ == "__main__":
    sys.argv[0] = "actgeom"
    main()
"""


FAILURE_TIMEOUT_S = 90  # the command on a running cluster: ~5 s, ~30 s on a loaded machine


@needs_dask
def test_a_failure_after_a_warning_is_the_warning_and_one_error_line(cluster, aligned, tmp_path):
    import subprocess

    script = tmp_path / "warned_then_failed.py"
    script.write_text(WARNING_THEN_FAILURE)
    run = subprocess.run([sys.executable, str(script), "compare", *aligned["steps"][:2], "--backend", "dask",
                          "--scheduler", cluster.scheduler_address, "-q"], capture_output=True, text=True,
                         timeout=FAILURE_TIMEOUT_S, cwd=tmp_path)
    assert run.returncode == 1, run.stderr
    assert run.stderr.count("UserWarning: a warning given during the run") == 1, run.stderr
    assert run.stderr.endswith("Error: rows 0:32 of a.h5 failed on the Dask workers, retried in vain: KilledWorker\n")


# -- failures --------------------------------------------------------------------------------------

def _kill_worker(marker: str, rows: str = "", once: bool = True, tasks: str = "actgeom-rows"):
    """A worker plugin: the worker process dies when it starts a task whose key has ``tasks`` (first
    wave: actgeom-rows; compare: actgeom-compare) and ends with ``rows`` (once: a marker file
    remembers it; or every time). Defined here, so that cloudpickle ships the class itself to the
    workers (they cannot import the tests)."""
    from distributed.diagnostics.plugin import WorkerPlugin

    class KillWorker(WorkerPlugin):
        def transition(self, key, start, finish, **kwargs):
            if finish == "executing" and tasks in str(key) and str(key).endswith(rows):
                if once and os.path.exists(marker):
                    return
                open(marker, "w").close()
                os._exit(1)

    return KillWorker()


@pytest.fixture(scope="module")
def fragile_cluster():
    """A cluster of its own for the tests that kill workers: a task may kill one worker once."""
    if not HAS_DASK:
        pytest.skip("the dask extra is not installed (pip install '.[dask]')")
    import logging

    import dask
    from distributed import LocalCluster

    # lost-worker-timeout: a killed worker's nanny restarts it, but if it has not registered again
    # within this time the cluster closes the nanny for good (15 s by default, exceeded on a loaded
    # machine: the next test waited in vain for its second worker)
    with dask.config.set({"distributed.scheduler.allowed-failures": 1, "distributed.deploy.lost-worker-timeout": "600s"}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                         silence_logs=logging.CRITICAL) as running:
        yield running


WORKER_RESTART_S = 120  # a killed worker is back within seconds; a loaded 2-core machine took over 60 s


def _with_plugin(cluster, plugin, name):
    from distributed import Client

    client = Client(cluster)
    client.register_plugin(plugin, name=name)
    return client


@needs_dask
def test_a_killed_worker_changes_no_number(fragile_cluster, dumps, tmp_path):
    marker = tmp_path / "killed"
    client = _with_plugin(fragile_cluster, _kill_worker(str(marker)), "kill-once")
    try:
        local = api.collapse(dumps["samples"]).to_dict()
        dask = api.collapse(dumps["samples"], backend=_dask(fragile_cluster)).to_dict()
    finally:
        client.unregister_worker_plugin("kill-once")
        client.close()
    assert marker.exists()  # a worker did die mid-run
    assert assert_same_numbers(local, dask) > 20


@needs_dask
def test_a_task_that_keeps_failing_is_one_error_naming_file_and_rows(fragile_cluster, dumps, tmp_path, cli):
    from actgeom.core.backends.tasks import task_ranges

    with Dump(dumps["samples"][0]) as dump:
        ranges = task_ranges(dump, 2 * 2)  # the command's ranges: two per worker (both up: waited for below)
    a, b = ranges[1]
    client = _with_plugin(fragile_cluster, _kill_worker(str(tmp_path / "k"), rows=f"-{a}-{b}", once=False), "kill-always")
    try:
        client.wait_for_workers(2, timeout=WORKER_RESTART_S)  # earlier tests killed workers: their nannies restart them
        code, out, err = cli("collapse", dumps["samples"][0], "--backend", "dask", "--scheduler",
                             fragile_cluster.scheduler_address, "--quiet")
    finally:
        client.unregister_worker_plugin("kill-always")
        client.close()
    assert code == 1, err
    lines = err.strip().splitlines()
    # rows a:b die every time; a range queued on the dying worker may be counted failed with it and be named
    named = [f"Error: rows {c}:{d} of {dumps['samples'][0]} failed on the Dask workers, retried in vain: " for c, d in ranges]
    assert len(lines) == 1 and any(lines[0].startswith(start) for start in named), err


@needs_dask
def test_a_compare_task_that_keeps_failing_is_one_error_naming_files_and_rows(fragile_cluster, aligned, tmp_path, cli):
    import re

    from actgeom.core.backends.tasks import common_chunk_rows

    paths = aligned["steps"][:2]
    # the last range dies every time (its start depends on the workers up after earlier kills); a range
    # queued on the same worker may die with it and be the one named: any range of the command will do
    plugin = _kill_worker(str(tmp_path / "k"), rows=f"-{COMPARE_ROWS}", once=False, tasks="actgeom-compare")
    client = _with_plugin(fragile_cluster, plugin, "kill-compare")
    try:
        client.wait_for_workers(2, timeout=WORKER_RESTART_S)
        code, out, err = cli("compare", *paths, "--backend", "dask", "--scheduler", fragile_cluster.scheduler_address,
                             "--quiet")
    finally:
        client.unregister_worker_plugin("kill-compare")
        client.close()
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    named = re.match(rf"Error: rows (\d+):(\d+) of {re.escape(paths[0])}, {re.escape(paths[1])} failed on the "
                     "Dask workers, retried in vain: ", lines[0])
    assert named, err
    with Dump(paths[0]) as dump:  # the ranges' cuts: whole chunks of every compared layer
        chunk = common_chunk_rows(dump.layers, dump.n_rows)
    a, b = int(named[1]), int(named[2])
    assert 0 <= a < b <= COMPARE_ROWS and a % chunk == 0 and (b % chunk == 0 or b == COMPARE_ROWS), err


# A task no worker can load (its argument's class is importable here, not on the workers, as when
# actgeom changes under a running command): each worker closes itself and the LocalCluster does not
# replace them. The wait lasted for ever; it now ends in an error (after WORKERS_GONE_S, 1 s here).
TASK_NO_WORKER_CAN_LOAD = """
import sys, types
import dask
from actgeom.core.backends import BackendOptions, open_backend
from actgeom.core.backends import dask as dask_backend
from actgeom.core.backends.tasks import merge_pair

dask_backend.WORKERS_GONE_S, dask_backend.WORKERS_CHECK_S = 1, 0.5
if __name__ == "__main__":
    here_only = types.ModuleType("here_only")
    exec("class Unloadable:\\n    pass", here_only.__dict__)
    here_only.Unloadable.__module__ = "here_only"
    sys.modules["here_only"] = here_only
    with open_backend(BackendOptions("dask", workers=1)) as backend:
        print(dask.config.get("distributed.deploy.lost-worker-timeout"))  # a slow restart is awaited
        future = backend.client.submit(len, [here_only.Unloadable()], pure=False)
        try:
            backend._tree({(0, 1): future}, {}, merge_pair, "a.h5", lambda rows, future: None)
        except dask_backend.TaskFailed as exc:
            print(exc)
    print(dask.config.get("distributed.deploy.lost-worker-timeout"))  # Dask's own again
"""


@needs_dask
def test_a_local_cluster_whose_workers_all_closed_is_an_error_not_a_wait(tmp_path):
    import subprocess

    script = tmp_path / "unloadable_task.py"
    script.write_text(TASK_NO_WORKER_CAN_LOAD)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    waited, error, default = run.stdout.splitlines()
    assert error.startswith("every worker of the Dask LocalCluster has closed and none came back within 1 s"), run.stdout
    assert (waited, default) == ("300s", "15s")


# -- --save-stats DIR ------------------------------------------------------------------------------

@needs_dask
def test_saved_task_statistics_are_reused_and_checked(cluster, dumps, tmp_path):
    saved = tmp_path / "tasks"
    first = api.collapse(dumps["samples"], backend=_dask(cluster, save_stats=saved)).to_dict()
    assert all(f.suffix == ".npz" and ".rows" in f.name for f in saved.iterdir())
    files = sorted(f for f in saved.iterdir() if ".second-" not in f.name)  # the first wave's (NC4 adds a second)
    assert len(files) == 2 * RANGES
    stamps = {f.name: f.stat().st_mtime_ns for f in saved.iterdir()}
    gone, tampered = files[0], files[-1]
    gone.unlink()  # a crash before this task finished
    other = next(f for f in files if f not in (gone, tampered) and f.name.split(".rows")[0] == tampered.name.split(".rows")[0])
    tampered.write_bytes(other.read_bytes())  # another range's statistics under this range's name
    again = api.collapse(dumps["samples"], backend=_dask(cluster, save_stats=saved)).to_dict()
    assert assert_same_numbers(first, again) > 20
    now = {f.name: f.stat().st_mtime_ns for f in saved.iterdir()}
    assert now.keys() == stamps.keys()  # the missing one made again
    rewritten = {name for name in now if now[name] != stamps[name]}
    assert tampered.name in rewritten and gone.name in now
    assert not (rewritten - {tampered.name, gone.name})  # the others were reused, not recomputed


@needs_dask
def test_saved_ranges_are_reused_by_a_rerun_with_another_number_of_ranges(cluster, dumps, tmp_path):
    """A re-run on another cluster size cuts the rows otherwise, yet keeps every saved range whole
    and computes only the rows no saved file covers."""
    saved = tmp_path / "tasks"
    path = dumps["samples"][0]
    first = api.rank(path, backend=_dask(cluster, save_stats=saved)).to_dict()
    files = sorted(saved.iterdir())
    assert len(files) == RANGES
    stamps = {f.name: f.stat().st_mtime_ns for f in files}
    files[1].unlink()  # a crash: that range's rows are missing
    other = BackendOptions("dask", scheduler=cluster.scheduler_address, ranges=2, save_stats=saved)
    again = api.rank(path, backend=other).to_dict()
    assert assert_same_numbers(first, again) > 10
    now = {f.name: f.stat().st_mtime_ns for f in saved.iterdir()}
    kept = {name: stamp for name, stamp in stamps.items() if name != files[1].name}
    assert {name: now.get(name) for name in kept} == kept  # every saved range reused, none cut anew
    made = [re.search(r"rows(\d+)-(\d+)", name).groups() for name in now.keys() - kept.keys()]
    lost = re.search(r"rows(\d+)-(\d+)", files[1].name).groups()
    assert sorted(made)[0][0] == lost[0] and sorted(made)[-1][1] == lost[1]  # the missing rows, and only them


@needs_dask
def test_saved_results_of_a_dump_rewritten_since_are_not_used(cluster, dumps, tmp_path):
    """A dump written again under the same name (same attributes and shapes, so the same fingerprint)
    after the saved files: every one of them is made again, none reused."""
    import shutil

    path = tmp_path / "run.h5"
    shutil.copy(dumps["samples"][0], path)
    saved = tmp_path / "tasks"
    api.collapse(path, backend=_dask(cluster, save_stats=saved))
    stamps = {f.name: f.stat().st_mtime_ns for f in saved.iterdir()}
    assert len(stamps) == 2 * RANGES  # first wave and NC4's second wave
    later = max(stamps.values()) + 10**9
    os.utime(path, ns=(later, later))  # as if the dump had been written again now
    api.collapse(path, backend=_dask(cluster, save_stats=saved))
    assert all(f.stat().st_mtime_ns != stamps[f.name] for f in saved.iterdir())


@needs_dask
def test_saved_second_pass_parts_are_reused_and_checked(cluster, dumps, tmp_path):
    """NC4's and the probe's second wave keep one file per range too: a re-run after a crash makes
    only the missing and the wrong ones, with the same numbers."""
    saved = tmp_path / "tasks"
    families = ("collapse", "probe")
    local = api.analyze(dumps["samples"], families=families).to_dict()
    first = api.analyze(dumps["samples"], families=families, backend=_dask(cluster, save_stats=saved)).to_dict()
    assert assert_same_numbers(local, first) > 40
    files = sorted(saved.iterdir())
    parts = [f for f in files if ".second-" in f.name]
    assert len(parts) == 2 * 3 * RANGES  # two files × three layers (the probe's test rows) × the ranges
    stamps = {f.name: f.stat().st_mtime_ns for f in files}
    gone, tampered = parts[0], parts[-1]
    gone.unlink()  # a crash before this range's second pass ended
    tampered.write_bytes(parts[-2].read_bytes())  # another range's parts under this range's name
    again = api.analyze(dumps["samples"], families=families, backend=_dask(cluster, save_stats=saved)).to_dict()
    assert assert_same_numbers(first, again) > 40
    now = {f.name: f.stat().st_mtime_ns for f in saved.iterdir()}
    assert now.keys() == stamps.keys()
    assert {name for name in now if now[name] != stamps[name]} == {gone.name, tampered.name}  # the others reused


@needs_dask
def test_save_stats_must_be_a_directory_and_needs_dask(dumps, tmp_path, cli):
    code, _, err = cli("collapse", dumps["samples"][0], "--save-stats", tmp_path / "d")
    assert code == 2 and err == "Error: --save-stats needs --backend dask\n"
    code, _, err = cli("collapse", dumps["samples"][0], "--workers", "2")
    assert code == 2 and err == "Error: --workers needs --backend dask\n"
    (tmp_path / "file").write_text("x")
    code, _, err = cli("collapse", dumps["samples"][0], "--backend", "dask", "--save-stats", tmp_path / "file")
    assert code == 2 and "is a file; with --backend dask it names a directory" in err


# -- without the extra -----------------------------------------------------------------------------

def test_without_the_extra_one_line_says_how_to_install_it(tmp_path, rng, cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` now fails
    X, y = class_data(rng, [10, 10], 3)
    path = tmp_path / "d.h5"
    with DumpWriter(path, layers={"h": 3}, dtype="float64") as writer:
        writer.append({"h": X}, labels=y)
    code, out, err = cli("collapse", path, "--backend", "dask", "--workers", "2")
    assert (code, out, err) == (2, "", f"Error: {DASK_MISSING}\n")
    assert DASK_MISSING == "--backend dask needs the dask extra: pip install 'actgeom[dask]'"
    with pytest.raises(UsageError, match="needs the dask extra"):
        api.rank([path], backend=BackendOptions("dask"))


@needs_dask
def test_an_unusable_scheduler_address_is_one_line(dumps, cli):
    code, out, err = cli("rank", dumps["samples"][0], "--backend", "dask", "--scheduler", "nonsense:/x")
    assert code == 2 and out == ""
    assert err.startswith("Error: --scheduler nonsense:/x: cannot reach a Dask scheduler (") and err.count("\n") == 1
