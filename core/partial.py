"""Partial statistics: saved by one job, loaded and merged by another (cluster scale-out).

A partial-statistics file is an .npz (no pickles) holding every accumulator of every layer and a
JSON header. Merging is exact up to float64 rounding, in any order and any split of the rows.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from actgeom.core.accumulators import ACCUMULATORS, spec_from_record
from actgeom.core.engine import LayerStats
from actgeom.core.errors import InvalidInputError, UsageError

PARTIAL_FORMAT = "actgeom-partial-stats"
PARTIAL_VERSION = 2  # 2: accumulators named by slot with their specs


def save_partial(path: str | Path, stats: dict[str, LayerStats], meta: dict | None = None) -> None:
    """Write partial statistics (an .npz, no pickles) atomically, for a later :func:`merge_partials`."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    layers = []
    for i, (name, layer_stats) in enumerate(stats.items()):
        layers.append({"name": name, "n_units": layer_stats.n_units, "dtype": layer_stats.dtype,
                       "n_rows": layer_stats.n_rows, "n_nonfinite": layer_stats.n_nonfinite,
                       "n_unlabeled": layer_stats.n_unlabeled,
                       "specs": {slot: spec.record() for slot, spec in layer_stats.specs.items()}})
        for slot, acc in layer_stats.accumulators.items():
            arrays.update({f"{i}/{slot}/{key}": value for key, value in acc.to_arrays().items()})
    header = {"format": PARTIAL_FORMAT, "version": PARTIAL_VERSION, "layers": layers, "meta": meta or {}}
    arrays["header"] = np.array(json.dumps(header, default=_plain_number))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _plain_number(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} in partial-statistics metadata is not JSON-serialisable")


def load_partial(path: str | Path) -> tuple[dict[str, LayerStats], dict]:
    """Read a file written by :func:`save_partial` → (statistics by layer, meta)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data["header"]))
            if header.get("format") != PARTIAL_FORMAT:
                raise KeyError
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise InvalidInputError(f"no such file: {path}") from None
    except (OSError, ValueError, KeyError):
        raise InvalidInputError(f"{path} is not an actgeom partial-statistics file") from None
    if header.get("version") != PARTIAL_VERSION:
        raise InvalidInputError(f"{path} holds partial statistics of version {header.get('version')}; this actgeom "
                                f"reads version {PARTIAL_VERSION}: make them again with `actgeom stats`")
    stats = {}
    for i, entry in enumerate(header["layers"]):
        specs = {slot: spec_from_record(slot, record) for slot, record in entry["specs"].items()}
        accumulators = {}
        for slot, spec in specs.items():
            prefix = f"{i}/{slot}/"
            own = {key[len(prefix):]: value for key, value in arrays.items() if key.startswith(prefix)}
            accumulators[slot] = ACCUMULATORS[slot].from_arrays(spec, own)
        stats[entry["name"]] = LayerStats(
            layer=entry["name"], n_units=entry["n_units"], dtype=entry["dtype"], n_rows=entry["n_rows"],
            n_nonfinite=entry["n_nonfinite"], n_unlabeled=entry["n_unlabeled"], specs=specs, accumulators=accumulators)
    return stats, header["meta"]


def merge_stats(parts: list[dict[str, LayerStats]]) -> dict[str, LayerStats]:
    """Merge statistics of the same layers computed on disjoint rows (shards or row ranges)."""
    if not parts:
        raise UsageError("nothing to merge")
    merged = parts[0]
    for part in parts[1:]:
        if set(part) != set(merged):
            raise InvalidInputError(f"partial statistics cover different layers: {sorted(merged)} vs {sorted(part)}")
        for name, layer_stats in part.items():
            merged[name].merge(layer_stats)
    return merged
