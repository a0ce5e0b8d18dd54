"""Conventions every family keeps, in every record format.

A metric of a layer (or of a compared pair) is either a value or unavailable with the reason,
never both, and appears once — in the document, the tidy records (json, jsonl, csv,
``Result.records()`` / ``to_pandas()``) and the table. On degenerate layers (constant rows, one
row, all zeros) every metric of collapse, rank and entropy is a finite value or unavailable with
a reason, and no numpy RuntimeWarning escapes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import class_data, write_dump

import actgeom
from actgeom.core.analysis import REGISTRIES

ARGS = {  # each family's command on the two dumps of the fixture (other words are options)
    "collapse": ("collapse", "a"), "rank": ("rank", "a"), "entropy": ("entropy", "a"),
    "neurons": ("neurons", "a"), "probe": ("probe", "a"), "compare": ("compare", "a", "b"),
    "ood": ("ood", "a", "--fit-split", "0.4", "--ood", "b"),
}
API = {"ood": lambda dumps: actgeom.ood(dumps["a"], fit_split=0.4, ood=dumps["b"])}  # else the files, positionally
TABLE_FILE = {"ood": "b"}  # the file whose layers the md table shows: ood's entries are its OOD sets
KEY_COLUMNS = ("file", "checkpoint", "step", "layer", "file_a", "layer_a", "file_b", "layer_b", "metric")


@pytest.fixture
def dumps(tmp_path, rng) -> dict[str, str]:
    """Two labelled dumps whose layers carry no `activation` attribute (as every captured dump)."""
    X, y = class_data(rng, [30, 20, 10], 5)
    return {"a": write_dump(tmp_path / "a.h5", {"h1": X, "h2": X[:, :3] ** 2}, labels=y, prediction=y),
            "b": write_dump(tmp_path / "b.h5", {"h1": X + 1, "h2": X[:, :3] ** 3}, labels=y, prediction=y)}


def _entries(document: dict):
    """(where, metrics, unavailable) of every layer entry (or compared pair) of a document."""
    if "pairs" in document:
        for cell in document["pairs"]:
            yield (cell["file_a"], cell["layer_a"], cell["file_b"], cell["layer_b"]), cell["metrics"], cell["unavailable"]
        return
    for file in document["files"]:
        for layer in file["layers"]:
            yield (file["file"], layer["layer"]), layer["metrics"], layer["unavailable"]


def _assert_once_each(records: list[dict], fmt: str) -> None:
    keys = [tuple(str(row.get(column)) for column in KEY_COLUMNS if column in row) for row in records]
    repeated = {key for key in keys if keys.count(key) > 1}
    assert not repeated, f"{fmt}: keys more than once: {sorted(repeated)[:4]}"


def _assert_document(document: dict) -> None:
    for where, metrics, unavailable in _entries(document):
        both = set(metrics) & set(unavailable)
        assert not both, f"{where}: both a value and unavailable: {sorted(both)}"
        assert all(reason for reason in unavailable.values()), where


def _md_rows(md: str) -> list[list[str]]:
    lines = [line for line in md.splitlines() if line.startswith("|") and not set(line) <= set("|-: ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


@pytest.mark.parametrize("family", sorted(ARGS))
def test_a_metric_is_a_value_or_unavailable_never_both(cli, dumps, family):
    assert set(ARGS) == set(REGISTRIES), "a family without a convention test"
    command, *words = ARGS[family]
    args = [command, *(dumps.get(word, word) for word in words), "-q"]
    document = cli.json(*args)
    _assert_document(document)
    expected = {(where, name): "value" for where, metrics, _ in _entries(document) for name in metrics}
    expected |= {(where, name): "unavailable" for where, _, unavailable in _entries(document) for name in unavailable}

    _, jsonl, _ = cli(*args, "-f", "jsonl")
    _assert_once_each([json.loads(line) for line in jsonl.splitlines()], "jsonl")
    _, text, _ = cli(*args, "-f", "csv")
    _assert_once_each(list(csv.DictReader(io.StringIO(text))), "csv")
    _, md, _ = cli(*args, "-f", "md")
    if family != "compare":  # its table is a matrix per metric
        header, *body = _md_rows(md)
        rows = [row for row in body if row[0] in REGISTRIES[family]]
        names = [row[0] for row in rows]
        assert len(names) == len(set(names)), f"md: metric rows repeated: {names}"
        for row in rows:  # "—" exactly where the document says unavailable
            for layer, cell in zip(header[1:], row[1:]):
                state = expected.get(((dumps[TABLE_FILE.get(family, "a")], layer), row[0]))
                assert state is not None and cell.startswith("—") == (state == "unavailable"), (row[0], layer, cell)

    result = API[family](dumps) if family in API else getattr(actgeom, family)([dumps[w] for w in words])
    _assert_document(result.to_dict())
    records = result.records()
    _assert_once_each(records, "records")
    for row in records:
        where = tuple(row[c] for c in ("file_a", "layer_a", "file_b", "layer_b")) if "file_a" in row else (row["file"],
                                                                                                           row["layer"])
        if expected.get((where, row["metric"])) == "unavailable":
            assert row["value"] is None and row["note"], row
    frame = result.to_pandas()
    index = ["file_a", "layer_a", "file_b", "layer_b"] if family == "compare" else ["file", "layer"]
    frame.pivot(index=index, columns="metric", values="value")  # the README's recipe: no duplicate entries


def test_entropy_without_activation_gives_no_dead_fraction(dumps):
    """Issue 22 item 2: dead_fraction / firing_entropy were 0.125 (threshold 0) and unavailable at once."""
    result = actgeom.entropy([dumps["a"]], layers="h1")
    layer = result.to_dict()["files"][0]["layers"][0]
    for name in ("dead_fraction", "firing_entropy"):
        assert name not in layer["metrics"] and result.metric(name) is None
        assert "not marked ReLU" in layer["unavailable"][name]
    assert "dormant_fraction" in layer["metrics"]  # needs no threshold
    given = actgeom.entropy([dumps["a"]], layers="h1", threshold=0.0).to_dict()["files"][0]["layers"][0]
    assert {"dead_fraction", "firing_entropy"} <= set(given["metrics"]) and "dead_fraction" not in given["unavailable"]


def test_entropy_and_neurons_share_the_not_relu_reason(dumps):
    entropy = actgeom.entropy([dumps["a"]], layers="h1").to_dict()["files"][0]["layers"][0]
    neurons = actgeom.neurons([dumps["a"]], layers="h1").to_dict()["files"][0]["layers"][0]
    assert entropy["unavailable"]["dead_fraction"] == neurons["unavailable"]["dead_unit_fraction"]


def test_a_record_cannot_hold_a_metric_twice():
    from actgeom.core.families.protocol import LayerRecord

    with pytest.raises(AssertionError, match="dead_fraction"):
        LayerRecord(metrics={"dead_fraction": 0.1}, unavailable={"dead_fraction": "why"})


# -- degenerate layers ------------------------------------------------------------------------------

DEGENERATE_FAMILIES = ("collapse", "rank", "entropy")
UNDEFINED_ON_A_ZERO_SPECTRUM = ("rankme_centered", "rankme_lambda", "erank", "stable_rank", "participation_ratio",
                                "isoscore", "k90", "k95", "k99")


@pytest.fixture
def degenerate(tmp_path) -> dict[str, str]:
    """Dumps with degenerate layers: every row the same vector, every value 0, each class one point
    (zero within-class variance); one row; one row per class."""
    y = np.repeat([0, 1, 2], [15, 10, 5])
    collapsed = np.array([[1.0, 0, 0, 2], [0, 3, 0, 2], [0, 0, 2, 2]])[y]
    many = write_dump(tmp_path / "many.h5", {"constant": np.full((30, 4), 2.5), "zeros": np.zeros((30, 4)),
                                             "collapsed": collapsed}, labels=y)
    one = write_dump(tmp_path / "one.h5", {"h": np.array([[0.5, -1.0, 2.0, 0.0]])}, labels=[0])
    singletons = write_dump(tmp_path / "singletons.h5", {"h": np.array([[0.5, -1, 2, 0], [1, 0, 0, 3], [2, 2, 1, 0]])},
                            labels=[0, 1, 2])
    return {"many": many, "one": one, "singletons": singletons}


def _layers(result) -> dict:
    return {layer["layer"]: layer for layer in result.to_dict()["files"][0]["layers"]}


@pytest.mark.parametrize("family", DEGENERATE_FAMILIES)
@pytest.mark.parametrize("dump", ["many", "one", "singletons"])
def test_degenerate_layers_give_finite_values_or_reasons(degenerate, family, dump):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning (0/0, log 0) may escape
        result = getattr(actgeom, family)([degenerate[dump]], threshold=0.0) if family == "entropy" else \
            getattr(actgeom, family)([degenerate[dump]])
    for name, layer in _layers(result).items():
        for metric, value in layer["metrics"].items():
            assert isinstance(value, (int, float)) and math.isfinite(value), (name, metric, value)
        assert not layer["nonfinite"], (name, layer["nonfinite"])
        assert all(isinstance(reason, str) and reason for reason in layer["unavailable"].values()), name


def test_a_zero_spectrum_has_no_shape(degenerate):
    """Issue 22 item 3: k90/k95/k99 = 1 on layers whose covariance is 0; now unavailable, saying why."""
    layers = _layers(actgeom.rank([degenerate["many"]]))
    for name in ("constant", "zeros"):
        for metric in UNDEFINED_ON_A_ZERO_SPECTRUM:
            assert metric not in layers[name]["metrics"]
            assert "identical" in layers[name]["unavailable"][metric], (name, metric)
        assert layers[name]["metrics"]["numerical_rank"] == 0  # the rank of a zero matrix
    assert layers["constant"]["metrics"]["rankme"] == pytest.approx(1.0, abs=1e-4)  # rank-one second moment
    assert layers["constant"]["metrics"]["mean_cosine"] == 1.0
    assert layers["constant"]["metrics"]["mean_energy_fraction"] == 1.0
    for metric in ("rankme", "mean_cosine", "mean_energy_fraction"):
        assert "every row is zero" in layers["zeros"]["unavailable"][metric], metric
    one = _layers(actgeom.rank([degenerate["one"]]))["h"]
    assert "one row" in one["unavailable"]["k90"]


def test_collapse_on_coincident_means_is_unavailable_not_one(degenerate):
    """Issue 22 item 3: VCI = 1 and NaN NC1 on a constant layer; perfect collapse stays 0."""
    layers = _layers(actgeom.collapse([degenerate["many"]]))
    for name in ("constant", "zeros"):
        for metric in ("nc1", "nc1_quotient", "vci", "cdnv", "separation_fuzziness", "nc2_equinorm_means",
                       "gnc2_log_mean"):
            assert metric not in layers[name]["metrics"] and layers[name]["unavailable"][metric], (name, metric)
    collapsed = layers["collapsed"]["metrics"]
    assert collapsed["nc1"] == 0 and collapsed["cdnv"] == 0 and collapsed["vci"] == pytest.approx(0, abs=1e-12)
    singletons = _layers(actgeom.collapse([degenerate["singletons"]]))["h"]
    for metric in ("nc1", "cdnv", "vci"):
        assert "one row" in singletons["unavailable"][metric], metric


def test_entropy_of_a_silent_layer_says_why(degenerate):
    layers = _layers(actgeom.entropy([degenerate["many"]], threshold=0.0))
    for metric in ("dataset_entropy", "sae_effective_features", "effective_units"):
        assert "every value is 0" in layers["zeros"]["unavailable"][metric] or \
            "every row is zero" in layers["zeros"]["unavailable"][metric], metric
    assert layers["constant"]["metrics"]["dataset_entropy"] == 0.0  # one direction: no spread, not −0.0
    assert str(layers["constant"]["metrics"]["dataset_entropy"]) == "0.0"


def test_no_runtime_warning_reaches_stderr(degenerate):
    """The commands as a user runs them (warnings not captured by pytest), in one interpreter."""
    script = ("import sys; from actgeom.cli.app import app\n"
              "for family in sys.argv[2:]:\n"
              "    try: app([family, sys.argv[1], '-f', 'csv', '-q'])\n"
              "    except SystemExit as done: assert done.code == 0, family")
    done = subprocess.run([sys.executable, "-c", script, degenerate["many"], *DEGENERATE_FAMILIES],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("file,checkpoint") == len(DEGENERATE_FAMILIES)
    assert "RuntimeWarning" not in done.stderr, done.stderr
