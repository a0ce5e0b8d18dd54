"""One BLAS thread for small matrices.

A multi-threaded BLAS/LAPACK call on a small matrix waits for its slowest thread at every step, and
on a loaded machine (a shared cluster node, or only our own reader thread) a thread that is not
scheduled stalls the call. Measured on 2 cores under a load of 3.5 (benchmarks/RESULTS.md): DSMI's
60 kernels of ~180 rows took 3.0 s with two threads and 0.12 s with one. Larger solves keep every
thread: on the quiet machine two threads solve a 2 000 × 2 000 matrix in 0.28 s, one in 0.53 s
(1 000: 0.049 and 0.068 s), though under that load DSE of 1 797 rows took 2.2 s on two and 0.44 s on one.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

SMALL_MATRIX = 1024  # matrices of a smaller side are solved on one thread


@functools.cache
def _controller():
    """The BLAS libraries loaded (numpy's and scipy's: both are by the time a metric is computed)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextlib.contextmanager
def one_thread_below(side: int) -> Iterator[None]:
    """BLAS and LAPACK on one thread inside the block when its matrices' side is below SMALL_MATRIX."""
    if side >= SMALL_MATRIX:
        yield
        return
    with _controller().limit(limits=1, user_api="blas"):
        yield
