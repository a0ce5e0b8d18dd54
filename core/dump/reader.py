"""Open an activation dump (actgeom dump v1 or a foreign layout), validate it, read row blocks.

The actgeom layout (README: "The dump format") is found without options. Foreign files name their datasets
with a :class:`DumpSpec` (the CLI's ``--layers/--labels/--weight/--bias/--predictions/--offsets``);
where a conventional name exists and is unambiguous it is found without options too.

:class:`Dump` finds the datasets, runs the checks once and reads; the pieces live beside it: the names
and conventions in ``layout``, the checks in ``validate``, safe access to an untrusted HDF5 file in ``hdf5``.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import warnings
from pathlib import Path

import h5py
import numpy as np

from actgeom.core.base.errors import DataWarning, InvalidInputError
from actgeom.core.dump import validate
from actgeom.core.dump.hdf5 import (
    _H5_ERRORS,
    _attrs,
    _damaged,
    _first_line,
    _is_bfloat16,
    _is_float_like,
    _listing,
    _name,
    _open,
    _read,
    decode_bfloat16,
    safe_name,
)
from actgeom.core.dump.layout import (
    BIAS_PATHS,
    FORMAT_NAME,
    LABEL_PATHS,
    OFFSET_PATHS,
    PREDICTION_PATHS,
    WEIGHT_PATHS,
    DumpSpec,
    LayerInfo,
    natural_key,
)

# Finite float64 values beyond the float32 range are refused: no activation is that large, and
# the metrics' fourth-order terms (Σ x⁴ over rows × units) would overflow float64.
MAX_ABS_VALUE = float(np.finfo(np.float32).max)


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
        self._file = _open(self.path)
        try:
            with _damaged(self.path):  # h5py on damaged metadata (a bad address, a broken B-tree)
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
        if self.is_actgeom:
            validate.check_root_attrs(f, self.attrs, self.path, allow_incomplete=self.spec.allow_incomplete)
        self.weight_path = self._find(self.spec.weight, WEIGHT_PATHS, "--weight")
        self.bias_path = self._find(self.spec.bias, BIAS_PATHS if self.weight_path else (), "--bias")
        self.layers = self._resolve_layers()
        self.n_rows = validate.common_rows(self.layers, self.path, allow_incomplete=self.spec.allow_incomplete)
        if self.is_actgeom and self.attrs.get("complete") is True and self.attrs.get("n_rows") != self.n_rows:
            raise InvalidInputError(
                f"{self.path}: root attribute n_rows={self.attrs.get('n_rows')} contradicts the layers, which have "
                f"{self.n_rows} rows; the dump is damaged"
            )
        self.labels_path = self._row_vector(self.spec.labels, LABEL_PATHS, "labels", "--labels")
        self.predictions_path = self._row_vector(self.spec.predictions, PREDICTION_PATHS, "predictions", "--predictions")
        self.positions_path = self._row_vector(None, ("rows/position",), "positions", None)
        self.offsets_path = self._find(self.spec.offsets, OFFSET_PATHS, "--offsets")
        if self.offsets_path is not None:
            validate.check_offsets(f[self.offsets_path], self.offsets_path, self.path, self.n_rows)
        self.classifier_layer = validate.classifier_layer(f, self.weight_path, self.bias_path, self.layers, self.path)
        self._validate_class_ranges()
        self.attention_paths = self._resolve_attention()

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
        validate.check_layer(ds, path, self.path, describe_only=self.spec.describe_only)
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

    def _row_vector(self, given: str | None, conventional: tuple[str, ...], what: str, option: str | None) -> str | None:
        """A row-vector dataset (named, or found by its conventional name), validated.

        One that does not fit is refused, except a guess: a foreign file's dataset picked by its
        name alone (y, labels, targets) may be something else, so it is set aside with a
        DataWarning (a command that needs labels then says it has none).
        """
        path = self._find(given, conventional, option)
        problem = None if path is None else validate.row_vector_problem(
            self._file[path], path, what, self.path, self.n_rows, allow_incomplete=self.spec.allow_incomplete)
        if problem is not None:
            self._refuse_unless_guessed(what, problem + (f"; name another dataset with {option}" if option else ""))
            return None
        return path

    def _refuse_unless_guessed(self, what: str, problem: str) -> None:
        given = {"labels": self.spec.labels, "predictions": self.spec.predictions}.get(what)
        if given is not None or self.is_actgeom or what == "positions":
            raise InvalidInputError(problem)
        warnings.warn(DataWarning(f"ignoring {problem} (found by its name only)"), stacklevel=3)

    def _validate_class_ranges(self) -> None:
        """Labels ≥ -1 and, with a classifier, below its number of rows; predictions name a class.

        One read of the label and prediction vectors in blocks (memory O(block)), at open — unless
        the spec brings the ranges (``class_ranges``: found by the client of a Dask task's dump).
        """
        self.class_ranges = None
        if self.labels_path is None and self.predictions_path is None:
            return
        n_weight_rows = None if self.weight_path is None else self._file[self.weight_path].shape[0]
        names = self.label_names()
        self.class_ranges = self.spec.class_ranges or validate.class_ranges(self.labels, self.predictions, self.n_rows)
        label_range, prediction_range = self.class_ranges
        if label_range is not None:
            widest = max((layer.n_units for layer in self.layers), default=1)
            problem = validate.label_range_problem(*label_range, self.labels_path, self.path, weight_path=self.weight_path,
                                                   n_weight_rows=n_weight_rows, widest=widest,
                                                   describe_only=self.spec.describe_only)
            if problem is not None:
                self._refuse_unless_guessed("labels", problem)
                self.labels_path, label_range = None, None
        n_classes = n_weight_rows if n_weight_rows is not None else max(
            (label_range[1] + 1) if self.labels_path is not None and label_range is not None else 0, len(names or []))
        if prediction_range is not None:
            problem = validate.prediction_range_problem(*prediction_range, self.predictions_path, self.path, n_classes)
            if problem is not None:
                self._refuse_unless_guessed("predictions", problem)
                self.predictions_path = None

    def _resolve_attention(self) -> list[str]:
        """Attention probability datasets (S, H, T, T): --attention, else everything under /attention."""
        if self.spec.attention is not None:
            paths = [self._find(self.spec.attention, (), "--attention")]
        else:
            paths = sorted((d for d in self._datasets if d.startswith("attention/")), key=natural_key)
        for path in paths:
            validate.check_attention(self._file[path], path, self.path)
        return paths

    def attention_blocks(self, path: str, max_bytes: int = 64 << 20):
        """Blocks of whole sequences (s, H, T, T) of one attention dataset, decoded."""
        ds = self._file[path]
        per_sequence = max(int(np.prod(ds.shape[1:])) * ds.dtype.itemsize, 1)
        step = max(1, max_bytes // per_sequence)
        tolerance = validate.attention_tolerance(ds)
        for start in range(0, ds.shape[0], step):
            block = _read(ds, np.s_[start : start + step], f"attention '{path}'", self.path, start)
            block = decode_bfloat16(block) if _is_bfloat16(ds) else block
            validate.check_attention_block(block, start, tolerance, f"attention '{path}' in {self.path}")
            yield block

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
        values = _read(self._file[path], np.s_[start:stop], f"'{path}'", self.path, start)
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
