"""Issue #24 on the command line: the Inference options of every analysis command, their errors as
one line with the documented exit code, and the intervals, nulls and baseline differences in every
output format (table: value ± half-width; jsonl/csv/records/to_pandas: one column per field)."""

from __future__ import annotations

import csv
import doctest
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import class_data, write_dump

from actgeom.cli import cells
from actgeom.cli.cells import plus_minus
from actgeom.core.base.result import RECORD_KEYS, Result, tidy_rows

SAMPLE = Path(__file__).parent.parent / "sample_data"
EPOCH1500, EPOCH0 = SAMPLE / "digits_mlp_epoch1500.h5", SAMPLE / "digits_mlp_epoch0000.h5"
INTERVAL = ("se", "ci_low", "ci_high", "ci_method", "ci_groups", "ci_level")
NULL = ("null_mean", "null_sd", "z", "p_value")
BASELINE = ("baseline", "difference", "difference_se", "difference_ci_low", "difference_ci_high", "excludes_zero")


@pytest.fixture
def dump(tmp_path, rng):
    X, y = class_data(rng, [40, 30, 30], 6)
    return write_dump(tmp_path / "d.h5", {"h1": X, "h2": np.maximum(X[:, :4], 0)}, labels=y, prediction=y)


def _csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def _error(cli, *args) -> tuple[int, str]:
    code, out, err = cli(*args)
    assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith("Error: "), err
    return code, err.strip()


# -- tidy records ---------------------------------------------------------------------------------------

def _document(with_inference: bool = True) -> dict:
    """A hand-made document: one layer with an interval, a null and a baseline entry on metric a, an
    interval's reason on b, an unavailable metric c."""
    layer = {"layer": "h", "metrics": {"a": 1.0, "b": 2.0, "n": 3}, "unavailable": {"c": "why"},
             "intervals": {"a": {"se": 0.1, "ci_low": 0.8, "ci_high": 1.2, "bias": 0.01}},
             "intervals_unavailable": {"b": "no value without jackknife group 0: x"},
             "nulls": {"a": {"null_mean": 0.5, "null_sd": 0.2, "z": 2.5, "p_value": 0.01, "permutations": 99}},
             "baseline": {"a": {"baseline": 0.4, "difference": 0.6, "difference_se": 0.2, "difference_ci_low": 0.2,
                                "difference_ci_high": 1.0, "excludes_zero": True},
                          "b": {"baseline": 2.5, "difference": -0.5}}}
    inference = {"ci": {"method": "delete-a-group jackknife", "groups": 20, "seed": 0, "level": 0.95},
                 "null": {"permutations": 99, "seed": 0}, "baseline": ["b.h5"]}
    return {"command": "x", "inference": inference if with_inference else {},
            "metrics_info": {name: {"family": "f"} for name in "abcn"},
            "files": [{"file": "d.h5", "checkpoint": None, "step": 1, "layers": [layer]}]}


def test_tidy_rows_carry_every_inference_field_of_the_layer():
    rows = {row["metric"]: row for row in Result(_document()).records()}
    assert list(rows["a"]) == [*RECORD_KEYS, *INTERVAL, *NULL, *BASELINE]
    assert [list(row) for row in rows.values()] == [list(rows["a"])] * 4  # one set of columns for every row
    a = rows["a"]
    assert (a["se"], a["ci_low"], a["ci_high"]) == (0.1, 0.8, 1.2)
    assert (a["ci_method"], a["ci_groups"], a["ci_level"]) == ("delete-a-group jackknife", 20, 0.95)
    assert (a["null_mean"], a["null_sd"], a["z"], a["p_value"]) == (0.5, 0.2, 2.5, 0.01)
    assert [a[key] for key in BASELINE] == [0.4, 0.6, 0.2, 0.2, 1.0, True]
    b = rows["b"]  # no interval (the reason is in the layer's intervals_unavailable), no null, a bare difference
    assert all(b[key] is None for key in INTERVAL + NULL)
    assert (b["baseline"], b["difference"], b["difference_se"]) == (2.5, -0.5, None)
    assert rows["c"]["value"] is None and rows["c"]["note"] == "why" and all(rows["c"][k] is None for k in INTERVAL)


