"""Statistics carry where they come from, and are refused where they do not describe the data."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
EARLY = ROOT / "sample_data" / "digits_mlp_epoch0000.h5"
LATE = ROOT / "sample_data" / "digits_mlp_epoch1500.h5"
N_ROWS = 1797
# Shards merged: the same sums in another order; metrics agree to float64 rounding.
SHARD_RTOL = 1e-12


@pytest.fixture
def shards(cli, tmp_path):
    for i, rows in enumerate(["0:900", "900:1797"]):
        code, _, err = cli("stats", LATE, "--rows", rows, "--subsample", "2000", "--save-stats", tmp_path / f"p{i}.npz")
        assert code == 0, err
    return tmp_path / "p0.npz", tmp_path / "p1.npz"


def test_merged_shards_reproduce_one_pass(cli, tmp_path, shards):
    assert cli("merge", *shards, "--save-stats", tmp_path / "all.npz")[0] == 0
    for command in ("collapse", "rank"):
        direct = cli.json(command, LATE)
        merged = cli.json(command, LATE, "--stats", tmp_path / "all.npz")
        assert merged["statistics"] == {"file": str(tmp_path / "all.npz"), "rows": [[0, N_ROWS]], "partial": False}
        for a, b in zip(direct["files"][0]["layers"], merged["files"][0]["layers"], strict=True):
            for name, value in a["metrics"].items():
                assert b["metrics"][name] == pytest.approx(value, rel=SHARD_RTOL, abs=1e-14), (command, name)


def test_statistics_of_another_checkpoint_are_refused(cli, tmp_path, shards):
    cli("merge", *shards, "--save-stats", tmp_path / "all.npz")
    code, out, err = cli("collapse", EARLY, "--stats", tmp_path / "all.npz")
    assert code == 3 and out == ""
    assert err == (f"Error: {tmp_path / 'all.npz'} holds statistics of {LATE}, not of {EARLY} "
                   "(their attributes or layers differ)\n")


def test_a_shard_is_not_the_whole_dump(cli, shards):
    code, _, err = cli("collapse", LATE, "--stats", shards[0])
    assert code == 3 and err == (f"Error: {shards[0]} covers rows 0:900 of the 1797 rows of {LATE}; merge every shard "
                                 "first, or pass --partial-ok to use part of the rows\n")
    doc = cli.json("collapse", LATE, "--stats", shards[0], "--partial-ok")
    assert doc["statistics"]["partial"] is True and doc["statistics"]["rows"] == [[0, 900]]


def test_overlapping_shards_and_other_dumps_do_not_merge(cli, tmp_path, shards):
    code, _, err = cli("merge", shards[0], shards[0], "--save-stats", tmp_path / "twice.npz")
    assert code == 3 and err == f"Error: {shards[0]} (rows 0:900) and {shards[0]} (rows 0:900) overlap: rows would count twice\n"
    assert not (tmp_path / "twice.npz").exists()
    cli("stats", EARLY, "--rows", "900:1797", "--save-stats", tmp_path / "early.npz")
    code, _, err = cli("merge", shards[0], tmp_path / "early.npz")
    assert code == 3
    assert err == f"Error: {tmp_path / 'early.npz'} holds statistics of another dump ({EARLY}) than {shards[0]} ({LATE})\n"


def test_pass_options_must_match(cli, tmp_path):
    cli("stats", LATE, "--nonfinite", "drop", "--save-stats", tmp_path / "drop.npz")
    code, _, err = cli("rank", LATE, "--stats", tmp_path / "drop.npz", "--subsample", "0")
    assert code == 3
    assert err == f"Error: {tmp_path / 'drop.npz'} was made with --nonfinite drop; this command uses --nonfinite error\n"
    cli("stats", LATE, "--nonfinite", "drop", "--save-stats", tmp_path / "drop2.npz")
    cli("stats", LATE, "--save-stats", tmp_path / "error.npz")
    code, _, err = cli("merge", tmp_path / "drop2.npz", tmp_path / "error.npz")
    assert code == 3 and "was made with --nonfinite error" in err


def test_statistics_grouped_by_other_labels_are_refused(cli, tmp_path):
    """The same dump with another label set (--labels) gives other class moments: a statistics file
    records which labels it was made with, and neither --stats nor merge takes it for the others."""
    import shutil

    import h5py

    dump = tmp_path / "two_labels.h5"
    shutil.copy(LATE, dump)
    with h5py.File(dump, "r+") as f:
        f["rows/coarse"] = f["rows/label"][()] // 5
    assert cli("stats", dump, "--subsample", "2000", "--save-stats", tmp_path / "fine.npz")[0] == 0
    code, out, err = cli("collapse", dump, "--labels", "rows/coarse", "--stats", tmp_path / "fine.npz")
    assert code == 3 and out == ""
    assert err == (f"Error: {tmp_path / 'fine.npz'} was made with labels rows/label, offsets (none); this command reads "
                   "labels rows/coarse, offsets (none) (give the same --labels / --offsets)\n")
    assert cli("rank", dump, "--stats", tmp_path / "fine.npz")[0] == 0  # rank groups no rows by class: any labels serve
    assert cli("stats", dump, "--rows", "0:900", "--save-stats", tmp_path / "a.npz")[0] == 0
    assert cli("stats", dump, "--rows", "900:1797", "--labels", "rows/coarse", "--save-stats", tmp_path / "b.npz")[0] == 0
    code, _, err = cli("merge", tmp_path / "a.npz", tmp_path / "b.npz", "--save-stats", tmp_path / "ab.npz")
    assert code == 3 and err == (f"Error: {tmp_path / 'b.npz'} was made with labels rows/coarse, offsets (none), "
                                 f"{tmp_path / 'a.npz'} with labels rows/label, offsets (none)\n")
    assert not (tmp_path / "ab.npz").exists()


def test_statistics_older_than_their_dump_come_with_a_warning(cli, tmp_path):
    """A dump written again under its name keeps its fingerprint: statistics made before say so."""
    import os
    import shutil

    dump = tmp_path / "run.h5"
    shutil.copy(LATE, dump)
    assert cli("stats", dump, "--save-stats", tmp_path / "s.npz")[0] == 0
    code, _, err = cli("collapse", dump, "--stats", tmp_path / "s.npz")
    assert code == 0 and "Warning" not in err
    later = (tmp_path / "s.npz").stat().st_mtime_ns + 10**9
    os.utime(dump, ns=(later, later))  # as if written again after the statistics
    code, _, err = cli("collapse", dump, "--stats", tmp_path / "s.npz")
    assert code == 0 and f"Warning: {tmp_path / 's.npz'} was written before {dump} was last modified: if the dump was " \
                         "written again since, make the statistics again\n" in err


def test_the_backend_is_recorded_with_the_pass_options(cli):
    """Every document says who ran its passes, where the other pass options are (#22 item 16); the
    Dask backend's record (scheduler, workers) is tested in tests/test_dask.py."""
    import actgeom

    assert cli.json("collapse", LATE, "--layers", "hidden3")["pass"]["backend"] == {"name": "local"}
    compared = actgeom.compare([EARLY, LATE], layers="hidden3", subsample=100).to_dict()
    assert compared["pass"]["backend"] == {"name": "local"}
