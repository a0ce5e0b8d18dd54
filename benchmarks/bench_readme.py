"""The README's first command, `actgeom report sample_data/*.h5 -o report.html`, timed end to end
(issue #22, item 11): each run a fresh process, wall time.

    python benchmarks/bench_readme.py                     # --repeat 3, a load of 2 busy processes
    python benchmarks/bench_readme.py --repeat 1 --load 3 --kind gemm
    python benchmarks/bench_readme.py -- --threads 1      # arguments after -- go to actgeom report

Three conditions, in this order (the quiet ones first: the 1-minute load average the kernel keeps
would otherwise still count the load for a minute after it stops):

  quiet   no cache: every pass, every metric, every figure;
  cached  --cache DIR, filled by one untimed run first: what is left is drawing and writing;
  loaded  no cache, while --load processes keep CPUs busy: Python spinning (--kind spin) or
          numpy multiplying 300×300 matrices on one BLAS thread each (--kind gemm).

Goal (issue #22, on a quiet machine): quiet ≤ 15 s, cached ≤ 5 s, loaded ≤ 2 × quiet. The load
processes stop when this script exits by any way, even SIGKILL: each spins only while its parent
is this process. The machine's load average is printed before each condition: on a shared
machine every number grows with it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).parent.parent
GOALS = {"quiet": 15.0, "cached": 5.0}  # seconds; loaded: ≤ LOADED_RATIO × quiet
LOADED_RATIO = 2.0

# Busy until its parent (this script) is gone: polled every iteration, so no process outlives us.
LOAD = {
    "spin": "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    pass\n",
    "gemm": "import os, numpy as np\nparent = os.getppid()\na = np.random.default_rng(0).standard_normal((300, 300))\n"
            "while os.getppid() == parent:\n    a @ a\n",
}


def actgeom_command() -> list[str]:
    beside = Path(sys.executable).parent / "actgeom"
    found = str(beside) if beside.exists() else shutil.which("actgeom")
    if found is None:
        sys.exit("actgeom is not installed next to this Python nor on PATH")
    return [found]


def timed(argv: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr}")
    return elapsed


class Load:
    """``count`` busy processes while inside the block (killed on leaving it, however it is left)."""

    def __init__(self, count: int, kind: str):
        self.count, self.kind, self.processes = count, kind, []

    def __enter__(self):
        env = os.environ | {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.processes = [subprocess.Popen([sys.executable, "-c", LOAD[self.kind]], env=env) for _ in range(self.count)]
        time.sleep(1.0)  # started and spinning
        return self

    def __exit__(self, *exc):
        for process in self.processes:
            process.kill()
        for process in self.processes:
            process.wait()


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per condition (median shown)")
    parser.add_argument("--load", type=int, default=2, help="busy processes of the loaded condition")
    parser.add_argument("--kind", choices=sorted(LOAD), default="spin", help="what the busy processes do")
    parser.add_argument("extra", nargs="*", help="after --: more arguments for actgeom report")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # leave through the finally blocks
    dumps = sorted(str(p) for p in (ROOT / "sample_data").glob("*.h5"))
    with tempfile.TemporaryDirectory(prefix="bench-readme-") as scratch:
        report = [*actgeom_command(), "report", *dumps, "-o", str(Path(scratch) / "report.html"), *args.extra]
        cached = [*report, "--cache", str(Path(scratch) / "cache")]
        times: dict[str, list[float]] = {}
        print(f"{len(dumps)} dumps, {os.cpu_count()} CPUs, load average {load_average()} before the quiet runs")
        times["quiet"] = [timed(report) for _ in range(args.repeat)]
        timed(cached)  # fills the cache
        times["cached"] = [timed(cached) for _ in range(args.repeat)]
        with Load(args.load, args.kind):
            print(f"{args.load} busy processes ({args.kind}) started, load average {load_average()}")
            times["loaded"] = [timed(report) for _ in range(args.repeat)]
    show(times, args)


def show(times: dict[str, list[float]], args) -> None:
    quiet = statistics.median(times["quiet"])
    goals = {**GOALS, "loaded": LOADED_RATIO * quiet}
    print("\ncondition  runs  median s   min s   max s   goal s")
    for name, values in times.items():
        median = statistics.median(values)
        verdict = "ok" if median <= goals[name] else "MISSED"
        print(f"{name:<9} {len(values):>5} {median:>9.2f} {min(values):>7.2f} {max(values):>7.2f} {goals[name]:>8.2f}  {verdict}")
    print(f"\nloaded / quiet = {statistics.median(times['loaded']) / quiet:.2f} (goal ≤ {LOADED_RATIO}); "
          f"cached / quiet = {statistics.median(times['cached']) / quiet:.2f}; load average now {load_average()}")


if __name__ == "__main__":
    main()
