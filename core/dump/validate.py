"""The checks a dump's datasets pass when it is opened, each a function of the h5py objects and of
what they must agree with: the actgeom root attributes, each layer and the rows they share, the row
vectors (labels, predictions, positions) and the classes they name, sequence offsets, the
classifier, attention.

A failed check raises :class:`InvalidInputError` naming the dataset and the bad value. Row vectors
are the exception: their checks return the problem, and the :class:`~actgeom.core.dump.reader.Dump`
decides whether to refuse it or set the vector aside (a foreign dataset found by its name alone).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from actgeom.core.base.errors import InvalidInputError
from actgeom.core.dump.hdf5 import (
    MAX_WHOLE_READ_BYTES,
    _attrs,
    _check_whole_read,
    _gib,
    _is_bfloat16,
    _is_float_like,
    _missing_on_disk,
    _read,
    safe_name,
)
from actgeom.core.dump.layout import FORMAT_VERSION, LayerInfo

# Root attributes of the actgeom layout that must be scalars (a huge array there is a hostile file).
SCALAR_ATTRS = ("format", "format_version", "complete", "n_rows", "model", "checkpoint", "step", "level", "created_by")
# The metrics keep D×D float64 matrices (scatter, covariance, eigendecomposition): about this
# many copies at once. A layer whose D×D matrices cannot fit in memory is refused up front.
D2_COPIES = 4
# Class statistics keep C×D float64 tables (references, shifted sums, means): about this many. A
# label C-1 whose tables cannot fit in memory is refused at open, before any allocation.
CLASS_COPIES = 3
# Attention rows: each stored probability is within ε/2 (relative) of the true one and the
# probabilities sum to 1, so a stored row sums to 1 within ε/2 of its storage dtype (float16
# 4.9e-4, bfloat16 3.9e-3); ATTENTION_SUM_SLACK covers the writer's own float32 softmax.
ATTENTION_SUM_SLACK = 1e-5
BFLOAT16_EPS = 2.0**-7  # 8 significant bits
_VECTOR_BLOCK = 1 << 20  # label/prediction vectors are checked in blocks: memory O(block), not O(rows)
_ROW_VECTOR_MEANING = {"labels": "class indices, -1 = none", "predictions": "class indices", "positions": "token positions"}


def check_root_attrs(f: h5py.File, attrs: dict, file: Path, *, allow_incomplete: bool) -> None:
    """The actgeom layout's root attributes: scalars of the right kind, a version this code reads,
    and a dump the writer finished (unless an incomplete one is allowed)."""
    for key in SCALAR_ATTRS:
        if key in f.attrs and f.attrs.get_id(key).shape not in ((), None):
            raise InvalidInputError(
                f"{file}: root attribute '{key}' holds an array of shape "
                f"{f.attrs.get_id(key).shape}; it must be a single value (the dump is damaged)"
            )
    version = attrs.get("format_version", FORMAT_VERSION)  # hand-made files may leave it out
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidInputError(f"{file}: format_version {version!r} is not a positive whole number")
    if version > FORMAT_VERSION:
        raise InvalidInputError(
            f"{file} is an actgeom dump of format_version {version}, written by a newer actgeom; "
            f"this version reads format_version ≤ {FORMAT_VERSION} (upgrade actgeom)"
        )
    n_rows = attrs.get("n_rows")
    if n_rows is not None and (not isinstance(n_rows, int) or isinstance(n_rows, bool) or n_rows < 0):
        raise InvalidInputError(f"{file}: root attribute n_rows={n_rows!r} is not a row count")
    complete = attrs.get("complete")
    if complete is not None and not isinstance(complete, bool):
        raise InvalidInputError(f"{file}: root attribute complete={complete!r} is not true or false")
    if complete is False and not allow_incomplete:
        raise InvalidInputError(
            f"{file} is an incomplete dump (attribute complete=false: the writer did not "
            "finish); pass --allow-incomplete to read the rows it has"
        )


def check_layer(ds: h5py.Dataset, path: str, file: Path, *, describe_only: bool) -> None:
    """A layer: 2-D floating point, with rows and units, on disk, and (unless it is only described)
    narrow enough that its D×D statistics fit in this machine's memory."""
    if ds.ndim != 2:
        raise InvalidInputError(
            f"layer '{path}' in {file} has shape {ds.shape}; a layer must be 2-D (rows, units)"
        )
    if not _is_float_like(ds):
        raise InvalidInputError(
            f"layer '{path}' in {file} has dtype {ds.dtype}; a layer must be float16, float32, "
            "float64, or bfloat16 stored as uint16 with attribute logical_dtype='bfloat16'"
        )
    where = f"layer '{safe_name(path)}' in {file}"
    if ds.shape[0] == 0 or ds.shape[1] == 0:
        raise InvalidInputError(f"{where} has shape {ds.shape}: no {'rows' if ds.shape[0] == 0 else 'units'}, "
                                "nothing to measure")
    if _missing_on_disk(ds):
        raise InvalidInputError(
            f"{where} declares shape {ds.shape} ({_gib(ds.size * ds.dtype.itemsize)}) but the file does not hold "
            "that data (unwritten or missing chunks); it is truncated or was never filled"
        )
    if not describe_only:
        need = D2_COPIES * 8 * ds.shape[1] ** 2
        if need > memory_bytes():
            raise InvalidInputError(
                f"{where} has {ds.shape[1]} units: its {ds.shape[1]}×{ds.shape[1]} statistics need about "
                f"{_gib(need)}, more than this machine's {_gib(memory_bytes())} of memory"
            )


