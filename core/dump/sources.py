"""Activation sources for `actgeom extract`: every input format read as named layers × row blocks.

A :class:`Source` is the one abstraction every reader produces: layers (name → width and
logical dtype) sharing one row axis, read by row range as floating point (bfloat16 decoded
exactly to float32), plus the row vectors the file has (labels, token ids, positions) and
sequence offsets. Nothing is read whole: arrays are memory-mapped or read block by block.

Formats (by suffix, or by content for HDF5): HDF5 (actgeom dumps and foreign layouts through
:class:`Dump`, NeuroX extractions), ``.npy``, ``.npz``, ``.safetensors``, ``.pt``/``.pth``
(torch's ``weights_only`` loader), and Arrow caches (SAELens / Hugging Face ``datasets``:
a directory of ``.arrow`` shards or one shard). 3-D arrays (sequences, tokens, units) become
token rows with equal-length sequences.
"""

from __future__ import annotations

import fnmatch
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from actgeom.core.dump.reader import Dump, DumpSpec, decode_bfloat16, natural_key
from actgeom.core.errors import InvalidInputError

# Row vectors by conventional name (in files that are not HDF5 dumps).
VECTOR_NAMES = {"labels": ("labels", "label", "y", "targets"), "token_id": ("token_ids", "token_id", "input_ids", "tokens"),
                "position": ("positions", "position")}
OFFSET_NAMES = ("offsets", "sequence_offsets")
FORMATS = "HDF5 (.h5/.hdf5), .npy, .npz, .safetensors, .pt/.pth, Arrow (.arrow or a datasets directory)"
_SAFETENSORS_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "BF16": np.uint16,
                       "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                       "U16": np.uint16, "U32": np.uint32, "U64": np.uint64, "BOOL": np.bool_}


@dataclass(frozen=True)
class SourceLayer:
    """One layer of a source: its width and the dtype its values have (bfloat16 read as float32)."""

    name: str
    n_units: int
    dtype: str  # float16 | float32 | float64 | bfloat16


class _Rows:
    """A (n_rows, n_units) view of an array-like: 2-D as is, 3-D (S, T, D) as S·T token rows."""

    def __init__(self, array, bfloat16: bool = False):
        self.array, self.bfloat16 = array, bfloat16
        shape = tuple(array.shape)
        self.seq_len = shape[1] if len(shape) == 3 else None
        self.shape = (shape[0] * shape[1], shape[2]) if len(shape) == 3 else shape

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop = rows.start, rows.stop
        if self.seq_len is None:
            block = np.asarray(self.array[start:stop])
        else:  # whole sequences covering [start, stop), then trimmed
            T = self.seq_len
            first, last = start // T, -(-stop // T)
            block = np.asarray(self.array[first:last]).reshape(-1, self.shape[1])[start - first * T : stop - first * T]
        return decode_bfloat16(block) if self.bfloat16 else block


