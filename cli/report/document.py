"""Reading the report document (its shape: ``cli/report/__init__.py``) for figures and page."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy: imported by the figures only (the summary needs labels, not arrays)
    import numpy as np


def layer_names(document: dict, kind: str = "layer") -> list[str]:
    """Layer names of the given kind, in the order of the first file that has them."""
    names: list[str] = []
    for entry in document["files"]:
        names += [layer["layer"] for layer in entry["layers"] if layer["kind"] == kind and layer["layer"] not in names]
    return names


def checkpoint_label(entry: dict) -> str:
    """The checkpoint's label: its file name without the prefix all the dumps share (``label``, set
    by data.gather as every other command labels its columns: run_epoch0030.h5 → epoch0030)."""
    return entry.get("label") or Path(entry["file"]).stem


def metric(entry: dict, layer: str, name: str) -> float:
    """A scalar metric of one file × layer, NaN when absent, unavailable or not finite."""
    for record in entry["layers"]:
        if record["layer"] == layer:
            value = record["metrics"].get(name)
            return float(value) if isinstance(value, (int, float)) and value is not None else math.nan
    return math.nan


def layer(entry: dict, name: str) -> dict | None:
    return next((record for record in entry["layers"] if record["layer"] == name), None)


def unavailable_reason(document: dict, name: str) -> str:
    """Why a metric has no value anywhere (the first reason found)."""
    for entry in document["files"]:
        for record in entry["layers"]:
            if name in record["unavailable"]:
                return record["unavailable"][name]
    return "not computed"


def training_axis(document: dict) -> tuple[np.ndarray, list[str], str]:
    """x positions of the checkpoints, tick labels, axis label: steps when every dump has one."""
    import numpy as np

    steps = [entry["step"] for entry in document["files"]]
    labels = [checkpoint_label(entry) for entry in document["files"]]
    if all(step is not None for step in steps):
        return np.asarray(steps, dtype=np.float64), labels, "training step"
    return np.arange(len(steps), dtype=np.float64), labels, "checkpoint (file order)"
