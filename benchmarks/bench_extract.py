"""Peak memory of `actgeom extract --tokens last` at N and 4N token rows: bounded, not O(N).

Each extract runs in a fresh process that reports its own peak RSS (VmHWM). The inputs
are token-level activations (sequences of 50 tokens, float32) as an actgeom HDF5 dump and as a
memory-mapped .npy (S, T, D) array.

    python benchmarks/bench_extract.py                   # N = 200 000 rows x 256 units
    python benchmarks/bench_extract.py --rows 50000      # quicker
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WORKDIR = Path(__file__).parent / "_work"
SEQUENCE = 50  # tokens per sequence
BATCH = 20_000  # rows written per batch when making the inputs


def make_inputs(n_rows: int, n_units: int) -> tuple[Path, Path]:
    """An actgeom token-level dump and a .npy (S, T, D) of the same rows, written in batches."""
    from actgeom.core.dump import DumpWriter

    h5, npy = WORKDIR / f"tokens_{n_rows}x{n_units}.h5", WORKDIR / f"tokens_{n_rows}x{n_units}.npy"
    n_sequences = n_rows // SEQUENCE
    rng = np.random.default_rng(0)
    if not h5.exists() or not npy.exists():
        array = np.lib.format.open_memmap(npy, mode="w+", dtype=np.float32, shape=(n_sequences, SEQUENCE, n_units))
        with DumpWriter(h5, layers={"resid": n_units}, dtype="float32", level="token") as writer:
            per_batch = BATCH // SEQUENCE
            for s in range(0, n_sequences, per_batch):
                block = rng.standard_normal((min(per_batch, n_sequences - s), SEQUENCE, n_units), dtype=np.float32)
                array[s : s + block.shape[0]] = block
                writer.append({"resid": block.reshape(-1, n_units)}, position=np.tile(np.arange(SEQUENCE), block.shape[0]))
                writer.add_sequences(np.full(block.shape[0], SEQUENCE))
        array.flush()
        del array
    return h5, npy


CHILD = """
import re, sys
from actgeom.cli.app import app
try:
    app(sys.argv[1:])
finally:  # this process's own peak (VmHWM): ru_maxrss of a child would include the parent's at fork
    print(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
"""


def peak_rss(*args: str) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of `actgeom extract ARGS` in a fresh process."""
    out = WORKDIR / "out.h5"
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, "extract", *args, "-o", str(out)], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"extract {args} failed: {done.stderr}")
    out.unlink(missing_ok=True)
    return int(done.stdout.split()[-1]) / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--units", type=int, default=256)
    args = parser.parse_args()
    WORKDIR.mkdir(exist_ok=True)
    small, large = make_inputs(args.rows, args.units), make_inputs(4 * args.rows, args.units)
    base, _ = peak_rss(str(small[0]), "--tokens", "last", "--rows", "0:1")  # imports, one row: the fixed cost
    print(f"N={args.rows} rows x {args.units} units float32 (sequences of {SEQUENCE}); "
          f"process baseline (extract of 1 row): {base:.0f} MiB")
    print("| input | rows | input size | peak RSS | time | RSS ratio 4N / N |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind, index in (("HDF5 dump", 0), (".npy (S, T, D), memory-mapped", 1)):
        measured = []
        for n, paths in ((args.rows, small), (4 * args.rows, large)):
            rss, seconds = peak_rss(str(paths[index]), "--tokens", "last")
            measured.append(rss)
            size = paths[index].stat().st_size / 2**20
            ratio = f"{measured[1] / measured[0]:.3f}" if len(measured) == 2 else ""
            print(f"| {kind} | {n:,} | {size:.0f} MiB | {rss:.0f} MiB | {seconds:.1f} s | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
