"""Activation sources for `actgeom extract`: every input format read as named layers × row blocks.

Formats (by suffix, or by content for HDF5): HDF5 (actgeom dumps and foreign layouts through
:class:`Dump`, NeuroX extractions), ``.npy``, ``.npz``, ``.safetensors``, ``.pt``/``.pth``
(torch's ``weights_only`` loader), and Arrow caches (SAELens / Hugging Face ``datasets``:
a directory of ``.arrow`` shards or one shard). 3-D arrays (sequences, tokens, units) become
token rows with equal-length sequences.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import h5py
import numpy as np

from actgeom.core.base.errors import InvalidInputError
from actgeom.core.dump.caches import read_arrow, read_neurox
from actgeom.core.dump.hdf5 import check_metadata
from actgeom.core.dump.layout import DumpSpec
from actgeom.core.dump.reader import Dump
from actgeom.core.dump.source import Arrays, RowView, Source, first_line, from_arrays
from actgeom.core.dump.writer import as_rows

FORMATS = "HDF5 (.h5/.hdf5), .npy, .npz, .safetensors, .pt/.pth, Arrow (.arrow or a datasets directory)"
_SAFETENSORS_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "BF16": np.uint16,
                       "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                       "U16": np.uint16, "U32": np.uint32, "U64": np.uint64, "BOOL": np.bool_}


def open_source(path: str | Path, spec: DumpSpec | None = None) -> Source:
    """Open any supported activation file (see the module docstring); one-line errors otherwise."""
    path, spec = Path(path), spec or DumpSpec()
    if not path.exists():
        raise InvalidInputError(f"no such file: {path}")
    suffix = path.suffix.lower()
    readers = {".npy": _npy, ".npz": _npz, ".safetensors": _safetensors, ".pt": _torch, ".pth": _torch, ".arrow": read_arrow}
    if path.is_dir():
        suffix = ".arrow"
    if suffix not in readers:
        if h5py.is_hdf5(path):
            return _hdf5(path, spec)  # the DumpSpec selects its layers
        raise InvalidInputError(f"{path} is not an activation file actgeom can read; formats: {FORMATS}")
    kind, arrays, closer = readers[suffix](path)
    try:
        source = from_arrays(path, kind, arrays, spec, closer)
        source.select(spec.layers)
    except BaseException:
        if closer is not None:
            closer()
        raise
    return source


def _npy(path: Path) -> Arrays:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InvalidInputError(f"{path} is not a NumPy .npy array ({first_line(exc)})") from None
    return "npy", {path.stem: (array, False)}, None


def _npz(path: Path) -> Arrays:
    """Stored (np.savez) members are memory-mapped; compressed ones are read sequentially."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidInputError(f"{path} is not a NumPy .npz archive ({first_line(exc)})") from None
    arrays = {}
    try:
        for info in archive.infolist():
            if info.filename.endswith(".npy"):
                arrays[info.filename[:-4]] = (_npz_member(path, archive, info), False)
    except ValueError as exc:
        archive.close()
        raise InvalidInputError(f"{path}: a member is not a plain NumPy array ({first_line(exc)})") from None
    return "npz", arrays, archive.close


def _npz_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo):
    with archive.open(info) as member:
        shape, fortran, dtype = _npy_header(member)
        header_bytes = member.tell()
    if dtype.hasobject or fortran:
        raise ValueError(f"member {info.filename} holds objects or is Fortran-ordered")
    if info.compress_type == zipfile.ZIP_STORED:
        with open(path, "rb") as raw:  # the local header: 30 bytes + name + extra field
            raw.seek(info.header_offset + 26)
            name_len, extra_len = np.frombuffer(raw.read(4), dtype="<u2")
        start = info.header_offset + 30 + int(name_len) + int(extra_len) + header_bytes
        return np.memmap(path, dtype=dtype, mode="r", offset=start, shape=shape)
    return _SequentialArray(archive, info, shape, dtype, header_bytes)


def _npy_header(stream):
    version = np.lib.format.read_magic(stream)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return reader(stream)


