"""Readers of activation caches written by other tools: Arrow shards of SAELens / Hugging Face
``datasets`` caches (pyarrow, an optional extra) and NeuroX HDF5 extractions."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from actgeom.core.base.errors import InvalidInputError
from actgeom.core.dump.layout import DumpSpec, natural_key
from actgeom.core.dump.source import Arrays, RowView, Source, first_line


def read_arrow(path: Path) -> Arrays:
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
            raise InvalidInputError(f"{shard} is not an Arrow IPC stream ({first_line(exc)})") from None
    table = pa.concat_tables(tables)
    arrays = {}
    for name in table.column_names:
        column = _ArrowColumn(table.column(name))
        if column.shape is not None:
            arrays[name] = (column, False)
    return "arrow", arrays, None


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


def read_neurox(path: Path, spec: DumpSpec) -> Source:
    f = h5py.File(path, "r")
    try:
        raw = f["sentence_to_index"][()]
        mapping = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
        keys = sorted({str(v) for v in mapping.values()}, key=int)
        shapes = [f[k].shape for k in keys]
    except (KeyError, ValueError, TypeError) as exc:
        f.close()
        raise InvalidInputError(f"{path} looks like a NeuroX file but its sentence_to_index or sentence datasets "
                                f"are not readable ({first_line(exc)})") from None
    if not keys or any(len(s) != 3 or s[0] != shapes[0][0] or s[2] != shapes[0][2] for s in shapes):
        f.close()
        raise InvalidInputError(f"{path}: NeuroX sentences must all be (layers, tokens, units) with the same layers and units")
    offsets = np.concatenate([[0], np.cumsum([s[1] for s in shapes])]).astype(np.int64)
    dtype = f[keys[0]].dtype
    layers = {f"layer_{i}": RowView(_NeuroXLayer(f, keys, offsets, i, shapes[0][2], dtype)) for i in range(shapes[0][0])}
    try:
        source = Source(path, "neurox", layers, offsets=offsets, closer=f.close)
        source.select(spec.layers)
    except BaseException:
        f.close()
        raise
    return source
