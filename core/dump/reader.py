"""Open an activation dump (actgeom dump v1 or a foreign layout), validate it, read row blocks.

The actgeom layout (README: "The dump format") is found without options. Foreign files name their datasets
with a :class:`DumpSpec` (the CLI's ``--layers/--labels/--weight/--bias/--predictions/--offsets``);
where a conventional name exists and is unambiguous it is found without options too.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from actgeom.core.errors import InvalidInputError

FORMAT_NAME = "actgeom-dump"
FORMAT_VERSION = 1

# Conventional dataset paths, tried in order when the user names none.
LABEL_PATHS = ("rows/label", "label", "labels", "y", "targets")
WEIGHT_PATHS = ("classifier/weight",)
BIAS_PATHS = ("classifier/bias",)
PREDICTION_PATHS = ("rows/prediction",)
OFFSET_PATHS = ("sequences/offsets",)

FLOAT_DTYPES = (np.float16, np.float32, np.float64)
_ROW_VECTOR_MEANING = {"labels": "class indices, -1 = none", "predictions": "class indices", "positions": "token positions"}


def natural_key(name: str) -> list:
    """Sort key that puts layer_2 before layer_10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


@dataclass(frozen=True)
class DumpSpec:
    """Where the data lives in a dump; every field left empty is discovered by convention."""

    layers: tuple[str, ...] = ()
    labels: str | None = None
    weight: str | None = None
    bias: str | None = None
    predictions: str | None = None
    offsets: str | None = None
    attention: str | None = None
    allow_incomplete: bool = False


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


def _plain(value):
    """An HDF5 attribute value as plain Python (for JSON and display)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _attrs(obj) -> dict:
    return {key: _plain(obj.attrs[key]) for key in obj.attrs}


def _is_bfloat16(ds: h5py.Dataset) -> bool:
    return ds.dtype == np.uint16 and _plain(ds.attrs.get("logical_dtype", "")) == "bfloat16"


def _is_float_like(ds: h5py.Dataset) -> bool:
    return ds.dtype in FLOAT_DTYPES or _is_bfloat16(ds)


def decode_bfloat16(bits: np.ndarray) -> np.ndarray:
    """Exact bfloat16 → float32: the 16 stored bits are the high half of a float32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