def test_tidy_rows_columns_follow_what_the_document_has():
    """Without inference in the document, the fields present in the layers still become columns (and
    only those); with none, the records are the plain ones."""
    document = _document(with_inference=False)
    layer = document["files"][0]["layers"][0]
    del layer["baseline"]["b"], layer["baseline"]["a"]["difference_se"], layer["nulls"]
    rows = Result(document).records()
    assert list(rows[0]) == [*RECORD_KEYS, *INTERVAL, "baseline", "difference", "difference_ci_low", "difference_ci_high",
                             "excludes_zero"]
    for key in ("intervals", "intervals_unavailable", "baseline"):
        del layer[key]
    assert [list(row) for row in Result(document).records()] == [list(RECORD_KEYS)] * 4
    cell = {"metrics": {"a": 1.0}, "intervals": {"a": {"se": 0.1, "ci_low": 0.8, "ci_high": 1.2}}}  # a compare cell
    assert tidy_rows({"pair": 1}, cell)[0] == {"pair": 1, "metric": "a", "value": 1.0, "note": None, "se": 0.1,
                                               "ci_low": 0.8, "ci_high": 1.2, "ci_method": None, "ci_groups": None,
                                               "ci_level": None}


def test_to_pandas_keeps_the_inference_columns_and_the_readme_pivot():
    pd = pytest.importorskip("pandas", reason="pandas is in the test extra; CI installs it")
    frame = Result(_document()).to_pandas()
    assert list(frame.columns) == [*RECORD_KEYS, *INTERVAL, *NULL, *BASELINE]
    assert frame.set_index("metric").loc["a", "ci_high"] == 1.2
    wide = frame.pivot(index=["layer", "step"], columns="metric", values="value")  # README's pivot
    assert wide.loc[("h", 1), "a"] == 1.0
    assert isinstance(frame.pivot(index=["layer", "step"], columns="metric", values="ci_low"), pd.DataFrame)


# -- the table's cells --------------------------------------------------------------------------------

def test_cells_doctests():
    assert doctest.testmod(cells).failed == 0


@pytest.mark.parametrize("value, low, high, shown", [
    (0.41191413, 0.38858558, 0.43524269, "0.4119 ± 0.0233"),
    (-0.3814, -0.38252, -0.38028, "-0.38140 ± 0.00112"),
    (22.54, 19.08, 26.0, "22.54 ± 3.46"),
    (9, 8.127, 9.873, "9.000 ± 0.873"),
    (1.5e9, 1.4e9, 1.6e9, "1.500e+09 ± 1.00e+08"),
    (0.5, 0.5, 0.5, "0.5 ± 0"),
])
def test_plus_minus_shows_the_half_width_to_three_digits_and_the_value_to_the_same_place(value, low, high, shown):
    assert plus_minus(value, {"ci_low": low, "ci_high": high}) == shown


def test_a_difference_within_rounding_of_its_sides_shows_plus_minus_zero():
    from actgeom.cli.cells import difference_text

    entry = {"baseline": 0.1, "difference": 0.0, "difference_ci_low": -1.8e-16, "difference_ci_high": 1.8e-16}
    assert difference_text(entry) == "0 ± 0"
    assert difference_text(entry | {"difference_ci_low": -0.02, "difference_ci_high": 0.02}) == "0.0000 ± 0.0200"
    assert difference_text({"baseline": 1.0, "difference": -0.5}) == "-0.5" and difference_text({}) == ""


def test_hand_made_document_table_has_p_and_baseline_columns(cli):
    from actgeom.cli.output import metrics_result

    class Analysis:
        def __init__(self, document):
            self.document = document | {"options": {"f": {"k": 1}}}

        def to_dict(self):
            return self.document

        def records(self):
            return Result(self.document).records()

    document = _document()
    document["files"][0]["layers"][0] |= {"nulls_unavailable": {"c": "not by label"},
                                          "baseline_unavailable": {"c": "the baseline lacks it"}}
    view = metrics_result(Analysis(document))
    rows = {row["metric"]: row for row in view.table}
    assert rows["a"] == {"metric": "a", "h": "1.000 ± 0.200", "h p": "0.01", "h Δ baseline": "0.600 ± 0.400"}
    assert rows["b"] == {"metric": "b", "h": "2 (1)", "h p": "", "h Δ baseline": "-0.5"}
    assert rows["c"] == {"metric": "c", "h": "— (2)", "h p": "— (3)", "h Δ baseline": "— (4)"}
    assert view.notes == ["(1) no interval: no value without jackknife group 0: x", "(2) why", "(3) no nulls: not by label",
                          "(4) no baseline: the baseline lacks it"]
    assert view.summary["intervals"].startswith("value ± half-width of the 95% interval (delete-a-group jackknife over 20")


# -- the options on sample_data ----------------------------------------------------------------------