def common_rows(layers: list[LayerInfo], file: Path, *, allow_incomplete: bool) -> int:
    """The layers' number of rows: one for all, or (an incomplete dump allowed) the fewest."""
    counts = {layer.n_rows for layer in layers}
    if len(counts) == 1:
        return counts.pop()
    if allow_incomplete:
        return min(counts)  # an interrupted writer may have grown some layers further
    shapes = ", ".join(f"{layer.path} {layer.n_rows}" for layer in layers)
    raise InvalidInputError(f"layers in {file} have different numbers of rows ({shapes})")


# -- row vectors: problems, which the Dump refuses or sets aside ---------------------------
def row_vector_problem(ds: h5py.Dataset, path: str, what: str, file: Path, n_rows: int, *,
                       allow_incomplete: bool) -> str | None:
    """What is wrong with ``ds`` as the row vector ``what`` ("labels", "predictions",
    "positions"): not 1-D integers, not one per row, not on disk; or None."""
    where = f"{what} '{safe_name(path)}' in {file}"
    if ds.ndim != 1:
        return f"{where}: shape {ds.shape}, expected 1-D ({n_rows},)"
    if ds.dtype.kind not in "iu":
        return f"{where}: dtype {ds.dtype}, {what} must be integers ({_ROW_VECTOR_MEANING[what]})"
    if ds.shape[0] < n_rows or (ds.shape[0] != n_rows and not allow_incomplete):
        return f"{where}: {ds.shape[0]} rows but the layers have {n_rows}"
    if _missing_on_disk(ds):
        return f"{where}: declares {ds.shape[0]} rows but the file does not hold them"
    return None


def class_ranges(labels: Callable[[int, int], np.ndarray | None], predictions: Callable[[int, int], np.ndarray | None],
                 n_rows: int) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """(lowest, highest) of the labels and of the predictions of rows [0, n_rows), None for a vector
    the dump lacks; each callable reads rows [start, stop) of its vector, or gives None. One read of
    both vectors in blocks (memory O(block))."""
    lo = hi = pred_lo = pred_hi = None
    for start in range(0, n_rows, _VECTOR_BLOCK):
        stop = min(start + _VECTOR_BLOCK, n_rows)
        y, p = labels(start, stop), predictions(start, stop)
        if y is not None and y.size:
            lo = int(y.min()) if lo is None else min(lo, int(y.min()))
            hi = int(y.max()) if hi is None else max(hi, int(y.max()))
        if p is not None and p.size:
            pred_lo = int(p.min()) if pred_lo is None else min(pred_lo, int(p.min()))
            pred_hi = int(p.max()) if pred_hi is None else max(pred_hi, int(p.max()))
    return (None if lo is None else (lo, hi)), (None if pred_lo is None else (pred_lo, pred_hi))


