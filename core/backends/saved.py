"""``--save-stats DIR`` of the Dask backend: one file per finished task, reused by a re-run.

A re-run after a crash recomputes only the tasks whose file is missing: a saved file is used only
when its header holds exactly the task asked for and it is newer than the input files; anything
else (absent, unreadable, written by another version, of other data or options, older than a dump
rewritten since) is made again, never used.

- first wave: a partial-statistics file (core/state/partial.py) of one row range, checked by the dump's
  fingerprint, the rows, the pass options and the statistics' specs;
- second wave: each consumer's part of one row range (nested dicts and lists of arrays and
  numbers, stored as arrays under a JSON skeleton), checked by what made the statistics the task
  was sent, the decision sources, the families' and dump options, and the rows;
- compare: the compare moments of one row range, checked by the files and their fingerprints, the
  layers, the pairs, the settings and the rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import zipfile
from pathlib import Path

import numpy as np

from actgeom.core.base.errors import InvalidInputError
from actgeom.core.dump import Dump
from actgeom.core.dump.hdf5 import safe_name
from actgeom.core.state.engine import LayerStats, PassOptions
from actgeom.core.state.partial import load_partial, provenance, save_arrays, stats_arrays

PARTS_FORMAT = "actgeom-second-pass-parts/1"  # the layout of the consumers' partial(): a new one is never reused


class SavedTasks:
    """The task files under ``directory`` (None: nothing is saved or reused)."""

    def __init__(self, directory: Path | None):
        self.directory = None if directory is None else Path(directory)

    # -- first wave ----------------------------------------------------------------------------------
    def first_wave(self, dump: Dump, specs: dict, options: PassOptions) -> dict | None:
        """A saved range's arrays when they hold exactly this task: same dump, rows, pass and statistics."""
        path = self._first_path(dump, options.row_range)
        if path is None or not _newer_than(path, [dump.path]):
            return None
        try:
            stats, meta = load_partial(path)
        except InvalidInputError:
            return None
        wanted = provenance(dump, options)
        if (any(meta.get(key) != wanted[key] for key in ("fingerprint", "sources", "rows", "pass"))
                or set(stats) != {layer.name for layer in dump.layers}
                or any(layer_stats.specs != specs for layer_stats in stats.values())):
            return None
        return stats_arrays(stats, meta)

    def first_wave_ranges(self, dump: Dump) -> list[tuple[int, int]]:
        """The row ranges of the first-wave files of ``dump`` in the directory (by their names; a
        file is still checked when used), without overlaps (of two that overlap, the earlier, longer)."""
        if self.directory is None or not self.directory.is_dir():
            return []
        prefix = f"{safe_name(dump.path.stem)}-{task_id(dump.path)}.rows"
        found = sorted((int(m[1]), -int(m[2])) for f in self.directory.iterdir()
                       if f.name.startswith(prefix) and (m := re.fullmatch(r"(\d+)-(\d+)\.npz", f.name[len(prefix):])))
        kept: list[tuple[int, int]] = []
        for a, minus_b in found:
            if not kept or a >= kept[-1][1]:
                kept.append((a, -minus_b))
        return kept

    def save_first_wave(self, dump: Dump, rows: tuple[int, int], arrays: dict) -> None:
        self._save(self._first_path(dump, rows), [dump.path], arrays)

    def _first_path(self, dump: Dump, rows: tuple[int, int]) -> Path | None:
        return self._path(f"{safe_name(dump.path.stem)}-{task_id(dump.path)}", rows)

    # -- second wave ---------------------------------------------------------------------------------
    @staticmethod
    def second_identity(dump: Dump, layer: LayerStats, statistics: dict, families: dict, options: PassOptions) -> dict:
        """What a second-wave part depends on, but its range (as JSON gives it back): the statistics it
        was sent — by what made them (the dump, its label and offset datasets, the pass options and
        rows, which accumulators) and a digest of their class counts (integers, the same whatever the
        order of the merges, which moves the float sums by a rounding) —, the decision sources (NC4),
        the families' and dump options, and the layout of the parts."""
        made = provenance(dump, options)
        counts = hashlib.sha256()
        for key in sorted(k for k in statistics if k.endswith("/counts")):
            counts.update(key.encode() + np.ascontiguousarray(statistics[key], dtype=np.int64).tobytes())
        identity = {key: made[key] for key in ("fingerprint", "sources", "pass", "rows")} | {
            "format": PARTS_FORMAT, "layer": layer.layer, "n_rows": layer.n_rows, "counts": counts.hexdigest(),
            "specs": {slot: spec.record() for slot, spec in layer.specs.items()},
            "decisions": [dump.predictions_path, dump.weight_path, dump.bias_path], "dump": dataclasses.asdict(dump.spec),
            "families": {name: dataclasses.asdict(opts) for name, opts in families.items()}}
        return json.loads(json.dumps(identity, default=str, sort_keys=True))

    def second_wave(self, dump: Dump, identity: dict, rows: tuple[int, int]) -> dict | None:
        """The saved consumers' parts of these rows, or None."""
        arrays = self._load(self._second_path(dump, identity, rows), [dump.path])
        if arrays is None:
            return None
        try:
            header = json.loads(str(arrays.pop("header")))
            return _unflatten(header["skeleton"], arrays) if header["meta"] == identity | {"range": list(rows)} else None
        except (ValueError, KeyError, TypeError):  # not a part file of ours
            return None

    def save_second_wave(self, dump: Dump, identity: dict, rows: tuple[int, int], parts: dict) -> None:
        if self.directory is None:
            return
        arrays: dict[str, np.ndarray] = {}
        skeleton = _flatten(parts, "parts", arrays)
        header = {"meta": identity | {"range": list(rows)}, "skeleton": skeleton}
        self._save(self._second_path(dump, identity, rows), [dump.path], arrays | {"header": np.array(json.dumps(header))})

    def _second_path(self, dump: Dump, identity: dict, rows: tuple[int, int]) -> Path | None:
        return self._path(f"{safe_name(dump.path.stem)}-{task_id(dump.path)}.second-{task_id(identity['layer'])}", rows)

    # -- compare -------------------------------------------------------------------------------------
    def compare(self, identity: dict, meta: dict) -> dict | None:
        """A saved compare task's arrays when their header holds exactly this task."""
        arrays = self._load(self._compare_path(identity, meta["rows"][0]), [Path(p) for p, _ in identity["files"]])
        try:
            return arrays if arrays is not None and json.loads(str(arrays["header"]))["meta"] == meta else None
        except (ValueError, KeyError):
            return None

    def save_compare(self, identity: dict, rows: tuple[int, int], inputs: list, arrays: dict) -> None:
        self._save(self._compare_path(identity, rows), inputs, arrays)

    def _compare_path(self, identity: dict, rows: tuple[int, int]) -> Path | None:
        return self._path(f"compare-{task_id(json.dumps(identity))}", rows)

    # -- files ---------------------------------------------------------------------------------------
    def _path(self, stem: str, rows: tuple[int, int]) -> Path | None:
        return None if self.directory is None else self.directory / f"{stem}.rows{rows[0]}-{rows[1]}.npz"

    @staticmethod
    def _load(path: Path | None, inputs: list[Path]) -> dict | None:
        if path is None or not _newer_than(path, inputs):
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # absent, not an .npz, or a truncated one
            return None

    @staticmethod
    def _save(path: Path | None, inputs: list, arrays: dict) -> None:
        if path is None or "error" in arrays:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        save_arrays(path, arrays, inputs=inputs)


