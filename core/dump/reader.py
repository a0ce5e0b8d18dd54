"""Open an activation dump (actgeom dump v1 or a foreign layout), validate it, read row blocks.

The actgeom layout (README: "The dump format") is found without options. Foreign files name their datasets
with a :class:`DumpSpec` (the CLI's ``--layers/--labels/--weight/--bias/--predictions/--offsets``);
where a conventional name exists and is unambiguous it is found without options too.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import warnings
from pathlib import Path

import h5py
import numpy as np

from actgeom.core.dump.hdf5 import (
    _H5_ERRORS,
    MAX_WHOLE_READ_BYTES,
    _attrs,
    _check_regular_file,
    _check_whole_read,
    _first_line,
    _gib,
    _is_bfloat16,
    _is_float_like,
    _listing,
    _missing_on_disk,
    _name,
    _read,
    check_metadata,
    decode_bfloat16,
    safe_name,
)
from actgeom.core.dump.hdf5 import _plain as _plain  # (imported from here: writer.py)
from actgeom.core.dump.hdf5 import list_datasets as list_datasets  # (imported from here: the CLI's info)
from actgeom.core.dump.layout import (
    BIAS_PATHS,
    FORMAT_NAME,
    FORMAT_VERSION,
    LABEL_PATHS,
    OFFSET_PATHS,
    PREDICTION_PATHS,
    WEIGHT_PATHS,
    DumpSpec,
    LayerInfo,
    natural_key,
)
from actgeom.core.errors import DataWarning, InvalidInputError

# Root attributes of the actgeom layout that must be scalars (a huge array there is a hostile file).
SCALAR_ATTRS = ("format", "format_version", "complete", "n_rows", "model", "checkpoint", "step", "level", "created_by")
# The metrics keep D×D float64 matrices (scatter, covariance, eigendecomposition): about this
# many copies at once. A layer whose D×D matrices cannot fit in memory is refused up front.
D2_COPIES = 4
# Class statistics keep C×D float64 tables (references, shifted sums, means): about this many. A
# label C-1 whose tables cannot fit in memory is refused at open, before any allocation.
CLASS_COPIES = 3
# Finite float64 values beyond the float32 range are refused: no activation is that large, and
# the metrics' fourth-order terms (Σ x⁴ over rows × units) would overflow float64.
MAX_ABS_VALUE = float(np.finfo(np.float32).max)
# Attention rows: each stored probability is within ε/2 (relative) of the true one and the
# probabilities sum to 1, so a stored row sums to 1 within ε/2 of its storage dtype (float16
# 4.9e-4, bfloat16 3.9e-3); ATTENTION_SUM_SLACK covers the writer's own float32 softmax.
ATTENTION_SUM_SLACK = 1e-5
BFLOAT16_EPS = 2.0**-7  # 8 significant bits
_VECTOR_BLOCK = 1 << 20  # label/prediction vectors are checked in blocks: memory O(block), not O(rows)
_ROW_VECTOR_MEANING = {"labels": "class indices, -1 = none", "predictions": "class indices", "positions": "token positions"}


class NoLayersError(InvalidInputError):
    """A foreign file in which no dataset (or no unambiguous set of datasets) can be the layers."""


class Dump:
    """An open activation dump. Use as a context manager; all reads are by row range.

    Validation happens here, once: every selected layer is 2-D and floating-point, every
    row-axis dataset has the same number of rows, labels are integers, the classifier's width
    matches the layer it feeds, and an incomplete dump is refused unless allowed.
    """

    def __init__(self, path: str | Path, spec: DumpSpec | None = None):
        self.path = Path(path)
        self.spec = spec or DumpSpec()
        _check_regular_file(self.path)
        check_metadata(self.path)
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise InvalidInputError(f"{self.path} is not a readable HDF5 file ({_first_line(exc)})") from None
        try:
            self._resolve()
        except _H5_ERRORS as exc:  # h5py on damaged metadata (a bad address, a broken B-tree)
            self._file.close()
            raise InvalidInputError(f"cannot read {self.path}: the file is damaged ({_first_line(exc)})") from None
        except BaseException:
            self._file.close()
            raise

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> "Dump":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    # -- resolution and validation ----------------------------------------------------------
    def _resolve(self) -> None:
        f = self._file
        self.attrs = _attrs(f)
        self.is_actgeom = self.attrs.get("format") == FORMAT_NAME
        if self.is_actgeom:
            self._validate_root_attrs()
        if self.is_actgeom and self.attrs.get("complete") is False and not self.spec.allow_incomplete:
            raise InvalidInputError(
                f"{self.path} is an incomplete dump (attribute complete=false: the writer did not "
                "finish); pass --allow-incomplete to read the rows it has"
            )
        self.weight_path = self._find(self.spec.weight, WEIGHT_PATHS, "--weight")
        self.bias_path = self._find(self.spec.bias, BIAS_PATHS if self.weight_path else (), "--bias")
        self.layers = self._resolve_layers()
        self.n_rows = self._common_rows()
        if self.is_actgeom and self.attrs.get("complete") is True and self.attrs.get("n_rows") != self.n_rows:
            raise InvalidInputError(
                f"{self.path}: root attribute n_rows={self.attrs.get('n_rows')} contradicts the layers, which have "
                f"{self.n_rows} rows; the dump is damaged"
            )
        self.labels_path = self._row_vector(self.spec.labels, LABEL_PATHS, "labels", "--labels")
        self.predictions_path = self._row_vector(self.spec.predictions, PREDICTION_PATHS, "predictions", "--predictions")
        self.positions_path = self._row_vector(None, ("rows/position",), "positions", None)
        self.offsets_path = self._find(self.spec.offsets, OFFSET_PATHS, "--offsets")
        self._validate_offsets()
        self.classifier_layer = self._validate_classifier()
        self._validate_class_ranges()
        self.attention_paths = self._resolve_attention()

    def _validate_root_attrs(self) -> None:
        """The actgeom layout's root attributes: scalars of the right kind, a version this code reads."""
        for key in SCALAR_ATTRS:
            if key in self._file.attrs and self._file.attrs.get_id(key).shape not in ((), None):
                raise InvalidInputError(
                    f"{self.path}: root attribute '{key}' holds an array of shape "
                    f"{self._file.attrs.get_id(key).shape}; it must be a single value (the dump is damaged)"
                )
        version = self.attrs.get("format_version", FORMAT_VERSION)  # hand-made files may leave it out
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise InvalidInputError(f"{self.path}: format_version {version!r} is not a positive whole number")
        if version > FORMAT_VERSION:
            raise InvalidInputError(
                f"{self.path} is an actgeom dump of format_version {version}, written by a newer actgeom; "
                f"this version reads format_version ≤ {FORMAT_VERSION} (upgrade actgeom)"
            )
        n_rows = self.attrs.get("n_rows")
        if n_rows is not None and (not isinstance(n_rows, int) or isinstance(n_rows, bool) or n_rows < 0):
            raise InvalidInputError(f"{self.path}: root attribute n_rows={n_rows!r} is not a row count")
        complete = self.attrs.get("complete")
        if complete is not None and not isinstance(complete, bool):
            raise InvalidInputError(f"{self.path}: root attribute complete={complete!r} is not true or false")

    @functools.cached_property
    def _datasets(self) -> list[str]:
        """Every dataset path in the file, without the leading slash."""
        found: list[str] = []
        self._file.visititems(lambda name, obj: found.append(_name(name)) if isinstance(obj, h5py.Dataset) else None)
        return found

    def _find(self, given: str | None, conventional: tuple[str, ...], option: str | None) -> str | None:
        if given is not None:
            path = given.strip("/")
            if not isinstance(self._file.get(path), h5py.Dataset):
                raise InvalidInputError(
                    f"no dataset '{path}' in {self.path} (given by {option}); datasets: "
                    f"{_listing(self._datasets)}"
                )
            return path
        return next((p for p in conventional if isinstance(self._file.get(p), h5py.Dataset)), None)

    def _resolve_layers(self) -> list[LayerInfo]:
        datasets = self._datasets
        if self.spec.layers:
            chosen = []
            for pattern in self.spec.layers:
                pat = pattern.strip("/")
                hits = [d for d in datasets if fnmatch.fnmatchcase(d, pat) or fnmatch.fnmatchcase(d, f"activations/{pat}")]
                if not hits:
                    raise InvalidInputError(
                        f"no dataset matches --layers '{pattern}' in {self.path}; datasets: {_listing(datasets)}"
                    )
                chosen += [d for d in hits if d not in chosen]
        elif any(d.startswith("activations/") for d in datasets):
            chosen = [d for d in datasets if d.startswith("activations/")]
        else:
            used = {self.weight_path, self.bias_path, *WEIGHT_PATHS, *BIAS_PATHS}
            chosen = [d for d in datasets if d not in used and self._file[d].ndim == 2 and _is_float_like(self._file[d])]
            if not chosen:
                raise NoLayersError(
                    f"found no 2-D floating-point dataset to use as a layer in {self.path}; "
                    f"name one with --layers (datasets: {_listing(datasets)})"
                )
            if len({self._file[d].shape[0] for d in chosen}) > 1:
                shapes = ", ".join(f"{d} {self._file[d].shape}" for d in chosen)
                raise NoLayersError(
                    f"cannot tell which datasets in {self.path} are layers ({shapes}); name them with --layers"
                )
        return [self._layer_info(d) for d in sorted(chosen, key=natural_key)]

    def _layer_info(self, path: str) -> LayerInfo:
        ds = self._file[path]
        if ds.ndim != 2:
            raise InvalidInputError(
                f"layer '{path}' in {self.path} has shape {ds.shape}; a layer must be 2-D (rows, units)"
            )
        if not _is_float_like(ds):
            raise InvalidInputError(
                f"layer '{path}' in {self.path} has dtype {ds.dtype}; a layer must be float16, float32, "
                "float64, or bfloat16 stored as uint16 with attribute logical_dtype='bfloat16'"
            )
        where = f"layer '{safe_name(path)}' in {self.path}"
        if ds.shape[0] == 0 or ds.shape[1] == 0:
            raise InvalidInputError(f"{where} has shape {ds.shape}: no {'rows' if ds.shape[0] == 0 else 'units'}, "
                                    "nothing to measure")
        if _missing_on_disk(ds):
            raise InvalidInputError(
                f"{where} declares shape {ds.shape} ({_gib(ds.size * ds.dtype.itemsize)}) but the file does not hold "
                "that data (unwritten or missing chunks); it is truncated or was never filled"
            )
        if not self.spec.describe_only:
            need = D2_COPIES * 8 * ds.shape[1] ** 2
            if need > _memory_bytes():
                raise InvalidInputError(
                    f"{where} has {ds.shape[1]} units: its {ds.shape[1]}×{ds.shape[1]} statistics need about "
                    f"{_gib(need)}, more than this machine's {_gib(_memory_bytes())} of memory"
                )
        name = path[len("activations/"):] if path.startswith("activations/") else path
        return LayerInfo(
            name=name,
            path=path,
            n_rows=int(ds.shape[0]),
            n_units=int(ds.shape[1]),
            storage_dtype=str(ds.dtype),
            logical_dtype="bfloat16" if _is_bfloat16(ds) else str(ds.dtype),
            chunk_rows=int(ds.chunks[0]) if ds.chunks else None,
            compression=ds.compression,
            attrs=_attrs(ds),
        )

    def _common_rows(self) -> int:
        counts = {layer.n_rows for layer in self.layers}
        if len(counts) == 1:
            return counts.pop()
        if self.spec.allow_incomplete:
            return min(counts)  # an interrupted writer may have grown some layers further
        shapes = ", ".join(f"{layer.path} {layer.n_rows}" for layer in self.layers)
        raise InvalidInputError(f"layers in {self.path} have different numbers of rows ({shapes})")

    def _row_vector(self, given: str | None, conventional: tuple[str, ...], what: str, option: str | None) -> str | None:
        """A row-vector dataset (named, or found by its conventional name), validated.

        One that does not fit is refused, except a guess: a foreign file's dataset picked by its
        name alone (y, labels, targets) may be something else, so it is set aside with a
        DataWarning (a command that needs labels then says it has none).
        """
        path = self._find(given, conventional, option)
        problem = None if path is None else self._row_vector_problem(path, what)
        if problem is not None:
            self._refuse_unless_guessed(what, problem + (f"; name another dataset with {option}" if option else ""))
            return None
        return path

    def _refuse_unless_guessed(self, what: str, problem: str) -> None:
        given = {"labels": self.spec.labels, "predictions": self.spec.predictions}.get(what)
        if given is not None or self.is_actgeom or what == "positions":
            raise InvalidInputError(problem)
        warnings.warn(DataWarning(f"ignoring {problem} (found by its name only)"), stacklevel=3)

    def _row_vector_problem(self, path: str, what: str) -> str | None:
        ds = self._file[path]
        where = f"{what} '{safe_name(path)}' in {self.path}"
        if ds.ndim != 1:
            return f"{where}: shape {ds.shape}, expected 1-D ({self.n_rows},)"
        if ds.dtype.kind not in "iu":
            return f"{where}: dtype {ds.dtype}, {what} must be integers ({_ROW_VECTOR_MEANING[what]})"
        if ds.shape[0] < self.n_rows or (ds.shape[0] != self.n_rows and not self.spec.allow_incomplete):
            return f"{where}: {ds.shape[0]} rows but the layers have {self.n_rows}"
        if _missing_on_disk(ds):
            return f"{where}: declares {ds.shape[0]} rows but the file does not hold them"
        return None

    def _validate_class_ranges(self) -> None:
        """Labels ≥ -1 and, with a classifier, below its number of rows; predictions name a class.

        One read of the label and prediction vectors in blocks (memory O(block)), at open.
        """
        if self.labels_path is None and self.predictions_path is None:
            return
        n_weight_rows = None if self.weight_path is None else self._file[self.weight_path].shape[0]
        names = self.label_names()
        lo = hi = pred_lo = pred_hi = None
        for start in range(0, self.n_rows, _VECTOR_BLOCK):
            stop = min(start + _VECTOR_BLOCK, self.n_rows)
            y, p = self.labels(start, stop), self.predictions(start, stop)
            if y is not None and y.size:
                lo = int(y.min()) if lo is None else min(lo, int(y.min()))
                hi = int(y.max()) if hi is None else max(hi, int(y.max()))
            if p is not None and p.size:
                pred_lo = int(p.min()) if pred_lo is None else min(pred_lo, int(p.min()))
                pred_hi = int(p.max()) if pred_hi is None else max(pred_hi, int(p.max()))
        if lo is not None and lo < -1:
            self._refuse_unless_guessed("labels", f"labels '{safe_name(self.labels_path)}' in {self.path} hold label {lo}; "
                                    "labels are class indices ≥ 0, or -1 for none")
            self.labels_path, hi = None, None
        if hi is not None and n_weight_rows is not None and hi >= n_weight_rows:
            self._refuse_unless_guessed(
                "labels", f"labels '{safe_name(self.labels_path)}' in {self.path} go up to {hi} but the classifier "
                f"'{safe_name(self.weight_path)}' has {n_weight_rows} rows (classes 0..{n_weight_rows - 1})")
            self.labels_path, hi = None, None
        widest = max((layer.n_units for layer in self.layers), default=1)
        if hi is not None and not self.spec.describe_only and CLASS_COPIES * 8 * (hi + 1) * widest > _memory_bytes():
            self._refuse_unless_guessed(
                "labels", f"labels '{safe_name(self.labels_path)}' in {self.path} go up to {hi}: class statistics of "
                f"{hi + 1} classes × {widest} units need about {_gib(CLASS_COPIES * 8 * (hi + 1) * widest)}, more than "
                f"this machine's {_gib(_memory_bytes())} of memory (labels are class indices 0..C-1)")
            self.labels_path, hi = None, None
        n_classes = n_weight_rows if n_weight_rows is not None else max(
            (hi + 1) if self.labels_path is not None and hi is not None else 0, len(names or []))
        if pred_lo is not None and (pred_lo < 0 or (n_classes and pred_hi >= n_classes)):
            bad = pred_lo if pred_lo < 0 else pred_hi
            self._refuse_unless_guessed(
                "predictions", f"predictions '{safe_name(self.predictions_path)}' in {self.path} hold {bad}, "
                f"outside the classes 0..{n_classes - 1}")
            self.predictions_path = None

    def _resolve_attention(self) -> list[str]:
        """Attention probability datasets (S, H, T, T): --attention, else everything under /attention."""
        if self.spec.attention is not None:
            paths = [self._find(self.spec.attention, (), "--attention")]
        else:
            paths = sorted((d for d in self._datasets if d.startswith("attention/")), key=natural_key)
        for path in paths:
            ds = self._file[path]
            if ds.ndim != 4 or ds.shape[2] != ds.shape[3] or not _is_float_like(ds):
                raise InvalidInputError(
                    f"attention '{path}' in {self.path} must be float probabilities of shape (sequences, heads, T, T); "
                    f"found shape {ds.shape}, dtype {ds.dtype}"
                )
            if _missing_on_disk(ds):
                raise InvalidInputError(f"attention '{path}' in {self.path} declares shape {ds.shape} but the file "
                                        "does not hold that data")
            if int(np.prod(ds.shape[1:])) * ds.dtype.itemsize > MAX_WHOLE_READ_BYTES:
                raise InvalidInputError(f"attention '{path}' in {self.path}: one sequence ({ds.shape[1:]}) is more than "
                                        f"{_gib(MAX_WHOLE_READ_BYTES)}")
        return paths

    def attention_blocks(self, path: str, max_bytes: int = 64 << 20):
        """Blocks of whole sequences (s, H, T, T) of one attention dataset, decoded."""
        ds = self._file[path]
        per_sequence = max(int(np.prod(ds.shape[1:])) * ds.dtype.itemsize, 1)
        step = max(1, max_bytes // per_sequence)
        eps = BFLOAT16_EPS if _is_bfloat16(ds) else float(np.finfo(ds.dtype).eps)
        tolerance = eps / 2 + ATTENTION_SUM_SLACK
        for start in range(0, ds.shape[0], step):
            block = _read(ds, np.s_[start : start + step], f"attention '{path}'", self.path, start)
            block = decode_bfloat16(block) if _is_bfloat16(ds) else block
            _check_attention(block, start, tolerance, f"attention '{path}' in {self.path}")
            yield block

    def _validate_offsets(self) -> None:
        if self.offsets_path is None:
            return
        off = self._file[self.offsets_path]
        if off.ndim != 1 or off.dtype.kind not in "iu" or off.shape[0] < 1:
            raise InvalidInputError(
                f"offsets '{self.offsets_path}' in {self.path} must be a 1-D integer array of sequence "
                f"boundaries (S+1,); found shape {off.shape}, dtype {off.dtype}"
            )
        _check_whole_read(off, f"offsets '{self.offsets_path}' in {self.path}")
        values = _read(off, np.s_[()], f"offsets '{self.offsets_path}'", self.path)
        if values[0] != 0 or values[-1] != self.n_rows or np.any(np.diff(values) < 0):
            raise InvalidInputError(
                f"offsets '{self.offsets_path}' in {self.path} must rise from 0 to n_rows={self.n_rows}; "
                f"found {values[0]} .. {values[-1]}"
            )

    def _validate_classifier(self) -> str | None:
        """Check W (C, D) and b (C,); return the name of the layer the classifier reads."""
        if self.weight_path is None:
            if self.spec.bias is not None:
                raise InvalidInputError("--bias needs --weight (a bias alone is not a classifier)")
            return None
        w = self._file[self.weight_path]
        _check_whole_read(w, f"classifier weight '{self.weight_path}' in {self.path}")
        if w.ndim != 2 or not _is_float_like(w):
            raise InvalidInputError(
                f"classifier weight '{self.weight_path}' in {self.path} must be a 2-D float array "
                f"(classes, units); found shape {w.shape}, dtype {w.dtype}"
            )
        if self.bias_path is not None:
            b = self._file[self.bias_path]
            if b.shape != (w.shape[0],) or not _is_float_like(b):
                raise InvalidInputError(
                    f"classifier bias '{self.bias_path}' in {self.path} has shape {b.shape}, dtype {b.dtype}; "
                    f"the weight has {w.shape[0]} classes, so expected floats of shape ({w.shape[0]},)"
                )
        fed = _attrs(w).get("layer", _attrs(w.parent).get("layer", ""))
        if not isinstance(fed, str):
            raise InvalidInputError(
                f"classifier '{self.weight_path}' in {self.path}: attribute layer={str(fed):.60} is not a layer name"
            )
        by_name = {layer.name: layer for layer in self.layers} | {layer.path: layer for layer in self.layers}
        if fed:
            layer = by_name.get(fed)
            if layer is None:  # the classifier reads a layer that is not selected
                return None
        else:
            layer = self.layers[-1]
        if layer.n_units != w.shape[1]:
            raise InvalidInputError(
                f"classifier weight '{self.weight_path}' in {self.path} has {w.shape[1]} units but "
                f"layer '{layer.name}' has {layer.n_units}"
            )
        return layer.name

    # -- reading ---------------------------------------------------------------------------
    def layer(self, name: str) -> LayerInfo:
        for layer in self.layers:
            if name in (layer.name, layer.path):
                return layer
        raise InvalidInputError(f"no layer '{name}' in {self.path}; layers: {_listing([l.name for l in self.layers])}")

    def block_rows(self, layer: LayerInfo, target_bytes: int = 8 << 20) -> int:
        """Rows per read block: a whole number of HDF5 chunks near ``target_bytes`` as float64."""
        per_row = max(layer.n_units * 8, 1)
        rows = max(target_bytes // per_row, 1)
        if layer.chunk_rows:
            rows = max(rows // layer.chunk_rows, 1) * layer.chunk_rows
        return int(min(rows, max(self.n_rows, 1)))

    def read_raw(self, layer: LayerInfo, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Read rows [start, stop) as stored into the first rows of ``out``; return that view.

        A read the file cannot serve (corrupt chunk bytes) and a finite float64 value beyond
        MAX_ABS_VALUE are refused, naming the rows.
        """
        view = out[: stop - start]
        if stop > start:
            try:
                self._file[layer.path].read_direct(view, np.s_[start:stop], np.s_[0 : stop - start])
            except _H5_ERRORS as exc:
                raise InvalidInputError(f"cannot read rows {start}–{stop} of layer '{safe_name(layer.name)}' in "
                                        f"{self.path}: {_first_line(exc)}") from None
            if view.dtype == np.float64 and view.size and not _within(view, MAX_ABS_VALUE):
                big = np.isfinite(view) & (np.abs(view) > MAX_ABS_VALUE)
                if big.any():
                    raise InvalidInputError(
                        f"layer '{safe_name(layer.name)}' in {self.path} has values of magnitude up to "
                        f"{np.abs(view[big]).max():.3g} in rows {start}–{stop}; values beyond "
                        f"{MAX_ABS_VALUE:.3g} (the float32 range) would overflow the metrics' squares and fourth "
                        "powers — rescale the activations"
                    )
        return view

    def decode(self, layer: LayerInfo, raw: np.ndarray) -> np.ndarray:
        """Stored values → floating point, exactly (bfloat16 bits become float32)."""
        return decode_bfloat16(raw) if layer.logical_dtype == "bfloat16" else raw

    def read_rows(self, layer: LayerInfo | str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) of a layer, decoded (a convenience for small reads and tests)."""
        layer = self.layer(layer) if isinstance(layer, str) else layer
        stop = self.n_rows if stop is None else stop
        out = np.empty((stop - start, layer.n_units), dtype=layer.storage_dtype)
        return self.decode(layer, self.read_raw(layer, start, stop, out))

    def labels(self, start: int = 0, stop: int | None = None) -> np.ndarray | None:
        """Labels of rows [start, stop) as int64 (-1 = none), or None if the dump has none."""
        if self.labels_path is None:
            return None
        stop = self.n_rows if stop is None else stop
        return np.asarray(_read(self._file[self.labels_path], np.s_[start:stop], f"labels '{self.labels_path}'",
                                self.path, start), dtype=np.int64)

    def predictions(self, start: int = 0, stop: int | None = None) -> np.ndarray | None:
        if self.predictions_path is None:
            return None
        stop = self.n_rows if stop is None else stop
        return np.asarray(_read(self._file[self.predictions_path], np.s_[start:stop],
                                f"predictions '{self.predictions_path}'", self.path, start), dtype=np.int64)

    def positions(self, start: int, stop: int) -> np.ndarray | None:
        """Token positions of rows [start, stop) from /rows/position, or None."""
        if self.positions_path is None:
            return None
        return np.asarray(_read(self._file[self.positions_path], np.s_[start:stop], "positions 'rows/position'",
                                self.path, start), dtype=np.int64)

    def structure(self) -> list[tuple[str, list[int], str]]:
        """Every dataset's path, shape without its first axis, and dtype: what a file holds,
        whatever the number of rows (shard files of one dump share it)."""
        return [(path, list(self._file[path].shape[1:]), str(self._file[path].dtype)) for path in sorted(self._datasets)]

    def row_vector(self, name: str, start: int, stop: int) -> np.ndarray:
        """A per-row vector ("position", "token_id", "prediction", "label") of rows [start, stop)
        as int64; refused, naming the conventional path, when the dump has none."""
        path = self._find(None, (f"rows/{name}",), None)
        if path is None and name == "position" and self.offsets_path is not None:  # position within its sequence
            if not hasattr(self, "_offsets"):  # read once, not once per block
                self._offsets = self.offsets()
            offsets, rows = self._offsets, np.arange(start, stop)
            return rows - offsets[np.searchsorted(offsets, rows, side="right") - 1]
        if path is None:
            raise InvalidInputError(f"this analysis needs /rows/{name} in {self.path}, which has none")
        return np.asarray(_read(self._file[path], np.s_[start:stop], f"'{path}'", self.path, start), dtype=np.int64)

    def row_vector_names(self) -> frozenset[str]:
        """The per-row vectors :meth:`row_vector` can read: /rows/<name>, and "position" also
        from sequence offsets."""
        names = {d[len("rows/"):] for d in self._datasets if d.startswith("rows/") and self._file[d].ndim == 1}
        return frozenset(names | ({"position"} if self.offsets_path is not None else set()))

    def ids_path(self, given: str | None = None) -> str | None:
        """The dataset of stable row ids: ``given`` (--ids; refused when absent), else /rows/sample_id, else None."""
        path = self._find(given, ("rows/sample_id",), "--ids")
        if path is not None and (self._file[path].ndim != 1 or self._file[path].shape[0] < self.n_rows):
            raise InvalidInputError(f"row ids '{path}' in {self.path} have shape {self._file[path].shape}; "
                                    f"expected one id per row ({self.n_rows},)")
        return path

    def row_ids(self, path: str, start: int, stop: int) -> np.ndarray:
        """Ids of rows [start, stop) from ``path`` (integers, or strings decoded from UTF-8)."""
        values = self._file[path][start:stop]
        if values.dtype.kind in "SO":
            return np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in values], dtype=object)
        return values

    def offsets(self) -> np.ndarray | None:
        if self.offsets_path is None:
            return None
        return np.asarray(_read(self._file[self.offsets_path], np.s_[()], f"offsets '{self.offsets_path}'", self.path),
                          dtype=np.int64)

    def classifier(self) -> tuple[np.ndarray, np.ndarray | None] | None:
        """(W, b) in float64, or None; b is None when the dump has no bias."""
        if self.weight_path is None:
            return None
        w = self._file[self.weight_path]
        raw = _read(w, np.s_[()], f"classifier weight '{self.weight_path}'", self.path)
        weight = decode_bfloat16(raw) if _is_bfloat16(w) else raw
        bias = None if self.bias_path is None else np.asarray(
            _read(self._file[self.bias_path], np.s_[()], f"classifier bias '{self.bias_path}'", self.path), dtype=np.float64)
        return np.asarray(weight, dtype=np.float64), bias

    def label_names(self) -> list[str] | None:
        if self.labels_path is None:
            return None
        raw = _attrs(self._file[self.labels_path]).get("label_names")
        if raw is None:
            return None
        try:
            names = json.loads(raw) if isinstance(raw, str) else raw
        except json.JSONDecodeError:
            return None
        return [str(n) for n in names] if isinstance(names, list) else None

    def dataset_summary(self, path: str) -> dict:
        ds = self._file[path]
        return {"path": path, "shape": list(ds.shape), "dtype": str(ds.dtype)}


def _within(values: np.ndarray, bound: float) -> bool:
    """Every value in [-bound, bound]: two reductions, no temporary (False with a NaN or inf: look closer)."""
    return bool(max(abs(float(values.max())), abs(float(values.min()))) <= bound)


def _memory_bytes() -> int:
    """Physical memory of this machine (the bound for the D×D statistics)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not POSIX: no bound known
        return 1 << 62


def _check_attention(block: np.ndarray, start: int, tolerance: float, what: str) -> None:
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
