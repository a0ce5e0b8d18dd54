"""The one abstraction every activation reader of `actgeom extract` produces: a :class:`Source`.

A source is named layers (name → width and logical dtype) sharing one row axis, read by row range
as floating point (bfloat16 decoded exactly to float32), plus the row vectors the file has
(labels, token ids, positions) and sequence offsets. Nothing is read whole: the layers are
array-likes (memory maps, HDF5 datasets, lazy readers) sliced one block at a time. 3-D arrays
(sequences, tokens, units) become token rows with equal-length sequences.
"""

from __future__ import annotations

import fnmatch
import mmap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from actgeom.core.base.errors import InvalidInputError
from actgeom.core.dump.hdf5 import decode_bfloat16
from actgeom.core.dump.layout import DumpSpec, natural_key

# Row vectors by conventional name (in files that are not HDF5 dumps).
VECTOR_NAMES = {"labels": ("labels", "label", "y", "targets"), "token_id": ("token_ids", "token_id", "input_ids", "tokens"),
                "position": ("positions", "position")}
OFFSET_NAMES = ("offsets", "sequence_offsets")
MASK_NAMES = ("attention_mask",)  # (sequences, tokens), 0 = padding


@dataclass(frozen=True)
class SourceLayer:
    """One layer of a source: its width and the dtype its values have (bfloat16 read as float32)."""

    name: str
    n_units: int
    dtype: str  # float16 | float32 | float64 | bfloat16


class RowView:
    """A (n_rows, n_units) view of an array-like: 2-D as is, 3-D (S, T, D) as S·T token rows, or
    only the real tokens ``keep`` (flat indices into S·T, from an attention mask)."""

    def __init__(self, array, bfloat16: bool = False, keep: np.ndarray | None = None):
        self.array, self.bfloat16, self.keep = array, bfloat16, keep
        shape = tuple(array.shape)
        self.seq_len = shape[1] if len(shape) == 3 else None
        self.shape = (shape[0] * shape[1], shape[2]) if len(shape) == 3 else shape
        if keep is not None:
            self.shape = (keep.size, self.shape[1])

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop = rows.start, rows.stop
        if self.seq_len is None:
            block = np.asarray(self.array[start:stop])
        elif self.keep is not None:  # the sequences holding these real tokens, then those rows
            flat = self.keep[start:stop]
            T = self.seq_len
            first, last = (int(flat[0]) // T, int(flat[-1]) // T + 1) if flat.size else (0, 0)
            block = np.asarray(self.array[first:last]).reshape(-1, self.shape[1])[flat - first * T]
        else:  # whole sequences covering [start, stop), then trimmed
            T = self.seq_len
            first, last = start // T, -(-stop // T)
            block = np.asarray(self.array[first:last]).reshape(-1, self.shape[1])[start - first * T : stop - first * T]
        mapped = getattr(self.array, "_mmap", None)
        if mapped is not None and hasattr(mmap, "MADV_DONTNEED"):
            # copy the block out, then drop the mapped pages: resident memory stays a block, not the file
            block = np.array(block)
            mapped.madvise(mmap.MADV_DONTNEED)
        return decode_bfloat16(block) if self.bfloat16 else block


class Source:
    """Named layers sharing a row axis, with optional labels / token ids / positions / offsets."""

    def __init__(self, path: Path, kind: str, layers: dict[str, RowView], vectors: dict | None = None,
                 offsets: np.ndarray | None = None, closer=None):
        self.path, self.kind = Path(path), kind
        self._layers = layers
        self._vectors = {k: v for k, v in (vectors or {}).items() if v is not None}
        self._closer = closer
        self.label_names: list[str] | None = None
        self.classifier: tuple | None = None  # (W, b or None, the layer it reads), from an actgeom dump
        self.identity: dict = {}  # an actgeom dump's model, checkpoint and step
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
        if (offsets is not None and "labels" in self._vectors
                and self._vectors["labels"].shape[0] == len(offsets) - 1 != self.n_rows):
            self._vectors["labels"] = np.repeat(whole(self._vectors["labels"]), np.diff(offsets))  # one per sequence
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


def _dtype_name(rows: RowView) -> str:
    return "bfloat16" if rows.bfloat16 else str(np.dtype(rows.array.dtype))



# -- containers of named arrays ---------------------------------------------------------------
# What a reader of a container of named arrays returns: (kind, {name: (array-like, is_bfloat16)}, closer or None).
Arrays = tuple


def from_arrays(path: Path, kind: str, arrays: dict, spec: DumpSpec, closer=None) -> Source:
    """A Source from named arrays: float arrays are layers; row vectors and offsets are the arrays
    ``spec`` names (--labels, --offsets) or have a conventional name (VECTOR_NAMES, OFFSET_NAMES).

    ``arrays`` maps name → (array-like, is_bfloat16).
    """
    lowered = {name.lower(): name for name in arrays}
    given = {"labels": (spec.labels, "--labels"), "offsets": (spec.offsets, "--offsets")}
    for name, option in given.values():
        if name is not None and name not in arrays:
            raise InvalidInputError(f"no array '{name}' in {path} (given by {option}); arrays: {', '.join(arrays)}")

    def find(key: str, names: tuple[str, ...]) -> str | None:
        named = given.get(key, (None,))[0]
        return named if named is not None else next((lowered[n] for n in names if n in lowered), None)

    vectors, offsets, used, keep = {}, None, set(), None
    found = find("attention_mask", MASK_NAMES)
    if found is not None:  # (S, T): real tokens only, sequences of their counts
        mask = whole(arrays[found][0]).astype(bool)
        if mask.ndim != 2:
            raise InvalidInputError(f"attention mask '{found}' in {path} has shape {mask.shape}; expected (sequences, tokens)")
        keep = np.flatnonzero(mask.reshape(-1))
        offsets = np.concatenate([[0], np.cumsum(mask.sum(axis=1))])
        used.add(found)
    for key, names in VECTOR_NAMES.items():
        found = find(key, names)
        if found is not None:
            array = arrays[found][0]
            if len(array.shape) == 2:  # (S, T) per token
                array = whole(array).reshape(-1)
                array = array if keep is None else array[keep]
            vectors[key] = array
            used.add(found)
    found = find("offsets", OFFSET_NAMES)
    if found is not None:
        if keep is not None:
            raise InvalidInputError(f"{path} has both an attention mask and sequence offsets; keep one")
        offsets = whole(arrays[found][0])
        used.add(found)
    layers = {}
    for name in sorted(arrays, key=natural_key):
        array, bf16 = arrays[name]
        if name in used:
            continue
        is_float = bf16 or np.dtype(array.dtype).kind == "f"
        if is_float and len(array.shape) in (2, 3):
            masked = keep is not None and len(array.shape) == 3
            if masked and tuple(array.shape[:2]) != mask.shape:
                raise InvalidInputError(f"layer '{name}' in {path} has (sequences, tokens) = {tuple(array.shape[:2])} but "
                                        f"the attention mask has {mask.shape}")
            layers[name] = RowView(array, bfloat16=bf16, keep=keep if masked else None)
    return Source(path, kind, layers, vectors, offsets, closer)


def whole(array) -> np.ndarray:
    """A small array-like (row vector, offsets) read whole."""
    return np.asarray(array[0 : array.shape[0]])



def first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
