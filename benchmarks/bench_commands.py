"""Time every metric command against the floor on the engine benchmark's dumps — at both shapes
of issue #14 (N = 400 000 × D = 512 and N = 200 000 × D = 1024, float16, C = 100) — each in a
fresh process, with and without `--products float32`; DSE alone at N = 2 000 … 10 000; and
`collapse` at language-model scale (C = 50 000 classes > D = 256 units, N = 500 000 rows); and DSE
at N = 10 000 against dse-dsmi and one eigensolve (benchmarks/bench_dse.py, run from here).
Each command's time starts before `import actgeom` (as a user's command, after the interpreter);
"pass s" starts after importing actgeom.core.api (scipy, h5py, the engine), as the floors are timed
(their h5py/numpy imports are not counted).
floor1/floor4: reads + one float64 XᵀX per block of 1/4 chunks (benchmarks/bench_engine.py); floor1x2:
reads + two D×D products per block, the least for `all` (the report's pass: collapse's class scatter
and the dataset entropy's Σ uuᵀ of the L2-normalised rows are two different D×D sums).

    python benchmarks/bench_commands.py                 # everything
    python benchmarks/bench_commands.py --skip-lm --skip-dse --shapes 200000x1024
    python benchmarks/bench_commands.py --rss-only      # peak RSS of every command at N and 4N rows
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import WORKDIR, benchmark_dump, peak_rss_mib, run_child  # noqa: E402

FAST = "+f32"  # a kind ending so runs with --products float32


def child(kind: str, path: str) -> dict:
    t0 = time.perf_counter()
    import actgeom
    from actgeom.core import api  # noqa: F401  (scipy, h5py and the engine: what a command imports before its pass)

    imported = time.perf_counter()

    products = "float32" if kind.endswith(FAST) else "float64"
    kind = kind.removesuffix(FAST)
    extra = {}
    if kind == "collapse":
        layer = actgeom.collapse(path, products=products).files()[0]["layers"][0]
        extra = {"n_classes_kept": layer["collapse"]["n_classes_kept"]}
    elif kind == "rank":
        layer = actgeom.rank(path, products=products).files()[0]["layers"][0]
        extra = {"sample_rows": layer["rank"]["sample_rows"]}
    elif kind == "entropy":  # the streamable entropies: DSE/DSMI on a 2-row sample cost nothing
        actgeom.entropy(path, subsample=2, threshold=0.0, products=products)
    elif kind == "entropy-rss":
        actgeom.entropy(path, subsample=2000)
    elif kind == "neurons":
        actgeom.neurons(path, threshold=0.0, products=products)
    elif kind == "probe":  # two passes: train moments, then the test rows scored
        actgeom.probe(path, products=products)
    elif kind == "all":  # collapse + rank + entropy in one pass, DSE/DSMI on 2 000 rows (report's defaults)
        actgeom.analyze(path, options={"entropy": {"subsample": 2000, "threshold": 0.0}}, products=products)
    elif kind == "compare":  # the dump against itself: every similarity of every layer pair
        actgeom.compare([path, path])
    elif kind in ("report", "report3", "stats"):  # through the CLI, as users run them (report3: issue #9's three families)
        import tempfile

        from typer.testing import CliRunner

        from actgeom.cli.app import app

        with tempfile.TemporaryDirectory() as scratch:
            out = str(Path(scratch) / ("s.npz" if kind == "stats" else "r.html"))
            args = ["stats", path, "--save-stats", out, "-o", out + ".json"] if kind == "stats" else ["report", path, "-o", out]
            args += ["--families", "collapse,rank,entropy"] if kind == "report3" else []
            result = CliRunner().invoke(app, [*args, "--quiet"])
            assert result.exit_code == 0, result.output
    elif kind.startswith("dse:"):  # DSE alone on N random rows of D = 512
        from actgeom.core.metrics.diffusion import diffusion_spectral_entropy

        X = np.random.default_rng(0).standard_normal((int(kind[4:]), 512))
        t0 = time.perf_counter()
        diffusion_spectral_entropy(X, sigma=10.0, t=1.0)
    else:  # one eigvalsh of a D×D symmetric matrix, D from the dump
        import h5py

        with h5py.File(path, "r") as f:
            n_units = f["activations/layer"].shape[1]
        A = np.random.default_rng(0).standard_normal((n_units, n_units))
        t0 = time.perf_counter()
        np.linalg.eigvalsh(A @ A.T)
    done = time.perf_counter()
    return {"seconds": done - t0, "pass_seconds": done - max(t0, imported)} | extra  # (dse, eigvalsh: t0 set after)


def make_lm_dump(path: Path, n_rows: int, n_units: int, n_classes: int, seed: int = 0) -> None:
    """Zipf-distributed token classes (as in language-model vocabularies), float16 rows."""
    from actgeom.core.dump import DumpWriter

    if path.exists():
        return
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((n_classes, n_units)).astype(np.float32)
    p = 1.0 / np.arange(1, n_classes + 1) ** 0.6
    p /= p.sum()
    with DumpWriter(path, layers={"layer": n_units}, dtype="float16", model="synthetic-lm", level="token") as writer:
        for start in range(0, n_rows, 50_000):
            n = min(50_000, n_rows - start)
            y = rng.choice(n_classes, size=n, p=p)
            writer.append({"layer": means[y] + rng.standard_normal((n, n_units), dtype=np.float32)}, labels=y)


COMMANDS = ("collapse", "rank", "entropy", "neurons", "all", "report3")


def measure(path: Path, repeat: int) -> None:
    """Every command (and its --products float32 run) against the floors, best of ``repeat``."""
    run_child("floor1", path)  # warm the page cache
    kinds = ["floor1", "floor4", "floor1x2", "eigvalsh", *COMMANDS,
             *(kind + FAST for kind in COMMANDS if kind not in ("neurons", "report3"))]
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for _ in range(repeat):
        for kind, results in runs.items():
            results.append(run_child(kind, path, None if kind.startswith("floor") else __file__))
    best = {kind: min(results, key=lambda r: r["seconds"]) for kind, results in runs.items()}
    floor1, floor4 = best["floor1"]["seconds"], best["floor4"]["seconds"]
    print(f"{'kind':13s} {'best s':>7s} {'/floor1':>8s} {'/floor4':>8s} {'peak RSS':>9s}  {'pass s':>7s} {'/floor1':>8s}  runs")
    for kind, results in runs.items():
        seconds = best[kind]["seconds"]
        every = ", ".join(f"{r['seconds']:.2f}" for r in results)
        passed = best[kind].get("pass_seconds")  # without the imports, as the floors are timed
        pass_columns = f"{passed:7.2f} {passed / floor1:8.3f}" if passed is not None else f"{'':7s} {'':8s}"
        print(f"{kind:13s} {seconds:7.2f} {seconds / floor1:8.3f} {seconds / floor4:8.3f} "
              f"{best[kind]['peak_rss_mib']:6.0f} MiB  {pass_columns}  ({every})")
    print(f"rank / (floor1 + one eigvalsh): {best['rank']['seconds'] / (floor1 + best['eigvalsh']['seconds']):.3f}")
    print(f"all / floor1x2 (reads + the two D×D products per block its metrics need): "
          f"{best['all']['seconds'] / best['floor1x2']['seconds']:.3f}")
    print(f"report3 (the page of collapse + rank + entropy, figures included) / floor1x2: "
          f"{best['report3']['seconds'] / best['floor1x2']['seconds']:.3f}")
    separate = sum(best[kind]["seconds"] for kind in ("collapse", "rank", "entropy"))
    print(f"one pass for three families ('all') / three separate commands: {best['all']['seconds'] / separate:.3f}")


RSS_KINDS = ("stats", "collapse", "rank", "entropy", "neurons", "probe", "compare", "all", "report")


def rss_scaling(n_rows: int, n_units: int, classes: int) -> None:
    """Peak RSS of every command at N and 4N rows: memory must not grow with the rows."""
    paths = {}
    for n in (n_rows, 4 * n_rows):
        paths[n] = benchmark_dump(n, n_units, classes, "float16")
    print(f"\npeak RSS at N={n_rows} and 4N, D={n_units} float16 (entropy: its defaults but DSE on 2 000 rows)")
    for kind in RSS_KINDS:
        rss = {n: run_child(kind if kind != "entropy" else "entropy-rss", path, __file__)["peak_rss_mib"]
               for n, path in paths.items()}
        print(f"{kind:9s} N: {rss[n_rows]:6.0f} MiB  4N: {rss[4 * n_rows]:6.0f} MiB  4N/N: {rss[4 * n_rows] / rss[n_rows]:.3f}",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="400000x512,200000x1024", help="ROWSxUNITS,... (float16 dumps)")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-lm", action="store_true")
    parser.add_argument("--skip-dse", action="store_true")
    parser.add_argument("--rss-only", action="store_true", help="only the peak-RSS scaling (N vs 4N) of every command")
    parser.add_argument("--skip-rss", action="store_true", help="no peak-RSS scaling")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child(*args.child)
        result["peak_rss_mib"] = peak_rss_mib()
        print(json.dumps(result))
        return
    WORKDIR.mkdir(exist_ok=True)
    if not args.skip_rss:
        rss_scaling(100_000, 256, args.classes)
    if args.rss_only:
        return
    for shape in args.shapes.split(","):
        rows, units = (int(v) for v in shape.split("x"))
        path = benchmark_dump(rows, units, args.classes, "float16")
        print(f"\nN={rows} D={units} C={args.classes} float16", flush=True)
        measure(path, args.repeat)
    for n in () if args.skip_dse else (2000, 5000, 10000):
        result = run_child(f"dse:{n}", path, __file__)
        print(f"DSE N={n} D=512: {result['seconds']:.2f} s, peak RSS {result['peak_rss_mib']:.0f} MiB "
              f"(one {n}×{n} float64 matrix = {n * n * 8 / 2**20:.0f} MiB)")
    if not args.skip_lm:
        lm = WORKDIR / "synthetic_lm_256u_50000c_500000.h5"
        make_lm_dump(lm, 500_000, 256, 50_000)
        result = run_child("collapse", lm, __file__)
        print(f"LM scale N=500000 D=256 C=50000: {result['seconds']:.1f} s, peak RSS {result['peak_rss_mib']:.0f} MiB, "
              f"{result['n_classes_kept']} classes with rows")
    if not args.skip_dse:  # last (it installs dse-dsmi in its own venv once): against dse-dsmi and one eigensolve
        print(flush=True)
        done = subprocess.run([sys.executable, str(Path(__file__).parent / "bench_dse.py"), "--sizes", "10000",
                               "--skip-command"])
        if done.returncode:
            print(f"benchmarks/bench_dse.py failed (exit {done.returncode}): no comparison with dse-dsmi")


if __name__ == "__main__":
    main()
