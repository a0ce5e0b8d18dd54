"""Issue #13: never lose or corrupt data, never report numbers from the wrong data, and meet every
bad input with one clear line. One test per reported failure, through the real CLI."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import stat
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import class_data, write_dump, write_h5

ROOT = Path(__file__).parent.parent
SAMPLE = ROOT / "sample_data" / "digits_mlp_epoch1500.h5"
METRIC_COMMANDS = ["collapse", "rank", "entropy"]


def digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def one_error_line(err: str) -> bool:
    return err.startswith("Error: ") and err.count("\n") == 1 and "Traceback" not in err


@pytest.fixture
def dump(tmp_path, rng):
    X, y = class_data(rng, [30, 20, 10], 5)
    return write_dump(tmp_path / "s.h5", {"h1": X, "h2": X[:, :3] ** 2}, labels=y, prediction=y)


# -- destroys inputs --------------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ["collapse", "{d}", "-o", "{d}"], ["rank", "{d}", "-o", "{d}"], ["entropy", "{d}", "-o", "{d}"],
    ["neurons", "{d}", "-o", "{d}"], ["compare", "{d}", "{d}", "-o", "{d}"], ["probe", "{d}", "-o", "{d}"],
                                  ["probe", "{d}", "--save-directions", "{d}"],
    ["info", "{d}", "-o", "{d}"], ["stats", "{d}", "-o", "{d}"],
    ["stats", "{d}", "--save-stats", "{d}"], ["rank", "{d}", "--spectrum-out", "{d}"],
    ["collapse", "{d}", "-o", "{dot}"],  # the same file by another spelling
    ["collapse", "{d}", "-o", "{link}"],  # a symlink to the input
    ["collapse", "{d}", "-o", "{hard}"],  # a hard link to the input
], ids=lambda a: " ".join(a))
def test_an_output_naming_an_input_is_refused_and_the_input_untouched(cli, dump, tmp_path, args):
    (tmp_path / "link.h5").symlink_to(dump)
    os.link(dump, tmp_path / "hard.h5")
    before = digest(dump)
    names = {"d": dump, "dot": str(tmp_path / "." / "s.h5"), "link": tmp_path / "link.h5", "hard": tmp_path / "hard.h5"}
    code, out, err = cli(*[a.format(**names) for a in args])
    assert code == 2 and out == "" and one_error_line(err), err
    assert "refusing to overwrite an input" in err
    assert digest(dump) == before and (tmp_path / "link.h5").is_symlink()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a temporary file was left"


def test_merge_output_naming_a_part_is_refused(cli, dump, tmp_path):
    part = tmp_path / "p.npz"
    assert cli("stats", dump, "--save-stats", part)[0] == 0
    before = digest(part)
    code, _, err = cli("merge", part, "--save-stats", part)
    assert code == 2 and one_error_line(err) and digest(part) == before


def test_two_outputs_naming_the_same_file_are_refused(cli, dump, tmp_path):
    code, _, err = cli("rank", dump, "-o", tmp_path / "r.json", "--spectrum-out", tmp_path / "r.json")
    assert code == 2 and one_error_line(err) and "name the same file" in err
    assert not (tmp_path / "r.json").exists()


# -- special files as outputs -----------------------------------------------------------------
def test_output_directory_is_refused_with_one_line(cli, dump, tmp_path):
    (tmp_path / "out").mkdir()
    code, out, err = cli("collapse", dump, "-o", tmp_path / "out")
    assert code == 2 and out == "" and one_error_line(err) and "is a directory" in err


def test_output_symlink_is_written_through_and_stays_a_link(cli, dump, tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "result.json"
    target.write_text("old")
    (tmp_path / "link.json").symlink_to(target)
    code, _, err = cli("info", dump, "-o", tmp_path / "link.json")
    assert code == 0, err
    assert (tmp_path / "link.json").is_symlink() and target.read_text().startswith("{")
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["result.json"]  # no temporary file left


def test_output_dangling_symlink_creates_its_target(cli, dump, tmp_path):
    (tmp_path / "link.json").symlink_to(tmp_path / "new.json")
    assert cli("info", dump, "-o", tmp_path / "link.json")[0] == 0
    assert (tmp_path / "link.json").is_symlink() and (tmp_path / "new.json").read_text().startswith("{")


def test_output_fifo_is_written_directly_and_stays_a_fifo(cli, dump, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    code, _, err = cli("info", dump, "-o", fifo, "--format", "json")
    reader.join(timeout=10)
    assert code == 0, err
    assert stat.S_ISFIFO(fifo.stat().st_mode) and got and got[0].startswith("{")


def _device(tmp_path, name: str, minor: int) -> Path:
    """A private node of the memory device ``minor`` (3 null, 7 full): a buggy rename hits only this copy,
    never the system's /dev."""
    path = tmp_path / name
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    except PermissionError:
        pytest.skip("creating a device node needs root")
    return path


def test_output_device_is_written_directly_not_replaced(cli, dump, tmp_path):
    null = _device(tmp_path, "null", 3)
    code, _, err = cli("info", dump, "-o", null)
    assert code == 0, err
    assert stat.S_ISCHR(null.stat().st_mode)


def test_full_disk_is_one_line_exit_1_and_the_device_stays(cli, dump, tmp_path):
    full = _device(tmp_path, "full", 7)
    code, out, err = cli("collapse", dump, "-o", full)
    assert code == 1 and out == "" and err == f"Error: cannot write {full}: No space left on device\n"
    assert stat.S_ISCHR(full.stat().st_mode)


def test_output_socket_is_refused(cli, dump, tmp_path):
    import socket
    sock = socket.socket(socket.AF_UNIX)
    path = Path(f"/tmp/actgeom-test-{os.getpid()}.sock")  # AF_UNIX paths are short
    try:
        sock.bind(str(path))
        code, _, err = cli("info", dump, "-o", path)
        assert code == 2 and one_error_line(err) and "socket" in err
    finally:
        sock.close()
        path.unlink(missing_ok=True)


