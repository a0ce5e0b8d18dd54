"""What a dump holds and where: the actgeom format's name and version, the conventional dataset
paths a reader looks for, what the user names instead (:class:`DumpSpec`), what a layer is
(:class:`LayerInfo`), and the natural order of layer names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

FORMAT_NAME = "actgeom-dump"
FORMAT_VERSION = 1

# Conventional dataset paths, tried in order when the user names none.
LABEL_PATHS = ("rows/label", "label", "labels", "y", "targets")
WEIGHT_PATHS = ("classifier/weight",)
BIAS_PATHS = ("classifier/bias",)
PREDICTION_PATHS = ("rows/prediction",)
OFFSET_PATHS = ("sequences/offsets",)


def natural_key(name: str) -> list:
    """Sort key that puts layer_2 before layer_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


@dataclass(frozen=True)
class DumpSpec:
    """Where the data lives in a dump; every field left empty is discovered by convention."""

    layers: tuple[str, ...] = ()
    describe_only: bool = False  # `info`: no pass will run, so no memory check of the D×D statistics
    labels: str | None = None
    weight: str | None = None
    bias: str | None = None
    predictions: str | None = None
    offsets: str | None = None
    attention: str | None = None
    allow_incomplete: bool = False
    # (lowest, highest) of the labels and of the predictions, as the client that opened the dump
    # first found them (Dask tasks): taken as they are instead of scanning both vectors again
    class_ranges: tuple | None = None


@dataclass(frozen=True)
class LayerInfo:
    """One layer: a 2-D dataset of shape (n_rows, n_units)."""

    name: str
    path: str
    n_rows: int
    n_units: int
    storage_dtype: str
    logical_dtype: str
    chunk_rows: int | None
    compression: str | None
    attrs: dict = field(default_factory=dict)