class Source:
    """Named layers sharing a row axis, with optional labels / token ids / positions / offsets."""

    def __init__(self, path: Path, kind: str, layers: dict[str, _Rows], vectors: dict | None = None,
                 offsets: np.ndarray | None = None, closer=None):
        self.path, self.kind = Path(path), kind
        self._layers = layers
        self._vectors = {k: v for k, v in (vectors or {}).items() if v is not None}
        self._closer = closer
        if not layers:
            raise InvalidInputError(f"found no floating-point activations in {self.path} ({kind}); "
                                    "a layer is a 2-D (rows, units) or 3-D (sequences, tokens, units) float array")
        counts = {name: rows.shape[0] for name, rows in layers.items()}
        if len(set(counts.values())) != 1:
            raise InvalidInputError(f"layers in {self.path} have different numbers of rows: "
                                    + ", ".join(f"{k} {v}" for k, v in counts.items()))
        self.n_rows = next(iter(counts.values()))
        lengths = {rows.seq_len for rows in layers.values()}
        if offsets is None and lengths != {None}:
            if len(lengths) != 1:
                raise InvalidInputError(f"3-D layers in {self.path} have different sequence lengths")
            T = lengths.pop()
            offsets = np.arange(0, self.n_rows + 1, T, dtype=np.int64)
        if offsets is not None and "labels" in self._vectors and self._vectors["labels"].shape[0] == len(offsets) - 1 != self.n_rows:
            self._vectors["labels"] = np.repeat(_whole(self._vectors["labels"]), np.diff(offsets))  # one per sequence
        for key, values in self._vectors.items():
            if values.shape[0] != self.n_rows:
                raise InvalidInputError(f"{key} in {self.path} has {values.shape[0]} rows but the layers have {self.n_rows}")
        self.offsets = None if offsets is None else np.asarray(offsets, dtype=np.int64)
        if self.offsets is not None and (self.offsets[0] != 0 or self.offsets[-1] != self.n_rows
                                         or np.any(np.diff(self.offsets) < 0)):
            raise InvalidInputError(f"sequence offsets in {self.path} must rise from 0 to n_rows={self.n_rows}")

    @property
    def layers(self) -> list[SourceLayer]:
        return [SourceLayer(name, int(rows.shape[1]), _dtype_name(rows)) for name, rows in self._layers.items()]

    @property
    def vector_kinds(self) -> set[str]:
        return set(self._vectors)

    def rows(self, layer: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of a layer as floating point (bfloat16 → float32, exactly)."""
        return self._layers[layer][start:stop]

    def vector(self, kind: str, start: int, stop: int) -> np.ndarray | None:
        values = self._vectors.get(kind)
        return None if values is None else np.asarray(values[start:stop], dtype=np.int64)

    def select(self, patterns: tuple[str, ...]) -> None:
        """Keep only the layers matching any glob (in natural order); refuse a glob that matches none."""
        if not patterns:
            return
        keep = []
        for pattern in patterns:
            hits = [n for n in self._layers if fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise InvalidInputError(f"no layer matches --layers '{pattern}' in {self.path}; layers: "
                                        + ", ".join(self._layers))
            keep += [n for n in hits if n not in keep]
        self._layers = {n: self._layers[n] for n in sorted(keep, key=natural_key)}

    def close(self) -> None:
        if self._closer is not None:
            self._closer()

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _dtype_name(rows: _Rows) -> str:
    return "bfloat16" if rows.bfloat16 else str(np.dtype(rows.array.dtype))


def open_source(path: str | Path, spec: DumpSpec | None = None) -> Source:
    """Open any supported activation file (see the module docstring); one-line errors otherwise."""
    path = Path(path)
    if not path.exists():
        raise InvalidInputError(f"no such file: {path}")
    suffix = path.suffix.lower()
    readers = {".npy": _npy, ".npz": _npz, ".safetensors": _safetensors, ".pt": _torch, ".pth": _torch, ".arrow": _arrow}
    if path.is_dir():
        suffix = ".arrow"
    if suffix not in readers:
        if h5py.is_hdf5(path):
            return _hdf5(path, spec or DumpSpec())  # the DumpSpec selects its layers
        raise InvalidInputError(f"{path} is not an activation file actgeom can read; formats: {FORMATS}")
    source = readers[suffix](path)
    try:
        source.select((spec or DumpSpec()).layers)
    except BaseException:
        source.close()
        raise
    return source


# -- containers of named arrays ---------------------------------------------------------------
def _from_arrays(path: Path, kind: str, arrays: dict, closer=None) -> Source:
    """A Source from named arrays: float arrays are layers, conventional names are row vectors.

    ``arrays`` maps name → (array-like, is_bfloat16).
    """
    lowered = {name.lower(): name for name in arrays}
    vectors, offsets, used = {}, None, set()
    for kind_name, names in VECTOR_NAMES.items():
        found = next((lowered[n] for n in names if n in lowered), None)
        if found is not None:
            array = arrays[found][0]
            vectors[kind_name] = _whole(array).reshape(-1) if len(array.shape) == 2 else array
            used.add(found)
    found = next((lowered[n] for n in OFFSET_NAMES if n in lowered), None)
    if found is not None:
        offsets = _whole(arrays[found][0])
        used.add(found)
    layers = {}
    for name in sorted(arrays, key=natural_key):
        array, bf16 = arrays[name]
        if name in used:
            continue
        is_float = bf16 or np.dtype(array.dtype).kind == "f"
        if is_float and len(array.shape) in (2, 3):
            layers[name] = _Rows(array, bfloat16=bf16)
    return Source(path, kind, layers, vectors, offsets, closer)


def _whole(array) -> np.ndarray:
    """A small array-like (row vector, offsets) read whole."""
    return np.asarray(array[0 : array.shape[0]])


def _npy(path: Path) -> Source:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InvalidInputError(f"{path} is not a NumPy .npy array ({_first_line(exc)})") from None
    return _from_arrays(path, "npy", {path.stem: (array, False)})


def _npz(path: Path) -> Source:
    """Stored (np.savez) members are memory-mapped; compressed ones are read sequentially."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidInputError(f"{path} is not a NumPy .npz archive ({_first_line(exc)})") from None
    arrays = {}
    try:
        for info in archive.infolist():
            if info.filename.endswith(".npy"):
                arrays[info.filename[:-4]] = (_npz_member(path, archive, info), False)
    except ValueError as exc:
        archive.close()
        raise InvalidInputError(f"{path}: a member is not a plain NumPy array ({_first_line(exc)})") from None
    return _from_arrays(path, "npz", arrays, closer=archive.close)


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


def _safetensors(path: Path) -> Source:
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
    return _from_arrays(path, "safetensors", arrays)


def _torch(path: Path) -> Source:
    """A tensor or a (nested) dict of tensors saved with torch.save, read with weights_only=True."""
    try:
        import torch
    except ImportError:
        raise InvalidInputError(f"{path} is a torch file; reading it needs PyTorch: pip install 'actgeom[torch]'") from None
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except Exception as exc:  # the weights-only unpickler refuses anything but tensors and containers
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        why = f"it holds {found.group(1)}" if found else _first_line(exc)[:120]
        raise InvalidInputError(f"{path} is not a file of tensors (torch's weights_only loader refused it: {why}); "
                                "valid: a tensor, or a dict/list of tensors, saved with torch.save") from None
    arrays = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, torch.Tensor):
            arrays[prefix or path.stem] = _tensor_array(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(f"{prefix}.{i}" if prefix else str(i), item)

    walk("", loaded)
    return _from_arrays(path, "torch", arrays)


def _tensor_array(tensor) -> tuple[np.ndarray, bool]:
    """A CPU tensor as a numpy view (bfloat16 as its uint16 bits) and whether it is bfloat16."""
    import torch

    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16), True
    return tensor.numpy(), False


