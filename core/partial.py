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

from actgeom.core.dump import Dump
from actgeom.core.engine import LayerStats, PassOptions, Progress, accumulate
from actgeom.core.entropy import SequenceEntropy
from actgeom.core.errors import InvalidInputError, UsageError
from actgeom.core.stats import ClassMoments, DirectionScatter, Reservoir, UnitStats

PARTIAL_FORMAT = "actgeom-partial-stats"


def _flatten(stats: LayerStats) -> dict[str, np.ndarray]:
    arrays = {}
    for family in ("classes", "units", "reservoir", "directions", "sequences"):
        if getattr(stats, family) is None:
            continue
        for key, value in getattr(stats, family).to_arrays().items():
            arrays[f"{family}/{key}"] = value
    return arrays


def save_partial(path: str | Path, stats: dict[str, LayerStats], meta: dict | None = None) -> None:
    """Write partial statistics (an .npz, no pickles) atomically, for a later :func:`merge_partials`."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    layers = []
    for i, (name, layer_stats) in enumerate(stats.items()):
        layers.append({"name": name, "n_units": layer_stats.n_units, "dtype": layer_stats.dtype,
                       "n_rows": layer_stats.n_rows, "n_nonfinite": layer_stats.n_nonfinite,
                       "n_unlabeled": layer_stats.n_unlabeled})
        arrays.update({f"{i}/{key}": value for key, value in _flatten(layer_stats).items()})
    header = {"format": PARTIAL_FORMAT, "version": 1, "layers": layers, "meta": meta or {}}
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
    stats = {}
    for i, entry in enumerate(header["layers"]):
        def family(name: str, i: int = i) -> dict[str, np.ndarray]:
            prefix = f"{i}/{name}/"
            return {key[len(prefix):]: value for key, value in arrays.items() if key.startswith(prefix)}

        stats[entry["name"]] = LayerStats(
            layer=entry["name"], n_units=entry["n_units"], dtype=entry["dtype"], n_rows=entry["n_rows"],
            n_nonfinite=entry["n_nonfinite"], n_unlabeled=entry["n_unlabeled"],
            classes=ClassMoments.from_arrays(family("classes")), units=UnitStats.from_arrays(family("units")),
            reservoir=Reservoir.from_arrays(family("reservoir")),
            directions=DirectionScatter.from_arrays(family("directions")) if family("directions") else None,
            sequences=SequenceEntropy.from_arrays(family("sequences")) if family("sequences") else None,
        )
    return stats, header["meta"]


def statistics_for(dump: Dump, precomputed: dict[str, LayerStats] | None, *, options: PassOptions,
                   progress: Progress | None = None) -> dict[str, LayerStats]:
    """The statistics of the dump's selected layers: from ``precomputed`` (a loaded partial-
    statistics file) when given, checked against the dump, else from one pass."""
    if precomputed is None:
        return accumulate(dump, options=options, progress=progress)
    chosen = {}
    for layer in dump.layers:
        stats = precomputed.get(layer.name)
        if stats is None:
            raise InvalidInputError(f"the statistics file has no layer '{layer.name}' of {dump.path}; "
                                    f"it has: {', '.join(precomputed) or '(none)'}")
        if stats.n_units != layer.n_units:
            raise InvalidInputError(f"layer '{layer.name}' has {layer.n_units} units in {dump.path} but "
                                    f"{stats.n_units} in the statistics file")
        chosen[layer.name] = stats
    return chosen


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