def test_output_file_mode_follows_the_umask(cli, dump, tmp_path):
    old = os.umask(0o027)
    try:
        for args in (["info", dump, "-o", tmp_path / "i.json"], ["stats", dump, "--save-stats", tmp_path / "p.npz"],
                     ["rank", dump, "--spectrum-out", tmp_path / "s.csv"]):
            assert cli(*args)[0] == 0
    finally:
        os.umask(old)
    for name in ("i.json", "p.npz", "s.csv"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name


def test_missing_output_directory_is_refused_before_the_pass(cli, dump, tmp_path, monkeypatch):
    import actgeom.core.state.engine as engine
    monkeypatch.setattr(engine, "iter_blocks", lambda *a, **k: pytest.fail("the pass ran before the output check"))
    for args in (["-o", tmp_path / "no" / "x.json"], ["--save-stats", tmp_path / "no" / "p.npz"]):
        code, _, err = cli("stats", dump, *args)
        assert code == 2 and one_error_line(err) and "does not exist" in err
    code, _, err = cli("rank", dump, "--spectrum-out", tmp_path / "no" / "s.csv")
    assert code == 2 and one_error_line(err)


def test_unwritable_directory_is_refused_before_the_pass(cli, dump, tmp_path, monkeypatch):
    """Root writes anywhere (CI runs as root), except into an immutable directory (chattr +i)."""
    import shutil
    import subprocess

    import actgeom.core.state.engine as engine

    monkeypatch.setattr(engine, "iter_blocks", lambda *a, **k: pytest.fail("the pass ran before the output check"))
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", locked]).returncode != 0:
            pytest.skip("running as root, and this file system cannot make a directory immutable (chattr +i)")
    try:
        code, _, err = cli("collapse", dump, "-o", locked / "x.json")
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", locked], check=True)
    assert code == 2 and one_error_line(err), err
    assert re.fullmatch(f"Error: cannot write {re.escape(str(locked / 'x.json'))}: (Permission denied|Operation not permitted)\n",
                        err), err


def test_a_failed_write_leaves_no_partial_file_and_keeps_the_old_one(tmp_path):
    from actgeom.core.base.outputs import atomic_output
    target = tmp_path / "r.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(target, text=True) as handle:
        handle.write("half")
        raise RuntimeError("the writer failed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_a_write_error_is_an_output_error_naming_the_path(tmp_path, monkeypatch):
    from actgeom.core.base.errors import OutputError
    from actgeom.core.base.outputs import write_output
    def full(*args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OutputError, match=re.escape(f"cannot write {tmp_path / 'r.json'}: No space left on device")):
        write_output(tmp_path / "r.json", "x")
    assert list(tmp_path.iterdir()) == []


# -- crashes: one line instead of a traceback -------------------------------------------------
@pytest.mark.parametrize("shape", [(0, 4), (5, 0)], ids=["0 rows", "0 units"])
@pytest.mark.parametrize("command", ["info", "stats", *METRIC_COMMANDS])
def test_zero_rows_or_units_is_one_line(cli, tmp_path, shape, command):
    path = write_h5(tmp_path / "z.h5", {"feats": np.zeros(shape, dtype=np.float32)})
    code, out, err = cli(command, path)
    assert code == 3 and out == "" and one_error_line(err), err
    assert re.search(r"layer 'feats' in .* has shape \(\d+, \d+\): no (rows|units), nothing to measure", err)


def _crash(_path):
    os.kill(os.getpid(), signal.SIGSEGV)


def _spin(_path):
    while True:
        pass


@pytest.mark.parametrize("command", ["info", "collapse", "stats"])
@pytest.mark.parametrize("walk, why", [(_crash, r"the HDF5 library crashed reading its metadata \(SIGSEGV\)"),
                                       (_spin, r"reading its metadata did not finish within 1 s")],
                         ids=["crash", "hang"])
def test_metadata_that_crashes_or_hangs_hdf5_is_one_line(cli, dump, tmp_path, monkeypatch, command, walk, why):
    """Damaged metadata can segfault or spin inside the HDF5 library (found by the long fuzz run);
    it is read in a child process first, so the command survives to say so."""
    from actgeom.core.dump import hdf5

    monkeypatch.setattr(hdf5, "_walk_metadata", walk)
    monkeypatch.setattr(hdf5, "METADATA_TIME_LIMIT_S", 1)
    before = digest(dump)
    code, out, err = cli(command, dump, "-o", tmp_path / "out.json")
    assert code == 3 and out == "" and one_error_line(err), err
    assert re.search(f"cannot read {re.escape(str(dump))}: the file is damaged \\({why}\\)", err), err
    assert digest(dump) == before and not (tmp_path / "out.json").exists()


def test_a_real_file_on_which_hdf5_spins_is_one_line(cli, tmp_path, monkeypatch):
    """A dump damaged by benchmarks/fuzz_long.py (classifier deleted, 8 bytes flipped) on which
    HDF5 spins for ever reading an attribute (h5py 3.16 / HDF5 2.0): refused after the limit."""
    import gzip

    from actgeom.core.dump import hdf5

    monkeypatch.setattr(hdf5, "METADATA_TIME_LIMIT_S", 2)
    path = tmp_path / "spin.h5"
    path.write_bytes(gzip.decompress((Path(__file__).parent / "data" / "hdf5_metadata_spin.h5.gz").read_bytes()))
    code, out, err = cli("stats", path)
    assert code == 3 and out == "" and one_error_line(err), err
    assert err.startswith(f"Error: cannot read {path}: the file is damaged"), err


def test_the_metadata_check_walks_every_attribute(dump, monkeypatch):
    """The child reads what opening the dump reads: every object's attributes."""
    from actgeom.core.dump import hdf5

    seen = []
    monkeypatch.setattr(hdf5, "_attrs", lambda obj: seen.append(obj.name) or {})
    hdf5._walk_metadata(dump)
    with h5py.File(dump, "r") as f:
        names = ["/"]
        f.visit(lambda name: names.append("/" + name))
    assert sorted(seen) == sorted(names)


@pytest.mark.parametrize("command", ["collapse", "rank", "entropy", "neurons", "stats"])
def test_all_rows_dropped_as_nonfinite_is_one_line(cli, tmp_path, command):
    path = write_dump(tmp_path / "n.h5", {"h": np.full((6, 3), np.nan)}, labels=[0, 1, 0, 1, 0, 1])
    code, _, err = cli(command, path, "--nonfinite", "drop")
    assert code == 3 and one_error_line(err)


def test_a_shard_whose_rows_are_all_dropped_merges_with_the_others(cli, tmp_path, rng):
    """A row range may hold no finite row; the merged statistics of the whole dump do."""
    X = rng.standard_normal((12, 3))
    X[:6] = np.nan
    path = write_dump(tmp_path / "n.h5", {"h": X}, labels=np.arange(12) % 2)
    for rows, part in (("0:6", "p0.npz"), ("6:12", "p1.npz")):
        code, _, err = cli("stats", path, "--rows", rows, "--nonfinite", "drop", "--subsample", "2000",
                           "--save-stats", tmp_path / part)
        assert code == 0, err
    code, _, err = cli("merge", tmp_path / "p0.npz", tmp_path / "p1.npz", "--save-stats", tmp_path / "all.npz")
    assert code == 0, err
    code, merged, err = cli("rank", path, "--nonfinite", "drop", "--stats", tmp_path / "all.npz", "-f", "json")
    assert code == 0, err
    code, whole, err = cli("rank", path, "--nonfinite", "drop", "-f", "json")
    assert code == 0, err
    first = lambda out: json.loads(out)["files"][0]["layers"][0]  # noqa: E731
    assert first(merged)["n_rows"] == first(whole)["n_rows"] == 6
    assert first(merged)["metrics"]["rankme"] == pytest.approx(first(whole)["metrics"]["rankme"], rel=1e-12)


@pytest.mark.parametrize("command", ["stats", *METRIC_COMMANDS])
def test_overflow_prone_magnitudes_are_refused_with_the_reason(cli, tmp_path, rng, command):
    X, y = class_data(rng, [10, 10], 3)
    path = write_dump(tmp_path / "big.h5", {"h": X * 1e300}, labels=y)
    code, out, err = cli(command, path)
    assert code == 3 and out == "" and one_error_line(err), err
    assert "values of magnitude up to" in err and "rescale" in err


def test_large_but_safe_magnitudes_are_measured(cli, tmp_path, rng):
    X, y = class_data(rng, [10, 10], 3)
    path = write_dump(tmp_path / "big.h5", {"h": X * 1e30}, labels=y)
    assert cli("rank", path, "--format", "json")[0] == 0


def _corrupt_first_chunk(path: Path, dataset: str) -> None:
    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info(0)
    with open(path, "r+b") as handle:
        handle.seek(info.byte_offset + 2)
        handle.write(b"\xff" * min(64, info.size - 4))


@pytest.mark.parametrize("command", ["stats", *METRIC_COMMANDS])
def test_corrupt_gzip_chunk_names_rows_layer_and_file(cli, tmp_path, rng, command):
    path = tmp_path / "gz.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("feats", data=rng.standard_normal((64, 8)), chunks=(16, 8), compression="gzip")
        f["y"] = np.arange(64) % 2
    _corrupt_first_chunk(path, "feats")
    code, out, err = cli(command, path)
    assert code == 3 and out == "" and one_error_line(err), err
    assert re.search(rf"cannot read rows 0–\d+ of layer 'feats' in {re.escape(str(path))}: ", err), err


def test_corrupt_sample_ids_are_one_line(cli, tmp_path, rng):
    """compare reads /rows/sample_id to align rows: a corrupt chunk there is a one-line error too."""
    path = tmp_path / "ids.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("feats", data=rng.standard_normal((64, 8)))
        f.create_dataset("rows/sample_id", data=np.arange(64), chunks=(16,), compression="gzip")
    _corrupt_first_chunk(path, "rows/sample_id")
    code, out, err = cli("compare", path, path)
    assert code == 3 and out == "" and one_error_line(err), err
    assert f"cannot read 'rows/sample_id' from row 0 in {path}: " in err, err


# -- hangs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["info", "stats", *METRIC_COMMANDS])
def test_fifo_input_is_refused_at_once(cli, tmp_path, command):
    fifo = tmp_path / "in.h5"
    os.mkfifo(fifo)
    started = time.monotonic()
    code, out, err = cli(command, fifo)
    assert code == 3 and err == f"Error: {fifo} is a FIFO, not a regular file; actgeom reads dumps from regular " \
                                "files (copy the stream to a file first)\n"
    assert time.monotonic() - started < 5


def test_directory_input_is_refused(cli, tmp_path):
    code, _, err = cli("info", tmp_path)
    assert code == 3 and err == f"Error: {tmp_path} is a directory; give an HDF5 file\n"


@pytest.mark.parametrize("command", ["info", "stats", *METRIC_COMMANDS])
def test_absurd_sparse_shape_is_refused_at_once(cli, tmp_path, command):
    path = tmp_path / "sparse.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("feats", shape=(10**9, 4096), dtype=np.float32, chunks=(256, 256))
        ds[:256, :256] = 1.0  # one chunk on disk
    assert path.stat().st_size < 2**20
    started = time.monotonic()
    code, out, err = cli(command, path)
    assert code == 3 and out == "" and one_error_line(err), err
    assert "declares shape (1000000000, 4096)" in err and "does not hold that data" in err
    assert time.monotonic() - started < 10


def test_truncated_contiguous_layer_is_refused(cli, tmp_path, rng):
    path = write_h5(tmp_path / "t.h5", {"feats": rng.standard_normal((2000, 16))})
    with h5py.File(path, "r") as f:
        end = f["feats"].id.get_offset() + 2000 * 16 * 8
    with open(path, "r+b") as handle:
        handle.truncate(end - 4096)
    code, _, err = cli("stats", path)
    assert code == 3 and one_error_line(err), err


def test_classifier_of_absurd_declared_size_is_refused_before_allocation(cli, tmp_path, rng):
    path = tmp_path / "w.h5"
    with h5py.File(path, "w") as f:
        f["feats"] = rng.standard_normal((10, 4))
        f.create_dataset("W", shape=(10**9, 4), dtype=np.float64, chunks=(1024, 4))
    code, _, err = cli("collapse", path, "--weight", "W")
    assert code == 3 and one_error_line(err) and "classifier weight 'W'" in err


def test_a_layer_too_wide_for_memory_is_refused_for_a_pass_but_described_by_info(cli, tmp_path):
    path = tmp_path / "wide.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("feats", data=np.zeros((2, 4_000_000), dtype=np.float16), compression="gzip",
                         chunks=(1, 1_000_000))
    code, _, err = cli("stats", path)
    assert code == 3 and one_error_line(err) and "statistics need about" in err
    assert cli.json("info", path)["layers"][0]["n_units"] == 4_000_000


# -- accepts what it should refuse ------------------------------------------------------------
@pytest.mark.parametrize("command", ["collapse", "neurons", "probe", "report"])
def test_labels_whose_class_tables_cannot_fit_in_memory_are_refused(cli, tmp_path, rng, command):  # found by fuzz_long
    X, _ = class_data(rng, [4, 4], 3)
    path = write_dump(tmp_path / "l.h5", {"h": X}, labels=np.full(8, 10**12))
    code, out, err = cli(command, path, "-o", tmp_path / "out")
    assert code == 3 and out == "" and one_error_line(err), err
    assert "go up to 1000000000000: class statistics of 1000000000001 classes × 3 units need about" in err
    assert not (tmp_path / "out").exists()


def test_labels_beyond_the_classifier_rows_are_refused(cli, tmp_path, rng):
    X, y = class_data(rng, [10, 10, 10], 4)
    path = write_h5(tmp_path / "f.h5", {"feats": X, "y": y, "W": rng.standard_normal((2, 4))})
    code, _, err = cli("collapse", path, "--weight", "W")
    assert code == 3 and one_error_line(err)
    assert re.search(r"labels 'y' in .* go up to 2 but the classifier 'W' has 2 rows \(classes 0\.\.1\)", err)


def test_predictions_outside_the_classes_are_refused(cli, tmp_path, rng):
    X, y = class_data(rng, [10, 10], 4)
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y, prediction=np.where(np.arange(20) == 3, 7, y))
    code, _, err = cli("collapse", path)
    assert code == 3 and one_error_line(err)
    assert re.search(r"predictions 'rows/prediction' in .* hold 7, outside the classes 0\.\.1", err)


