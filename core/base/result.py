"""The one document every command and the Python API produce, and its tidy views.

document = {tool, version, command, options (by family), pass, statistics_file, inference {ci, null, baseline},
            files: [{file, checkpoint, step, model, sampling_unit, layers: [{layer, kind, n_rows, n_units, dtype,
                     metrics, unavailable, nonfinite, notes, intervals?, intervals_unavailable?, nulls?,
                     nulls_unavailable?, baseline?, <family>: {...}, details?}], <family extras>}]}
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from datetime import datetime, timezone

import numpy as np

from actgeom.core import __version__
from actgeom.core.base.errors import UsageError

RECORD_KEYS = ("file", "checkpoint", "step", "layer", "family", "metric", "value", "note")
# Inference fields a metric's row gains (docs/metrics.md, "Uncertainty and nulls"): {layer key: its fields},
# the fields always there when the document's "inference" turned that key on (the others only when present).
INFERENCE_FIELDS = {"intervals": ("se", "ci_low", "ci_high"),
                    "nulls": ("null_mean", "null_sd", "z", "p_value"),
                    "baseline": ("baseline", "difference", "baseline_se", "baseline_ci_low", "baseline_ci_high",
                                 "difference_method", "difference_se", "difference_ci_low", "difference_ci_high",
                                 "excludes_zero")}
INFERENCE_ON = {"ci": INFERENCE_FIELDS["intervals"], "null": INFERENCE_FIELDS["nulls"], "baseline": ("baseline", "difference")}
CI_FIELDS = ("ci_method", "ci_groups", "ci_level")  # from the document's inference.ci, on rows with an interval


class Result:
    """What an analysis found. ``to_dict()``: the whole document; ``records()``: one tidy row per
    file × layer × metric (value None with the reason in ``note`` when unavailable or not finite);
    ``to_pandas()``: those rows as a DataFrame."""

    columns = RECORD_KEYS  # of records() and to_pandas(), before the inference fields (inference_columns)

    def __init__(self, document: dict):
        self.document = document

    def to_dict(self) -> dict:
        return self.document

    def files(self) -> list[dict]:
        """Per file: file, checkpoint, step, model, layers (each with metrics, unavailable, notes)."""
        return self.document["files"]

    def records(self) -> list[dict]:
        return layer_records(self.document)

    def to_pandas(self):
        """One row per file × layer × metric (pandas is imported only here)."""
        try:
            import pandas as pd
        except ImportError:
            raise UsageError("Result.to_pandas() needs pandas: pip install pandas") from None
        rows = self.records()
        return pd.DataFrame(rows, columns=list(self.columns) + [key for key in _inference_keys() if rows and key in rows[0]])

    def metric(self, name: str, *, layer: str | None = None, file: int = 0):
        """One metric's value (of the only or the named layer of the file-th file).

        None when the metric is unavailable on this layer (the reason is in the layer's
        ``unavailable``, and in ``records()``' ``note``); a non-finite value is the float. A name that is
        neither a value nor an unavailable metric of the layer (a typo, or a metric of a family
        this result did not compute) raises :class:`UsageError` listing the layer's metrics.
        """
        layers = [entry for entry in self.document["files"][file]["layers"] if layer is None or entry["layer"] == layer]
        if len(layers) != 1:
            names = [entry["layer"] for entry in self.document["files"][file]["layers"]]
            raise UsageError(f"layer={layer!r} does not name one layer; layers: {', '.join(names)}")
        found = layers[0]
        if name in found["metrics"]:
            return found["metrics"][name]
        if name in found.get("unavailable", {}):
            return None
        known = sorted(set(found["metrics"]) | set(found.get("unavailable", {})))
        raise UsageError(f"metric {name!r} is not one of layer {found['layer']!r}'s metrics: {', '.join(known)}")

    def __repr__(self) -> str:
        files = self.document["files"]
        n_layers = sum(len(f["layers"]) for f in files)
        return f"<actgeom Result: {self.document['command']}, {len(files)} file(s), {n_layers} layer(s)>"


def layer_records(document: dict, *, fields: tuple[str, ...] = (), families: bool = True) -> list[dict]:
    """One tidy row per file × layer × metric of a ``document`` (:func:`tidy_rows`): file,
    checkpoint, step, layer, the layer's ``fields`` (e.g. the report's kind, n_rows, n_units), its
    family (with ``families``), metric, value, note, and the inference columns of the document."""
    names = {name: info["family"] for name, info in document.get("metrics_info", {}).items()} if families else None
    layers = [layer for file in document["files"] for layer in file["layers"]]
    columns, ci = inference_columns(document, layers), (document.get("inference") or {}).get("ci")
    rows = []
    for file in document["files"]:
        base = {"file": file["file"], "checkpoint": file.get("checkpoint"), "step": file.get("step")}
        for layer in file["layers"]:
            where = base | {"layer": layer["layer"]} | {key: layer[key] for key in fields}
            rows += tidy_rows(where, layer, names, columns=columns, ci=ci)
    return rows


def tidy_rows(where: dict, record: dict, families: dict[str, str] | None = None, *, columns: tuple[str, ...] | None = None,
              ci: dict | None = None) -> list[dict]:
    """One row per metric of a ``record`` (a layer, or a compare cell): ``where`` | (its family, when
    ``families`` maps names to them) | metric, value, note — the note says why a value is
    not finite; an unavailable metric's value is None and its note the reason — | the inference
    ``columns`` (default: :func:`inference_columns` of this record) from the record's "intervals",
    "nulls" and "baseline" entries of the metric, None where it has none (why: the record's
    "intervals_unavailable" / "nulls_unavailable"); rows with an interval also name its method, G
    and level from ``ci`` (the document's inference.ci)."""
    notes = record.get("nonfinite", {})
    columns = inference_columns({}, [record]) if columns is None else columns
    rows = []
    for name, value, note in ([(name, value, notes.get(name)) for name, value in record.get("metrics", {}).items()]
                              + [(name, None, reason) for name, reason in record.get("unavailable", {}).items()]):
        family = {} if families is None else {"family": families.get(name)}
        found = {key: entry.get(name) or {} for key, entry in ((key, record.get(key) or {}) for key in INFERENCE_FIELDS)}
        extra = {column: _field(found, column, ci) for column in columns}
        rows.append(where | family | {"metric": name, "value": value, "note": note} | extra)
    return rows


def inference_columns(document: dict, records: list[dict]) -> tuple[str, ...]:
    """The inference fields the rows of ``records`` (layers or compare cells) carry, in a fixed
    order: a key's fields when the ``document``'s "inference" turned it on (intervals: "ci", nulls:
    "null", baseline: "baseline") or any record has them; the method, G and level with intervals."""
    turned_on = document.get("inference") or {}
    present = {field for record in records for key in INFERENCE_FIELDS
               for entry in (record.get(key) or {}).values() if isinstance(entry, dict) for field in entry}
    wanted = present | {field for switch, fields in INFERENCE_ON.items() if turned_on.get(switch) for field in fields}
    if wanted & set(INFERENCE_FIELDS["intervals"]):
        wanted |= set(INFERENCE_FIELDS["intervals"]) | set(CI_FIELDS)
    return tuple(field for field in _inference_keys() if field in wanted)


def _inference_keys() -> tuple[str, ...]:
    """Every inference column, in their order."""
    return INFERENCE_FIELDS["intervals"] + CI_FIELDS + INFERENCE_FIELDS["nulls"] + INFERENCE_FIELDS["baseline"]


def _field(found: dict[str, dict], column: str, ci: dict | None):
    """A metric's value of an inference ``column`` from its entries ``found`` ({key: the metric's entry})."""
    if column in CI_FIELDS:
        return (ci or {}).get(column.removeprefix("ci_")) if found["intervals"] else None
    key = next(key for key, fields in INFERENCE_FIELDS.items() if column in fields)
    return found[key].get(column)


def document_header(command: str | None = None, *, started: float | None = None, options: dict | None = None,
                    pass_record: dict | None = None) -> dict:
    """The head of every document, in this order: tool, version; the ``command``; when ``started``
    (a ``time.perf_counter()`` reading) is given, when the document was created (UTC, ISO) and the
    seconds since; the ``options`` by family (dataclasses, as dicts); the ``pass`` record. A part
    left None is left out (`info` has neither command nor options)."""
    header = {"tool": "actgeom", "version": __version__}
    if command is not None:
        header["command"] = command
    if started is not None:
        header |= {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "elapsed_s": time.perf_counter() - started}
    if options is not None:
        header["options"] = {name: asdict(chosen) for name, chosen in options.items()}
    if pass_record is not None:
        header["pass"] = pass_record
    return header


def nonfinite_notes(values: dict) -> dict[str, str]:
    """"inf"/"nan" for every non-finite number among metric values (JSON shows them as null)."""
    return {name: str(v) for name, v in values.items() if isinstance(v, (float, np.floating)) and not math.isfinite(v)}
