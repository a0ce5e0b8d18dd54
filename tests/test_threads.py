"""The CPUs actgeom may use (affinity, cgroup quota, SLURM, --threads / ACTGEOM_THREADS) and the
BLAS threads each operation gets (core/base/threads.py). No timing here: the numbers behind the choices
are in core/base/threads.py and benchmarks/RESULTS.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from actgeom.core.base import threads
from actgeom.core.metrics import diffusion

DUMP = Path(__file__).resolve().parents[1] / "sample_data" / "digits_mlp_epoch0000.h5"
TWO_CPUS = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 if hasattr(os, "sched_getaffinity") else True,
                              reason="needs two CPUs to see a limit of one")

# A child runs a real command in-process once per case (from the same start: every CPU, BLAS at its
# default), and reports the usable CPUs and the BLAS libraries' threads after each.
_CHILD = """
import json, os, sys
from threadpoolctl import ThreadpoolController
import scipy.linalg
from actgeom.cli.app import app
from actgeom.core.base import threads
controller, everyone, dump, seen = ThreadpoolController(), os.sched_getaffinity(0), sys.argv[1], []
default = {lib.num_threads for lib in controller.lib_controllers}.pop()
for case in json.loads(sys.argv[2]):
    os.sched_setaffinity(0, case.get("affinity", everyone))
    controller.limit(limits=default, user_api="blas")
    threads._configured = None
    for name in ("SLURM_CPUS_PER_TASK", threads.THREADS_ENV, *threads.BLAS_ENVS):
        os.environ.pop(name, None)
    os.environ.update(case.get("env", {}))
    try:
        app(["info", dump, "-f", "json", "-o", os.devnull, *case.get("args", [])], standalone_mode=False)
    except SystemExit:
        pass
    seen.append({"usable": threads.usable_cpus(), "blas": sorted({lib["num_threads"] for lib in controller.info()})})
