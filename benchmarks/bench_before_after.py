"""Every analysis command of two installed actgeoms on the same dump, each run in a fresh process,
alternating which goes first: has a change made a command slower? (issue #23: "performance
unchanged or better").

Install the old commit beside the new one (a plain, non-editable install: an editable one loads its
modules through a finder, slower at start-up), e.g.

    git worktree add /tmp/old 8e6d91b
    python3 -m venv /tmp/oldvenv && /tmp/oldvenv/bin/pip install /tmp/old
    python3 -m venv /tmp/newvenv && /tmp/newvenv/bin/pip install .
    python benchmarks/bench_before_after.py /tmp/oldvenv/bin/actgeom /tmp/newvenv/bin/actgeom --repeat 3

The dump (N = 200 000 × D = 512 float16, C = 100 classes) is written once to --workdir.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

COMMANDS = (["collapse"], ["rank", "--subsample", "2000"], ["entropy", "--subsample", "2000"], ["neurons"], ["probe"])


def make_dump(path: Path, rows: int = 200_000, units: int = 512, classes: int = 100) -> None:
    from actgeom.core.dump import DumpWriter

    rng = np.random.default_rng(0)
    with DumpWriter(path, layers={"h": units}, dtype="float16", model="bench_before_after") as writer:
        for _ in range(0, rows, 20_000):
            y = rng.integers(0, classes, 20_000)
            X = np.maximum(rng.standard_normal((20_000, units)) + 0.5 * np.sin(y[:, None] + np.arange(units)), 0)
            writer.append({"h": X.astype(np.float16)}, labels=y)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", help="the old `actgeom` executable")
    parser.add_argument("after", help="the new `actgeom` executable")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(__file__).parent / "_work")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    dump = args.workdir / "before_after_200000x512_float16.h5"
    if not dump.exists():
        make_dump(dump)
    times: dict[tuple[str, str], list[float]] = {}
    for repeat in range(args.repeat):
        for command in COMMANDS:
            order = [("before", args.before), ("after", args.after)]
            for name, executable in order if repeat % 2 == 0 else order[::-1]:
                started = time.perf_counter()
                subprocess.run([executable, command[0], str(dump), *command[1:], "-q", "-f", "json",
                                "-o", str(args.workdir / f"before_after_{name}.json")], check=True, capture_output=True)
                times.setdefault((command[0], name), []).append(time.perf_counter() - started)
    for command in COMMANDS:
        before, after = times[(command[0], "before")], times[(command[0], "after")]
        print(f"{command[0]:9s} before {min(before):6.2f} s  after {min(after):6.2f} s  ratio {min(after) / min(before):5.3f}"
              f"   (every run: {[round(t, 2) for t in before]} / {[round(t, 2) for t in after]})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