def _is_zip(path: Path) -> bool:
    return zipfile.is_zipfile(path)


# -- Arrow caches (SAELens / datasets) -----------------------------------------------------------
def _arrow(path: Path) -> Source:
    """Arrow IPC stream shards: each float column of (tokens, units) per record is a layer."""
    try:
        import pyarrow as pa
        import pyarrow.ipc
    except ImportError:
        raise InvalidInputError(f"{path} is an Arrow cache; reading it needs pyarrow: pip install 'actgeom[arrow]'") from None
    shards = sorted(path.glob("*.arrow"), key=lambda p: natural_key(p.name)) if path.is_dir() else [path]
    if not shards:
        raise InvalidInputError(f"no .arrow shards in directory {path}; expected a datasets cache (data-*.arrow)")
    tables = []
    for shard in shards:
        try:
            tables.append(pa.ipc.open_stream(pa.memory_map(str(shard))).read_all())
        except (pa.ArrowInvalid, OSError) as exc:
            raise InvalidInputError(f"{shard} is not an Arrow IPC stream ({_first_line(exc)})") from None
    table = pa.concat_tables(tables)
    arrays = {}
    for name in table.column_names:
        column = _ArrowColumn(table.column(name))
        if column.shape is not None:
            arrays[name] = (column, False)
    return _from_arrays(path, "arrow", arrays)