def test_collapse_ci_on_sample_data_in_every_format(cli):
    document = cli.json("collapse", EPOCH1500, "--layers", "hidden3", "--ci", "-q")
    layer = document["files"][0]["layers"][0]
    assert document["inference"]["ci"] == {"method": "delete-a-group jackknife", "groups": 20, "seed": 0, "level": 0.95}
    code, table, _ = cli("collapse", EPOCH1500, "--layers", "hidden3", "--ci", "-q", "--format", "table")
    assert code == 0
    nc1 = next(line for line in table.splitlines() if line.startswith("nc1 "))
    assert plus_minus(layer["metrics"]["nc1"], layer["intervals"]["nc1"]) in nc1 and " ± " in nc1
    rows = {row["metric"]: row for row in _csv(cli("collapse", EPOCH1500, "--layers", "hidden3", "--ci", "-q",
                                                   "--format", "csv")[1])}
    for name, interval in layer["intervals"].items():
        assert [float(rows[name][key]) for key in ("se", "ci_low", "ci_high")] == [interval[key] for key in
                                                                                 ("se", "ci_low", "ci_high")]
        assert (rows[name]["ci_method"], rows[name]["ci_groups"], rows[name]["ci_level"]) == ("delete-a-group jackknife",
                                                                                            "20", "0.95")
    assert rows["nc1_rank_used"]["se"] == rows["nc1_rank_used"]["ci_method"] == ""  # a diagnostic has no interval
    jsonl = [json.loads(line) for line in cli("collapse", EPOCH1500, "--layers", "hidden3", "--ci", "-q",
                                              "--format", "jsonl")[1].splitlines()]
    assert {r["metric"]: r["ci_high"] for r in jsonl}["nc1"] == layer["intervals"]["nc1"]["ci_high"]


@pytest.mark.parametrize("command, extra", [("rank", ()), ("entropy", ("--threshold", "0")), ("neurons", ("--threshold", "0")),
                                            ("probe", ()), ("collapse", ())])
def test_every_analysis_command_passes_the_ci_options(cli, dump, command, extra):
    document = cli.json(command, dump, *extra, "--ci", "--ci-groups", "5", "--ci-seed", "9", "-q")
    assert document["inference"]["ci"]["groups"] == 5 and document["inference"]["ci"]["seed"] == 9
    assert any(layer.get("intervals") for layer in document["files"][0]["layers"])
    assert cli.json(command, dump, *extra, "-q")["inference"]["ci"] is None


def test_shards_with_groups_merged_give_the_intervals_of_one_pass(cli, dump, tmp_path):
    for i, rows in enumerate(("0:37", "37:100")):
        code, _, err = cli("stats", dump, "--rows", rows, "--ci-groups", "6", "--ci-seed", "4", "--subsample", "2000",
                           "--save-stats", tmp_path / f"p{i}.npz", "-q", "--format", "json")
        assert code == 0, err
    merged = ("merge", tmp_path / "p1.npz", tmp_path / "p0.npz", "--save-stats", tmp_path / "all.npz", "--format", "json")
    assert cli(*merged)[0] == 0
    for command in ("collapse", "rank"):
        direct = cli.json(command, dump, "--ci", "--ci-groups", "6", "--ci-seed", "4", "-q")["files"][0]["layers"]
        merged = cli.json(command, dump, "--stats", tmp_path / "all.npz", "--ci", "--ci-groups", "6", "--ci-seed", "4",
                          "-q")["files"][0]["layers"]
        assert sum(len(layer["intervals"]) for layer in direct) > 10
        for a, b in zip(direct, merged):
            assert a["intervals"].keys() == b["intervals"].keys()
            for name, interval in a["intervals"].items():
                for key in ("se", "ci_low", "ci_high"):
                    assert math.isclose(b["intervals"][name][key], interval[key], rel_tol=1e-10, abs_tol=1e-13), (name, key)


