"""Intervals of the second-pass metrics (#24): the probe's scores and collapse's NC4 leave each
jackknife group out of the train and the test rows within the one shared second pass. Each
leave-one-group-out record equals the same command on a dump holding only the rows outside the
group (split by /rows/sample_id, so both dumps split alike); intervals do not depend on the
block size or on --backend dask."""

from __future__ import annotations

import importlib.util
import logging

import numpy as np
import pytest

from actgeom.core.analysis import (
    FAMILIES,
    analyze_dump,
    facts_of,
    family_options,
    layer_context,
    second_pass_consumers,
    specs_for,
)
from actgeom.core.dump import Dump, DumpWriter
from actgeom.core.inference import replicate
from actgeom.core.metrics.probe import ProbeOptions
from actgeom.core.metrics.uncertainty import jackknife
from actgeom.core.state.engine import PassOptions, accumulate, second_pass
from actgeom.core.state.groups import Grouping

G, SEED = 5, 7
PROBE_SCORES = ("lda_accuracy", "lda_balanced_accuracy", "lda_macro_f1", "ridge_accuracy", "ridge_balanced_accuracy",
                "ridge_macro_f1", "ncc_accuracy")


def _families(**probe) -> dict:
    """Probe split by sample_id (the same split on the subset dumps) and collapse with NC4 from
    predictions; min_count 20 drops the rare class 3 (its scatter comes from the second pass)."""
    return {"probe": ProbeOptions(split_by="sample_id", seed=3, **probe),
            "collapse": family_options("collapse", {"min_count": 20})}


def _rows(rng, n_classes: int, n: int = 500, d: int = 5) -> dict:
    """Rows of 3 or 2 frequent classes (and, with 4, a rare class 3), overlapping; noisy predictions;
    distinct shuffled sample ids; token ids for the control task."""
    if n_classes == 4:
        y = np.where(rng.random(n) < 0.05, 3, rng.integers(0, 3, n))
    else:
        y = rng.integers(0, n_classes, n)
    X = rng.standard_normal((n, d)) + 1.2 * np.eye(d)[y] + 50.0
    prediction = np.where(rng.random(n) < 0.7, y, rng.integers(0, n_classes, n))
    return {"X": X, "labels": y, "prediction": prediction, "sample_id": rng.permutation(10 * n)[:n],
            "token_id": rng.integers(0, 40, n)}


def _write(path, rows: dict, keep: np.ndarray | None = None, offsets: np.ndarray | None = None) -> str:
    """The dump of ``rows`` (only the rows ``keep``; token-level with ``offsets``)."""
    keep = np.arange(rows["X"].shape[0]) if keep is None else keep
    with DumpWriter(path, layers={"h": rows["X"].shape[1]}, dtype="float64", chunk_bytes=29 * 5 * 8, model="test",
                    level="token" if offsets is not None else "sample") as writer:
        writer.append({"h": rows["X"][keep]}, **{name: rows[name][keep] for name in rows if name != "X"})
        if offsets is not None:
            writer.set_offsets(offsets)
    return str(path)


def _left_out_records(path, families: dict, options: PassOptions) -> list[dict]:
    """{metric: value} of each group's re-evaluation, as core/inference.py makes it, after one
    pass and one second pass."""
    with Dump(path) as dump:
        stats = accumulate(dump, specs=specs_for(families, facts_of(dump)), options=options)
        ctx = layer_context(dump, "h", stats, options, dump.classifier())
        consumers = second_pass_consumers(ctx, families)
        assert set(consumers) == set(families)
        second_pass(dump, dump.layer("h"), list(consumers.values()), options)
        ctx.second = consumers
        return [_metrics(FAMILIES, families, replicate(ctx, g)) for g in range(G)]


def _metrics(registry: dict, families: dict, ctx) -> dict:
    values, unavailable = {}, {}
    for name, options in families.items():
        record = registry[name].layer(ctx, options)
        values |= record.metrics
        unavailable |= record.unavailable
    return {"metrics": values, "unavailable": unavailable}


def _direct(tmp_path, rows: dict, families: dict, group: np.ndarray, g: int, offsets=None, tokens="all") -> dict:
    """The layer record of the same command on a dump of the rows outside group ``g``."""
    keep = np.flatnonzero(group != g)
    kept_offsets = None
    if offsets is not None:  # whole sequences are kept: their lengths, in order
        lengths = np.diff(offsets)[group[offsets[:-1]] != g]
        kept_offsets = np.r_[0, np.cumsum(lengths)]
    path = _write(tmp_path / f"without{g}.h5", rows, keep, kept_offsets)
    with Dump(path) as dump:
        return analyze_dump(dump, families, pass_options=PassOptions(block_rows=41, tokens=tokens))["layers"][0]


def _assert_equal(got: dict, expected: dict, context) -> int:
    assert got["unavailable"].keys() == expected["unavailable"].keys(), context
    assert got["metrics"].keys() == expected["metrics"].keys(), context
    for metric, value in expected["metrics"].items():
        assert got["metrics"][metric] == pytest.approx(value, rel=1e-10, abs=1e-12), (context, metric)
    return len(expected["metrics"])