def _attention(tmp_path, A):
    return write_h5(tmp_path / "a.h5", {"feats": np.ones((2, 3), dtype=np.float32), "attention/l0": A})


def _softmax(rng, shape):
    e = np.exp(rng.standard_normal(shape))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("value", [-0.1, np.inf, np.nan], ids=["negative", "inf", "nan"])  # inf: found by fuzz_long
def test_attention_negative_or_nonfinite_probabilities_are_refused(cli, tmp_path, rng, value):
    A = _softmax(rng, (2, 2, 4, 4)).astype(np.float32)
    A[1, 0, 2, 1] = value
    code, _, err = cli("entropy", _attention(tmp_path, A), "--threshold", "0")
    assert code == 3 and one_error_line(err), err
    assert f"holds {A[1, 0, 2, 1]} at sequence 1, head 0, query 2" in err and "finite and ≥ 0" in err


def test_attention_rows_not_summing_to_one_are_refused(cli, tmp_path, rng):
    A = _softmax(rng, (2, 2, 4, 4)).astype(np.float32)
    A[0, 1, 3] *= 0.5
    code, _, err = cli("entropy", _attention(tmp_path, A), "--threshold", "0")
    assert code == 3 and one_error_line(err) and "sequence 0, head 1, query 3 sums to 0.5" in err


