"""Who runs the passes: this process (``local``), or tasks over row ranges on a Dask cluster (``dask``).

A backend is opened once per command (:func:`open_backend`) and handed to ``core.analysis.run``; the
local backend is ``None`` (the engine runs in this process). The Dask backend lives in
core/backends/dask.py and is imported only when chosen, so dask is an optional extra.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from actgeom.core.base.errors import OptionError, UsageError

BACKENDS = ("local", "dask")
DASK_MISSING = "--backend dask needs the dask extra: pip install 'actgeom[dask]'"


@dataclass(frozen=True)
class BackendOptions:
    """``scheduler``: the address of a running dask.distributed scheduler; else ``workers``
    processes of a LocalCluster on this machine (None: one per core). ``ranges``: row ranges per
    file (None: two per worker, and at most ROWS_PER_TASK rows each). ``save_stats``: a directory
    keeping each task's partial statistics, reused by a re-run. ``retries``: of a failed task."""

    name: str = "local"
    scheduler: str | None = None
    workers: int | None = None
    ranges: int | None = None
    save_stats: Path | None = None
    retries: int = 2

    def __post_init__(self) -> None:
        if self.name not in BACKENDS:
            raise OptionError("backend", self.name, f"is not one of {', '.join(BACKENDS)}")
        if self.workers is not None and self.workers < 1:
            raise OptionError("workers", self.workers, "must be ≥ 1")
        if self.ranges is not None and self.ranges < 1:
            raise OptionError("ranges", self.ranges, "must be ≥ 1")
        if self.scheduler is not None and self.workers is not None:
            raise UsageError("--scheduler and --workers exclude each other: the scheduler's cluster has its workers")
        if self.name == "local":
            given = [flag for flag, value in (("--scheduler", self.scheduler), ("--workers", self.workers),
                                              ("--save-stats", self.save_stats)) if value is not None]
            if given:
                raise UsageError(f"{given[0]} needs --backend dask")


@contextlib.contextmanager
def open_backend(options) -> Iterator[object | None]:
    """The backend for ``core.analysis.run``: None for local, else a started Dask backend (closed on exit);
    a backend already opened (not :class:`BackendOptions`) is used as it is."""
    if options is not None and not isinstance(options, BackendOptions):
        yield options
        return
    if options is None or options.name == "local":
        yield None
        return
    try:
        import distributed  # noqa: F401  (the extra: dask[distributed])
    except ImportError:
        raise UsageError(DASK_MISSING) from None
    from actgeom.core.backends.dask import DaskBackend

    with DaskBackend(options) as backend:
        yield backend
