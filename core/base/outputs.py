"""Every output file goes through here: refused when it would destroy an input, written atomically.

The rules (README "Output files"):

- a path that is, or resolves to (symlink, hard link, ``./``), one of the inputs is refused;
- an existing directory is refused; so is a path whose directory is missing or not writable,
  or an existing read-only file — all checked by :func:`check_output` before any work starts;
- a symlink is written through: the temporary file lives beside the link's final target and is
  renamed onto it, so the link stays a link;
- a character or block device, or a FIFO (``/dev/null``, ``/dev/stdout``, a named pipe), is
  written directly, like a shell redirection: a rename would replace the special file, so there
  is no atomicity there; a socket is refused;
- a regular file is written to a temporary file in the same directory, flushed to disk and
  renamed onto the target: a reader sees the old file or the new one, never a partial one; on
  any failure the temporary file is removed and the target is left as it was;
- a new file gets mode ``0666 & ~umask``, as a shell redirection would give it.

A refused path raises :class:`UsageError` (exit 2); a failure while writing (disk full, I/O
error) raises :class:`OutputError`, "cannot write PATH: <reason>" (exit 1).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from actgeom.core.base.errors import OutputError, UsageError

PathLike = str | os.PathLike


def check_output(path: PathLike, inputs: Iterable[PathLike] = (), *, option: str = "-o") -> Path:
    """Refuse ``path`` as an output now (before a long pass) if it cannot or must not be written.

    Returns the path the bytes will go to: ``path`` with every symlink resolved.
    """
    path = Path(path)
    target = Path(os.path.realpath(path))
    for given in inputs:
        if _same_file(target, Path(given)):
            raise UsageError(f"{option} {path} is the input {given}; refusing to overwrite an input "
                             "(choose another output path)")
    mode = _mode(target)
    if mode is not None:
        if stat.S_ISDIR(mode):
            raise UsageError(f"{option} {path} is a directory; give a file path (e.g. {path}/result.json)")
        if stat.S_ISSOCK(mode):
            raise UsageError(f"{option} {path} is a socket; give a file path, a FIFO or a device")
        if not stat.S_ISREG(mode):
            return target  # a device or FIFO: written directly (see the module docstring)
        if not os.access(target, os.W_OK):
            raise UsageError(f"cannot write {path}: Permission denied (the file is read-only)")
    directory = target.parent
    if not directory.is_dir():
        raise UsageError(f"cannot write {path}: directory {directory} does not exist")
    try:  # the honest test of writability: create (and remove) a file where the temporary file will be
        fd, probe = create_temp(directory, target.name)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)
    return target


def check_outputs(outputs: dict[str, PathLike | None], inputs: Iterable[PathLike] = ()) -> None:
    """Check every given output ({option: path}) against the inputs and against each other."""
    inputs = list(inputs)
    seen: dict[Path, str] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        target = check_output(path, inputs, option=option)
        if target in seen:
            raise UsageError(f"{option} and {seen[target]} name the same file {path}; give each its own path")
        seen[target] = option


@contextlib.contextmanager
def atomic_path(path: PathLike, inputs: Iterable[PathLike] = (), *, option: str = "-o") -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` atomically (see module).

    For writers that want a file name (``np.savez(path)``, ``h5py.File(path, "w")``). The
    temporary file exists (empty) and lives beside the final target; a writer may replace it.
    """
    target = check_output(path, inputs, option=option)
    special = target.exists() and not target.is_file()
    directory = Path(tempfile.gettempdir()) if special else target.parent
    try:
        fd, tmp = create_temp(directory, target.name)
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        yield tmp
        if special:
            with open(tmp, "rb") as source, open(target, "wb") as sink:
                shutil.copyfileobj(source, sink)
        else:
            os.chmod(tmp, _new_file_mode())  # a writer may have replaced it with a 0600 file
            _fsync(tmp)
            os.replace(tmp, target)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_output(path: PathLike, inputs: Iterable[PathLike] = (), *, text: bool = False,
                  option: str = "-o") -> Iterator[IO]:
    """Yield an open handle (binary, or UTF-8 text); on success its bytes replace ``path`` atomically.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "result.txt"
    >>> with atomic_output(out, text=True) as handle:
    ...     _ = handle.write("done\\n")
    >>> out.read_text()
    'done\\n'
    """
    target = check_output(path, inputs, option=option)
    if target.exists() and not target.is_file():  # device or FIFO: no rename possible
        try:
            with open(target, "w" if text else "wb", **({"encoding": "utf-8"} if text else {})) as handle:
                yield handle
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
        return
    with atomic_path(target, inputs, option=option) as tmp:
        try:
            with open(tmp, "w" if text else "wb", **({"encoding": "utf-8"} if text else {})) as handle:
                yield handle
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


def write_output(path: PathLike, text: str, inputs: Iterable[PathLike] = (), *, option: str = "-o") -> None:
    """Write ``text`` (UTF-8) to ``path`` by the rules above."""
    with atomic_output(path, inputs, text=True, option=option) as handle:
        handle.write(text)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return os.path.realpath(a) == os.path.realpath(b)


def _mode(path: Path) -> int | None:
    try:
        return path.stat().st_mode
    except FileNotFoundError:
        return None


def create_temp(directory: Path, name: str) -> tuple[int, Path]:
    """A new file ``.NAME.XXXX.tmp`` in ``directory``, mode 0666 & ~umask (the kernel applies it)."""
    for _ in range(100):
        tmp = directory / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {directory}")


def _new_file_mode() -> int:
    umask = os.umask(0o022)  # reading the umask means setting it; restored at once
    os.umask(umask)
    return 0o666 & ~umask


def _fsync(path: Path) -> None:
    """Flush the file's bytes to disk before the rename makes it visible."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