print(json.dumps(seen))
"""


@TWO_CPUS
def test_affinity_slurm_the_environment_and_the_option_limit_every_blas():
    cases = [{}, {"affinity": [sorted(os.sched_getaffinity(0))[0]]}, {"env": {"SLURM_CPUS_PER_TASK": "1"}},
             {"env": {"ACTGEOM_THREADS": "1"}}, {"args": ["--threads", "1"]},
             {"args": ["--threads", "1"], "env": {"ACTGEOM_THREADS": "2"}}, {"env": {"OMP_NUM_THREADS": "1"}}]
    # the child starts as a user's shell would: no thread limit inherited (Dask's nannies set OMP_NUM_THREADS=1
    # and the like in the process that starts a LocalCluster, and test_dask.py runs before this file)
    env = {name: value for name, value in os.environ.items()
           if name not in ("SLURM_CPUS_PER_TASK", threads.THREADS_ENV, *threads.BLAS_ENVS)}
    done = subprocess.run([sys.executable, "-c", _CHILD, str(DUMP), json.dumps(cases)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    unlimited, *limited = json.loads(done.stdout.strip().splitlines()[-1])
    assert unlimited["usable"] == len(os.sched_getaffinity(0)) and unlimited["blas"] != [1]
    assert limited == [{"usable": 1, "blas": [1]}] * len(limited)


@pytest.mark.parametrize("args, env, message", [
    (("--threads", "0"), {}, "Error: --threads '0' is not a number of threads: give a whole number ≥ 1"),
    (("--threads", "-2"), {}, "Error: --threads '-2' is not a number of threads: give a whole number ≥ 1"),
    ((), {"ACTGEOM_THREADS": "two"}, "Error: ACTGEOM_THREADS='two' is not a number of threads: give a whole number ≥ 1"),
    ((), {"ACTGEOM_THREADS": "0"}, "Error: ACTGEOM_THREADS='0' is not a number of threads: give a whole number ≥ 1"),
    (("--threads", "x"), {}, "Error: Invalid value for '--threads'")])
def test_an_invalid_number_of_threads_is_one_line(cli, monkeypatch, args, env, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = cli("entropy", DUMP, *args)
    assert code == 2 and out == ""
    assert err.startswith(message) and err.count("\n") == 1, err


def _cgroup(tmp_path: Path, line: str, files: dict[str, str]) -> int | None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "self-cgroup").write_text(line)
    return threads.cgroup_quota(tmp_path / "fs", tmp_path / "self-cgroup")


@pytest.mark.parametrize("line, files, expected", [
    ("0::/job\n", {"fs/job/cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: rounded up
    ("0::/job/step\n", {"fs/job/cpu.max": "100000 100000\n", "fs/job/step/cpu.max": "max 100000\n"}, 1),  # a parent's
    ("0::/job\n", {"fs/job/cpu.max": "max 100000\n"}, None),
    ("0::/\n", {}, None),
    ("4:cpu,cpuacct:/job\n1:memory:/job\n", {"fs/cpu,cpuacct/job/cpu.cfs_quota_us": "300000\n",
                                             "fs/cpu,cpuacct/job/cpu.cfs_period_us": "100000\n"}, 3),
    ("1:cpu:/\n", {"fs/cpu/cpu.cfs_quota_us": "-1\n", "fs/cpu/cpu.cfs_period_us": "100000\n"}, None)])
def test_the_cgroup_quota_in_cpus(tmp_path, line, files, expected):
    assert _cgroup(tmp_path, line, files) == expected


def test_every_limit_counts_and_the_tightest_wins(tmp_path):
    environ = {"SLURM_CPUS_PER_TASK": "6", "OMP_NUM_THREADS": "4,2", "OPENBLAS_NUM_THREADS": "junk", "ACTGEOM_THREADS": "5"}
    limits = threads.cpu_limits(environ=environ, proc_cgroup=tmp_path / "none")
    assert {k: v for k, v in limits.items() if k != "affinity"} == {"SLURM_CPUS_PER_TASK": 6, "OMP_NUM_THREADS": 4,
                                                                   "ACTGEOM_THREADS": 5}
    assert threads.cpu_limits(3, environ=environ, proc_cgroup=tmp_path / "none")["--threads"] == 3  # the variable unread


@pytest.mark.parametrize("side, others, expected", [(1023, 0, 1), (1024, 0, 4), (1024, 2, 2), (5000, 3, 1), (5000, 9, 1)])
def test_large_solves_get_the_cpus_nobody_else_runs_on(monkeypatch, side, others, expected):
    monkeypatch.setattr(threads, "_configured", 4)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(threads, "others_running", lambda: others)
    assert threads.threads_for(side) == expected


def test_small_matrices_are_solved_on_one_blas_thread_and_the_limit_ends_with_the_block(monkeypatch):
    """DSMI's class kernels, prompt Grams, D×D spectra: one thread; a large solve on a quiet machine
    keeps every thread."""
    monkeypatch.setattr(threads, "others_running", lambda: 0)

    def blas():
        return {lib["filepath"]: lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}

    before = blas()
    with threads.blas_threads(threads.SMALL_MATRIX - 1) as chosen:
        assert chosen == 1 and set(blas().values()) == {1}
    assert blas() == before
    with threads.blas_threads(threads.SMALL_MATRIX) as chosen:
        assert chosen == threads.usable_cpus() and set(blas().values()) == {chosen}


def test_other_processes_runnable_threads_leave_out_our_own(tmp_path):
    (tmp_path / "loadavg").write_text("3.10 2.00 1.50 5/312 4242\n")
    for tid, state in (("10", "R"), ("11", "S"), ("12", "R")):
        (tmp_path / "self" / "task" / tid).mkdir(parents=True)
        (tmp_path / "self" / "task" / tid / "stat").write_text(f"{tid} (a) S (b)) {state} 1 10 10 0 -1\n")
    assert threads.others_running(tmp_path) == 3
    assert threads.others_running(tmp_path / "absent") == 0


@TWO_CPUS
@pytest.mark.parametrize("others, expected", [(0, 2), (2, 1)])
def test_dse_solves_its_kernel_on_the_threads_decided(monkeypatch, others, expected):
    """The reported case: DSE's 1 797-row eigensolve on two threads while other processes keep both
    CPUs busy (25 s, against 2.3 s on one)."""
    monkeypatch.setattr(threads, "_configured", 2)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads, "others_running", lambda: others)
    seen = []

    def spy(kernel, **kwargs):  # the threads it would run on (the solve itself is not the point)
        seen.append(sorted({lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}))
        return np.ones(kernel.shape[0])

    monkeypatch.setattr(diffusion.linalg, "eigh", spy)
    X = np.random.default_rng(0).standard_normal((threads.SMALL_MATRIX, 3))
    diffusion.diffusion_spectral_entropy(X, sigma=1.0, t=1.0)
    assert seen == [[expected]]