def test_attention_bfloat16_rounding_is_accepted(cli, tmp_path, rng):
    from actgeom.core.dump.writer import encode_bfloat16
    A = _softmax(rng, (2, 2, 64, 64)).astype(np.float32)
    bits = encode_bfloat16(A)  # rounding to nearest: each value within ε/2, so the row sum too
    path = write_h5(tmp_path / "a.h5", {"feats": np.ones((2, 3), dtype=np.float32), "attention/l0": bits},
                    dataset_attrs={"attention/l0": {"logical_dtype": "bfloat16"}})
    assert cli("entropy", path, "--threshold", "0")[0] == 0


def test_attention_float16_rounding_and_masked_rows_are_accepted(cli, tmp_path, rng):
    A = _softmax(rng, (2, 2, 64, 64)).astype(np.float16)  # rounding moves sums by up to ε/2
    A[:, :, 0] = 0  # a masked query row
    assert cli("entropy", _attention(tmp_path, A), "--threshold", "0")[0] == 0


def _actgeom_attrs(path, **attrs):
    with h5py.File(path, "r+") as f:
        f.attrs.update(attrs)


@pytest.mark.parametrize("attrs, message", [
    ({"format_version": 2}, r"format_version 2, written by a newer actgeom; this version reads format_version ≤ 1"),
    ({"n_rows": 61}, r"root attribute n_rows=61 contradicts the layers, which have 60 rows"),
    ({"n_rows": np.arange(5000)}, r"root attribute 'n_rows' holds an array of shape \(5000,\)"),
    ({"complete": "yes"}, r"root attribute complete='yes' is not true or false"),
], ids=["future version", "n_rows contradicts", "array as scalar", "complete not bool"])
@pytest.mark.parametrize("command", ["info", "collapse"])
def test_root_attributes_are_validated(cli, dump, attrs, message, command):
    _actgeom_attrs(dump, **attrs)
    code, out, err = cli(command, dump)
    assert code == 3 and out == "" and one_error_line(err) and re.search(message, err), err


def test_huge_array_attribute_on_a_layer_is_described_not_read(cli, dump):
    with h5py.File(dump, "r+") as f:
        f["activations/h1"].attrs.create("junk", np.zeros(5000))  # > MAX_SHOWN_ATTR_ELEMENTS, < 64 KiB header
    doc = cli.json("info", dump)
    assert doc["layers"][0]["attrs"]["junk"] == "<array of shape (5000,), dtype float64>"


def test_names_with_control_characters_are_escaped(cli, tmp_path):
    path = write_h5(tmp_path / "c.h5", {"evil\x1b[2J": np.ones((4, 2)), "other": np.ones((5, 2))})
    code, _, err = cli("info", path, "--layers", "evil*", "--format", "table")
    assert code == 0 and "\x1b" not in _ and "evil\\x1b[2J" in _
    code, _, err = cli("stats", path)  # an error message naming the dataset
    assert code == 3 and "\x1b" not in err and "evil\\x1b[2J" in err


def test_offsets_must_rise_and_end_at_n_rows(cli, tmp_path, rng):
    path = write_h5(tmp_path / "o.h5", {"feats": rng.standard_normal((10, 2)), "off": np.array([0, 6, 4, 10])})
    code, _, err = cli("stats", path, "--offsets", "off")
    assert code == 3 and one_error_line(err) and "must rise from 0 to n_rows=10" in err


# -- unkind in smaller ways -------------------------------------------------------------------
def test_info_lists_every_dataset_of_an_unclear_foreign_file(cli, tmp_path, rng):
    path = write_h5(tmp_path / "f.h5", {"a": rng.standard_normal((10, 3)), "b": rng.standard_normal((7, 3)),
                                        "ids": np.arange(10)})
    doc = cli.json("info", path)
    assert doc["format"] == "foreign" and "cannot tell which datasets" in doc["layers_unclear"]
    assert {d["path"]: d["could_be_layer"] for d in doc["datasets"]} == {"a": True, "b": True, "ids": False}
    code, out, _ = cli("info", path, "--format", "table")
    assert code == 0 and "could be layers: a, b" in out


