"""The real app on small dumps: outputs, exit codes, and one clear line for every user error."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import class_data, write_dump, write_h5

from actgeom.cli.options import Format
from actgeom.cli.output import Result, render

SAMPLE = sorted((Path(__file__).parent.parent / "sample_data").glob("*.h5"))


@pytest.fixture
def dump(tmp_path, rng):
    X, y = class_data(rng, [30, 20, 10], 5)
    return write_dump(tmp_path / "d.h5", {"h1": X, "h2": X[:, :3] ** 2}, labels=y, prediction=y)


def test_sample_data_is_real_and_complete():
    assert len(SAMPLE) >= 4
    assert sum(p.stat().st_size for p in SAMPLE) <= 10 * 2**20


@pytest.mark.parametrize("path", SAMPLE, ids=lambda p: p.name)
def test_info_on_sample_data(cli, path):
    doc = cli.json("info", path)
    assert doc["format"] == "actgeom-dump v1" and doc["n_rows"] == 1797
    assert [layer["layer"] for layer in doc["layers"]] == ["hidden1", "hidden2", "hidden3"]
    assert doc["labels"]["n_classes"] == 10 and doc["labels"]["count_min"] == 174
    assert doc["classifier"] == {"weight": "classifier/weight", "bias": "classifier/bias", "n_classes": 10,
                                 "n_units": 64, "layer": "hidden3"}


def test_info_every_format(cli, dump):
    code, table, _ = cli("info", dump, "--format", "table")
    assert code == 0 and "h1" in table and "3 classes" in table
    _, jsonl, _ = cli("info", dump, "--format", "jsonl")
    assert [json.loads(line)["layer"] for line in jsonl.splitlines()] == ["h1", "h2"]
    _, text, _ = cli("info", dump, "--format", "csv")
    assert [row["n_units"] for row in csv.DictReader(io.StringIO(text))] == ["5", "3"]
    _, md, _ = cli("info", dump, "--format", "md")
    assert "| layer |" in md and "| h2 |" in md


def test_piped_default_is_json(cli, dump):
    code, out, _ = cli("info", dump)  # the test runner's stdout is not a terminal
    assert code == 0 and json.loads(out)["n_rows"] == 60


def test_output_file_is_written_atomically(cli, dump, tmp_path):
    code, out, _ = cli("info", dump, "-o", tmp_path / "info.csv")
    assert code == 0 and out == ""
    assert (tmp_path / "info.csv").read_text().startswith("layer,path")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.h5", "info.csv"]


def test_strict_json_turns_nonfinite_into_null():
    result = Result(title="t", document={"a": float("nan"), "b": np.float32(np.inf), "c": np.int64(3)}, records=[])
    assert json.loads(render(result, Format.json)) == {"a": None, "b": None, "c": 3}


def test_stats_and_merge_of_shards_equal_one_pass(cli, dump, tmp_path):
    whole = cli.json("stats", dump, "--subsample", "10")
    for i, rows in enumerate(["0:25", "25:60"]):
        code, _, err = cli("stats", dump, "--rows", rows, "--subsample", "10", "--save-stats", tmp_path / f"p{i}.npz")
        assert code == 0, err
    merged = cli.json("merge", tmp_path / "p1.npz", tmp_path / "p0.npz")
    for a, b in zip(whole["layers"], merged["layers"]):
        assert a.keys() == b.keys()
        for key, value in a.items():
            assert value == (b[key] if isinstance(value, str) else pytest.approx(b[key], rel=1e-12)), key


def test_version(cli):
    code, out, _ = cli("--version")
    assert code == 0 and out.startswith("actgeom ")


# Every validation error: exit code and a one-line message naming what is wrong and what is valid.
def _foreign(tmp_path, rng, **datasets):
    base = {"feats": rng.standard_normal((10, 4)).astype(np.float32), "y": np.arange(10) % 3}
    return write_h5(tmp_path / "f.h5", base | datasets)


ERRORS = {
    "missing file": (lambda t, r: str(t / "nope.h5"), [], 3, r"no such file: .*nope\.h5"),
    "not hdf5": (lambda t, r: str((t / "x.h5").write_text("hello") and t / "x.h5"), [], 3, r"x\.h5 is not a readable HDF5 file"),
    "missing labels dataset": (lambda t, r: _foreign(t, r), ["--labels", "target"], 3,
                               r"no dataset 'target' in .*f\.h5 \(given by --labels\); datasets: feats, y"),
    "no layer matches": (lambda t, r: _foreign(t, r), ["--layers", "fc9"], 3,
                         r"no dataset matches --layers 'fc9' in .*; datasets: feats, y"),
    "labels wrong length": (lambda t, r: _foreign(t, r, y=np.arange(7)), ["--labels", "y"], 3,
                            r"labels 'y' in .*: 7 rows but the layers have 10; name another dataset with --labels"),
    "labels not integers": (lambda t, r: _foreign(t, r, y=np.linspace(0, 1, 10)), ["--labels", "y"], 3,
                            r"labels 'y' in .*: dtype float64, labels must be integers"),
    "layer not 2-D": (lambda t, r: _foreign(t, r, cube=np.zeros((10, 2, 2))), ["--layers", "cube"], 3,
                      r"layer 'cube' in .* has shape \(10, 2, 2\); a layer must be 2-D"),
    "layer not float": (lambda t, r: _foreign(t, r, ints=np.zeros((10, 2), dtype=np.int32)), ["--layers", "ints"], 3,
                        r"layer 'ints' .* has dtype int32; a layer must be float16, float32, float64, or bfloat16"),
    "classifier width": (lambda t, r: _foreign(t, r, W=np.zeros((3, 5))), ["--weight", "W"], 3,
                         r"classifier weight 'W' in .* has 5 units but layer 'feats' has 4"),
    "bias shape": (lambda t, r: _foreign(t, r, W=np.zeros((3, 4)), b=np.zeros(4)), ["--weight", "W", "--bias", "b"], 3,
                   r"classifier bias 'b' in .* has shape \(4,\), dtype float64; the weight has 3 classes, so expected floats of "
                   r"shape \(3,\)"),
    "bias without weight": (lambda t, r: _foreign(t, r, b=np.zeros(3)), ["--bias", "b"], 3, r"--bias needs --weight"),
    "bad offsets": (lambda t, r: _foreign(t, r, off=np.array([0, 4, 9])), ["--offsets", "off"], 3,
                    r"offsets 'off' in .* must rise from 0 to n_rows=10; found 0 \.\. 9"),
    "incomplete": (lambda t, r: write_h5(t / "i.h5", {"activations/h": np.zeros((3, 2))},
                                         attrs={"format": "actgeom-dump", "complete": False}), [], 3,
                   r"i\.h5 is an incomplete dump .* pass --allow-incomplete"),
    "bad format": (lambda t, r: _foreign(t, r), ["--format", "xml"], 2, r"xml"),
}


@pytest.mark.parametrize("command", ["info", "stats"])
@pytest.mark.parametrize("case", ERRORS)
def test_validation_errors(cli, tmp_path, rng, case, command):
    make, args, code, message = ERRORS[case]
    got_code, out, err = cli(command, make(tmp_path, rng), *args)
    assert got_code == code
    assert out == ""
    if code == 3:  # our own errors: exactly one line, no traceback
        assert err.startswith("Error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err


def test_allow_incomplete(cli, tmp_path):
    path = write_h5(tmp_path / "i.h5", {"activations/h": np.ones((3, 2))}, attrs={"format": "actgeom-dump", "complete": False})
    assert cli.json("info", path, "--allow-incomplete")["n_rows"] == 3


def test_nonfinite_refused_naming_layer_and_count_or_dropped(cli, tmp_path, rng):
    X = rng.standard_normal((40, 3))
    X[[1, 5], 0] = np.nan
    X[9, 2] = np.inf
    path = write_dump(tmp_path / "d.h5", {"h": X}, chunk_rows=4)
    code, out, err = cli("stats", path)
    assert code == 3 and out == ""
    assert err == f"Error: layer 'h' in {path} has 3 rows with NaN or inf values; pass --nonfinite drop to skip them\n"
    doc = cli.json("stats", path, "--nonfinite", "drop")
    assert doc["layers"][0]["n_nonfinite_dropped"] == 3 and doc["layers"][0]["n_rows"] == 37


@pytest.mark.parametrize("args, message", [
    (["--nonfinite", "skip"], "Invalid value for '--nonfinite': 'skip' is not one of 'error', 'drop'."),
    (["--rows", "5-9"], "--rows '5-9' is not START:STOP"),
    (["--rows", "0:999"], "row range 0:999 is outside the dump's rows 0:60"),
    (["--subsample", "-1"], "--subsample '-1' must be ≥ 0"),
])
def test_usage_errors_exit_2(cli, dump, args, message):
    code, out, err = cli("stats", dump, *args)
    assert code == 2 and out == "" and err.startswith(f"Error: {message}") and err.count("\n") == 1


def test_output_into_missing_directory(cli, dump, tmp_path):
    code, _, err = cli("info", dump, "-o", tmp_path / "no" / "x.json")
    assert code == 2 and "directory" in err and "does not exist" in err


def test_labels_below_minus_one(cli, tmp_path, rng):
    path = write_dump(tmp_path / "d.h5", {"h": rng.standard_normal((6, 2))}, labels=[0, 1, -3, 0, 1, 0])
    code, _, err = cli("stats", path)
    assert code == 3 and "label -3" in err and "-1 for none" in err


def test_merge_refuses_junk(cli, tmp_path):
    (tmp_path / "p.npz").write_bytes(b"junk")
    code, _, err = cli("merge", tmp_path / "p.npz")
    assert code == 3 and err.startswith("Error: ") and "not an actgeom partial-statistics file" in err


def test_collapse_on_sample_data_shows_collapse_emerging(cli):
    doc = cli.json("collapse", *SAMPLE, "--layers", "hidden3")
    layers = [f["layers"][0] for f in doc["files"]]
    for metric in ("nc1", "nc1_quotient", "nc4_mismatch", "vci"):  # each falls at every checkpoint
        values = [layer["metrics"][metric] for layer in layers]
        assert values == sorted(values, reverse=True) and values[-1] < values[0] / 2, (metric, values)
    assert layers[-1]["collapse"]["nc4_decision"] == "predictions"
    assert doc["options"]["collapse"]["global_mean"] == "class"


def test_collapse_tidy_records_and_unavailable_metrics(cli, dump):
    code, out, _ = cli("collapse", dump, "--format", "jsonl", "--per-class")
    records = [json.loads(line) for line in out.splitlines()]
    assert {r["layer"] for r in records} == {"h1", "h2"}
    nc3 = next(r for r in records if r["metric"] == "nc3_self_duality")
    assert nc3["value"] is None and "no classifier weight" in nc3["note"]
    doc = cli.json("collapse", dump, "--per-class")
    assert [c["n"] for c in doc["files"][0]["layers"][0]["collapse"]["per_class"]] == [30, 20, 10]
    assert doc["files"][0]["separation_law"]["n_layers"] == 2


@pytest.mark.parametrize("args, message", [
    (["--global-mean", "median"], "Invalid value for '--global-mean': 'median' is not one of 'class', 'sample'."),
    (["--nc1-inverse", "svd"], "Invalid value for '--nc1-inverse': 'svd' is not one of 'topk', 'pinv'."),
    (["--nc4-decision", "vote"],
     "Invalid value for '--nc4-decision': 'vote' is not one of 'auto', 'predictions', 'logits', 'logits-nobias'."),
    (["--min-count", "0"], "--min-count '0' must be ≥ 1"),
    (["--preset", "smith"], "Invalid value for '--preset': 'smith' is not one of 'papyan', 'zhu', 'linguistic'."),
])
def test_collapse_usage_errors(cli, dump, args, message):
    code, out, err = cli("collapse", dump, *args)
    assert code == 2 and out == "" and err.startswith(f"Error: {message}") and err.count("\n") == 1


def test_entropy_table_shows_attention_per_head(cli, tmp_path, rng):
    A = np.full((2, 3, 4, 4), 0.25)
    path = write_h5(tmp_path / "a.h5", {"activations/h": np.maximum(rng.standard_normal((20, 3)), 0),
                                        "attention/h": A}, dataset_attrs={"activations/h": {"activation": "relu"}})
    code, out, _ = cli("entropy", path, "--format", "table", "--subsample", "20")
    assert code == 0 and "attention/h" in out and "1.38629, 1.38629, 1.38629" in out


def test_collapse_says_which_layer_the_classifier_reads(cli):
    doc = cli.json("collapse", SAMPLE[-1], "--layers", "hidden1")
    reason = doc["files"][0]["layers"][0]["unavailable"]["nc3_self_duality"]
    assert reason == "the classifier (classifier/weight) reads a layer not selected by --layers, not this one"
    doc = cli.json("collapse", SAMPLE[-1], "--layers", "hidden[13]")
    assert "reads layer 'hidden3'" in doc["files"][0]["layers"][0]["unavailable"]["nc3_self_duality"]


def test_collapse_with_one_class_says_why(cli, tmp_path, rng):
    path = write_dump(tmp_path / "one.h5", {"h": rng.standard_normal((30, 4))}, labels=np.zeros(30, dtype=int))
    code, out, err = cli("collapse", path, "--format", "jsonl")
    assert code == 3 and out == ""
    assert err == "Error: no requested metric can be computed for any layer: 1 class(es) with ≥ 1 rows; collapse needs 2\n"


def test_metric_commands_from_merged_shard_statistics(cli, dump, tmp_path):
    for i, rows in enumerate(["0:31", "31:60"]):
        code, _, err = cli("stats", dump, "--rows", rows, "--subsample", "2000", "--save-stats", tmp_path / f"p{i}.npz")
        assert code == 0, err
    assert cli("merge", tmp_path / "p0.npz", tmp_path / "p1.npz", "--save-stats", tmp_path / "all.npz")[0] == 0
    for command in ("collapse", "rank"):
        direct = cli.json(command, dump)["files"][0]["layers"]
        merged = cli.json(command, dump, "--stats", tmp_path / "all.npz")["files"][0]["layers"]
        for a, b in zip(direct, merged):
            for name, value in a["metrics"].items():
                assert b["metrics"][name] == pytest.approx(value, rel=1e-9, abs=1e-12), (command, name)
    code, _, err = cli("collapse", dump, dump, "--stats", tmp_path / "all.npz")
    assert code == 2 and err == "Error: --stats describes one dump; 2 were given\n"
    cli("stats", dump, "--layers", "h1", "--save-stats", tmp_path / "h1.npz")
    code, _, err = cli("rank", dump, "--stats", tmp_path / "h1.npz")
    assert code == 3 and err == f"Error: the statistics file has no layer 'h2' of {dump}; it has: h1\n"


@pytest.mark.parametrize("token_level", [False, True])
def test_entropy_from_merged_shard_statistics(cli, tmp_path, rng, token_level):
    from actgeom.core.dump import DumpWriter

    lengths = rng.integers(2, 9, size=30)
    offsets = np.r_[0, np.cumsum(lengths)]
    n = int(offsets[-1])
    path = tmp_path / "d.h5"
    with DumpWriter(path, layers={"h": 6}, dtype="float64", level="token" if token_level else "sample") as writer:
        writer.append({"h": np.maximum(rng.standard_normal((n, 6)), 0)}, labels=rng.integers(0, 3, n))
        if token_level:
            writer.set_offsets(offsets)
    cut = int(offsets[12])  # shards end at a sequence boundary
    for i, rows in enumerate([f"0:{cut}", f"{cut}:{n}"]):
        code, _, err = cli("stats", path, "--rows", rows, "--subsample", "1000", "--entropy-alpha", "2",
                           "--save-stats", tmp_path / f"p{i}.npz")
        assert code == 0, err
    cli("merge", tmp_path / "p0.npz", tmp_path / "p1.npz", "--save-stats", tmp_path / "all.npz")
    direct = cli.json("entropy", path, "--alpha", "2", "--threshold", "0")["files"][0]["layers"][0]["metrics"]
    merged = cli.json("entropy", path, "--alpha", "2", "--subsample", "1000", "--threshold", "0",
                      "--stats", tmp_path / "all.npz")["files"][0]["layers"][0]["metrics"]
    assert merged.keys() == direct.keys()
    for name, value in direct.items():
        assert merged[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    code, _, err = cli("entropy", path, "--alpha", "1", "--subsample", "1000", "--stats", tmp_path / "all.npz")
    if token_level:
        assert code == 3 and "needs sequence entropies of order 1.0" in err
    else:
        assert code == 0  # Σuuᵀ serves every α


# -- issue #22: one line, not a traceback -------------------------------------------------------
SAMPLE_DUMP = Path(__file__).parent.parent / "sample_data" / "digits_mlp_epoch1500.h5"


@pytest.mark.parametrize("args", [["info", "{d}"], ["collapse", "{d}", "-f", "json"],
                                  ["report", "{d}", "--families", "collapse", "-o", "{tmp}/r.html"]],
                         ids=["info", "collapse", "report"])
def test_a_failing_standard_output_is_one_line(tmp_path, args):
    import subprocess
    import sys
    script = "import sys; from actgeom.cli.app import main; sys.argv[0] = 'actgeom'; main()"
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-c", script, *[a.format(d=SAMPLE_DUMP, tmp=tmp_path) for a in args], "-q"]
                              if args[0] != "info" else [sys.executable, "-c", script, *[a.format(d=SAMPLE_DUMP) for a in args]],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    full_disk = "Error: cannot write to standard output: No space left on device\n"
    assert (proc.returncode, proc.stderr) == (1, full_disk), proc.stderr[-2000:]


@pytest.mark.parametrize("args, message", [
    (["rank", "{d}", "--seed", "-1"], "--seed"), (["entropy", "{d}", "--seed", "-1"], "--seed"),
    (["compare", "{d}", "{d}", "--seed", "-1"], "--seed"), (["stats", "{d}", "--seed", "-1"], "--seed"),
    (["probe", "{d}", "--seed", "-1"], "--seed"), (["rank", "{d}", "--seed", str(2**64)], "--seed"),
    (["extract", "{d}", "-o", "{tmp}/x.h5", "--sample", "5", "--seed", "-1"], "--seed"),
    (["entropy", "{d}", "--tau", "-1"], "--tau"), (["entropy", "{d}", "--subsample", "1e20"], "--subsample"),
], ids=lambda a: " ".join(a) if isinstance(a, list) else None)
def test_out_of_range_sizes_and_seeds_are_one_line(cli, dump, tmp_path, args, message):
    code, out, err = cli(*[a.format(d=dump, tmp=tmp_path) for a in args])
    assert code == 2 and out == "" and err.startswith("Error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.parametrize("args", [["rank", "{d}", "--subsample", "1000000000000"],
                                  ["entropy", "{d}", "--subsample", "1000000000000"],
                                  ["stats", "{d}", "--subsample", "1000000000000"],
                                  ["compare", "{d}", "{d}", "--subsample", "1000000000"],
                                  ["report", "{d}", "--families", "entropy", "--subsample", "10000000000", "-o", "{tmp}/r.html"]],
                         ids=["rank", "entropy", "stats", "compare", "report"])
def test_a_subsample_beyond_the_rows_uses_every_row_and_says_so(cli, dump, tmp_path, args):
    """It allocated the sample it was asked for (a MemoryError, 74.5 GiB) or blamed --max-memory."""
    code, _, err = cli(*[a.format(d=dump, tmp=tmp_path) for a in args], "-q")
    assert code == 0, err
    if args[0] in ("rank", "entropy", "compare"):
        assert "Warning: --subsample" in err and "is more than the 60 rows: every row is used" in err, err
        code, _, err = cli(*[a.format(d=dump, tmp=tmp_path) for a in args[:-2]], "-q")  # the default: no warning
        assert code == 0 and "Warning" not in err, err


# -- issue #22 item 16: --help reads cleanly at 80 columns --------------------------------------
def _commands():
    from actgeom.cli.app import app
    return sorted(command.name for command in app.registered_commands)


def _help_at_80_columns(command: str) -> str:
    from typer.testing import CliRunner

    from actgeom.cli.app import app
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("command", _commands())
def test_help_examples_do_not_wrap_and_flags_and_defaults_read_plainly(command):
    from actgeom.cli.app import app
    out = _help_at_80_columns(command)
    shown = {line.strip() for line in out.splitlines()}
    callback = next(c.callback for c in app.registered_commands if c.name == command)
    examples, continued = [], False
    for line in (callback.__doc__ or "").splitlines():
        line = line.strip("\b \n")
        if line.startswith("actgeom ") or continued:
            examples.append(line)
        continued = (line.startswith("actgeom ") or continued) and line.endswith("\\")
    assert examples, f"`actgeom {command} --help` shows no example"
    for line in examples:
        assert line in shown, f"`actgeom {command} --help` wraps the example line {line!r} at 80 columns"
    assert "<bool>" not in out, "a flag shows a <bool> type"
    assert "<list[str]>" not in out, "a repeatable option shows a <list[str]> type"
    assert "[default: (" not in out, "a default is shown in parentheses, as if it were not the value"


def test_a_subsample_whose_kernels_cannot_fit_in_memory_is_refused_with_the_memory_it_needs(cli, dump, monkeypatch):
    """DSE/DSMI hold n × n kernels of the n sampled rows: a size within the rows may still not fit."""
    import actgeom.core.families.entropy as family
    monkeypatch.setattr(family, "machine_memory_bytes", lambda: 40_000)  # 2 × 8 × 60² = 57 600 bytes
    code, out, err = cli("entropy", dump, "--subsample", "60", "-q")
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith("Error: --subsample '60' makes DSE/DSMI kernels of 60 × 60 rows: 5.76e+04 bytes"), err


def test_the_root_help_shows_no_bool_type(cli):
    code, out, _ = cli("--help")
    assert code == 0 and "--version" in out and "<bool>" not in out
