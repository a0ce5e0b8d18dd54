"""Opening and reading an HDF5 file that may be damaged or hostile.

Before h5py opens a file, it must be a regular file, and its metadata is walked in a forked child
with a time limit (damaged metadata can crash or hang the HDF5 library itself). Once it is open,
h5py's errors on damaged bytes become one clear error naming the file; attributes are read as
plain values (an array too large to show is described, not read); a dataset read whole must be on
disk and of a plausible size; float datasets include bfloat16 stored as uint16; names from the file
are made safe for messages. :func:`list_datasets` is the metadata-only listing for ``actgeom info``.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import stat
from pathlib import Path

import h5py
import numpy as np

from actgeom.core.base.errors import InvalidInputError

FLOAT_DTYPES = (np.float16, np.float32, np.float64)
MAX_SHOWN_ATTR_ELEMENTS = 1024  # a larger attribute array is described (shape, dtype), not read
# Datasets read whole (offsets, classifier, one attention sequence) must fit in this; more is
# not a real dump but a hostile or broken file, refused before the allocation.
MAX_WHOLE_READ_BYTES = 4 << 30
# What h5py raises on a damaged file (bad addresses, broken B-trees, undecodable messages).
_H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError)
# Reading a dump's metadata takes milliseconds; a minute allows for slow network storage. A child
# process that reads it for longer is spinning inside HDF5 on damaged metadata.
METADATA_TIME_LIMIT_S = 60


# -- before and while opening --------------------------------------------------------------
def _check_regular_file(path: Path) -> None:
    """Refuse what h5py would hang on or misread: a FIFO, a device, a socket, a directory."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InvalidInputError(f"no such file: {path}") from None
    except OSError as exc:
        raise InvalidInputError(f"cannot open {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise InvalidInputError(f"{path} is a directory; give an HDF5 file")
    if not stat.S_ISREG(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise InvalidInputError(f"{path} is {kind}, not a regular file; actgeom reads dumps from regular files "
                                "(copy the stream to a file first)")


def check_metadata(path: Path) -> None:
    """Read every object header and attribute of the file in a child process first.

    Damaged HDF5 metadata can make the HDF5 library itself crash (a segfault) or spin for ever,
    below anything Python can catch; in a child, that becomes one clear error here instead of the
    death or hang of the command. Costs a fork and a metadata walk (milliseconds). Only where
    ``os.fork`` exists (not on Windows, where the file is opened unguarded).
    """
    if not hasattr(os, "fork"):
        return
    with getattr(h5py._objects, "phil", contextlib.nullcontext()):  # no thread of ours inside HDF5 at the fork
        pid = os.fork()
    if pid == 0:  # the child: walk, then leave without running the parent's exit handlers or flushing its buffers
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C (sent to the whole group) is the parent's to meet
            faulthandler.disable()  # a crash here is reported by the parent, not dumped on stderr
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(METADATA_TIME_LIMIT_S)
            _walk_metadata(path)
        finally:
            os._exit(0)  # a Python-level error is the parent's to meet again, and report
    try:
        _, status = os.waitpid(pid, 0)
    except BaseException:  # Ctrl-C while the child walks: end the child, then go on being interrupted
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        if number == signal.SIGINT:  # Ctrl-C reached the child before it could ignore it
            raise KeyboardInterrupt
        why = (f"reading its metadata did not finish within {METADATA_TIME_LIMIT_S} s"
               if number == signal.SIGALRM else
               f"the HDF5 library crashed reading its metadata ({signal.Signals(number).name})")
        raise InvalidInputError(f"cannot read {path}: the file is damaged ({why})")


def _walk_metadata(path: Path) -> None:
    """Every object header, attribute and chunk index of the file: what opening a dump reads."""
    with h5py.File(path, "r") as f:
        _attrs(f)

        def visit(_, obj):
            _attrs(obj)
            if isinstance(obj, h5py.Dataset):
                _missing_on_disk(obj)
        f.visititems(visit)


@contextlib.contextmanager
def _damaged(path: Path):
    """h5py's errors on damaged metadata as one clear error."""
    try:
        yield
    except _H5_ERRORS as exc:
        raise InvalidInputError(f"cannot read {path}: the file is damaged ({_first_line(exc)})") from None


def _open(path: Path) -> h5py.File:
    """The file opened for reading, once it is known to be a regular file whose metadata HDF5 can walk."""
    _check_regular_file(path)
    check_metadata(path)
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InvalidInputError(f"{path} is not a readable HDF5 file ({_first_line(exc)})") from None


def list_datasets(path: str | Path) -> list[dict]:
    """Every dataset of an HDF5 file (path, shape, dtype) and whether it could be a layer (why not).

    Metadata only: no dataset is read. For ``actgeom info`` on a file whose layers are unclear.
    """
    path = Path(path)
    handle = _open(path)
    found = []
    with handle, _damaged(path):
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                name = _name(name)
                why = None if obj.ndim == 2 and _is_float_like(obj) else (
                    f"{obj.ndim}-D" if obj.ndim != 2 else f"dtype {obj.dtype}")
                found.append({"path": name, "shape": list(obj.shape), "dtype": str(obj.dtype),
                              "could_be_layer": why is None, "why_not": why})
        handle.visititems(visit)
    return found


# -- what an object holds ------------------------------------------------------------------
def _read(ds: h5py.Dataset, selection, what: str, path: Path, start: int | None = None):
    """ds[selection], with a read failure (corrupt bytes) as one clear error naming the file ``path``."""
    try:
        return ds[selection]
    except _H5_ERRORS as exc:
        rows = "" if start is None else f"from row {start} "
        raise InvalidInputError(f"cannot read {what} {rows}in {path}: {_first_line(exc)}") from None


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
    """Attributes as plain values; an array too large to show is described, not read."""
    out = {}
    for key in obj.attrs:
        attr = obj.attrs.get_id(key)
        size = int(np.prod(attr.shape)) if attr.shape else 1
        if size > MAX_SHOWN_ATTR_ELEMENTS:
            out[key] = f"<array of shape {tuple(attr.shape)}, dtype {attr.dtype}>"
            continue
        try:
            out[key] = _plain(obj.attrs[key])
        except (OSError, TypeError, ValueError) as exc:  # a type h5py cannot read
            out[key] = f"<unreadable: {_first_line(exc)}>"
    return out


def _missing_on_disk(ds: h5py.Dataset) -> bool:
    """True when the file does not hold what the dataset declares (sparse chunks, a truncated or
    never-written contiguous block): reading it would yield fill values, not data."""
    if ds.size == 0:
        return False
    if ds.chunks is None:
        if ds.id.get_offset() is None:  # never written (or a virtual/external layout)
            return ds.external is None and not ds.is_virtual
        return ds.id.get_storage_size() < ds.size * ds.dtype.itemsize
    expected = 1
    for extent, chunk in zip(ds.shape, ds.chunks):
        expected *= -(-extent // chunk)
    return ds.id.get_num_chunks() < expected


def _check_whole_read(ds: h5py.Dataset, what: str) -> None:
    """A dataset read whole must be on disk and small enough to hold in memory."""
    if ds.size * ds.dtype.itemsize > MAX_WHOLE_READ_BYTES:
        raise InvalidInputError(f"{what} declares shape {ds.shape} ({_gib(ds.size * ds.dtype.itemsize)}); "
                                f"more than {_gib(MAX_WHOLE_READ_BYTES)} is not a plausible {what.split(' ')[0]}")
    if _missing_on_disk(ds):
        raise InvalidInputError(f"{what} declares shape {ds.shape} but the file does not hold that data")


def _is_bfloat16(ds: h5py.Dataset) -> bool:
    return ds.dtype == np.uint16 and _plain(ds.attrs.get("logical_dtype", "")) == "bfloat16"


def _is_float_like(ds: h5py.Dataset) -> bool:
    return ds.dtype in FLOAT_DTYPES or _is_bfloat16(ds)


def decode_bfloat16(bits: np.ndarray) -> np.ndarray:
    """Exact bfloat16 → float32: the 16 stored bits are the high half of a float32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


# -- names and sizes in messages -----------------------------------------------------------
def safe_name(text: str) -> str:
    """A name from a file, with control characters escaped, for messages (they may reach a terminal)."""
    return "".join(f"\\x{ord(c):02x}" if ord(c) < 32 or 0x7F <= ord(c) < 0xA0 else c for c in str(text))


def _name(name: str | bytes) -> str:
    """An object name from the file; h5py gives bytes when they are not UTF-8 (a damaged file)."""
    if isinstance(name, bytes):
        raise InvalidInputError(f"an object name in the file is not UTF-8 ({name[:40]!r}): the file is damaged")
    return name


def _listing(names: list[str], limit: int = 20) -> str:
    if not names:
        return "(none)"
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.3g} GiB"