def test_info_takes_several_files(cli, dump):
    doc = cli.json("info", SAMPLE, dump)
    assert [f["file"] for f in doc["files"]] == [str(SAMPLE), dump]
    code, out, _ = cli("info", SAMPLE, dump, "--format", "csv")
    assert code == 0 and out.startswith("file,layer") and out.count("\n") == 1 + 3 + 2


def test_rank_ignores_an_auto_detected_label_dataset_of_the_wrong_length(cli, tmp_path, rng):
    path = write_h5(tmp_path / "f.h5", {"feats": rng.standard_normal((10, 3)), "y": np.arange(7)})
    code, out, err = cli("rank", path, "--format", "json")
    assert code == 0 and out.startswith("{")
    assert err == f"Warning: ignoring labels 'y' in {path}: 7 rows but the layers have 10; name another dataset " \
                  "with --labels (found by its name only)\n"
    code, _, err = cli("collapse", path)  # collapse needs labels: it says which were set aside, and why
    assert code == 3 and one_error_line(err)
    assert re.search(r"no labels in .*f\.h5: give --labels .*\(ignoring labels 'y' .*: 7 rows but the layers have 10", err)
    code, _, err = cli("collapse", path, "--labels", "y")  # named: refused
    assert code == 3 and "labels 'y'" in err and "7 rows but the layers have 10" in err


def test_collapse_without_labels_says_so_and_exits_3(cli, tmp_path, rng):
    path = write_h5(tmp_path / "f.h5", {"feats": rng.standard_normal((10, 3))})
    code, out, err = cli("collapse", path)
    assert code == 3 and out == ""
    assert err == f"Error: no requested metric can be computed for any layer: no labels in {path}: give --labels " \
                  "(class index per row)\n"


def test_unavailable_metrics_show_their_reason_under_the_table(cli, tmp_path, rng):
    X, y = class_data(rng, [10, 10], 3)
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y)  # no classifier, no predictions
    code, out, _ = cli("collapse", path, "--format", "table")
    assert code == 0
    marks = set(re.findall(r"— \((\d+)\)", out))
    assert marks and all(re.search(rf"^\s*\({n}\) \S", out, re.M) for n in marks), out
    code, md, _ = cli("collapse", path, "--format", "md")
    assert re.search(r"^\(1\) .*classifier", md, re.M), md


def test_table_off_a_terminal_never_wraps_mid_word(cli):
    files = sorted(SAMPLE.parent.glob("*.h5"))  # 5 checkpoints × 3 layers: 15 columns, wider than 120
    code, out, _ = cli("collapse", *files, "--format", "table")
    assert code == 0
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("metric"))
    assert [cell.strip() for cell in header.split("┃")][1:] == [f"{f.stem.split('_')[-1]}:hidden{i}"
                                                                  for f in files for i in (1, 2, 3)]
    rows = [line for line in lines if "│" in line]
    assert rows and all(len(line.split("│")) == 16 for line in rows)
    assert {line.split()[0] for line in rows} >= {"nc1", "separation_fuzziness", "nc2_equiangular_weights"}


def test_readme_pandas_recipe_keeps_the_layer():
    readme = (ROOT / "README.md").read_text()
    recipes = re.findall(r"\.pivot(?:_table)?\(([^)]*)\)", readme)  # pivot_table averages duplicate cells
    assert recipes and all(re.search(r"""index=\[[^]]*["']layer["']""", recipe) for recipe in recipes), recipes


def _commands():
    from actgeom.cli.app import app
    return sorted(command.name for command in app.registered_commands)


@pytest.mark.parametrize("command", _commands())
def test_help_examples_name_files_that_exist(cli, command):
    _, out, _ = cli(command, "--help")
    examples = out[out.index("Example"):]
    outputs = set(re.findall(r"(?:-o|--output|--save-stats|--spectrum-out|--save-directions)\s+(\S+)", examples))
    for name in set(re.findall(r"(\S+\.h5)\b", examples)) - outputs:
        assert list(ROOT.glob(name)), f"`actgeom {command} --help` names {name}, which does not exist"


def test_ctrl_c_says_interrupted_and_exits_130(cli, dump, tmp_path, monkeypatch):
    import actgeom.core.state.engine as engine

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(engine, "iter_blocks", interrupt)
    code, out, err = cli("collapse", dump, "-o", tmp_path / "c.json")
    assert code == 130 and out == "" and err == "interrupted\n"
    assert not (tmp_path / "c.json").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.skipif(not hasattr(signal, "SIGINT"), reason="POSIX signals")