class _SequentialArray:
    """A compressed .npz member read by row range, forward only (re-opened to go back)."""

    def __init__(self, archive, info, shape, dtype, header_bytes):
        self.archive, self.info, self.shape, self.dtype = archive, info, tuple(shape), dtype
        self.header_bytes, self._stream, self._row = header_bytes, None, 0
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * dtype.itemsize

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop = rows.start or 0, min(rows.stop if rows.stop is not None else self.shape[0], self.shape[0])
        if self._stream is None or start < self._row:
            if self._stream is not None:
                self._stream.close()
            self._stream = self.archive.open(self.info)
            self._stream.read(self.header_bytes)
            self._row = 0
        if start > self._row:
            self._stream.seek((start - self._row) * self._row_bytes, 1)
        data = self._stream.read((stop - start) * self._row_bytes)
        self._row = stop
        return np.frombuffer(data, dtype=self.dtype).reshape((stop - start,) + self.shape[1:])


def _safetensors(path: Path) -> Arrays:
    """The format: 8-byte little-endian header length, a JSON header, then raw little-endian bytes."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        try:
            if not 0 < n <= size - 8:
                raise ValueError("bad header length")
            header = json.loads(f.read(n))
        except (ValueError, UnicodeDecodeError):
            raise InvalidInputError(f"{path} is not a safetensors file (no valid JSON header)") from None
    arrays = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(entry.get("dtype"))
        if dtype is None:
            continue  # float8 and other dtypes without a numpy equivalent are not activations we read
        begin, end = entry["data_offsets"]
        shape = tuple(entry["shape"])
        if end - begin != int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize:
            raise InvalidInputError(f"tensor '{name}' in {path}: data_offsets do not match shape {shape}")
        array = np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r", offset=8 + n + begin, shape=shape) \
            if end > begin else np.zeros(shape, dtype=dtype)
        arrays[name] = (array, entry["dtype"] == "BF16")
    return "safetensors", arrays, None


def _torch(path: Path) -> Arrays:
    """A tensor or a (nested) dict of tensors saved with torch.save, read with weights_only=True."""
    try:
        import torch
    except ImportError:
        raise InvalidInputError(f"{path} is a torch file; reading it needs PyTorch: pip install 'actgeom[torch]'") from None
    try:
        # mmap: tensors stay on disk until sliced (only the zip format of torch.save ≥ 1.6 maps)
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # the weights-only unpickler refuses anything but tensors and containers
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        why = f"it holds {found.group(1)}" if found else first_line(exc)[:120]
        raise InvalidInputError(f"{path} is not a file of tensors (torch's weights_only loader refused it: {why}); "
                                "valid: a tensor, or a dict/list of tensors, saved with torch.save") from None
    arrays = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, torch.Tensor):
            arrays[prefix or path.stem] = as_rows(value)  # bfloat16 as its 16 bits
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(f"{prefix}.{i}" if prefix else str(i), item)

    walk("", loaded)
    return "torch", arrays, None


# -- HDF5 ---------------------------------------------------------------------------------------
def _hdf5(path: Path, spec: DumpSpec) -> Source:
    check_metadata(path)
    with h5py.File(path, "r") as f:
        neurox = "sentence_to_index" in f
    if neurox:
        return read_neurox(path, spec)
    dump = Dump(path, spec)
    n = dump.n_rows  # an incomplete dump (--allow-incomplete) may have grown some datasets further

    def prefix(dataset_path: str | None):
        return None if dataset_path is None else _Prefix(dump._file[dataset_path], n)

    layers = {layer.name: RowView(_Prefix(dump._file[layer.path], n), bfloat16=layer.logical_dtype == "bfloat16")
              for layer in dump.layers}
    vectors = {"labels": prefix(dump.labels_path), "position": prefix(dump.positions_path),
               "prediction": prefix(dump.predictions_path),
               "token_id": prefix("rows/token_id" if "rows/token_id" in dump._file else None)}
    source = Source(path, "hdf5", layers, vectors, dump.offsets(), closer=dump.close)
    source.label_names = dump.label_names()
    if dump.is_actgeom:
        source.identity = {key: dump.attrs[key] for key in ("model", "checkpoint", "step") if key in dump.attrs}
    if dump.classifier_layer is not None:
        weight, bias = dump.classifier()
        source.classifier = (weight, bias, dump.classifier_layer)
    return source


class _Prefix:
    """The first ``n`` rows of an HDF5 dataset (the rows every dataset of an incomplete dump has)."""

    def __init__(self, dataset, n: int):
        self.dataset, self.dtype, self.shape = dataset, dataset.dtype, (n,) + dataset.shape[1:]

    def __getitem__(self, rows: slice) -> np.ndarray:
        return self.dataset[rows.start : min(rows.stop, self.shape[0])]