def _newer_than(path: Path, inputs: list[Path]) -> bool:
    """Whether the saved file exists and was written after every input was last modified: a dump
    rewritten since (same name, attributes and shapes, other rows) has no results here."""
    try:
        return path.stat().st_mtime_ns >= max(Path(p).stat().st_mtime_ns for p in inputs)
    except OSError:
        return False


def task_id(text) -> str:
    """A short stable id of a file path or layer name (task keys, saved files' names)."""
    return hashlib.sha256(str(Path(text).resolve() if isinstance(text, Path) else text).encode()).hexdigest()[:8]


def _flatten(value, key: str, arrays: dict):
    """A consumer's part (nested dicts and lists of arrays, numbers and None) → a JSON skeleton;
    its arrays go into ``arrays`` under keys made from ``key``."""
    if isinstance(value, dict):
        return {"dict": {name: _flatten(item, f"{key}/{name}", arrays) for name, item in value.items()}}
    if isinstance(value, (list, tuple)):
        return {"list": [_flatten(item, f"{key}/{i}", arrays) for i, item in enumerate(value)]}
    if isinstance(value, np.ndarray):
        arrays[key] = value
        return {"array": key}
    if value is None or isinstance(value, (bool, int, float, np.generic)):
        return {"value": value.item() if isinstance(value, np.generic) else value}
    raise TypeError(f"a second-pass part holds a {type(value).__name__}: give plain values")


def _unflatten(skeleton: dict, arrays: dict):
    """The inverse of :func:`_flatten`."""
    (kind, content), = skeleton.items()
    if kind == "dict":
        return {name: _unflatten(item, arrays) for name, item in content.items()}
    if kind == "list":
        return [_unflatten(item, arrays) for item in content]
    return arrays[content] if kind == "array" else content
