"""neurons (one pass) and probe (two passes) against the floor, in the same run.

    python benchmarks/bench_families.py            # the engine benchmark dump: N=200 000, D=1024, C=100, float16

Goals (issues #12, #16): neurons ≤ 1.3 × the 1-chunk floor; probe ≤ 2.2 ×.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import benchmark_dump, run_child  # noqa: E402

COMMANDS = str(Path(__file__).with_name("bench_commands.py"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--units", type=int, default=1024)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    path = benchmark_dump(args.rows, args.units, args.classes, "float16")
    run_child("floor1", path)  # warm the page cache
    runs: dict[str, list[dict]] = {"floor1": [], "neurons": [], "probe": []}
    for _ in range(args.repeat):
        for kind, results in runs.items():
            results.append(run_child(kind, path, None if kind.startswith("floor") else COMMANDS))
    best = {kind: min(r["seconds"] for r in results) for kind, results in runs.items()}
    print(f"N={args.rows} D={args.units} C={args.classes} float16")
    for kind, results in runs.items():
        every = ", ".join(f"{r['seconds']:.2f}" for r in results)
        print(f"{kind:8s}: {best[kind]:.2f} s  peak RSS {min(r['peak_rss_mib'] for r in results):.0f} MiB  (runs: {every})")
    print(f"neurons / floor1: {best['neurons'] / best['floor1']:.3f}   (goal ≤ 1.3)")
    print(f"probe / floor1: {best['probe'] / best['floor1']:.3f}   (goal ≤ 2.2)")


if __name__ == "__main__":
    main()