@pytest.mark.parametrize("n_classes, probe", [(4, {"control": "row"}), (4, {"control": "token", "shrinkage": "auto"}),
                                              (2, {"shrinkage": 0.3})])
def test_each_left_out_record_equals_the_command_on_the_rows_outside_the_group(tmp_path, n_classes, probe):
    rows = _rows(np.random.default_rng(n_classes), n_classes)
    path = _write(tmp_path / "d.h5", rows)
    families = _families(**probe)
    options = PassOptions(ci_groups=G, ci_seed=SEED, block_rows=37)
    left = _left_out_records(path, families, options)
    group = Grouping(G, SEED).of(np.arange(rows["X"].shape[0]))
    direct = [_direct(tmp_path, rows, families, group, g) for g in range(G)]
    compared = sum(_assert_equal(left[g], direct[g], g) for g in range(G))
    scored = PROBE_SCORES + ("nc4_mismatch", "nc1") + (("lda_auroc",) if n_classes == 2 else ("control_accuracy", "selectivity"))
    assert all(metric in direct[0]["metrics"] for metric in scored) and compared > 20 * G
    with Dump(path) as dump:  # the intervals of the command are the jackknife of those records
        layer = analyze_dump(dump, families, pass_options=options)["layers"][0]
    for metric in scored:
        assert metric not in layer["intervals_unavailable"], (metric, layer["intervals_unavailable"].get(metric))
        expected = jackknife(layer["metrics"][metric], [record["metrics"][metric] for record in direct])
        assert layer["intervals"][metric] == pytest.approx(expected, rel=1e-10, abs=1e-12), metric
    assert layer["intervals"]["lda_accuracy"]["se"] > 0 and layer["intervals"]["nc4_mismatch"]["se"] > 0


def test_the_values_themselves_do_not_change_with_intervals(tmp_path):
    rows = _rows(np.random.default_rng(1), 4)
    path = _write(tmp_path / "d.h5", rows)
    families = _families(control="row")
    with Dump(path) as dump:
        plain = analyze_dump(dump, families, pass_options=PassOptions(block_rows=37))["layers"][0]
        grouped = analyze_dump(dump, families, pass_options=PassOptions(ci_groups=G, block_rows=37))["layers"][0]
    assert grouped["probe"] == plain["probe"] and grouped["metrics"].keys() == plain["metrics"].keys()
    for metric, value in plain["metrics"].items():  # the total is the merge of the groups: rounding apart
        assert grouped["metrics"][metric] == (value if metric in PROBE_SCORES else pytest.approx(value, rel=1e-12)), metric


@pytest.mark.parametrize("tokens", ["all", "from:1"])
def test_token_level_groups_leave_whole_sequences_out_of_the_second_pass(tmp_path, tokens):
    rng = np.random.default_rng(5)
    lengths = rng.integers(2, 9, 90)
    offsets = np.r_[0, np.cumsum(lengths)]
    rows = _rows(rng, 4, n=int(offsets[-1]))
    rows["sample_id"] = np.repeat(rng.permutation(1000)[:lengths.size], lengths)  # a sequence's id: split by sequence
    path = _write(tmp_path / "tok.h5", rows, offsets=offsets)
    families = _families(control="token")
    left = _left_out_records(path, families, PassOptions(ci_groups=G, ci_seed=SEED, block_rows=23, tokens=tokens))
    group = np.repeat(Grouping(G, SEED).of(offsets[:-1]), lengths)  # each row: its sequence's group
    for g in range(G):
        _assert_equal(left[g], _direct(tmp_path, rows, families, group, g, offsets, tokens), g)


def _intervals(path, families, **more) -> dict:
    with Dump(path) as dump:
        layer = analyze_dump(dump, families, pass_options=PassOptions(ci_groups=G, ci_seed=SEED, **more.pop("options", {})),
                             **more)["layers"][0]
    return {"intervals": layer["intervals"], "intervals_unavailable": layer["intervals_unavailable"]}


SECOND_PASS = PROBE_SCORES + ("lda_auroc", "control_accuracy", "selectivity", "nc4_mismatch", "nc1")


def _assert_same_intervals(got: dict, reference: dict) -> None:
    """The same intervals of the metrics made in the second pass (and nc1, whose scatter loses the
    dropped class's there); the others' are tests/test_intervals.py's (two classes: some are ~0)."""
    assert got["intervals_unavailable"] == reference["intervals_unavailable"]
    assert got["intervals"].keys() == reference["intervals"].keys()
    for metric in SECOND_PASS:
        if metric in reference["intervals"]:
            assert got["intervals"][metric] == pytest.approx(reference["intervals"][metric], rel=1e-10, abs=1e-12), metric