def label_range_problem(lo: int, hi: int, path: str, file: Path, *, weight_path: str | None,
                        n_weight_rows: int | None, widest: int, describe_only: bool) -> str | None:
    """What is wrong with labels ranging over [lo, hi]: one below -1, one the classifier (of
    ``n_weight_rows`` classes) has no row for, or more classes than the class statistics of the
    widest layer can hold in memory (unless only described); or None."""
    where = f"labels '{safe_name(path)}' in {file}"
    if lo < -1:
        return f"{where} hold label {lo}; labels are class indices ≥ 0, or -1 for none"
    if n_weight_rows is not None and hi >= n_weight_rows:
        return (f"{where} go up to {hi} but the classifier '{safe_name(weight_path)}' has {n_weight_rows} rows "
                f"(classes 0..{n_weight_rows - 1})")
    if not describe_only and CLASS_COPIES * 8 * (hi + 1) * widest > memory_bytes():
        return (f"{where} go up to {hi}: class statistics of {hi + 1} classes × {widest} units need about "
                f"{_gib(CLASS_COPIES * 8 * (hi + 1) * widest)}, more than this machine's {_gib(memory_bytes())} of "
                "memory (labels are class indices 0..C-1)")
    return None


def prediction_range_problem(lo: int, hi: int, path: str, file: Path, n_classes: int) -> str | None:
    """What is wrong with predictions ranging over [lo, hi]: one that names no class (below 0, or
    with ``n_classes`` known, i.e. non-zero, at or above it); or None."""
    if lo < 0 or (n_classes and hi >= n_classes):
        return f"predictions '{safe_name(path)}' in {file} hold {lo if lo < 0 else hi}, outside the classes 0..{n_classes - 1}"
    return None


# -- datasets read whole -------------------------------------------------------------------
def check_offsets(ds: h5py.Dataset, path: str, file: Path, n_rows: int) -> None:
    """Sequence offsets (S+1,): 1-D integers rising from 0 to ``n_rows`` (read whole, once their size is checked)."""
    if ds.ndim != 1 or ds.dtype.kind not in "iu" or ds.shape[0] < 1:
        raise InvalidInputError(
            f"offsets '{path}' in {file} must be a 1-D integer array of sequence "
            f"boundaries (S+1,); found shape {ds.shape}, dtype {ds.dtype}"
        )
    _check_whole_read(ds, f"offsets '{path}' in {file}")
    values = _read(ds, np.s_[()], f"offsets '{path}'", file)
    if values[0] != 0 or values[-1] != n_rows or np.any(np.diff(values) < 0):
        raise InvalidInputError(
            f"offsets '{path}' in {file} must rise from 0 to n_rows={n_rows}; "
            f"found {values[0]} .. {values[-1]}"
        )


