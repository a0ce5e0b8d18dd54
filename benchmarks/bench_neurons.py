"""Time `neurons` against the floor (bench_engine.py) and `rank` on a labelled dump, each in a fresh
process, and measure the token table: token ids over a vocabulary of 50 000 at D = 512.

    python benchmarks/bench_neurons.py                       # N=50 000, D=512, C=10; tokens N=100 000
    python benchmarks/bench_neurons.py --rows 200000 --units 1024 --classes 100
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import WORKDIR, benchmark_dump, child_floor, run_child  # noqa: E402


def child(kind: str, path: str) -> dict:
    t0 = time.perf_counter()
    if kind.startswith("floor"):
        return child_floor(path, 1)
    import actgeom

    if kind == "rank":
        actgeom.rank(path, subsample=0)
        return {"seconds": time.perf_counter() - t0}
    layer = actgeom.neurons(path, threshold=0.0).to_dict()["files"][0]["layers"][0]
    return {"seconds": time.perf_counter() - t0, "token_table": layer["neurons"].get("token_table")}


def make_token_dump(path: Path, n_rows: int, n_units: int, vocabulary: int, seed: int = 0) -> None:
    """Random float16 rows with uniformly random token ids in [0, vocabulary)."""
    from actgeom.core.dump import DumpWriter

    if path.exists():
        return
    rng = np.random.default_rng(seed)
    with DumpWriter(path, layers={"layer": n_units}, dtype="float16", model="synthetic-tokens") as writer:
        for start in range(0, n_rows, 20_000):
            n = min(20_000, n_rows - start)
            writer.append({"layer": rng.standard_normal((n, n_units), dtype=np.float32)},
                          token_id=rng.integers(0, vocabulary, n))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--units", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--token-rows", type=int, default=100_000)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child(*args.child)
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    path = benchmark_dump(args.rows, args.units, args.classes, "float16")
    run_child("floor", path, __file__)  # warm the page cache
    runs: dict[str, list[dict]] = {"floor": [], "neurons": [], "rank": []}
    for _ in range(args.repeat):
        for kind, results in runs.items():
            results.append(run_child(kind, path, __file__))
    best = {kind: min(results, key=lambda r: r["seconds"]) for kind, results in runs.items()}
    print(f"N={args.rows} D={args.units} C={args.classes} float16 (labels: class means too)")
    for kind, results in runs.items():
        every = ", ".join(f"{r['seconds']:.2f}" for r in results)
        print(f"{kind:8s}: {best[kind]['seconds']:.2f} s  peak RSS {best[kind]['peak_rss_mib']:.0f} MiB  (runs: {every})")
    print(f"neurons / floor: {best['neurons']['seconds'] / best['floor']['seconds']:.3f}")
    tokens = WORKDIR / f"synthetic_tokens_512u_50000v_{args.token_rows}.h5"
    make_token_dump(tokens, args.token_rows, 512, 50_000)
    result = run_child("neurons", tokens, __file__)
    print(f"tokens N={args.token_rows} D=512 V=50000: {result['seconds']:.1f} s, peak RSS {result['peak_rss_mib']:.0f} MiB, "
          f"token table {result['token_table']}")


if __name__ == "__main__":
    main()
