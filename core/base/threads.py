"""How many CPUs actgeom may use, and how many BLAS/LAPACK threads each operation gets.

The CPUs this process may use are the fewest any of these allows: its affinity mask, the cgroup's
CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``, rounded up), ``SLURM_CPUS_PER_TASK``, the
user's own ``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS``/``MKL_NUM_THREADS``, and ``--threads N``
(or ``ACTGEOM_THREADS``). The command line decides it once at start-up (:func:`configure`) and
limits every BLAS to it; the Python API decides it at the first heavy operation.

Per operation (:func:`blas_threads`), a multi-threaded LAPACK call waits for its slowest thread at
every step, so a thread that is not scheduled stalls all of them. Measured with scipy's ``eigh``
of a random symmetric N×N float64 matrix on this 2-core machine, best of two
(benchmarks/RESULTS.md, "BLAS threads per operation"):

=====  ==========================  ===============================  ==============================
N      quiet (earlier session)     shared, load 3–8 (other users)   + 2 busy processes, load 9–12
=====  ==========================  ===============================  ==============================
512    —                           1: 0.040 s   2: 0.106 s          1: 0.115 s   2: 7.0 s
1 000  1: 0.068 s   2: 0.049 s     1: 0.224 s   2: 2.13 s           1: 1.01 s    2: 18.3 s
1 797  —                           1: 0.582 s   2: 6.66 s           1: 4.90 s    2: 49.8 s
2 000  1: 0.53 s    2: 0.28 s      —                                —
=====  ==========================  ===============================  ==============================

So a second thread gains at most 1.9× when its core is free and loses 10–60× when it is not.
Hence: matrices of a side below SMALL_MATRIX always get one thread (DSMI's class kernels, prompt
Grams, D×D spectra: too little work to share), and larger ones get as many threads as there are
CPUs nobody else is running on, right now, capped at the usable CPUs. "Nobody else" is the
kernel's count of runnable threads (/proc/loadavg, instantaneous) less this process's own runnable
threads; the 1-minute load average is not used: it lags a minute behind a load that starts or
stops, and counts our own BLAS threads, so a long multi-threaded solve would talk itself down.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Iterator
from pathlib import Path

from actgeom.core.base.errors import OptionError, UsageError

SMALL_MATRIX = 1024  # matrices of a smaller side are solved on one thread
THREADS_ENV = "ACTGEOM_THREADS"
BLAS_ENVS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")  # the user's, when set

_configured: int | None = None  # the usable CPUs decided at start-up (None: decided on first use)


def cpu_limits(requested: int | None = None, *, environ=os.environ, cgroup_root: Path = Path("/sys/fs/cgroup"),
               proc_cgroup: Path = Path("/proc/self/cgroup")) -> dict[str, int]:
    """Each limit on the CPUs this process may use, by where it comes from (those that apply)."""
    limits = {"affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1}
    quota = cgroup_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        limits["cgroup"] = quota
    for name in ("SLURM_CPUS_PER_TASK", *BLAS_ENVS):
        value = _positive(environ.get(name, "").split(",")[0])  # OMP_NUM_THREADS may list nested levels
        if value is not None:
            limits[name] = value
    if requested is not None:
        if requested < 1:
            raise OptionError("threads", requested, "is not a number of threads: give a whole number ≥ 1")
        limits["--threads"] = requested
    elif environ.get(THREADS_ENV, "").strip():
        value = _positive(environ[THREADS_ENV])
        if value is None:
            raise UsageError(f"{THREADS_ENV}='{environ[THREADS_ENV]}' is not a number of threads: "
                             "give a whole number ≥ 1 (or unset it)")
        limits[THREADS_ENV] = value
    return limits


def _positive(text: str) -> int | None:
    try:
        value = int(text.strip())
    except ValueError:
        return None
    return value if value >= 1 else None


def cgroup_quota(root: Path, proc_cgroup: Path) -> int | None:
    """CPUs the cgroup's quota allows (quota/period rounded up; the tightest of the cgroup and its
    parents), or None without a quota. v2: ``cpu.max`` = "quota period" or "max period"; v1:
    ``cpu.cfs_quota_us`` (−1: none) over ``cpu.cfs_period_us``."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    found = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2, unified
            files = [(d / "cpu.max", None) for d in _cgroup_dirs(root, path)]
        elif "cpu" in controllers.split(","):
            files = [(d / "cpu.cfs_quota_us", d / "cpu.cfs_period_us")
                     for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu") for d in _cgroup_dirs(root / mount, path)]
        else:
            continue
        for quota_file, period_file in files:
            with contextlib.suppress(OSError, ValueError, IndexError):
                if period_file is None:
                    quota, period = quota_file.read_text().split()[:2]
                else:
                    quota, period = quota_file.read_text().strip(), period_file.read_text().strip()
                if quota not in ("max", "-1") and int(period) > 0:
                    found.append(max(1, math.ceil(int(quota) / int(period))))
    return min(found) if found else None


def _cgroup_dirs(mount: Path, path: str) -> list[Path]:
    """The cgroup's directory and its parents' up to the mount (in a container the path may name a
    cgroup outside the mounted tree: then only the mount's own files apply)."""
    parts = [part for part in path.strip("/").split("/") if part]
    return [mount.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def configure(requested: int | None = None) -> int:
    """Decide the usable CPUs once (``--threads``, else ACTGEOM_THREADS and the machine's limits)
    and limit every BLAS library to them; returns their number."""
    global _configured
    _configured = min(cpu_limits(requested).values())
    if _configured < (os.cpu_count() or 1):  # the libraries default to every core they see
        import scipy.linalg  # noqa: F401  (loads scipy's BLAS, so that the limit reaches it too)

        _controller().limit(limits=_configured, user_api="blas")  # kept: not used as a context
    return _configured


def usable_cpus() -> int:
    """The CPUs this process may use (decided at start-up, or now from the machine's limits)."""
    return _configured if _configured is not None else _machine_cpus()


@functools.cache
def _machine_cpus() -> int:
    return min(cpu_limits().values())


def threads_for(side: int) -> int:
    """BLAS threads for an operation on matrices of this side: one below SMALL_MATRIX, else the
    usable CPUs that no other process is running on right now (at least one)."""
    usable = usable_cpus()
    if side < SMALL_MATRIX or usable == 1:
        return 1
    return max(1, min(usable, (os.cpu_count() or 1) - others_running()))


def others_running(proc: Path = Path("/proc")) -> int:
    """Threads of other processes running or waiting for a CPU right now: the kernel's count of
    runnable threads less this process's own (Linux; elsewhere 0, as if the machine were ours)."""
    try:
        running = int((proc / "loadavg").read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return 0
    own = 0
    for stat in (proc / "self" / "task").glob("*/stat"):
        with contextlib.suppress(OSError):
            own += stat.read_text().rpartition(")")[2].split()[:1] == ["R"]  # comm may hold ')'
    return max(0, running - own)


@functools.cache
def _controller():
    """The BLAS libraries loaded (numpy's and scipy's: both are by the time a metric is computed)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@contextlib.contextmanager
def blas_threads(side: int) -> Iterator[int]:
    """BLAS and LAPACK inside the block on :func:`threads_for` ``side`` threads (yielded)."""
    threads = threads_for(side)
    with _controller().limit(limits=threads, user_api="blas"):
        yield threads
