"""Time `--backend dask --workers 2` against a local run on the engine benchmark dump, and the
cost of the tree merge of a 16-range run.

local  = core.api.analyze(dump, families) in this process (the engine: one pass, BLAS threads);
dask   = the same call with a LocalCluster of --workers processes (one row range at a time each, a
         second thread for merges; two ranges per worker): the cluster's start-up is reported apart,
         the run is timed with the cluster up (its first run, cold workers, and the best of --repeat);
dask16 = 16 row ranges on the same workers (a simulated 16-worker run): the seconds until every
         range's task is done, and those of the merge tree after that (merge tasks + fetching the
         root), as a share of the whole pass — every run's, with the median and the largest share
         (how the last ranges end varies from run to run).
Every measurement runs in a fresh process; the best of --repeat runs is kept. The dump is the one
of benchmarks/bench_engine.py (made and cached in benchmarks/_work).

    python benchmarks/bench_dask.py                         # N=200 000, D=1024, C=100, float16
    python benchmarks/bench_dask.py --rows 20000 --units 128 --repeat 1   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import benchmark_dump, dump_arguments  # noqa: E402  (the engine benchmark's dump)


def child_local(path: str, families: list[str], repeat: int) -> dict:
    from actgeom.core import api

    seconds = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        api.analyze([path], families=families)
        seconds.append(time.perf_counter() - t0)
    return {"seconds": seconds}


def child_dask(path: str, families: list[str], repeat: int, workers: int, ranges: int | None) -> dict:
    from actgeom.core import api
    from actgeom.core.backends import BackendOptions, open_backend

    t0 = time.perf_counter()
    with open_backend(BackendOptions("dask", workers=workers, ranges=ranges)) as backend:
        startup = time.perf_counter() - t0
        seconds, timings = [], []
        for _ in range(repeat):
            t0 = time.perf_counter()
            api.analyze([path], families=families, backend=backend)
            seconds.append(time.perf_counter() - t0)
            timings.append(dict(backend.timings))
    return {"startup_s": startup, "seconds": seconds, "timings": timings}


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    dump_arguments(parser)
    parser.add_argument("--families", default="collapse,rank", help="comma-separated families of one pass")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    families = args.families.split(",")
    if args.child:
        kind, path = args.child[:2]
        if kind == "local":
            result = child_local(path, families, args.repeat)
        else:
            result = child_dask(path, families, args.repeat, args.workers, None if kind == "dask" else int(kind[4:]))
        print(json.dumps(result))
        return

    print(f"N={args.rows} D={args.units} C={args.classes} dtype={args.dtype} families={args.families}; "
          f"cpus={os.cpu_count()} workers={args.workers}", flush=True)
    path = benchmark_dump(args.rows, args.units, args.classes, args.dtype)
    common = ["--families", args.families, "--workers", str(args.workers), "--repeat", str(args.repeat)]
    run_child("local", str(path), "--families", args.families, "--repeat", "1")  # warm the page cache
    local = run_child("local", str(path), *common)
    dask = run_child("dask", str(path), *common)
    dask16 = run_child("dask16", str(path), *common)
    best_local, best_dask = min(local["seconds"]), min(dask["seconds"])
    show = lambda values: ", ".join(f"{v:.2f}" for v in values)  # noqa: E731
    print(f"local:              {best_local:.2f} s  (runs: {show(local['seconds'])})")
    print(f"dask, {args.workers} workers:    {best_dask:.2f} s  (runs: {show(dask['seconds'])}; cluster start-up "
          f"{dask['startup_s']:.2f} s; {dask['timings'][0]['ranges']} ranges)")
    print(f"dask / local:       {best_dask / best_local:.3f}  (first run, cold workers: "
          f"{dask['seconds'][0] / best_local:.3f}; with start-up: {(dask['seconds'][0] + dask['startup_s']) / best_local:.3f})")
    shares = sorted(t["merge_s"] / (t["tasks_s"] + t["merge_s"]) for t in dask16["timings"])
    tails = ", ".join(f"{t['merge_s']:.3f}" for t in dask16["timings"])
    print(f"dask, {dask16['timings'][0]['ranges']} ranges:    {min(dask16['seconds']):.2f} s  (merge tree after the last "
          f"range, s: {tails}; share of the pass: median {100 * statistics.median(shares):.2f} %, "
          f"max {100 * shares[-1]:.2f} %)")


if __name__ == "__main__":
    main()