def test_intervals_do_not_depend_on_the_block_size(tmp_path):
    rows = _rows(np.random.default_rng(2), 2)
    path = _write(tmp_path / "d.h5", rows)
    families = _families(control="row", shrinkage="auto")
    reference = _intervals(path, families)
    assert {"lda_accuracy", "lda_auroc", "selectivity", "nc4_mismatch"} <= reference["intervals"].keys()
    for block_rows in (7, 64, 1000):
        _assert_same_intervals(_intervals(path, families, options={"block_rows": block_rows}), reference)


HAS_DASK = importlib.util.find_spec("distributed") is not None


@pytest.mark.skipif(not HAS_DASK, reason="the dask extra is not installed (pip install '.[dask]')")
@pytest.mark.timeout(240)
def test_intervals_on_dask_equal_a_local_run(tmp_path):
    """The second wave's tasks return every twin's part; merged in row order they give the local intervals."""
    from distributed import LocalCluster

    from actgeom.core.backends import BackendOptions, open_backend
    from actgeom.core.backends.dask import RANGE_SLOT

    rows = _rows(np.random.default_rng(3), 4)
    path = _write(tmp_path / "d.h5", rows)
    families = _families(control="token", shrinkage="auto")
    reference = _intervals(path, families)
    with LocalCluster(n_workers=2, threads_per_worker=2, resources={RANGE_SLOT: 1}, processes=True,
                      dashboard_address=":0", silence_logs=logging.ERROR) as cluster, \
            open_backend(BackendOptions("dask", scheduler=cluster.scheduler_address, ranges=4)) as backend:
        _assert_same_intervals(_intervals(path, families, backend=backend), reference)


@pytest.mark.parametrize("groups", [2, 7])
def test_each_left_out_is_the_merge_of_the_other_groups(tmp_path, groups):
    """The twins' statistics, made by halving: each equals leave_out's, in group order."""
    from actgeom.core.state.grouped_pass import each_left_out
    from actgeom.core.state.groups import leave_out

    path = _write(tmp_path / "d.h5", _rows(np.random.default_rng(4), 4, n=200))
    families = _families(control="row")
    with Dump(path) as dump:
        stats = accumulate(dump, specs=specs_for(families, facts_of(dump)), options=PassOptions(ci_groups=groups))["h"]
    made = list(each_left_out(stats))
    assert len(made) == groups
    for g, left in enumerate(made):
        expected = leave_out(stats, g)
        assert left.n_rows == expected.n_rows
        got, want = _finalized(left), _finalized(expected)
        for key, value in want.items():
            np.testing.assert_allclose(got[key], value, rtol=1e-10, atol=1e-10 * np.abs(value).max(), err_msg=(g, key))


def _finalized(stats) -> dict:
    """What the probe and NC4 read of the statistics (the shifted sums inside depend on the merge order)."""
    split, classes = stats.get("split"), stats.get("moments").classes
    return {"n_test": split.n_test, "train_counts": split.train.counts, "train_means": split.train.means,
            "train_within": split.train.within_scatter, "control_counts": split.groups.counts,
            "control_sums": split.groups.sums, "counts": classes.counts, "means": classes.means,
            "within": classes.within_scatter}


def test_the_network_decisions_are_read_once_per_block_for_nc4_and_its_twins(tmp_path, monkeypatch):
    rows = _rows(np.random.default_rng(6), 4, n=300)
    path = _write(tmp_path / "d.h5", rows)
    reads = []
    original = Dump.predictions
    monkeypatch.setattr(Dump, "predictions", lambda self, start, stop: reads.append(start) or original(self, start, stop))
    families = {"collapse": family_options("collapse")}
    with Dump(path) as dump:
        analyze_dump(dump, families, pass_options=PassOptions(block_rows=50))
    plain, reads[:] = list(reads), []
    with Dump(path) as dump:
        layer = analyze_dump(dump, families, pass_options=PassOptions(ci_groups=G, block_rows=50))["layers"][0]
    assert "nc4_mismatch" in layer["intervals"]
    assert reads == plain and len(plain) < 2 * 6  # each of the 6 blocks once, not G + 1 times


def test_intervals_from_merged_row_range_statistics_equal_one_pass(tmp_path):
    """--rows shards saved and merged, then the second pass over the dump: the same intervals."""
    from actgeom.core.state.partial import merge_stats, stats_arrays, stats_from_arrays

    rows = _rows(np.random.default_rng(8), 4)
    path = _write(tmp_path / "d.h5", rows)
    families = _families(control="row")
    reference = _intervals(path, families)
    assert {"lda_accuracy", "selectivity", "nc4_mismatch"} <= reference["intervals"].keys()
    with Dump(path) as dump:
        specs = specs_for(families, facts_of(dump))
        shards = [accumulate(dump, specs=specs, options=PassOptions(ci_groups=G, ci_seed=SEED, row_range=r), check=False)
                  for r in ((310, 500), (0, 120), (120, 310))]
    merged = merge_stats([stats_from_arrays(stats_arrays(part))[0] for part in shards])
    _assert_same_intervals(_intervals(path, families, precomputed=merged), reference)