def test_ctrl_c_in_a_real_process(tmp_path, dump):
    import subprocess
    import sys
    # A job started in the background by a shell without job control inherits SIGINT ignored; a
    # user at a terminal does not: restore the default, as their shell would.
    script = ("import signal, sys, time, actgeom.core.state.engine as e\n"
              "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
              "def slow(*a, **k):\n    sys.stderr.write('pass started\\n'); sys.stderr.flush(); time.sleep(30)\n"
              "    yield from ()\n"
              "e.iter_blocks = slow\nfrom actgeom.cli.app import main\nmain()\n")
    proc = subprocess.Popen([sys.executable, "-c", script, "collapse", dump, "-o", str(tmp_path / "c.json")],
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr.readline() == "pass started\n"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130 and err == "interrupted\n", err
    assert not (tmp_path / "c.json").exists()


# -- batch jobs ---------------------------------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_plain_progress_lines_every_interval_and_at_each_layer_end():
    import io

    from actgeom.cli.progress import PlainLines
    clock, stream = FakeClock(), io.StringIO()
    lines = PlainLines(stream, interval=10.0, start=2.0, clock=clock)
    for done in range(0, 1001, 100):  # 1 s per 100 rows
        lines("h1", done, 1000)
        clock.now += 1.0
    lines("h2", 500, 500)
    got = stream.getvalue().splitlines()
    assert got == ["actgeom: rows of h1: 1000/1000 (100%), 100 rows/s",
                   "actgeom: rows of h2: 500/500 (100%)"]


def test_plain_progress_reads_well_for_any_label_and_rate():
    """Not "layer the compared layers" nor "1.98e+06 rows/s" (#22 item 16)."""
    import io

    from actgeom.cli.progress import PlainLines
    clock, stream = FakeClock(), io.StringIO()
    lines = PlainLines(stream, interval=1.0, start=0.0, clock=clock)
    for done, seconds in ((0, 0.0), (1_980_000, 1.0), (2_031_250, 3.25), (2_100_000, 2100.0)):
        clock.now = seconds
        lines("the compared layers", done, 2_100_000)
    assert stream.getvalue().splitlines() == ["actgeom: rows of the compared layers: 1980000/2100000 (94%), 1.98 M rows/s",
                                              "actgeom: rows of the compared layers: 2031250/2100000 (97%), 625 k rows/s",
                                              "actgeom: rows of the compared layers: 2100000/2100000 (100%), 1000 rows/s"]


def test_plain_progress_is_silent_for_a_quick_command_and_escapes_names():
    import io

    from actgeom.cli.progress import PlainLines
    clock, stream = FakeClock(), io.StringIO()
    lines = PlainLines(stream, interval=10.0, start=2.0, clock=clock)
    lines("h", 10, 10)
    assert stream.getvalue() == ""
    clock.now = 30.0
    lines("evil\x1b[2J", 10, 10)
    assert stream.getvalue() == "actgeom: rows of evil\\x1b[2J: 10/10 (100%)\n"


def test_long_stages_after_the_pass_are_announced_with_an_estimate(cli, tmp_path, rng, monkeypatch):
    """DSE's eigensolve (N³) shows a stage line with its estimated duration in batch logs."""
    import actgeom.core.metrics.entropy as entropy

    monkeypatch.setattr(entropy, "eigensolve_seconds", lambda n: 95.0 if n == 60 else None)
    path = write_dump(tmp_path / "d.h5", {"h": rng.standard_normal((80, 4))}, labels=np.arange(80) % 2)
    code, _, err = cli("entropy", path, "--subsample", "60")
    assert code == 0, err
    assert "actgeom: layer h: DSE: eigenvalues of a 60×60 kernel, about 1 min 35 s\n" in err
    assert "DSMI" not in err  # its kernels are estimated short (None): not announced
    code, _, err = cli("entropy", path, "--subsample", "60", "--quiet")
    assert code == 0 and err == ""


def test_a_terminal_shows_a_long_stage_as_a_bar_until_the_next_pass():
    import io

    from rich.console import Console
    from rich.progress import Progress

    from actgeom.cli.progress import Bars

    with Progress(console=Console(file=io.StringIO(), force_terminal=True), transient=True) as bar:
        bars = Bars(bar)
        bars.stage("h1", "DSE: eigenvalues of a 10000×10000 kernel", 0.5)  # short: not shown
        assert [task.description for task in bar.tasks] == []
        bars.stage("h1", "DSE: eigenvalues of a 10000×10000 kernel", 80.0)
        expected = "layer h1: DSE: eigenvalues of a 10000×10000 kernel, about 1 min 20 s"
        assert [task.description for task in bar.tasks] == [expected]
        bars("h2", 10, 100)  # the next pass ends the stage
        assert [task.description for task in bar.tasks] == ["rows of h2"]


def test_a_step_after_the_passes_is_shown_in_logs_and_on_a_terminal():
    """The report's figures (a step of unknown length): a line in a log once the command has run
    PLAIN_START seconds, a pulsing bar on a terminal."""
    import io

    from rich.console import Console
    from rich.progress import Progress

    from actgeom.cli.progress import Bars, PlainLines

    now = [0.0]
    log = io.StringIO()
    lines = PlainLines(log, interval=10.0, start=2.0, clock=lambda: now[0])
    lines.step("drawing the figures")
    assert log.getvalue() == ""  # a quick command leaves nothing in a log
    now[0] = 3.0
    lines.step("drawing the figures")
    assert log.getvalue() == "actgeom: drawing the figures\n"
    with Progress(console=Console(file=io.StringIO(), force_terminal=True), transient=True) as bar:
        bars = Bars(bar)
        bars.step("drawing the figures")
        assert [task.description for task in bar.tasks] == ["drawing the figures"]
        bars("h", 1, 2)  # anything after it ends it
        assert [task.description for task in bar.tasks] == ["rows of h"]


def test_a_terminal_shows_starting_at_once_then_the_layers_bar(tmp_path, rng):
    """On a terminal the display opens before numpy and the files load ("starting"), then the
    layer's bar replaces it; the command's result is unchanged."""
    import os
    import pty
    import select
    import subprocess
    import sys

    path = write_dump(tmp_path / "d.h5", {"h": rng.standard_normal((200_000, 4))}, labels=np.arange(200_000) % 3)
    main, secondary = pty.openpty()
    script = "import sys; from actgeom.cli.app import main; sys.argv[0] = 'actgeom'; main()"
    child = subprocess.Popen([sys.executable, "-c", script, "collapse", str(path), "-o", str(tmp_path / "c.json")],
                             stdout=subprocess.DEVNULL, stderr=secondary,
                             env=os.environ | {"COLUMNS": "100"})
    os.close(secondary)
    shown = b""
    while select.select([main], [], [], 60)[0]:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(main)
    assert child.wait() == 0
    assert b"starting" in shown and b"rows of h" in shown
    assert shown.index(b"starting") < shown.index(b"rows of h")
    assert (tmp_path / "c.json").exists()


def test_stage_estimates_reach_a_progress_object_of_the_api(tmp_path, rng):
    import actgeom

    path = write_dump(tmp_path / "d.h5", {"h": rng.standard_normal((30, 3))})
    heard = []

    class Listener:
        def __call__(self, layer, done, total):
            pass

        def stage(self, layer, text, seconds):
            heard.append((layer, text, seconds))

    actgeom.entropy(path, subsample=20, progress=Listener())
    assert heard == [("h", "DSE: eigenvalues of a 20×20 kernel", None)]  # 20 rows: short, not timed


def test_pairwise_tiles_announce_their_estimate_after_the_first_tile(rng):
    from actgeom.core.base import stages
    from actgeom.core.metrics.pairwise import pair_stats

    heard = []
    with stages.listening(lambda text, seconds: heard.append((text, seconds))):
        pair_stats(rng.standard_normal((40, 5)), tile=16)  # 3 × 4 / 2 = 6 tiles
    (text, seconds), = heard
    assert text == "pairwise statistics of 40 classes (6 tiles)" and seconds >= 0


def test_eigensolve_estimate_scales_a_timed_small_solve_by_n_cubed(monkeypatch):
    from actgeom.core.base import stages

    monkeypatch.setattr(stages, "_eigensolve_time", lambda m, one_thread: {1000: 0.5, 1500: 2.0}[m])
    assert stages.eigensolve_seconds(1999) is None
    assert stages.eigensolve_seconds(4000) == pytest.approx(0.5 * 64)
    assert stages.eigensolve_seconds(12000) == pytest.approx(2.0 * 8**3)


def test_quiet_silences_progress(cli, dump, monkeypatch):
    import actgeom.cli.progress as progress
    monkeypatch.setattr(progress, "PLAIN_START", 0.0)
    monkeypatch.setattr(progress.PlainLines.__init__, "__defaults__", (10.0, 0.0, time.monotonic))
    code, _, err = cli("stats", dump)
    assert code == 0 and err.count("actgeom: rows of") == 2
    code, _, err = cli("stats", dump, "--quiet")
    assert code == 0 and err == ""



def test_every_command_accepts_quiet():
    """-q/--quiet is accepted by every command (a batch script passes it to all of them)."""
    import typer.main

    from actgeom.cli.app import app

    refusing = [name for name, command in typer.main.get_command(app).commands.items()
                if not any("-q" in getattr(param, "opts", []) for param in command.params)]
    assert not refusing, f"commands without -q/--quiet: {refusing}"

def test_object_name_that_is_not_utf8_is_one_line(cli, tmp_path, rng):  # found by benchmarks/fuzz_long.py
    path = tmp_path / "n.h5"
    with h5py.File(path, "w") as f:
        f["feats"] = rng.standard_normal((4, 2))
        f.create_dataset(b"bad\xff", data=np.zeros(4))
    for command in ("info", "collapse"):
        code, _, err = cli(command, path)
        assert code == 3 and one_error_line(err) and "is not UTF-8" in err, err


# -- issue #22: a full disk ---------------------------------------------------------------------
CLI_SCRIPT = "import sys; from actgeom.cli.app import main; sys.argv[0] = 'actgeom'; main()"
SUBPROCESS_TIMEOUT_S = 60


def _run(args: list, **kwargs):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-c", CLI_SCRIPT, *map(str, args)], capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT_S, **kwargs)


@pytest.fixture
def small_disk(tmp_path):
    """A real file system of 300 KiB (a tmpfs): writing more gives ENOSPC, as on a full disk.

    Mounting needs root (CI runs as root). Without it this fails rather than skips: a full disk is
    not something to simulate by raising OSError where we think it would surface."""
    import subprocess

    where = tmp_path / "small"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(where)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs to make a real full disk (run as root, as CI does): {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def _fill(disk: Path) -> None:
    """Leave no free byte on the disk."""
    with open(disk / "filler", "wb", buffering=0) as filler, pytest.raises(OSError):
        while True:
            filler.write(b"\0" * 4096)


def _assert_full_disk_error(proc, path: Path) -> None:
    assert (proc.returncode, proc.stderr) == (1, f"Error: cannot write {path}: No space left on device\n"), proc.stderr[-3000:]


@pytest.mark.parametrize("full", [False, True], ids=["fills up while writing", "full from the start"])
def test_extract_to_a_full_disk_is_one_line_and_leaves_nothing(small_disk, full):
    if full:
        _fill(small_disk)
    proc = _run(["extract", SAMPLE, "-o", small_disk / "x.h5"])
    _assert_full_disk_error(proc, small_disk / "x.h5")
    assert sorted(p.name for p in small_disk.iterdir()) == (["filler"] if full else [])


DUMP_WRITER_SCRIPT = """
import sys, numpy as np
from actgeom import DumpWriter
from actgeom.core.base.errors import OutputError
rows = np.ones((1000, 64), dtype=np.float32)
try:  # fails in an append (the chunk cache spills) or in close (the rest)
    with DumpWriter(sys.argv[1], layers={"h": 64}, dtype="float32") as writer:
        for _ in range(int(sys.argv[2])):
            writer.append({"h": rows})
except OutputError as exc:
    print(exc)
print("alive")
"""


@pytest.mark.parametrize("batches", [1, 30], ids=["fails at close", "fails in an append"])
def test_dump_writer_on_a_full_disk_raises_and_the_process_exits_cleanly(small_disk, batches):
    import subprocess
    import sys
    path = small_disk / "d.h5"
    proc = subprocess.run([sys.executable, "-c", DUMP_WRITER_SCRIPT, str(path), str(batches)], capture_output=True,
                          text=True, timeout=SUBPROCESS_TIMEOUT_S)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"cannot write {path}: No space left on device\nalive\n", "")
    assert list(small_disk.iterdir()) == []


@pytest.mark.parametrize("args", [
    ["collapse", "{d}", "-o", "{out}/c.json"], ["stats", "{d}", "--save-stats", "{out}/p.npz"],
    ["report", "{d}", "--families", "collapse", "-o", "{out}/r.html"],
    ["report", "{d}", "--families", "collapse", "-o", "{tmp}/r.html", "--results", "{out}/r.json"],
    ["report", "{d}", "--families", "collapse", "-o", "{tmp}/r.html", "--figures", "{out}/figures"],
    ["report", "{d}", "--families", "collapse", "-o", "{tmp}/r.html", "--cache", "{out}/cache"],
], ids=["-o", "--save-stats", "report -o", "--results", "--figures", "--cache"])
def test_every_output_on_a_full_disk_is_one_line_and_leaves_nothing(cli, dump, tmp_path, small_disk, args):
    _fill(small_disk)
    code, _, err = cli(*[a.format(d=dump, out=small_disk, tmp=tmp_path) for a in args])
    assert code == 1 and one_error_line(err) and err.endswith(": No space left on device\n"), err
    assert f"cannot write {small_disk}/" in err
    left = sorted(str(p.relative_to(small_disk)) for p in small_disk.rglob("*"))
    assert left in (["filler"], ["figures", "filler"], ["cache", "filler"]), left  # a directory asked for may stay
    assert not (tmp_path / "r.html").exists()


# -- issue #22: extract's output follows the rules of every output ------------------------------
def test_extract_overwrites_an_existing_dump_atomically_like_every_command(cli, dump, tmp_path):
    out = tmp_path / "x.h5"
    out.write_bytes(b"an older file")
    code, _, err = cli("extract", dump, "-o", out, "--layers", "h2")
    assert code == 0, err
    with h5py.File(out) as f:
        assert list(f["activations"]) == ["h2"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_extract_to_a_directory_or_a_device_is_one_line_naming_what_it_is(cli, dump, tmp_path):
    (tmp_path / "dir").mkdir()
    code, _, err = cli("extract", dump, "-o", tmp_path / "dir")
    assert code == 2 and one_error_line(err) and "is a directory" in err and "--append" not in err, err
    full = _device(tmp_path, "full", 7)
    code, _, err = cli("extract", dump, "-o", full)
    assert code == 2 and one_error_line(err) and "device or FIFO" in err and "--append" not in err, err
    assert stat.S_ISCHR(full.stat().st_mode)


def test_extract_into_a_read_only_directory_is_one_line(dump, tmp_path):
    """Root writes anywhere (CI runs as root), except into an immutable directory (chattr +i)."""
    import shutil
    import subprocess

    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    if os.geteuid() == 0 and (shutil.which("chattr") is None or subprocess.run(["chattr", "+i", locked]).returncode):
        pytest.fail("running as root, and this file system cannot make a directory immutable (chattr +i)")
    try:
        proc = _run(["extract", dump, "-o", locked / "x.h5"])
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", locked], check=True)
    assert proc.returncode == 2 and one_error_line(proc.stderr), proc.stderr[-2000:]
    assert re.fullmatch(f"Error: cannot write {re.escape(str(locked / 'x.h5'))}: (Permission denied|Operation not permitted)\n",
                        proc.stderr), proc.stderr


# -- issue #22: Ctrl-C at any moment ------------------------------------------------------------
def _actgeom_program() -> Path:
    """The `actgeom` program a user runs (the console script beside this Python)."""
    import sys
    program = Path(sys.executable).parent / "actgeom"
    assert program.exists(), f"no `actgeom` program beside {sys.executable}: pip install -e . first"
    return program


STOP_WITHIN_S = 1.0  # the promise: Ctrl-C stops the command within a second


@pytest.fixture(scope="module")
def python_start_s() -> float:
    """How long this machine's Python takes to start before any actgeom code runs (its `site`):
    a Ctrl-C before that is the interpreter's own business (a "Fatal Python error")."""
    import subprocess
    import sys
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", "import actgeom"], check=True, timeout=SUBPROCESS_TIMEOUT_S)
    return 1.5 * (time.monotonic() - started)  # 1.5: the load of a busy machine varies from one start to the next


@pytest.mark.skipif(not hasattr(signal, "SIGINT"), reason="POSIX signals")
@pytest.mark.parametrize("after", [0.0, 0.25, 0.6, 1.2])  # imports; the command's imports; the checks and the pass
def test_ctrl_c_at_any_moment_of_start_up_stops_at_once_and_leaves_nothing(tmp_path, python_start_s, after):
    """Ctrl-C as a terminal sends it: to the whole process group (the metadata check's child too).
    The report on the five sample checkpoints runs for seconds: typer, numpy, h5py, the metadata
    checks, the passes."""
    import subprocess
    delay = python_start_s + after
    out = tmp_path / "out"
    out.mkdir()
    dumps = sorted(SAMPLE.parent.glob("*.h5"))
    proc = subprocess.Popen([_actgeom_program(), "report", *dumps, "-o", out / "r.html", "--families", "collapse,rank",
                             "--figures", out / "figures", "--results", out / "r.json", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal's shell does
    time.sleep(delay)
    assert proc.poll() is None, "the report ended before Ctrl-C: give it more work"
    os.killpg(proc.pid, signal.SIGINT)
    sent = time.monotonic()
    try:
        _, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT_S)
    finally:
        proc.kill()
    took = time.monotonic() - sent
    assert (proc.returncode, err) == (130, "interrupted\n"), err[-3000:]
    assert took < STOP_WITHIN_S, f"stopped {took:.2f} s after Ctrl-C"
    assert list(out.iterdir()) == [], "an output was left"


def test_ctrl_c_wrapped_in_another_error_is_still_an_interruption(cli, dump, tmp_path, monkeypatch):
    """Python wraps a KeyboardInterrupt raised while a class is made: "Error calling __set_name__"."""
    import actgeom.core.state.engine as engine

    def wrapped(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise RuntimeError("Error calling __set_name__ on '_Field' instance 'x' in 'NeuronInputs'") from exc
    monkeypatch.setattr(engine, "iter_blocks", wrapped)
    code, out, err = cli("collapse", dump, "-o", tmp_path / "c.json")
    assert (code, out, err) == (130, "", "interrupted\n")


def test_ctrl_c_swallowed_by_a_finalizer_is_raised_again(cli, dump, tmp_path, monkeypatch):
    """Python only prints an exception raised in ``__del__``: a Ctrl-C arriving there was lost, and the
    command ran on to the end and exited 0."""
    import gc

    import actgeom.cli.app as app
    import actgeom.core.state.engine as engine

    class Finalized:
        def __del__(self):
            raise KeyboardInterrupt

    def swallowing(*args, **kwargs):
        Finalized()
        gc.collect()
        time.sleep(2)  # the Ctrl-C raised again ends this
        pytest.fail("the command went on after Ctrl-C")
    monkeypatch.setattr(engine, "iter_blocks", swallowing)
    previous = signal.signal(signal.SIGINT, app._stop_at_once)  # as the `actgeom` program starts
    try:
        code, out, err = cli("collapse", dump, "-o", tmp_path / "c.json")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert (code, out) == (130, "") and err.endswith("interrupted\n"), err
    assert list(tmp_path.iterdir()) == [Path(dump)]


CAPTURE_SCRIPT = """
import sys, torch, actgeom
from actgeom.core.base.errors import OutputError
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU())
try:  # a training run that captures its activations onto a disk that fills up
    with torch.no_grad(), actgeom.capture(model, ["0"], sys.argv[1]) as cap:
        for _ in range(30):
            cap.next(labels=torch.zeros(1000, dtype=torch.long))
            model(torch.ones(1000, 64))
except OutputError as exc:
    print(exc)
print("alive")
"""


def test_capture_on_a_full_disk_raises_and_the_process_exits_cleanly(small_disk):
    import subprocess
    import sys
    pytest.importorskip("torch")
    path = small_disk / "c.h5"
    proc = subprocess.run([sys.executable, "-c", CAPTURE_SCRIPT, str(path)], capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT_S)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"cannot write {path}: No space left on device\nalive\n", ""), \
        proc.stderr[-3000:]
    assert list(small_disk.iterdir()) == []