class _ArrowColumn:
    """A column of (T, D) float lists per record (or T ints) as a (records, T[, D]) array-like."""

    def __init__(self, column):
        import pyarrow as pa

        self.column, self.shape, self.dtype = column, None, None
        kind, depth = column.type, 0
        if isinstance(kind, pa.ExtensionType):
            kind = kind.storage_type
        while pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind) or pa.types.is_large_list(kind):
            kind, depth = kind.value_type, depth + 1
        if not (pa.types.is_floating(kind) or pa.types.is_integer(kind)) or depth == 0 or len(column) == 0:
            return
        first = self._records(0, 1)
        if first is None:
            return
        self.dtype = first.dtype
        self.shape = (len(column),) + first.shape[1:]

    def _records(self, start: int, stop: int) -> np.ndarray | None:
        import pyarrow as pa

        chunk = self.column.slice(start, stop - start).combine_chunks()
        if isinstance(chunk.type, pa.ExtensionType):
            chunk = chunk.storage
        dims = [stop - start]
        while hasattr(chunk, "flatten") and (pa.types.is_list(chunk.type) or pa.types.is_fixed_size_list(chunk.type)
                                             or pa.types.is_large_list(chunk.type)):
            lengths = np.unique(chunk.value_lengths().to_numpy(zero_copy_only=False))
            if lengths.size > 1:
                return None  # ragged lists are not a (tokens, units) block
            dims.append(int(lengths[0]) if lengths.size else 0)
            chunk = chunk.flatten()
        return chunk.to_numpy(zero_copy_only=False).reshape(dims)

    def __getitem__(self, rows: slice) -> np.ndarray:
        start = rows.start or 0
        stop = min(rows.stop if rows.stop is not None else self.shape[0], self.shape[0])
        block = self._records(start, stop)
        if block is None or block.shape[1:] != self.shape[1:]:
            raise InvalidInputError("an Arrow column changes shape between records; every record needs the same (tokens, units)")
        return block


# -- HDF5 ---------------------------------------------------------------------------------------
def _hdf5(path: Path, spec: DumpSpec) -> Source:
    with h5py.File(path, "r") as f:
        neurox = "sentence_to_index" in f
    if neurox:
        return _neurox(path, spec)
    dump = Dump(path, spec)
    layers = {layer.name: _Rows(dump._file[layer.path], bfloat16=layer.logical_dtype == "bfloat16") for layer in dump.layers}
    vectors = {"labels": dump._file[dump.labels_path] if dump.labels_path else None,
               "position": dump._file[dump.positions_path] if dump.positions_path else None,
               "token_id": dump._file["rows/token_id"] if "rows/token_id" in dump._file else None}
    return Source(path, "hdf5", layers, vectors, dump.offsets(), closer=dump.close)


class _NeuroXLayer:
    """One layer of a NeuroX file (a dataset per sentence, layers × tokens × units) as token rows."""

    def __init__(self, file: h5py.File, keys: list[str], offsets: np.ndarray, layer: int, n_units: int, dtype):
        self.file, self.keys, self.offsets, self.layer = file, keys, offsets, layer
        self.shape, self.dtype = (int(offsets[-1]), n_units), dtype

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop = rows.start, rows.stop
        first = int(np.searchsorted(self.offsets, start, side="right") - 1)
        parts, s = [], first
        while s < len(self.keys) and self.offsets[s] < stop:
            lo, hi = max(start, self.offsets[s]) - self.offsets[s], min(stop, self.offsets[s + 1]) - self.offsets[s]
            parts.append(self.file[self.keys[s]][self.layer, lo:hi])
            s += 1
        return np.concatenate(parts) if parts else np.zeros((0, self.shape[1]), dtype=self.dtype)


def _neurox(path: Path, spec: DumpSpec) -> Source:
    f = h5py.File(path, "r")
    try:
        raw = f["sentence_to_index"][()]
        mapping = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
        keys = sorted({str(v) for v in mapping.values()}, key=int)
        shapes = [f[k].shape for k in keys]
    except (KeyError, ValueError, TypeError) as exc:
        f.close()
        raise InvalidInputError(f"{path} looks like a NeuroX file but its sentence_to_index or sentence datasets "
                                f"are not readable ({_first_line(exc)})") from None
    if not keys or any(len(s) != 3 or s[0] != shapes[0][0] or s[2] != shapes[0][2] for s in shapes):
        f.close()
        raise InvalidInputError(f"{path}: NeuroX sentences must all be (layers, tokens, units) with the same layers and units")
    offsets = np.concatenate([[0], np.cumsum([s[1] for s in shapes])]).astype(np.int64)
    dtype = f[keys[0]].dtype
    layers = {f"layer_{i}": _Rows(_NeuroXLayer(f, keys, offsets, i, shapes[0][2], dtype)) for i in range(shapes[0][0])}
    try:
        source = Source(path, "neurox", layers, offsets=offsets, closer=f.close)
        source.select(spec.layers)
    except BaseException:
        f.close()
        raise
    return source


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
