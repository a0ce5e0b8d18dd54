"""CLI start-up (issue #14): wall time of `actgeom --version` / `--help` / `COMMAND --help`, and the
time until a command's first progress line, each the median of fresh processes.

    python benchmarks/bench_startup.py                    # on sample_data/
    python benchmarks/bench_startup.py --dump big.h5      # first progress line on another dump
    python benchmarks/bench_startup.py --runs 11
    python benchmarks/bench_startup.py --python other-venv/bin/python   # another installation

Then, in one more process, the CPU time from its start to each import a command needs and to its
first progress callback: what delays the first line.

Python's own start (`python -c pass`) and `import typer` are measured in the same run: on a busy
machine every number grows, and those two say by how much.

First progress line: on a terminal (a pseudo-terminal here) a pulsing "starting" bar appears as
soon as the command runs (before numpy, scipy and h5py are loaded), and the layer's bar with the
first block of rows; in a log (stderr a pipe) the plain lines start only after PLAIN_START = 2 s by design,
so the second measure runs the same CLI with that delay set to 0: the time when the first plain
line could be written.
"""

from __future__ import annotations

import argparse
import os
import pty
import resource
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).parent.parent
SAMPLE = ROOT / "sample_data" / "digits_mlp_epoch1500.h5"
# The CLI with the plain lines' initial quiet period set to 0 (only for this measure).
NO_PLAIN_DELAY = ("import sys, time; import actgeom.cli.progress as p; "
                  "p.PlainLines.__init__.__defaults__ = (p.PLAIN_INTERVAL, 0.0, time.monotonic); "
                  "from actgeom.cli.app import main; sys.argv[0] = 'actgeom'; main()")


# CPU seconds from the start of a process to each import a command needs, then to its first
# progress callback (the child stops there).
BREAKDOWN = """
import sys, time
c0 = time.process_time()
def mark(name): print(f"{time.process_time() - c0:6.3f} s CPU  {name}", flush=True)
import actgeom.cli.app as appmod; mark("import actgeom.cli.app")
import typer._adapters; mark("+ pydantic (Typer coerces parameters with it when parsing)")
import numpy; mark("+ numpy")
import h5py; mark("+ h5py")
import scipy.linalg, scipy.sparse; mark("+ scipy.linalg, scipy.sparse")
import actgeom.core.api; mark("+ the rest of actgeom.core.api")
import actgeom.cli.progress as progress
class Stop(Exception): pass
def first(self, layer, done, total):
    mark(f"first progress callback ({layer}: {done}/{total} rows)"); raise Stop
progress.PlainLines.__call__ = first
try:
    appmod.app([sys.argv[1], sys.argv[2]], prog_name="actgeom")
except (Stop, SystemExit):
    pass
"""


def wall(argv: list[str]) -> tuple[float, float]:
    """(wall, CPU = user + sys) seconds of one run. On a busy machine the wall time grows with the
    load; the CPU time much less: both are shown."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def first_line_piped(argv: list[str], marker: str) -> float | None:
    """Seconds until a stderr line holding ``marker`` (stderr a pipe), None if none came."""
    start = time.perf_counter()
    with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as child:
        for line in child.stderr:
            if marker in line:
                seen = time.perf_counter() - start
                child.kill()
                return seen
    return None


def first_line_terminal(argv: list[str], marker: str) -> float | None:
    """Seconds until ``marker`` shows on stderr when stderr is a terminal, None if never."""
    main, secondary = pty.openpty()
    start = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=secondary, env=os.environ | {"COLUMNS": "100"})
    os.close(secondary)
    seen, text = None, b""
    try:
        while seen is None:
            ready, _, _ = select.select([main], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(main, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            text += chunk
            if marker.encode() in text:
                seen = time.perf_counter() - start
    finally:
        child.kill()
        child.wait()
        os.close(main)
    return seen


def median(measure, runs: int) -> str:
    values = [measure() for _ in range(runs)]
    if any(v is None for v in values):
        return "none"
    if isinstance(values[0], tuple):
        walls, cpus = zip(*values)
        return f"{statistics.median(walls):.3f} s (min {min(walls):.3f}), CPU {statistics.median(cpus):.3f} s"
    return f"{statistics.median(values):.3f} s (min {min(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--dump", type=Path, default=SAMPLE)
    parser.add_argument("--command", default="collapse")
    parser.add_argument("--python", default=sys.executable, help="the interpreter of the environment to measure")
    args = parser.parse_args()
    python = args.python
    actgeom = str(Path(python).with_name("actgeom"))
    rows = [
        ("python -c pass", lambda: wall([python, "-c", "pass"])),
        ("python -c 'import typer'", lambda: wall([python, "-c", "import typer"])),
        ("python -c 'import actgeom'", lambda: wall([python, "-c", "import actgeom"])),
        ("actgeom --version", lambda: wall([actgeom, "--version"])),
        ("actgeom --help", lambda: wall([actgeom, "--help"])),
        (f"actgeom {args.command} --help", lambda: wall([actgeom, args.command, "--help"])),
        (f"first display, terminal ('starting'): actgeom {args.command} {args.dump.name}",
         lambda: first_line_terminal([actgeom, args.command, str(args.dump)], "starting")),
        (f"first progress, terminal ('rows of'): actgeom {args.command} {args.dump.name}",
         lambda: first_line_terminal([actgeom, args.command, str(args.dump)], "rows of")),
        (f"first progress, log (no 2 s delay): actgeom {args.command} {args.dump.name}",
         lambda: first_line_piped([python, "-c", NO_PLAIN_DELAY, args.command, str(args.dump)], "actgeom: layer")),
        (f"whole command: actgeom {args.command} {args.dump.name} -q",
         lambda: wall([actgeom, args.command, str(args.dump), "-q"])),
    ]
    print(f"median of {args.runs} fresh processes; load average {os.getloadavg()[0]:.2f}")
    for name, measure in rows:
        print(f"{name:<75} {median(measure, args.runs)}", flush=True)
    print(f"until the first progress callback of actgeom {args.command} {args.dump.name}:", flush=True)
    subprocess.run([python, "-c", BREAKDOWN, args.command, str(args.dump)], check=True, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
