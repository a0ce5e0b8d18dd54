"""Time actgeom's one-pass engine against the machine's floor, measured in the same run.

floor  = plain h5py reads of whole HDF5 chunks into a reused buffer + one float64 GEMM XᵀX
         (numpy) per read: the least any exact second-moment pass must do. Measured reading one
         chunk per GEMM (the engine's block, and the definition in the issue) and four chunks
         per GEMM (numpy's GEMM is faster on taller blocks: the stricter floor);
engine = actgeom.core.state.engine.accumulate with every accumulator on (class moments with labels,
         unit statistics, Σ x/‖x‖, a 10 000-row seeded sample).
Each measurement runs in a fresh process (so peak RSS is its own); floor and engine alternate,
and the best of --repeat runs is kept. The dump is read from the page cache after the first run.
Then the engine runs on a dump of 4N rows and the peak-RSS ratio 4N : N is printed.

    python benchmarks/bench_engine.py                       # N=200 000, D=1024, C=100, float16
    python benchmarks/bench_engine.py --rows 50000 --units 256 --classes 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import actgeom  # noqa: F401  (before numpy: OpenBLAS's thread timeout as the `actgeom` program sets it, for every child)

# isort: split
import numpy as np

WORKDIR = Path(__file__).parent / "_work"


def make_dump(path: Path, n_rows: int, n_units: int, n_classes: int, dtype: str, seed: int = 0) -> None:
    """Synthetic class-structured activations, written in batches (never all in memory)."""
    from actgeom.core.dump import DumpWriter

    if path.exists():
        return
    rng = np.random.default_rng(seed)
    means = 2.0 * rng.standard_normal((n_classes, n_units)).astype(np.float32)
    batch = 20_000
    with DumpWriter(path, layers={"layer": n_units}, dtype=dtype, model="synthetic") as writer:
        for start in range(0, n_rows, batch):
            n = min(batch, n_rows - start)
            y = rng.integers(0, n_classes, n)
            X = means[y] + rng.standard_normal((n, n_units), dtype=np.float32)
            writer.append({"layer": X}, labels=y)


def benchmark_dump(n_rows: int, n_units: int, n_classes: int, dtype: str) -> Path:
    """The synthetic dump of that shape (made once, kept in benchmarks/_work)."""
    WORKDIR.mkdir(exist_ok=True)
    path = WORKDIR / f"synthetic_{n_units}u_{n_classes}c_{dtype}_{n_rows}.h5"
    make_dump(path, n_rows, n_units, n_classes, dtype)
    return path


def dump_arguments(parser: argparse.ArgumentParser) -> None:
    """--rows, --units, --classes, --dtype: the shape of the benchmark dump (the issue's D = 1024 one)."""
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--units", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--dtype", default="float16")


def child_floor(path: str, chunks_per_read: int, products: int = 1) -> dict:
    """The floor; ``products`` = 2: two D×D products per block (what a pass whose metrics need two
    different D×D sums — collapse's class scatter and the dataset entropy's Σ uuᵀ — cannot go below)."""
    import h5py

    t0 = time.perf_counter()
    with h5py.File(path, "r") as f:
        ds = f["activations/layer"]
        n_rows, n_units = ds.shape
        block_rows = ds.chunks[0] * chunks_per_read
        raw = np.empty((block_rows, n_units), dtype=ds.dtype)
        X64 = np.empty((block_rows, n_units))
        gram = np.zeros((n_units, n_units))
        for a in range(0, n_rows, block_rows):
            b = min(a + block_rows, n_rows)
            ds.read_direct(raw, np.s_[a:b], np.s_[0 : b - a])
            np.copyto(X64[: b - a], raw[: b - a])
            for _ in range(products):
                gram += X64[: b - a].T @ X64[: b - a]
    return {"seconds": time.perf_counter() - t0}


def child_engine(path: str) -> dict:
    from actgeom.core.dump import Dump
    from actgeom.core.state.accumulators import MomentsSpec, SampleSpec, UnitsSpec
    from actgeom.core.state.engine import accumulate

    t0 = time.perf_counter()
    with Dump(path) as dump:
        stats = accumulate(dump, specs=[MomentsSpec(by_class=True, all_rows=True), UnitsSpec(threshold=0.0),
                                        SampleSpec(size=10_000, seed=0)])
    seconds = time.perf_counter() - t0
    layer = next(iter(stats.values()))
    return {"seconds": seconds, "n_rows": layer.n_rows}


def peak_rss_mib() -> float:
    """This process's own peak RSS (VmHWM); ru_maxrss would include the parent's at fork."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def run_child(kind: str, path: Path, script: str | None = None) -> dict:
    """Run one measurement in a fresh process (its own peak RSS); it prints one JSON line."""
    out = subprocess.run([sys.executable, script or __file__, "--child", kind, str(path)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    dump_arguments(parser)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, path = args.child
        chunks, _, products = kind.removeprefix("floor").partition("x")  # floor1, floor4, floor1x2
        result = child_engine(path) if kind == "engine" else child_floor(path, int(chunks), int(products or 1))
        result["peak_rss_mib"] = peak_rss_mib()
        print(json.dumps(result))
        return

    print(f"N={args.rows} D={args.units} C={args.classes} dtype={args.dtype}; cpus={os.cpu_count()}", flush=True)
    small = benchmark_dump(args.rows, args.units, args.classes, args.dtype)
    large = benchmark_dump(4 * args.rows, args.units, args.classes, args.dtype)
    run_child("floor1", small)  # warm the page cache
    runs: dict[str, list[dict]] = {"floor1": [], "floor4": [], "engine": []}
    for _ in range(args.repeat):
        for kind, results in runs.items():
            results.append(run_child(kind, small))
    best = {kind: min(results, key=lambda r: r["seconds"]) for kind, results in runs.items()}
    names = {"floor1": "floor, 1 chunk per GEMM ", "floor4": "floor, 4 chunks per GEMM", "engine": "engine, all accumulators"}
    for kind, results in runs.items():
        every = ", ".join(f"{r['seconds']:.2f}" for r in results)
        print(f"{names[kind]}: {best[kind]['seconds']:.2f} s  peak RSS {best[kind]['peak_rss_mib']:.0f} MiB  (runs: {every})")
    engine = best["engine"]
    for kind in ("floor1", "floor4"):
        print(f"engine / {names[kind].strip()}: {engine['seconds'] / best[kind]['seconds']:.3f}")
    run_child("engine", large)  # warm
    big = run_child("engine", large)
    print(f"engine at 4N: {big['seconds']:.2f} s  peak RSS {big['peak_rss_mib']:.0f} MiB")
    print(f"peak RSS 4N / N: {big['peak_rss_mib'] / engine['peak_rss_mib']:.3f}")


if __name__ == "__main__":
    main()