def classifier_layer(f: h5py.File, weight_path: str | None, bias_path: str | None, layers: list[LayerInfo],
                     file: Path) -> str | None:
    """Check W (C, D) and b (C,); return the name of the layer the classifier reads.

    None when there is no classifier or it reads a layer that is not selected.
    """
    if weight_path is None:
        if bias_path is not None:  # without a weight no bias is looked for by convention: this one is --bias
            raise InvalidInputError("--bias needs --weight (a bias alone is not a classifier)")
        return None
    w = f[weight_path]
    _check_whole_read(w, f"classifier weight '{weight_path}' in {file}")
    if w.ndim != 2 or not _is_float_like(w):
        raise InvalidInputError(
            f"classifier weight '{weight_path}' in {file} must be a 2-D float array "
            f"(classes, units); found shape {w.shape}, dtype {w.dtype}"
        )
    if bias_path is not None:
        b = f[bias_path]
        if b.shape != (w.shape[0],) or not _is_float_like(b):
            raise InvalidInputError(
                f"classifier bias '{bias_path}' in {file} has shape {b.shape}, dtype {b.dtype}; "
                f"the weight has {w.shape[0]} classes, so expected floats of shape ({w.shape[0]},)"
            )
    fed = _attrs(w).get("layer", _attrs(w.parent).get("layer", ""))
    if not isinstance(fed, str):
        raise InvalidInputError(
            f"classifier '{weight_path}' in {file}: attribute layer={str(fed):.60} is not a layer name"
        )
    by_name = {layer.name: layer for layer in layers} | {layer.path: layer for layer in layers}
    if fed:
        layer = by_name.get(fed)
        if layer is None:  # the classifier reads a layer that is not selected
            return None
    else:
        layer = layers[-1]
    if layer.n_units != w.shape[1]:
        raise InvalidInputError(
            f"classifier weight '{weight_path}' in {file} has {w.shape[1]} units but "
            f"layer '{layer.name}' has {layer.n_units}"
        )
    return layer.name


# -- attention -----------------------------------------------------------------------------
def check_attention(ds: h5py.Dataset, path: str, file: Path) -> None:
    """Attention probabilities (sequences, heads, T, T) in floats, on disk, one sequence small enough to read whole."""
    if ds.ndim != 4 or ds.shape[2] != ds.shape[3] or not _is_float_like(ds):
        raise InvalidInputError(
            f"attention '{path}' in {file} must be float probabilities of shape (sequences, heads, T, T); "
            f"found shape {ds.shape}, dtype {ds.dtype}"
        )
    if _missing_on_disk(ds):
        raise InvalidInputError(f"attention '{path}' in {file} declares shape {ds.shape} but the file "
                                "does not hold that data")
    if int(np.prod(ds.shape[1:])) * ds.dtype.itemsize > MAX_WHOLE_READ_BYTES:
        raise InvalidInputError(f"attention '{path}' in {file}: one sequence ({ds.shape[1:]}) is more than "
                                f"{_gib(MAX_WHOLE_READ_BYTES)}")


def attention_tolerance(ds: h5py.Dataset) -> float:
    """How far from 1 a row of the attention dataset ``ds`` may sum: ε/2 of its storage dtype, plus slack."""
    eps = BFLOAT16_EPS if _is_bfloat16(ds) else float(np.finfo(ds.dtype).eps)
    return eps / 2 + ATTENTION_SUM_SLACK


def check_attention_block(block: np.ndarray, start: int, tolerance: float, what: str) -> None:
    """Probabilities: ≥ 0, each query row summing to 1 within ``tolerance`` (or all 0: masked)."""
    bad = ~np.isfinite(block) | (block < 0)
    if bad.any():
        s, h, q, k = np.argwhere(bad)[0]
        raise InvalidInputError(f"{what} holds {block[s, h, q, k]} at sequence {start + s}, head {h}, query {q}; "
                                "attention probabilities are finite and ≥ 0")
    sums = block.sum(axis=-1, dtype=np.float64)
    bad = (np.abs(sums - 1) > tolerance) & (sums != 0)
    if bad.any():
        s, h, q = np.argwhere(bad)[0]
        raise InvalidInputError(f"{what}: the row of sequence {start + s}, head {h}, query {q} sums to {sums[s, h, q]:.6g}; "
                                f"attention rows sum to 1 (±{tolerance:.2g}) or are all 0 (masked queries)")


def memory_bytes() -> int:
    """Physical memory of this machine (the bound for the D×D statistics)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: no bound known
        return 1 << 62
