"""Time `actgeom compare` of two dumps (one layer each) against the machine's floor, same run.

floor   = plain h5py reads of both files in the blocks compare uses, converted to float64, and per
          block one D×D GEMM of each side plus the cross GEMM XᵀY (numpy): the least any exact
          pass over cross-moments must do;
compare = actgeom.compare([A, B], subsample=0) (the moment measures; the row sample's RSA and
          k-NN cost O(sample²), independent of N).
Each measurement runs in a fresh process (its own peak RSS); floor and compare alternate and the
best of --repeat runs is kept. Then compare runs on dumps of 4N rows: the peak-RSS ratio 4N : N.

    python benchmarks/bench_compare.py                      # N=100 000, D=256, float16
    python benchmarks/bench_compare.py --rows 50000 --units 128
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WORKDIR = Path(__file__).parent / "_work"


def make_pair(stem: Path, n_rows: int, n_units: int, dtype: str) -> tuple[Path, Path]:
    """Two related dumps (B = A·M + noise), written in batches."""
    from actgeom.core.dump import DumpWriter

    paths = (stem.with_name(stem.name + "_A.h5"), stem.with_name(stem.name + "_B.h5"))
    if all(p.exists() for p in paths):
        return paths
    rng = np.random.default_rng(0)
    mix = (rng.standard_normal((n_units, n_units)) / np.sqrt(n_units)).astype(np.float32)
    with DumpWriter(paths[0], layers={"h": n_units}, dtype=dtype) as wa, DumpWriter(paths[1], layers={"h": n_units},
                                                                                    dtype=dtype) as wb:
        for start in range(0, n_rows, 20_000):
            n = min(20_000, n_rows - start)
            X = rng.standard_normal((n, n_units), dtype=np.float32) + 3.0
            ids = np.arange(start, start + n)
            wa.append({"h": X}, sample_id=ids)
            wb.append({"h": X @ mix + rng.standard_normal((n, n_units), dtype=np.float32)}, sample_id=ids)
    return paths


def child_floor(a: str, b: str, block_rows: int) -> dict:
    import h5py

    t0 = time.perf_counter()
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        da, db = fa["activations/h"], fb["activations/h"]
        n_rows, n_units = da.shape
        raw = np.empty((block_rows, n_units), dtype=da.dtype)
        X, Y = np.empty((block_rows, n_units)), np.empty((block_rows, n_units))
        xx, yy, xy = (np.zeros((n_units, n_units)) for _ in range(3))
        for s in range(0, n_rows, block_rows):
            e = min(s + block_rows, n_rows)
            da.read_direct(raw, np.s_[s:e], np.s_[0 : e - s])
            np.copyto(X[: e - s], raw[: e - s])
            db.read_direct(raw, np.s_[s:e], np.s_[0 : e - s])
            np.copyto(Y[: e - s], raw[: e - s])
            xx += X[: e - s].T @ X[: e - s]
            yy += Y[: e - s].T @ Y[: e - s]
            xy += X[: e - s].T @ Y[: e - s]
    return {"seconds": time.perf_counter() - t0}


def child_compare(a: str, b: str) -> dict:
    import actgeom

    t0 = time.perf_counter()
    result = actgeom.compare([a, b], subsample=0)
    return {"seconds": time.perf_counter() - t0, "block_rows": result.to_dict()["pass"]["block_rows"],
            "cka": result.metric("cka_linear")}


def run_child(kind: str, *args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, *map(str, args)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--units", type=int, default=256)
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs="+")
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        found = child_floor(rest[0], rest[1], int(rest[2])) if kind == "floor" else child_compare(*rest)
        found["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(found))
        return
    WORKDIR.mkdir(exist_ok=True)
    a, b = make_pair(WORKDIR / f"cmp_{args.rows}_{args.units}_{args.dtype}", args.rows, args.units, args.dtype)
    first = run_child("compare", a, b)  # warms the page cache; tells the block size
    floors, compares = [], []
    for _ in range(args.repeat):
        floors.append(run_child("floor", a, b, first["block_rows"]))
        compares.append(run_child("compare", a, b))
    floor, best = min(f["seconds"] for f in floors), min(c["seconds"] for c in compares)
    print(f"N={args.rows} D={args.units} {args.dtype}, blocks of {first['block_rows']} rows")
    print(f"floor   {floor:.3f} s   compare {best:.3f} s   ratio {best / floor:.2f}")
    big = make_pair(WORKDIR / f"cmp_{4 * args.rows}_{args.units}_{args.dtype}", 4 * args.rows, args.units, args.dtype)
    run_child("compare", *big)
    rss_n, rss_4n = compares[0]["peak_rss_mb"], run_child("compare", *big)["peak_rss_mb"]
    print(f"peak RSS: N {rss_n:.0f} MB, 4N {rss_4n:.0f} MB, ratio {rss_4n / rss_n:.2f}")


if __name__ == "__main__":
    main()
