"""Long steps after a pass, announced with an estimate of their duration.

A pass reports the rows it has read; what comes after it can run for minutes with no rows to
count: DSE's eigenvalues of a 10 000 × 10 000 kernel (about 80 s on 2 cores), pairwise
statistics of 10^5 classes. Such a step calls :func:`announce`; whoever shows progress (the CLI)
listens with :func:`listening`. Without a listener an announcement costs nothing, and nothing
is timed to make an estimate.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar

import numpy as np

from actgeom.core.base.threads import blas_threads

# listener(text, seconds): the step under way and its estimated duration (None: unknown)
Listener = Callable[[str, "float | None"], None]

_listener: ContextVar[Listener | None] = ContextVar("actgeom_stage_listener", default=None)

# A dense symmetric eigensolve costs ~n³; it is timed once per process on an n/4 matrix (2/64 of
# the work: best of two) capped at this size, so the estimate follows the machine, the BLAS and its threads.
_CALIBRATION_MAX = 1500
_ESTIMATE_FROM = 2000  # below this many rows the solve takes about a second: announced, not timed


@contextlib.contextmanager
def listening(listener: Listener | None) -> Iterator[None]:
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


def announce(text: str, seconds: Callable[[], float | None] | None = None) -> None:
    """Tell the listener that ``text`` starts; ``seconds`` estimates its duration (only called
    when someone listens)."""
    listener = _listener.get()
    if listener is not None:
        listener(text, None if seconds is None else seconds())


def eigensolve_seconds(n: int) -> float | None:
    """Estimated seconds of a dense symmetric n×n float64 eigenvalue solve on this machine."""
    if n < _ESTIMATE_FROM:
        return None
    m = min(n // 4, _CALIBRATION_MAX)
    with blas_threads(n) as threads:  # timed on the threads the n×n solve will have
        return _eigensolve_time(m, threads) * (n / m) ** 3


@functools.cache
def _eigensolve_time(m: int, threads: int) -> float:
    """Seconds of an m×m solve (on this many BLAS threads: the cache key): the better of two,
    after a small one that wakes the BLAS threads."""
    from scipy import linalg

    symmetric = np.random.default_rng(0).standard_normal((m, m))
    symmetric += symmetric.T
    linalg.eigh(symmetric[:64, :64], eigvals_only=True, check_finite=False)
    times = []
    for _ in range(2):
        a = symmetric.copy(order="F")
        started = time.perf_counter()
        linalg.eigh(a, eigvals_only=True, overwrite_a=True, check_finite=False)
        times.append(time.perf_counter() - started)
    return min(times)
