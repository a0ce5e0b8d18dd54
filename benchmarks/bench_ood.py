"""`actgeom ood` (issue #26) against the floor of reading its dumps once, in the same run.

Float32 dumps written once to --workdir: the ID fit dump of N = 400 000 × D = 512 (C = 100 classes:
class means + unit noise, with a classifier), a quarter of it (N/4, the same rows' distribution) for
the RSS check, an ID test dump and an OOD dump (another set of class means, unlabelled) of --scored
rows each. Each measurement runs in a fresh process, --repeat rounds alternating the kinds:

  floor        bench_engine's floor (h5py reads of whole chunks, float32 → float64, one GEMM XᵀX per
               read) over the fit, test and OOD dumps, one after the other
  ood          `actgeom.ood(fit, test=, ood=)` with the defaults (kNN and ViM's α on 10 000 sampled
               fit rows), timed after importing the api, as the floor after its imports
  ood:knn1000  the same with knn_sample=1000
  ood:quarter  the defaults on the N/4 fit dump: peak RSS at N/4 vs N (the scored dumps unchanged)

Target (issue #26): ood ≤ 1.3 × floor; peak RSS at N / at N/4 ≤ 1.05.

    python benchmarks/bench_ood.py                # --repeat 3
    python benchmarks/bench_ood.py --repeat 1 --rows 100000
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

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import child_floor, peak_rss_mib  # noqa: E402

UNITS, CLASSES = 512, 100


def make(path: Path, n_rows: int, seed: int, *, labelled: bool, shift: float = 0.0) -> None:
    """Class-structured float32 rows in batches (never all in memory); the class means are drawn from
    seed 0 (+ ``shift`` times another draw for the OOD set); a classifier W = the means, b = 0."""
    from actgeom.core.dump import DumpWriter

    if path.exists():
        return
    means = 2.0 * np.random.default_rng(0).standard_normal((CLASSES, UNITS)).astype(np.float32)
    other = 2.0 * np.random.default_rng(99).standard_normal((CLASSES, UNITS)).astype(np.float32)
    rng = np.random.default_rng(seed)
    with DumpWriter(path, layers={"layer": UNITS}, dtype="float32", model="synthetic") as writer:
        for start in range(0, n_rows, 20_000):
            n = min(20_000, n_rows - start)
            y = rng.integers(0, CLASSES, n)
            X = (1 - shift) * means[y] + shift * other[y] + rng.standard_normal((n, UNITS), dtype=np.float32)
            writer.append({"layer": X}, **({"labels": y} if labelled else {}))
        writer.set_classifier(means / UNITS, np.zeros(CLASSES, dtype=np.float32), layer="layer")


def child(kind: str, paths: dict) -> dict:
    if kind == "floor":
        t0 = time.perf_counter()
        for name in ("fit", "test", "ood"):
            child_floor(paths[name], 1)
        return {"seconds": time.perf_counter() - t0}
    import actgeom
    from actgeom.core import api  # noqa: F401  (scipy, h5py, the engine: imported before the clock, as the floor's)

    fit = paths["quarter"] if kind == "ood:quarter" else paths["fit"]
    options = {"knn_sample": 1000} if kind == "ood:knn1000" else {}
    t0 = time.perf_counter()
    result = actgeom.ood(fit, test=paths["test"], ood=paths["ood"], **options)
    seconds = time.perf_counter() - t0
    found = result.files()[0]["layers"][0]["metrics"]
    return {"seconds": seconds, "auroc": {k: round(v, 4) for k, v in found.items() if k.endswith("_auroc")}}


def run(kind: str, paths: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps({k: str(v) for k, v in paths.items()})],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000, help="N, the fit dump's rows")
    parser.add_argument("--scored", type=int, default=20_000, help="rows of the ID test dump and of the OOD dump")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/actgeom_bench_ood"))
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], json.loads(args.child[1])) | {"peak_rss_mib": peak_rss_mib()}))
        return
    args.workdir.mkdir(exist_ok=True)
    paths = {"fit": args.workdir / f"fit_{args.rows}.h5", "quarter": args.workdir / f"fit_{args.rows // 4}.h5",
             "test": args.workdir / f"test_{args.scored}.h5", "ood": args.workdir / f"ood_{args.scored}.h5"}
    make(paths["fit"], args.rows, 1, labelled=True)
    make(paths["quarter"], args.rows // 4, 2, labelled=True)
    make(paths["test"], args.scored, 3, labelled=True)
    make(paths["ood"], args.scored, 4, labelled=False, shift=0.2)
    print(f"N={args.rows} D={UNITS} C={CLASSES} float32; test and OOD {args.scored} rows each; cpus={os.cpu_count()}; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    kinds = ["floor", "ood", "ood:knn1000", "ood:quarter"]
    run("floor", paths)  # warm the page cache
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for _ in range(args.repeat):
        for kind in kinds:
            runs[kind].append(run(kind, paths))
            print(f"  {kind:12s} {runs[kind][-1]['seconds']:7.2f} s  peak RSS {runs[kind][-1]['peak_rss_mib']:6.0f} MiB  "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
    best = {kind: min(r["seconds"] for r in results) for kind, results in runs.items()}
    for kind, results in runs.items():
        seconds = [r["seconds"] for r in results]
        print(f"{kind:12s} best {best[kind]:7.2f} s  median {statistics.median(seconds):7.2f}  max {max(seconds):7.2f}  "
              f"/floor {best[kind] / best['floor']:5.2f}  peak RSS {max(r['peak_rss_mib'] for r in results):6.0f} MiB")
    rss = {kind: max(r["peak_rss_mib"] for r in runs[kind]) for kind in ("ood", "ood:quarter")}
    print(f"ood / floor = {best['ood'] / best['floor']:.2f} (target ≤ 1.3); with knn_sample=1000: "
          f"{best['ood:knn1000'] / best['floor']:.2f}; peak RSS at N / at N/4 = {rss['ood'] / rss['ood:quarter']:.3f} "
          f"(target ≤ 1.05)")
    print("AUROC:", json.dumps(runs["ood"][0]["auroc"]))


if __name__ == "__main__":
    main()