def test_inference_errors_are_one_line_with_their_exit_code(cli, dump, tmp_path):
    assert cli("stats", dump, "--save-stats", tmp_path / "plain.npz", "-q", "--format", "json")[0] == 0
    assert cli("stats", dump, "--ci-groups", "5", "--save-stats", tmp_path / "g5.npz", "-q", "--format", "json")[0] == 0
    expected = [
        (("collapse", dump, "--ci", "--ci-groups", "1"), 2, "--ci-groups '1' must be ≥ 2"),
        (("collapse", dump, "--ci", "--ci-groups", "101"), 2, "--ci-groups '101' is more than the 100 rows"),
        (("stats", dump, "--ci-groups", "0"), 2, "--ci-groups '0' must be ≥ 2"),
        (("stats", dump, "--rows", "0:10", "--ci-groups", "11"), 2, "is more than the 10 rows"),
        (("collapse", dump, "--stats", tmp_path / "plain.npz", "--ci"), 3, "holds no jackknife groups, which --ci needs: "
                                                                           "make it with `actgeom stats --ci-groups 20`"),
        (("collapse", dump, "--stats", tmp_path / "g5.npz", "--ci"), 3, "was made with --ci-groups 5; this command uses "
                                                                        "--ci-groups 20"),
        (("collapse", dump, "--stats", tmp_path / "g5.npz", "--ci", "--ci-groups", "5", "--ci-seed", "1"), 3,
         "was made with --ci-seed 0; this command uses --ci-seed 1"),
        (("merge", tmp_path / "plain.npz", tmp_path / "g5.npz"), 3, "with --ci-groups"),
        (("collapse", dump, "--ci-groups", "5"), 2, "--ci-groups is an option of --ci: give --ci too"),
        (("stats", dump, "--ci-seed", "5"), 2, "--ci-seed is an option of --ci-groups: give --ci-groups too"),
        (("collapse", dump, "--ci", "--ci-seed", str(2**64)), 2, "--ci-seed '18446744073709551616' must be an integer"),
        (("collapse", dump, "--null", "0"), 2, "--null '0' must be ≥ 1 permutation"),
        (("collapse", dump, "--null-seed", "3"), 2, "--null-seed is an option of --null: give --null too"),
        (("neurons", dump, "--threshold", "0", "--fdr", "0.1"), 2, "--fdr is an option of --null: give --null too"),
    ]
    for args, code, message in expected:
        got, line = _error(cli, *args, "-q")
        assert got == code and message in line, (args, line)


def test_null_baseline_and_fdr_from_the_command_line(cli, dump, tmp_path, rng):
    X, y = class_data(rng, [40, 30, 30], 6, separation=0.0)  # a control: the same layers, no class structure
    control = write_dump(tmp_path / "control.h5", {"h1": X, "h2": np.maximum(X[:, :4], 0)}, labels=y, prediction=y)
    args = ("collapse", dump, "--layers", "h1", "--ci", "--null", "19", "--null-seed", "2", "--baseline", control, "-q")
    document = cli.json(*args)
    layer = document["files"][0]["layers"][0]
    assert (document["inference"]["null"]["permutations"], document["inference"]["null"]["seed"]) == (19, 2)
    assert document["inference"]["baseline"] == [control] and document["files"][0]["baseline_file"] == control
    assert layer["nulls"]["nc1"]["p_value"] == 1 / 20  # planted classes: no permutation is as extreme
    table = cli(*args, "--format", "table")[1]
    header = next(line for line in table.splitlines() if line.startswith("metric"))
    assert "h1 p" in header and "h1 Δ baseline" in header
    nc1 = next(line for line in table.splitlines() if line.startswith("nc1 "))
    assert "0.05" in nc1 and plus_minus(layer["baseline"]["nc1"]["difference"],
                                        {"ci_low": layer["baseline"]["nc1"]["difference_ci_low"],
                                         "ci_high": layer["baseline"]["nc1"]["difference_ci_high"]}) in nc1
    rows = {row["metric"]: row for row in _csv(cli(*args, "--format", "csv")[1])}
    assert float(rows["nc1"]["p_value"]) == 1 / 20 and float(rows["nc1"]["difference"]) == layer["baseline"]["nc1"]["difference"]
    assert rows["nc1"]["excludes_zero"] == str(layer["baseline"]["nc1"]["excludes_zero"]) in ("True", "False")
    twice = cli.json("rank", dump, control, "--layers", "h1", "--baseline", control, "--baseline", dump, "-q")
    assert [file["baseline_file"] for file in twice["files"]] == [control, dump]
    units = cli.json("neurons", dump, "--layers", "h2", "--threshold", "0", "--null", "19", "--fdr", "0.2", "-q")
    assert units["options"]["neurons"]["fdr"] == 0.2
    assert "selective_unit_fraction_fdr" in units["files"][0]["layers"][0]["metrics"]
    table = cli("neurons", dump, "--layers", "h2", "--threshold", "0", "--null", "19", "--score", "class_selectivity",
                "-q", "--format", "table")[1]
    assert "q_value" in table and "(p = " in table


@pytest.mark.parametrize("command", ["collapse", "rank", "entropy", "neurons", "probe"])
def test_help_has_the_inference_panel_and_an_example_with_ci(cli, command):
    code, out, _ = cli(command, "--help")
    assert code == 0 and "Inference" in out
    for option in ("--ci ", "--ci-groups", "--ci-seed", "--null ", "--null-seed", "--baseline"):
        assert option in out, option
    assert ("--fdr" in out) == (command == "neurons")
    assert any(line.strip().startswith(f"actgeom {command} ") and " --ci" in line for line in out.splitlines())
