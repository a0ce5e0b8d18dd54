"""The saved parts of a running capture, and the dump made of them.

A capture writes its rows as parts in ``OUT.partial/``: each part is a complete dump of the
examples [start, stop) (``START.h5``, written atomically), saved every ``save_every`` seconds. A
killed job leaves its parts; ``--append`` keeps those made with the same key (model, inputs,
options) and the capture goes on after the last. At the end the parts are joined into ``OUT``
(atomically; a single part is renamed) and the directory is removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import h5py
import numpy as np

from actgeom.core.base.errors import UsageError
from actgeom.core.base.outputs import check_output
from actgeom.core.dump.hdf5 import _plain
from actgeom.core.dump.writer import ROW_VECTORS, DumpWriter

PART = re.compile(r"^(\d{12})\.h5$")
COPY_ROWS = 1 << 16  # rows per block when parts are joined


def partial_dir(out: Path) -> Path:
    return Path(out).with_name(Path(out).name + ".partial")


def part_path(directory: Path, start: int) -> Path:
    return directory / f"{start:012d}.h5"


def saved_parts(out: Path, key: str, append: bool, note) -> list[Path]:
    """The parts an interrupted capture of ``out`` left, to go on from (``append``); else none (they are removed)."""
    directory = partial_dir(out)
    if not directory.is_dir():
        return []
    if not append:
        note(f"removing the parts of an interrupted capture in {directory} (--append resumes after them)")
        shutil.rmtree(directory)
        return []
    parts, stop = [], 0
    for path in sorted(p for p in directory.iterdir() if PART.match(p.name)):
        with h5py.File(path, "r") as f:
            found = _plain(f.attrs.get("capture_key", ""))
            start, end = int(f.attrs["examples_start"]), int(f.attrs["examples_stop"])
        if found != key:
            raise UsageError(f"--append: the parts in {directory} were captured with another model, input or options; "
                             "remove the directory or run without --append")
        if start != stop:
            break  # a gap (a part of a removed later run): go on from the contiguous beginning
        parts.append(path)
        stop = end
    return parts


def parts_stop(parts: list[Path]) -> tuple[int, int]:
    """(examples, rows) the parts hold."""
    if not parts:
        return 0, 0
    with h5py.File(parts[-1], "r") as f:
        stop = int(f.attrs["examples_stop"])
    return stop, sum(_rows(path) for path in parts)


def _rows(path: Path) -> int:
    with h5py.File(path, "r") as f:
        return int(f.attrs["n_rows"])


def join_parts(parts: list[Path], out: Path, attrs: dict) -> dict:
    """Write ``out`` from the parts in order (one part is renamed), with ``attrs`` at its root, then remove the
    parts; its n_rows, layers and level."""
    target = check_output(Path(out), option="output")
    with h5py.File(parts[0], "r") as f:
        summary = {"n_rows": sum(_rows(path) for path in parts), "layers": list(f["activations"]),
                   "level": _plain(f.attrs["level"])}
    if len(parts) == 1:
        with h5py.File(parts[0], "r+") as f:
            for name in ("examples_start", "examples_stop"):  # the part's range: the whole run now
                del f.attrs[name]
            f.attrs.update(attrs)
        os.replace(parts[0], target)
    else:
        _copy_parts(parts, out, attrs)
    shutil.rmtree(partial_dir(out), ignore_errors=True)
    return summary


def _copy_parts(parts: list[Path], out: Path, attrs: dict) -> None:
    with h5py.File(parts[0], "r") as first:
        layers = {name: ds.shape[1] for name, ds in first["activations"].items()}
        layer_attrs = {name: dict(ds.attrs) for name, ds in first["activations"].items()}
        dtype = "bfloat16" if any(_plain(a.get("logical_dtype", "")) == "bfloat16" for a in layer_attrs.values()) \
            else str(next(iter(first["activations"].values())).dtype)
        root = {key: _plain(first.attrs[key]) for key in ("model", "checkpoint", "step", "level")}
        label_names = first["rows/label"].attrs.get("label_names") if "rows/label" in first else None
        classifier = _classifier(first)
    total = sum(_rows(path) for path in parts)
    names = json.loads(label_names) if label_names is not None else None
    with DumpWriter(out, layers=layers, dtype=dtype, label_names=names, expected_rows=total, **root) as writer:
        for name, values in layer_attrs.items():
            writer.set_layer_attrs(name, **{k: v for k, v in values.items() if k != "logical_dtype"})
        if classifier is not None:
            writer.set_classifier(*classifier)
        for path in parts:
            _append_part(writer, path, dtype)
        writer.set_attrs(**attrs)


def _classifier(f: h5py.File):
    if "classifier/weight" not in f:
        return None
    bias = f["classifier/bias"][()] if "classifier/bias" in f else None
    return f["classifier/weight"][()], bias, _plain(f["classifier"].attrs["layer"])


def _append_part(writer: DumpWriter, path: Path, dtype: str) -> None:
    """Every row (and attention sequence) of one part, in blocks; bfloat16 bits pass through as bfloat16
    tensors (no rounding)."""
    with h5py.File(path, "r") as f:
        n = int(f.attrs["n_rows"])
        vectors = {key: f[where] for key, where in ROW_VECTORS.items() if where in f}
        for start in range(0, n, COPY_ROWS):
            stop = min(start + COPY_ROWS, n)
            block = {name: _raw(ds[start:stop], dtype) for name, ds in f["activations"].items()}
            writer.append(block, **{key: ds[start:stop] for key, ds in vectors.items()})
        if "sequences/offsets" in f:
            writer.add_sequences(np.diff(f["sequences/offsets"][()]))
        for name, ds in (f["attention"].items() if "attention" in f else ()):  # (sequences, heads, T, T)
            step = max(1, (64 << 20) // max(ds.dtype.itemsize * int(np.prod(ds.shape[1:])), 1))
            for start in range(0, len(ds), step):
                writer.append_attention(name, _raw(ds[start : start + step], dtype))


def _raw(values: np.ndarray, dtype: str):
    if dtype != "bfloat16":
        return values
    import torch

    return torch.from_numpy(values.view(np.int16)).view(torch.bfloat16)
