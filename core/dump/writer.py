"""Write an actgeom dump v1 (README: "The dump format") from row batches, atomically.

>>> import numpy as np, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "ckpt.h5")
>>> with DumpWriter(path, layers={"fc1": 4}, dtype="float32", model="mlp", step=10) as w:
...     w.append({"fc1": np.ones((3, 4))}, labels=[0, 1, 1])
>>> from actgeom.core.dump import Dump
>>> with Dump(path) as d:
...     (d.n_rows, [layer.name for layer in d.layers])
(3, ['fc1'])
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np

from actgeom.core import __version__
from actgeom.core.base.errors import InvalidInputError, OutputError, UsageError
from actgeom.core.base.options import COMPRESSION, STORAGE_DTYPES
from actgeom.core.base.outputs import check_output, create_temp
from actgeom.core.dump.hdf5 import _plain, decode_bfloat16
from actgeom.core.dump.layout import FORMAT_NAME, FORMAT_VERSION

# the numpy dtype each storage dtype is written as (bfloat16: its raw bits)
STORAGE = dict(zip(STORAGE_DTYPES, (np.float16, np.float32, np.float64, np.uint16), strict=True))
OFFSET_CHUNK = 8192  # sequence boundaries per HDF5 chunk (64 KiB)
ROW_VECTORS = {"labels": "rows/label", "sample_id": "rows/sample_id", "position": "rows/position",
               "token_id": "rows/token_id", "prediction": "rows/prediction"}


def encode_bfloat16(values: np.ndarray) -> np.ndarray:
    """float → bfloat16 bits (uint16), rounding to nearest even; NaN stays NaN.

    A NaN keeps its sign and high payload bits (a quiet NaN when they are all zero), so every
    bfloat16 value decoded to float32 encodes back to its own 16 bits.
    """
    values = np.ascontiguousarray(values, dtype=np.float32)
    bits = values.view(np.uint32)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        high = (bits[nan] >> 16).astype(np.uint16)
        rounded[nan] = np.where(high & 0x7F, high, high | 0x40)  # a zero high payload would read as inf
    return rounded


def as_rows(values) -> tuple[np.ndarray, bool]:
    """A batch as a numpy array and whether it holds bfloat16 bits.

    Accepts numpy arrays, lists, and torch tensors of every dtype (on any device; bfloat16
    tensors are viewed as their 16 bits, with no rounding).
    """
    if hasattr(values, "detach") and hasattr(values, "dtype"):  # a torch tensor
        tensor = values.detach().cpu()
        if str(tensor.dtype) == "torch.bfloat16":
            import torch

            return tensor.contiguous().view(torch.int16).numpy().view(np.uint16), True
        return tensor.numpy(), False
    return np.asarray(values), False


def _store(values: np.ndarray, bf16_bits: bool, dtype: str) -> tuple[np.ndarray, int]:
    """Rows in the storage dtype, and how many finite values became ±inf (narrowing overflow)."""
    if bf16_bits:
        if dtype == "bfloat16":
            return values, 0
        values = decode_bfloat16(values)
    if dtype == "bfloat16":
        stored = encode_bfloat16(values)
        inf = (stored & 0x7FFF) == 0x7F80
    else:
        with np.errstate(over="ignore"):  # counted below
            stored = values.astype(STORAGE[dtype], copy=False)
        if stored.dtype.itemsize >= values.dtype.itemsize and values.dtype.kind == "f":
            return stored, 0  # widening (or the same dtype) never overflows
        inf = np.isinf(stored)
    return stored, int(np.count_nonzero(inf & np.isfinite(values))) if inf.any() else 0


class _DiskFile(io.FileIO):
    """The dump's bytes on their way to disk (h5py's file-object driver); a failed write is kept, not raised.

    HDF5 does not survive a write error inside its own flush or close: the file's objects are left
    half closed and the library crashes when the interpreter exits (h5py 3.16, HDF5 2.0: a full
    disk killed the process with SIGSEGV after the error was caught). So HDF5 never sees one: the
    first OSError is kept in ``error``, every later write is dropped (the file is discarded
    anyway), and :class:`DumpWriter` checks ``error`` after each of its operations.
    """

    error: OSError | None = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        written = 0
        while self.error is None and written < len(view):  # a short write is followed by the rest (or its error)
            try:
                written += super().write(view[written:])
            except OSError as exc:
                self.error = exc
        return len(view)

    def truncate(self, size: int | None = None) -> int:
        if self.error is None:
            try:
                return super().truncate(size)
            except OSError as exc:
                self.error = exc
        return self.tell() if size is None else size

    def sync(self) -> None:
        """Flush the bytes to the disk before the rename makes them visible (a delayed ENOSPC shows here)."""
        if self.error is None:
            try:
                os.fsync(self.fileno())
            except OSError as exc:
                self.error = exc


def _writes(method):
    """A DumpWriter operation after which a failed write to disk ends the dump (see DumpWriter._writing)."""
    @functools.wraps(method)
    def checked(self, *args, **kwargs):
        with self._writing():
            return method(self, *args, **kwargs)
    return checked


class DumpWriter:
    """Append row batches for several layers (plus labels, ids, positions) to a new dump.

    The file is written under a temporary name beside ``path`` and renamed on :meth:`close`;
    an exception inside the ``with`` block removes it, so ``path`` never holds a partial file.
    A write that fails (disk full, I/O error) removes it too and raises :class:`OutputError`
    ("cannot write PATH: No space left on device"); the writer is then closed.
    Datasets are chunked as full-width row blocks of about ``chunk_bytes`` (no more rows than
    ``expected_rows``, when given: HDF5 allocates whole chunks on disk).
    """

    def __init__(self, path: str | Path, *, layers: dict[str, int], dtype: str = "float16",
                 model: str = "", checkpoint: str = "", step: int = -1, level: str = "sample",
                 label_names: list[str] | None = None, chunk_bytes: int = 2 << 20,
                 expected_rows: int | None = None, compression: str | None = None, append: bool = False):
        if compression not in COMPRESSION:
            raise UsageError(f"compression '{compression}' is not one of lzf, gzip")
        if dtype not in STORAGE:
            raise UsageError(f"dtype '{dtype}' is not one of {', '.join(STORAGE)}")
        if level not in ("sample", "token"):
            raise UsageError(f"level '{level}' is not one of sample, token")
        if not layers:
            raise UsageError("a dump needs at least one layer")
        self.path = Path(path)
        self.dtype = dtype
        self.layer_units = dict(layers)
        self.label_names = label_names
        self.compression = compression
        self.n_rows = 0
        self.n_overflow = dict.fromkeys(self.layer_units, 0)
        self._row_vectors: set[str] | None = None
        self._target = check_output(self.path, option="path")  # symlinks resolved: written through
        if self._target.exists() and not self._target.is_file():
            raise UsageError(f"cannot write a dump to {self.path}: it is a device or FIFO, and an HDF5 file needs "
                             "a regular file (give a file path)")
        if append:
            self._open_existing(level)
            return
        self._open_temp()
        self._file.attrs.update({
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "complete": False, "n_rows": 0,
            "model": model, "checkpoint": checkpoint, "step": int(step), "level": level,
            "created_by": f"actgeom {__version__}",
        })
        for name, n_units in self.layer_units.items():
            itemsize = np.dtype(STORAGE[dtype]).itemsize
            chunk_rows = max(1, chunk_bytes // max(n_units * itemsize, 1))
            if expected_rows:  # a chunk is allocated whole: no bigger than the data
                chunk_rows = min(chunk_rows, max(int(expected_rows), 1))
            ds = self._file.create_dataset(f"activations/{name}", shape=(0, n_units), maxshape=(None, n_units),
                                           dtype=STORAGE[dtype], chunks=(chunk_rows, n_units), compression=compression)
            if dtype == "bfloat16":
                ds.attrs["logical_dtype"] = "bfloat16"

    def _open_existing(self, level: str) -> None:
        """--append: a copy of the complete dump at ``path`` beside it, checked to match, opened for writing."""
        if not self.path.exists():
            raise InvalidInputError(f"--append needs an existing dump; no such file: {self.path}")
        try:
            with h5py.File(self.path, "r") as f:
                self._check_same(f, level)
        except OSError as exc:
            raise InvalidInputError(f"--append: {self.path} is not a readable HDF5 file ({exc})") from None
        self._open_temp(copy_of=self.path)
        self._file.attrs["complete"] = False
        self.n_rows = int(self._file.attrs["n_rows"])
        present = {key for key, path in ROW_VECTORS.items() if path in self._file}
        self._row_vectors = present if self.n_rows or present else None  # the new batches carry the same vectors

    def _open_temp(self, copy_of: Path | None = None) -> None:
        """The temporary file beside the target (a copy of ``copy_of`` when given), opened by h5py."""
        try:
            fd, self._tmp = create_temp(self._target.parent, self._target.name)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        os.close(fd)
        try:
            if copy_of is not None:
                shutil.copyfile(copy_of, self._tmp)
            self._disk = _DiskFile(self._tmp, "r+b")
        except OSError as exc:
            self._tmp.unlink(missing_ok=True)
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self._file = h5py.File(self._disk, "w" if copy_of is None else "r+")

    @contextlib.contextmanager
    def _writing(self):
        """Run one operation; a write to disk that failed in it removes the file and raises OutputError."""
        try:
            yield
        finally:
            error = self._disk.error
            if error is not None:  # (an error HDF5 raised after the dropped write is a consequence of it)
                self.abort()
                raise OutputError(f"cannot write {self.path}: {error.strerror or error}") from None

    def _check_same(self, f: h5py.File, level: str) -> None:
        where = f"--append to {self.path}"
        if _plain(f.attrs.get("format")) != FORMAT_NAME or not _plain(f.attrs.get("complete", False)):
            raise InvalidInputError(f"{where}: only a complete actgeom dump can be appended to")
        group = f.get("activations")
        found = {name: group[name] for name in group} if group is not None else {}
        if sorted(found) != sorted(self.layer_units):
            raise InvalidInputError(f"{where}: the dump has layers {sorted(found)}, the new rows {sorted(self.layer_units)}")
        for name, ds in found.items():
            stored = "bfloat16" if _plain(ds.attrs.get("logical_dtype", "")) == "bfloat16" else str(ds.dtype)
            if ds.shape[1] != self.layer_units[name] or stored != self.dtype:
                raise InvalidInputError(f"{where}: layer '{name}' is ({ds.shape[1]} units, {stored}) in the dump "
                                        f"but ({self.layer_units[name]} units, {self.dtype}) in the new rows")
        if _plain(f.attrs.get("level")) != level:
            raise InvalidInputError(f"{where}: the dump is {_plain(f.attrs.get('level'))}-level, the new rows {level}-level")

    def __enter__(self) -> "DumpWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @_writes
    def append(self, activations: dict[str, np.ndarray], **rows: np.ndarray | list | None) -> None:
        """Append one batch: every layer's rows, and the same row vectors as every other batch."""
        if set(activations) != set(self.layer_units):
            raise UsageError(f"append needs rows for every layer: {sorted(self.layer_units)}; got {sorted(activations)}")
        unknown = set(rows) - set(ROW_VECTORS)
        if unknown:
            raise UsageError(f"unknown row vectors {sorted(unknown)}; valid: {sorted(ROW_VECTORS)}")
        given = {k: v for k, v in rows.items() if v is not None}
        if self._row_vectors is not None and set(given) != self._row_vectors:
            raise UsageError(f"every batch must carry the same row vectors: {sorted(self._row_vectors)}")
        converted = {name: as_rows(values) for name, values in activations.items()}
        activations = {name: values for name, (values, _) in converted.items()}
        given = {k: as_rows(v)[0] for k, v in given.items()}
        counts = {name: a.shape[0] for name, a in activations.items()}
        if len(set(counts.values())) != 1:
            raise UsageError(f"the batch's layers have different row counts: {counts}")
        n = next(iter(counts.values()))
        for key, values in given.items():
            if values.shape[0] != n:
                raise UsageError(f"row vector '{key}' has {values.shape[0]} rows; the batch's layers have {n}")
        for name, values in activations.items():
            if values.ndim != 2 or values.shape[1] != self.layer_units[name]:
                raise UsageError(f"layer '{name}' rows must have shape (n, {self.layer_units[name]}); got {values.shape}")
        self._row_vectors = set(given)
        for name, (values, bf16_bits) in converted.items():
            stored, overflow = _store(values, bf16_bits, self.dtype)
            self.n_overflow[name] += overflow
            self._extend(f"activations/{name}", stored)
        for key, values in given.items():
            self._extend(ROW_VECTORS[key], values)
        self.n_rows += n

    def _extend(self, path: str, values: np.ndarray) -> None:
        if path not in self._file:
            kind = h5py.string_dtype() if values.dtype.kind in "UO" else values.dtype
            self._file.create_dataset(path, shape=(0,) + values.shape[1:], maxshape=(None,) + values.shape[1:],
                                      dtype=kind, chunks=True, compression=self.compression)
            if path == "rows/label" and self.label_names is not None:
                self._file[path].attrs["label_names"] = json.dumps(self.label_names)
        ds = self._file[path]
        start = ds.shape[0]
        ds.resize(start + values.shape[0], axis=0)
        ds[start:] = values.astype(object) if values.dtype.kind == "U" else values

    @property
    def has_classifier(self) -> bool:
        return "classifier/weight" in self._file

    @_writes
    def set_classifier(self, weight: np.ndarray, bias: np.ndarray | None = None, *, layer: str) -> None:
        """Store the classifier W (C, D) and b (C,) that reads ``layer``."""
        if layer not in self.layer_units:
            raise UsageError(f"classifier layer '{layer}' is not one of {sorted(self.layer_units)}")
        weight = np.asarray(weight, dtype=np.float64)
        if weight.ndim != 2 or weight.shape[1] != self.layer_units[layer]:
            raise UsageError(f"classifier weight must have shape (C, {self.layer_units[layer]}); got {weight.shape}")
        group = self._file.require_group("classifier")
        group.attrs["layer"] = layer
        group.create_dataset("weight", data=weight)
        if bias is not None:
            group.create_dataset("bias", data=np.asarray(bias, dtype=np.float64).reshape(weight.shape[0]))

    @_writes
    def append_attention(self, name: str, probabilities) -> None:
        """Append attention probabilities (sequences, heads, T, T) to ``/attention/<name>``."""
        values, bf16_bits = as_rows(probabilities)
        path = f"attention/{name}"
        if path not in self._file:
            if values.ndim != 4 or values.shape[2] != values.shape[3]:
                raise UsageError(f"attention '{name}' must be (sequences, heads, T, T); got {values.shape}")
            ds = self._file.create_dataset(path, shape=(0,) + values.shape[1:], maxshape=(None,) + values.shape[1:],
                                           dtype=STORAGE[self.dtype], chunks=(1,) + values.shape[1:],
                                           compression=self.compression)
            if self.dtype == "bfloat16":
                ds.attrs["logical_dtype"] = "bfloat16"
        ds = self._file[path]
        if values.shape[1:] != ds.shape[1:]:
            raise UsageError(f"attention '{name}' has shape {ds.shape[1:]} per sequence; got {values.shape[1:]}")
        stored, _ = _store(values, bf16_bits, self.dtype)
        self._extend(path, stored)

    @_writes
    def set_offsets(self, offsets: np.ndarray) -> None:
        """Store sequence boundaries (S+1,) into the row axis (token-level dumps)."""
        self._file.create_dataset("sequences/offsets", data=np.asarray(offsets, dtype=np.int64))

    @_writes
    def add_sequences(self, lengths: np.ndarray) -> None:
        """Extend the sequence boundaries by sequences of these lengths (streamed token-level writes)."""
        if "sequences/offsets" not in self._file:
            self._file.create_dataset("sequences/offsets", data=np.zeros(1, dtype=np.int64), maxshape=(None,),
                                      chunks=(OFFSET_CHUNK,))  # not h5py's guess from one value: a chunk per offset
        ds = self._file["sequences/offsets"]
        ends = int(ds[-1]) + np.cumsum(np.asarray(lengths, dtype=np.int64))
        self._extend("sequences/offsets", ends)

    @_writes
    def set_attrs(self, **attrs) -> None:
        """Root attributes (e.g. provenance), written with the dump."""
        self._file.attrs.update(attrs)

    def get_attr(self, name: str, default=None):
        return _plain(self._file.attrs.get(name, default))

    @_writes
    def set_layer_attrs(self, layer: str, **attrs) -> None:
        self._file[f"activations/{layer}"].attrs.update(attrs)

    def close(self) -> None:
        """Mark the dump complete (the last write), flush it to disk and move it to its final path."""
        with self._writing():
            offsets = self._file.get("sequences/offsets")
            if offsets is not None and int(offsets[-1]) != self.n_rows:
                self.abort()
                raise UsageError(f"sequence offsets end at {int(offsets[-1])} but the dump has {self.n_rows} rows")
            self._file.attrs["n_rows"] = self.n_rows
            self._file.attrs["complete"] = True
            self._file.close()
            self._disk.sync()
        self._disk.close()
        try:
            os.replace(self._tmp, self._target)
        except OSError as exc:
            self.abort()
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}") from None

    def abort(self) -> None:
        """Discard everything written: the target path is left untouched. Safe to call again."""
        try:
            self._file.close()
        finally:
            self._disk.close()
            self._tmp.unlink(missing_ok=True)
