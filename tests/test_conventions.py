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
from actgeom.core.api import FAMILIES

ARGS = {  # each family's command on the two dumps of the fixture
    "collapse": ("collapse", "a"), "rank": ("rank", "a"), "entropy": ("entropy", "a"),
    "neurons": ("neurons", "a"), "probe": ("probe", "a"), "compare": ("compare", "a", "b"),
}
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
    assert set(ARGS) == set(FAMILIES), "a family without a convention test"
    command, *files = ARGS[family]
    args = [command, *(dumps[f] for f in files), "-q"]
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
        rows = [row for row in _md_rows(md) if row[0] in FAMILIES[family].metrics]
        names = [row[0] for row in rows]
        assert len(names) == len(set(names)), f"md: metric rows repeated: {names}"

    result = getattr(actgeom, family)([dumps[f] for f in files])
    _assert_document(result.to_dict())
    records = result.records()
    _assert_once_each(records, "records")
    for row in records:
        where = tuple(row[c] for c in ("file_a", "layer_a", "file_b", "layer_b")) if "file_a" in row else (row["file"], row["layer"])
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
    from actgeom.core.family import LayerRecord

    with pytest.raises(AssertionError, match="dead_fraction"):
        LayerRecord(metrics={"dead_fraction": 0.1}, unavailable={"dead_fraction": "why"})

