"""Seeded row keys, and the sample of rows they choose.

Every row gets a pseudo-random uint64 key: splitmix64 of its global row number (or of its sample
id, token id, ...) and the seed. A key depends only on those, so whatever keeps the rows with the
smallest keys (the sample for DSE, TwoNN, RSA, ...) or compares keys with a threshold (the probe's
train/test split, extract's subsample) chooses the same rows in every layer, chunking, shard,
backend and run.
"""

from __future__ import annotations

import numpy as np

_SPLITMIX_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def hash_keys(values: np.ndarray, seed: int) -> np.ndarray:
    """The key of each of ``values`` (int64: row numbers, sample ids, token ids; a negative one
    counts as its two's-complement bits): splitmix64 of value and seed, as uint64."""
    return _splitmix64(np.asarray(values, dtype=np.int64).view(np.uint64), seed)


def row_keys(start: int, stop: int, seed: int) -> np.ndarray:
    """The keys of rows [start, stop) (0 ≤ start ≤ stop ≤ 2⁶⁴): ``hash_keys(np.arange(start, stop), seed)``."""
    return _splitmix64(np.arange(start, stop, dtype=np.uint64), seed)


def _splitmix64(x: np.ndarray, seed: int) -> np.ndarray:
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as splitmix64 means it to
        x = x + np.uint64(seed) * _SPLITMIX_GAMMA + _SPLITMIX_GAMMA
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


class Reservoir:
    """A seeded uniform sample of ``size`` rows (with labels and row indices), order-free.

    The sample is the ``size`` rows with the smallest keys (:func:`hash_keys` of the row numbers). Offered rows
    that beat the largest kept key replace the rows they push out, in place: no copy of the
    sample per block.
    """

    def __init__(self, size: int, n_units: int, dtype, seed: int = 0):
        self.size, self.seed = int(size), int(seed)
        self._keys = np.zeros(0, dtype=np.uint64)
        self._index = np.zeros(0, dtype=np.int64)
        self._labels = np.zeros(0, dtype=np.int64)
        self._rows = np.zeros((0, n_units), dtype=dtype)
        self.n_rows = 0

    keys = property(lambda self: self._keys[: self.n_rows])
    index = property(lambda self: self._index[: self.n_rows])
    labels = property(lambda self: self._labels[: self.n_rows])
    rows = property(lambda self: self._rows[: self.n_rows])

    def update(self, X: np.ndarray, y: np.ndarray, index: np.ndarray) -> None:
        """Offer rows X with labels y and global row indices ``index``."""
        if self.size == 0 or X.shape[0] == 0:
            return
        keys = hash_keys(index, self.seed)
        at = np.arange(X.shape[0])
        if self.n_rows == self.size:  # only rows that beat the largest kept key can enter
            at = np.flatnonzero(keys < self.keys.max())
        self._absorb(keys[at], index[at], y[at], X, at)

    def _absorb(self, keys, index, labels, rows, at) -> None:
        """Offered rows: their keys, indices and labels, and their values ``rows[at]`` (read only
        for the rows that enter the sample: one copy each, into the sample)."""
        if keys.size == 0:
            return
        fill = min(self.size - self.n_rows, keys.size)
        if self.n_rows + fill > self._keys.size:  # room for the rows offered so far, never more than size
            room = min(self.size, max(2 * self._keys.size, self.n_rows + fill))  # (a size beyond the rows costs nothing)
            self._keys, self._index, self._labels, self._rows = (
                np.concatenate([a[: self.n_rows], np.empty((room - self.n_rows,) + a.shape[1:], dtype=a.dtype)])
                for a in (self._keys, self._index, self._labels, self._rows))
        if fill:  # still filling up
            put = slice(self.n_rows, self.n_rows + fill)
            self._keys[put], self._index[put], self._labels[put] = keys[:fill], index[:fill], labels[:fill]
            self._rows[put] = rows[at[:fill]]
            self.n_rows += fill
            keys, index, labels, at = keys[fill:], index[fill:], labels[fill:], at[fill:]
            if keys.size == 0:
                return
        everything = np.concatenate([self._keys, keys])
        kept = np.zeros(everything.size, dtype=bool)
        kept[np.argpartition(everything, self.size - 1)[: self.size]] = True
        out = np.flatnonzero(~kept[: self.size])  # slots of kept rows pushed out ...
        into = np.flatnonzero(kept[self.size :])  # ... by these offered rows
        self._keys[out], self._index[out], self._labels[out] = keys[into], index[into], labels[into]
        self._rows[out] = rows[at[into]]

    def merge(self, other: "Reservoir") -> None:
        self._absorb(other.keys, other.index, other.labels, other.rows, np.arange(other.n_rows))

    def sample(self, size: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row indices ascending, labels, rows) of the sample, or of its first ``size`` rows by
        key: exactly the sample a reservoir of that size would hold (same seed)."""
        chosen = np.arange(self.n_rows)
        if size is not None and size < self.n_rows:
            chosen = np.argpartition(self.keys, size - 1)[:size] if size > 0 else chosen[:0]
        order = chosen[np.argsort(self.index[chosen])]
        return self.index[order], self.labels[order], self.rows[order]

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"keys": self.keys, "index": self.index, "labels": self.labels, "rows": self.rows,
                "params": np.array([self.size, self.seed], dtype=np.int64)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "Reservoir":
        size, seed = (int(v) for v in arrays["params"])
        acc = cls(size, arrays["rows"].shape[1], arrays["rows"].dtype, seed)
        acc._absorb(arrays["keys"], arrays["index"], arrays["labels"], arrays["rows"], np.arange(arrays["keys"].size))
        return acc