class Dump:
    """An open activation dump. Use as a context manager; all reads are by row range.

    Validation happens here, once: every selected layer is 2-D and floating-point, every
    row-axis dataset has the same number of rows, labels are integers, the classifier's width
    matches the layer it feeds, and an incomplete dump is refused unless allowed.
    """

    def __init__(self, path: str | Path, spec: DumpSpec | None = None):
        self.path = Path(path)
        self.spec = spec or DumpSpec()
        if not self.path.exists():
            raise InvalidInputError(f"no such file: {self.path}")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise InvalidInputError(f"{self.path} is not a readable HDF5 file ({_first_line(exc)})") from None
        try:
            self._resolve()
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
        if self.is_actgeom and self.attrs.get("complete") is False and not self.spec.allow_incomplete:
            raise InvalidInputError(
                f"{self.path} is an incomplete dump (attribute complete=false: the writer did not "
                "finish); pass --allow-incomplete to read the rows it has"
            )
        self.weight_path = self._find(self.spec.weight, WEIGHT_PATHS, "--weight")
        self.bias_path = self._find(self.spec.bias, BIAS_PATHS if self.weight_path else (), "--bias")
        self.layers = self._resolve_layers()
        self.n_rows = self._common_rows()
        self.labels_path = self._find(self.spec.labels, LABEL_PATHS, "--labels")
        self.predictions_path = self._find(self.spec.predictions, PREDICTION_PATHS, "--predictions")
        self.positions_path = self._find(None, ("rows/position",), None)
        self.offsets_path = self._find(self.spec.offsets, OFFSET_PATHS, "--offsets")
        self._validate_row_vector(self.labels_path, "labels", "--labels")
        self._validate_row_vector(self.predictions_path, "predictions", "--predictions")
        self._validate_row_vector(self.positions_path, "positions", None)
        self._validate_offsets()
        self.classifier_layer = self._validate_classifier()
        self.attention_paths = self._resolve_attention()

    @functools.cached_property
    def _datasets(self) -> list[str]:
        """Every dataset path in the file, without the leading slash."""
        found: list[str] = []
        self._file.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None)
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
            used = {self.weight_path, self.bias_path}
            chosen = [d for d in datasets if d not in used and self._file[d].ndim == 2 and _is_float_like(self._file[d])]
            if not chosen:
                raise InvalidInputError(
                    f"found no 2-D floating-point dataset to use as a layer in {self.path}; "
                    f"name one with --layers (datasets: {_listing(datasets)})"
                )
            if len({self._file[d].shape[0] for d in chosen}) > 1:
                shapes = ", ".join(f"{d} {self._file[d].shape}" for d in chosen)
                raise InvalidInputError(
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

    def _validate_row_vector(self, path: str | None, what: str, option: str | None) -> None:
        if path is None:
            return
        ds = self._file[path]
        if ds.ndim != 1:
            raise InvalidInputError(f"{what} '{path}' in {self.path} has shape {ds.shape}; expected 1-D ({self.n_rows},)")
        if ds.dtype.kind not in "iu":
            raise InvalidInputError(
                f"{what} '{path}' in {self.path} has dtype {ds.dtype}; {what} must be integers "
                f"({_ROW_VECTOR_MEANING[what]})" + (f"; name another dataset with {option}" if option else "")
            )
        if ds.shape[0] < self.n_rows or (ds.shape[0] != self.n_rows and not self.spec.allow_incomplete):
            raise InvalidInputError(
                f"{what} '{path}' in {self.path} has {ds.shape[0]} rows but the layers have {self.n_rows}"
            )

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
        return paths

    def attention_blocks(self, path: str, max_bytes: int = 64 << 20):
        """Blocks of whole sequences (s, H, T, T) of one attention dataset, decoded."""
        ds = self._file[path]
        per_sequence = max(int(np.prod(ds.shape[1:])) * ds.dtype.itemsize, 1)
        step = max(1, max_bytes // per_sequence)
        for start in range(0, ds.shape[0], step):
            block = ds[start : start + step]
            yield decode_bfloat16(block) if _is_bfloat16(ds) else block

    def _validate_offsets(self) -> None:
        if self.offsets_path is None:
            return
        off = self._file[self.offsets_path]
        if off.ndim != 1 or off.dtype.kind not in "iu" or off.shape[0] < 1:
            raise InvalidInputError(
                f"offsets '{self.offsets_path}' in {self.path} must be a 1-D integer array of sequence "
                f"boundaries (S+1,); found shape {off.shape}, dtype {off.dtype}"
            )
        values = off[()]
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
        if w.ndim != 2 or not _is_float_like(w):
            raise InvalidInputError(
                f"classifier weight '{self.weight_path}' in {self.path} must be a 2-D float array "
                f"(classes, units); found shape {w.shape}, dtype {w.dtype}"
            )
        if self.bias_path is not None:
            b = self._file[self.bias_path]
            if b.shape != (w.shape[0],):
                raise InvalidInputError(
                    f"classifier bias '{self.bias_path}' in {self.path} has shape {b.shape}; "
                    f"the weight has {w.shape[0]} classes, so expected ({w.shape[0]},)"
                )
        fed = _plain(w.attrs.get("layer", w.parent.attrs.get("layer", "")))
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
        """Read rows [start, stop) as stored into the first rows of ``out``; return that view."""
        view = out[: stop - start]
        if stop > start:
            self._file[layer.path].read_direct(view, np.s_[start:stop], np.s_[0 : stop - start])
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
        return np.asarray(self._file[self.labels_path][start : self.n_rows if stop is None else stop], dtype=np.int64)

    def predictions(self, start: int = 0, stop: int | None = None) -> np.ndarray | None:
        if self.predictions_path is None:
            return None
        return np.asarray(self._file[self.predictions_path][start : self.n_rows if stop is None else stop], dtype=np.int64)

    def positions(self, start: int, stop: int) -> np.ndarray | None:
        """Token positions of rows [start, stop) from /rows/position, or None."""
        if self.positions_path is None:
            return None
        return np.asarray(self._file[self.positions_path][start:stop], dtype=np.int64)

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
        return np.asarray(self._file[path][start:stop], dtype=np.int64)

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
        return None if self.offsets_path is None else np.asarray(self._file[self.offsets_path][()], dtype=np.int64)

    def classifier(self) -> tuple[np.ndarray, np.ndarray | None] | None:
        """(W, b) in float64, or None; b is None when the dump has no bias."""
        if self.weight_path is None:
            return None
        w = self._file[self.weight_path]
        weight = decode_bfloat16(w[()]) if _is_bfloat16(w) else w[()]
        bias = None if self.bias_path is None else np.asarray(self._file[self.bias_path][()], dtype=np.float64)
        return np.asarray(weight, dtype=np.float64), bias

    def label_names(self) -> list[str] | None:
        if self.labels_path is None:
            return None
        raw = _plain(self._file[self.labels_path].attrs.get("label_names"))
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


def _listing(names: list[str], limit: int = 20) -> str:
    if not names:
        return "(none)"
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
