"""Row blocks of one layer, read ahead by a background thread into reused buffers.

h5py serialises reads, and BLAS releases the GIL, so one reader thread keeps the next block
coming while the main thread does the arithmetic on the current one. The reader also converts
to float64 (exact for every stored dtype), which takes that pass off the main thread, and puts a
grouped pass's rows in the order of their groups (``arrange``), which takes that gather off too.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from actgeom.core.dump import Dump, LayerInfo
from actgeom.core.state.groups import Parts

_N_BUFFERS = 3  # one being read, one queued, one being consumed


@dataclass
class Block:
    """Rows [start, start + len(X)) of a layer: float64 values and labels (int64, -1 = none), in
    the order of the rows — or, with ``parts`` (what ``arrange`` made of the block), X's rows in
    ``parts.order`` (the labels still in the rows' order)."""

    start: int
    X: np.ndarray
    labels: np.ndarray | None
    parts: Parts | None = None


def iter_blocks(dump: Dump, layer: LayerInfo, start: int, stop: int, block_rows: int,
                bounds: list[tuple[int, int]] | None = None, arrange: Callable[[int, int], Parts | None] | None = None
                ) -> Iterator[Block]:
    """Yield the blocks of rows [start, stop) (or the given ``bounds``); a block's arrays are
    valid until the next one. ``arrange(a, b)``, called by the reader: the block's Parts
    (core/state/groups.py), whose ``order`` the reader puts the rows in, or None."""
    if bounds is None:
        bounds = [(a, min(a + block_rows, stop)) for a in range(start, stop, block_rows)]
    if not bounds:
        return
    block_rows = max(b - a for a, b in bounds)
    raw = np.empty((block_rows, layer.n_units), dtype=layer.storage_dtype)
    free: queue.Queue = queue.Queue()
    for _ in range(min(_N_BUFFERS, len(bounds))):
        free.put(np.empty((block_rows, layer.n_units)))
    filled: queue.Queue = queue.Queue()
    cancel = threading.Event()
    gathered = np.empty((0, 0))  # a block's decoded rows in its parts' order (before float64: fewer bytes)

    def read_ahead() -> None:
        nonlocal gathered
        try:
            for a, b in bounds:
                buffer = free.get()
                if cancel.is_set():
                    return
                X = buffer[: b - a]
                decoded = dump.decode(layer, dump.read_raw(layer, a, b, raw))
                parts = arrange(a, b) if arrange is not None else None
                if parts is not None:
                    if gathered.dtype != decoded.dtype or gathered.shape[0] < b - a:
                        gathered = np.empty((block_rows, layer.n_units), dtype=decoded.dtype)
                    decoded = np.take(decoded, parts.order, axis=0, out=gathered[: b - a], mode="clip")
                np.copyto(X, decoded)
                filled.put((buffer, Block(a, X, dump.labels(a, b), parts)))
            filled.put(None)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            filled.put(exc)

    reader = threading.Thread(target=read_ahead, name="actgeom-reader", daemon=True)
    reader.start()
    try:
        while (item := filled.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            buffer, block = item
            yield block
            free.put(buffer)
    finally:
        cancel.set()
        free.put(None)  # wake the reader if it waits for a buffer
        reader.join()
