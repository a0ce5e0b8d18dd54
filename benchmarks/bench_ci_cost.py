"""The cost of intervals and nulls (issue #24): `collapse` and `rank` with and without `--ci`, and
`collapse --null K` without, against the floor (reads + one float64 XᵀX per chunk) in the same run.

Float32 dumps of N = 200 000 rows × D = 512 and 1 024 units, C = 100 classes (class means + unit
noise), written once to --workdir. Each measurement runs in a fresh process, best of --repeat:
  floor1        bench_engine's floor: h5py reads of whole chunks, float32 → float64, one GEMM XᵀX per read
  pass:F        `accumulate` with the specs of family F (core/analysis.specs_for), no groups
  pass:F:ci     the same with PassOptions(ci_groups=G): every accumulator kept per group, the total settled
  warm:F, warm:F:ci  the second of two such passes in one process: without what a fresh process pays
               the first time it builds the pass's state (the G copies of it, for :ci), which this
               machine makes slow (benchmarks/RESULTS.md, "Session 12") — what a dump's later layers cost
  F, F:ci       the command end to end through the api (`actgeom.collapse(path)` / `(path, ci=True)`),
                timed after importing actgeom.core.api, as the floor is timed after its imports
  pass:collapse:null, collapse:null  the same with K label permutations (PassOptions(null=K); `null=K`)
The G re-evaluations = (F:ci − pass:F:ci) − (F − pass:F): what the command spends after its pass
beyond the metrics' own finalisation; the K null evaluations likewise. Targets: pass:F:ci ≤ 1.15 × pass:F;
collapse --null ≤ 1.2 × collapse (reported for the pass and for the command).

    python benchmarks/bench_ci_cost.py                        # D = 512 and 1 024, --repeat 3
    python benchmarks/bench_ci_cost.py --units 512 --repeat 1
    python benchmarks/bench_ci_cost.py --profile 1024         # where the grouped pass spends its time
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import child_floor, make_dump, peak_rss_mib, run_child  # noqa: E402

ROWS, CLASSES = 200_000, 100


def child_pass(path: str, family: str, groups: int, null: int = 0) -> dict:
    """`accumulate` with ``family``'s specs (what its command's pass keeps), grouped or not, with
    ``null`` label permutations or none."""
    from actgeom.core.analysis import facts_of, family_options, specs_for
    from actgeom.core.dump import Dump
    from actgeom.core.state.engine import PassOptions, accumulate

    t0 = time.perf_counter()
    options = PassOptions(ci_groups=groups, null=null)
    with Dump(path) as dump:  # (with the pass options: the permutations' class sums when null > 0)
        specs = specs_for({family: family_options(family, None)}, facts_of(dump), options)
        accumulate(dump, specs=specs, options=options)
    return {"seconds": time.perf_counter() - t0}


def child_command(path: str, family: str, ci: bool, null: int) -> dict:
    """The command through the api, timed after the imports (its intervals counted)."""
    import actgeom
    from actgeom.core import api  # noqa: F401  (scipy, h5py, the engine: imported before the floor's clock too)

    function = getattr(actgeom, family)
    t0 = time.perf_counter()
    result = function(path, ci=ci, **({"null": null} if null else {}))
    seconds = time.perf_counter() - t0
    layer = result.files()[0]["layers"][0]
    return {"seconds": seconds, "intervals": len(layer.get("intervals", {})), "nulls": len(layer.get("nulls", {}))}


def child(kind: str, path: str, groups: int, null: int) -> dict:
    parts = kind.split(":")
    if parts[0] == "floor1":
        return child_floor(path, 1)
    if parts[0] in ("pass", "warm"):
        options = (path, parts[1], groups if parts[2:] == ["ci"] else 0, null if parts[2:] == ["null"] else 0)
        first = child_pass(*options)
        return first if parts[0] == "pass" else child_pass(*options)  # warm: the second pass of the process
    return child_command(path, parts[0], parts[1:] == ["ci"], null if parts[1:] == ["null"] else 0)


def takes_null() -> bool:
    import actgeom

    return "null" in inspect.signature(actgeom.collapse).parameters


def measure(path: Path, args) -> None:
    """Every kind in turn, --repeat rounds, best of each; then the ratios."""
    kinds = ["floor1", "pass:collapse", "pass:collapse:ci", "pass:rank", "pass:rank:ci",
             "warm:collapse", "warm:collapse:ci", "warm:rank", "warm:rank:ci",
             "collapse", "collapse:ci", "rank", "rank:ci"] + (["pass:collapse:null", "collapse:null"] if takes_null() else [])
    extra = ["--groups", str(args.groups), "--null", str(args.null)]
    run_child("floor1", path)  # warm the page cache
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for _ in range(args.repeat):
        for kind in kinds:
            runs[kind].append(run_with(kind, path, extra))
    best = {kind: min(results, key=lambda r: r["seconds"]) for kind, results in runs.items()}
    floor = best["floor1"]["seconds"]
    for kind, results in runs.items():
        every = ", ".join(f"{r['seconds']:.2f}" for r in results)
        print(f"{kind:17s} {best[kind]['seconds']:7.2f} s  /floor1 {best[kind]['seconds'] / floor:6.3f}  "
              f"peak RSS {best[kind]['peak_rss_mib']:6.0f} MiB  (runs: {every})", flush=True)
    seconds = {kind: result["seconds"] for kind, result in best.items()}
    for family in ("collapse", "rank"):
        grouped, plain = seconds[f"pass:{family}:ci"], seconds[f"pass:{family}"]
        finalise = seconds[family] - plain
        reevaluate = seconds[f"{family}:ci"] - grouped - finalise
        warm = seconds[f"warm:{family}:ci"] / seconds[f"warm:{family}"]
        print(f"{family}: pass with G={args.groups} groups / without: {grouped / plain:.3f} (target ≤ 1.15; the "
              f"second pass of a process: {warm:.3f}); the G re-evaluations {reevaluate:.2f} s (finalisation "
              f"without --ci {finalise:.2f} s); command --ci / without: {seconds[f'{family}:ci'] / seconds[family]:.3f}")
    if "collapse:null" in seconds:
        permuted = seconds["collapse:null"] - seconds["pass:collapse:null"] - (seconds["collapse"] - seconds["pass:collapse"])
        print(f"collapse: pass with --null {args.null} / without: {seconds['pass:collapse:null'] / seconds['pass:collapse']:.3f} "
              f"(target ≤ 1.2); the K null evaluations {permuted:.2f} s; "
              f"command --null {args.null} / without: {seconds['collapse:null'] / seconds['collapse']:.3f}")
    else:
        print("collapse --null: actgeom.collapse takes no null= yet (not measured)")


def run_with(kind: str, path: Path, extra: list[str]) -> dict:
    import subprocess

    out = subprocess.run([sys.executable, __file__, "--child", kind, str(path), *extra], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def profile(path: Path, groups: int) -> None:
    """cProfile of the grouped collapse pass: the functions with the most own time."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.runcall(child_pass, str(path), "collapse", groups)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", default="512,1024", help="D of each dump, comma-separated")
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--null", type=int, default=100, help="K of collapse --null")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/actgeom_bench_ci"))
    parser.add_argument("--profile", type=int, metavar="D", help="profile the grouped collapse pass at this D instead")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child(*args.child, args.groups, args.null)
        print(json.dumps(result | {"peak_rss_mib": peak_rss_mib()}))
        return
    args.workdir.mkdir(exist_ok=True)
    for units in [args.profile] if args.profile else [int(d) for d in args.units.split(",")]:
        path = args.workdir / f"synthetic_{units}u_{CLASSES}c_float32_{ROWS}.h5"
        make_dump(path, ROWS, units, CLASSES, "float32")
        if args.profile:
            profile(path, args.groups)
            return
        print(f"\nN={ROWS} D={units} C={CLASSES} float32, G={args.groups}", flush=True)
        measure(path, args)


if __name__ == "__main__":
    main()
