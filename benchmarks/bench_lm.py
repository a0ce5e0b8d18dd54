"""collapse, rank and the report's pass on a language-model-sized token-level bfloat16 dump, against
the floor at that width, with peak RSS and the `--products float32` error (issue #27, goals 3 and 5).

The dump (made once into --workdir): N rows of D units, bfloat16, token level (sequences of
--seq-len tokens), labels = next-token ids over a C-token vocabulary with Zipf–Mandelbrot frequencies
p_k ∝ (k + 2.7)^-1 (Piantadosi 2014's fit of natural text), ids randomly permuted. Each row is
    x = m + s·e_massive + a·E[next]·A + b·E[token]·B + z·diag(σ)·Q + ε
m a common offset (anisotropy: every row shares a direction), e_massive four "massive" dimensions
of size ~100 (×8 on a sequence's first token: the attention sink), E a C×64 token embedding
projected to D (the label-dependent mean: collapse metrics are not trivial), z·diag(σ)·Q a 256-dim
subspace with a σ_j ∝ j^-0.7 spectrum, ε isotropic noise. Vectorised and seeded.

Runs, each in a fresh process, alternating in --repeat rounds:
floor1   = reads of one chunk (256 rows at D = 4096) + exact bfloat16 → float64 decode + one in-place
           float64 dsyrk XᵀX per block (bench_engine's floor with the engine's product call: numpy's
           `gram += X.T @ X` adds a D×D temporary per block, ~10 % at this width); floor1x2 = two;
collapse, rank, report (the report's families and options in one run: collapse, rank, entropy on
2 000 rows, neurons, probe; `details=True` as `actgeom report` asks), each also `+f32`
(`--products float32`). Per run: wall time from before `import actgeom`, the time after the imports
("pass", timed as the floors are), its ratio to the same round's floor1 (report: also floor1x2),
peak RSS (the child's VmHWM: ru_maxrss would include what the parent held at fork), and for +f32
the largest relative difference of every metric against the round's float64 run.
--plan: per-row costs at this width (read + decode, the D×D product float64/float32 on 1 and all
cores, the class sums at C classes), per-layer costs (eigensolve, the class-moments merge) and the
estimates of benchmarks/PLANNING.md for --plan-rows rows.

    python benchmarks/bench_lm.py                                   # N=200 000, D=4096, C=32 000, 2 rounds
    python benchmarks/bench_lm.py --rows 20000 --units 1024 --repeat 1 --only collapse,rank   # quick check
    python benchmarks/bench_lm.py --plan --plan-rows 100000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import WORKDIR, peak_rss_mib  # noqa: E402
from plan_lm import plan_child, print_plan  # noqa: E402

FAST = "+f32"
COMMANDS = ("collapse", "rank", "report")
LATENT, SUBSPACE, MASSIVE = 64, 256, 4


def zipf_probabilities(n_classes: int) -> np.ndarray:
    """Zipf–Mandelbrot token frequencies p_k ∝ (k + 2.7)^-1, k = frequency rank."""
    p = 1.0 / (np.arange(n_classes) + 2.7)
    return p / p.sum()


def token_stream(rng, n_rows: int, n_classes: int, seq_len: int) -> tuple[np.ndarray, ...]:
    """Per row: its token id, the next token (the label), its position; and the sequence lengths.
    Each sequence draws seq_len + 1 tokens so the last row has a next token."""
    lengths = np.full(n_rows // seq_len, seq_len)
    if n_rows % seq_len:
        lengths = np.append(lengths, n_rows % seq_len)
    ids = rng.permutation(n_classes)  # a vocabulary's ids are not in frequency order
    drawn = ids[rng.choice(n_classes, size=n_rows + lengths.size, p=zipf_probabilities(n_classes))]
    seq = np.repeat(np.arange(lengths.size), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    position = np.arange(n_rows) - starts[seq]
    at = np.arange(n_rows) + seq  # row i of sequence s is drawn token i + s (each sequence has one extra)
    return drawn[at], drawn[at + 1], position, lengths


def make_lm_dump(path: Path, n_rows: int, n_units: int, n_classes: int, seq_len: int, seed: int = 0) -> None:
    """The synthetic LM dump (module docstring), written in batches of 8 192 rows."""
    from actgeom.core.dump import DumpWriter

    rng = np.random.default_rng(seed)
    token, label, position, lengths = token_stream(rng, n_rows, n_classes, seq_len)
    f32 = np.float32
    embed = rng.standard_normal((n_classes, LATENT), dtype=f32)
    to_label = rng.standard_normal((LATENT, n_units), dtype=f32) * f32(1.2 / np.sqrt(LATENT))
    to_token = rng.standard_normal((LATENT, n_units), dtype=f32) * f32(0.6 / np.sqrt(LATENT))
    sigma = 6.0 * np.arange(1, SUBSPACE + 1) ** -0.7
    basis = (rng.standard_normal((SUBSPACE, n_units)) * (sigma[:, None] / np.sqrt(n_units) * 8)).astype(f32)
    offset = (0.5 + 0.3 * rng.standard_normal(n_units)).astype(f32)
    massive = rng.choice(n_units, MASSIVE, replace=False)
    massive_size = (rng.uniform(60, 120, MASSIVE) * rng.choice([-1, 1], MASSIVE)).astype(f32)
    tmp = path.with_suffix(".partial.h5")
    with DumpWriter(tmp, layers={"layer": n_units}, dtype="bfloat16", model="synthetic-lm", level="token",
                    expected_rows=n_rows) as writer:
        for a in range(0, n_rows, 8192):
            b = min(a + 8192, n_rows)
            X = rng.standard_normal((b - a, n_units), dtype=f32)
            X += embed[label[a:b]] @ to_label
            X += embed[token[a:b]] @ to_token
            X += rng.standard_normal((b - a, SUBSPACE), dtype=f32) @ basis
            X += offset
            X[:, massive] += massive_size * np.where(position[a:b] == 0, 8.0, 1.0).astype(f32)[:, None]
            writer.append({"layer": X}, labels=label[a:b], token_id=token[a:b], position=position[a:b])
        writer.add_sequences(lengths)
    tmp.rename(path)


def lm_dump(workdir: Path, n_rows: int, n_units: int, n_classes: int, seq_len: int) -> Path:
    """The dump of that shape in ``workdir`` (made once)."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"lm_bf16_{n_units}u_{n_classes}c_{n_rows}r_{seq_len}s.h5"
    if not path.exists():
        t0 = time.perf_counter()
        make_lm_dump(path, n_rows, n_units, n_classes, seq_len)
        print(f"made {path} ({path.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def child_floor(path: str, products: int) -> dict:
    """Reads of one chunk, the exact bfloat16 → float64 decode, ``products`` in-place dsyrk per block."""
    import h5py
    from scipy.linalg import blas

    t0 = time.perf_counter()
    with h5py.File(path, "r") as f:
        ds = f["activations/layer"]
        n_rows, n_units = ds.shape
        block = ds.chunks[0]
        raw = np.empty((block, n_units), dtype=np.uint16)
        bits = np.empty((block, n_units), dtype=np.uint32)
        X = np.empty((block, n_units))
        grams = [np.zeros((n_units, n_units), order="F") for _ in range(products)]
        for a in range(0, n_rows, block):
            m = min(block, n_rows - a)
            ds.read_direct(raw, np.s_[a : a + m], np.s_[0:m])
            np.left_shift(raw[:m], 16, out=bits[:m], dtype=np.uint32)
            np.copyto(X[:m], bits[:m].view(np.float32))
            for gram in grams:
                blas.dsyrk(1.0, X[:m].T, beta=1.0, c=gram, trans=0, overwrite_c=1)
    return {"seconds": time.perf_counter() - t0}


def report_families() -> dict:
    """The report's families with the report's own options (cli/report/data.py ReportOptions)."""
    from actgeom.cli.report.data import ReportOptions

    options = ReportOptions()
    return {name: getattr(options, name) for name in options.families}


def child_command(kind: str, path: str) -> dict:
    """One command through the public API; its metrics as {"layer/family/metric": value}."""
    t0 = time.perf_counter()
    import actgeom
    from actgeom.core import api

    imported = time.perf_counter()
    products = "float32" if kind.endswith(FAST) else "float64"
    kind = kind.removesuffix(FAST)
    if kind == "collapse":
        result = actgeom.collapse(path, products=products)
    elif kind == "rank":
        result = actgeom.rank(path, products=products)
    else:
        from actgeom.core.state.engine import PassOptions

        result = api.run("report", [path], report_families(), pass_options=PassOptions(products=products), details=True)
    done = time.perf_counter()
    metrics = {f"{r['layer']}/{r['family']}/{r['metric']}": r["value"] for r in result.records()
               if isinstance(r["value"], (int, float)) and not isinstance(r["value"], bool)}
    return {"seconds": done - t0, "pass_seconds": done - imported, "metrics": metrics}


def run_child(kind: str, path: Path, extra: list[str] = ()) -> dict:
    """One measurement in a fresh process; it prints one JSON line (its peak RSS included)."""
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(path), *extra], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def largest_difference(fast: dict, exact: dict) -> tuple[float, str]:
    """max over the metrics of |fast − exact| / |exact| (0/0 = 0; x/0 = inf), and that metric's name."""
    worst, name = 0.0, ""
    for key, value in exact.items():
        other = fast.get(key)
        if other is None or not np.isfinite(value) or not np.isfinite(other):
            continue
        diff = abs(other - value)
        rel = 0.0 if diff == 0 else diff / abs(value) if value != 0 else float("inf")
        if rel > worst:
            worst, name = rel, key
    return worst, name


def round_of_runs(path: Path, kinds: list[str], n: int, load: str) -> list[dict]:
    """One round: every kind once, in order; ratios against this round's floors; one JSON line each."""
    rows, found = [], {}
    for kind in kinds:
        result = run_child(kind, path)
        found[kind] = result
        record = {"round": n, "kind": kind, "seconds": round(result["seconds"], 3),
                  "peak_rss_mib": round(result["peak_rss_mib"]), "load": load}
        timed = result.get("pass_seconds", result["seconds"])
        if "pass_seconds" in result:
            record["pass_seconds"] = round(timed, 3)
        for floor in ("floor1", "floor1x2"):
            if floor in found and not kind.startswith("floor"):
                record[f"per_{floor}"] = round(timed / found[floor]["seconds"], 4)
        exact = found.get(kind.removesuffix(FAST))
        if kind.endswith(FAST) and exact is not None:
            record["max_rel_diff"], record["worst_metric"] = largest_difference(result["metrics"], exact["metrics"])
            record["n_metrics"] = len(exact["metrics"])
        print(json.dumps(record), flush=True)
        rows.append(record)
    return rows


def print_table(rows: list[dict]) -> None:
    """Per kind: best pass time, its ratios, peak RSS, the float32 error, and every round's time."""
    print(f"\n{'kind':14s} {'best s':>8s} {'/floor1':>8s} {'/fl1x2':>7s} {'peak RSS':>10s} {'max rel diff':>13s}  runs (pass s)")
    for kind in dict.fromkeys(r["kind"] for r in rows):
        mine = [r for r in rows if r["kind"] == kind]
        best = min(mine, key=lambda r: r.get("pass_seconds", r["seconds"]))
        every = ", ".join(f"{r.get('pass_seconds', r['seconds']):.1f}" for r in mine)
        ratio = f"{best['per_floor1']:8.3f}" if "per_floor1" in best else f"{'':8s}"
        ratio2 = f"{best['per_floor1x2']:7.3f}" if "per_floor1x2" in best else f"{'':7s}"
        diff = f"{max(r['max_rel_diff'] for r in mine):13.2e}" if "max_rel_diff" in best else f"{'':13s}"
        print(f"{kind:14s} {best.get('pass_seconds', best['seconds']):8.1f} {ratio} {ratio2} "
              f"{max(r['peak_rss_mib'] for r in mine):6.0f} MiB {diff}  ({every})")
    for r in rows:
        if r.get("max_rel_diff", 0) > 0:
            print(f"round {r['round']} {r['kind']}: largest relative difference {r['max_rel_diff']:.2e} in {r['worst_metric']}")


def load_average() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--units", type=int, default=4096)
    parser.add_argument("--classes", type=int, default=32_000)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--only", default=",".join(COMMANDS), help="commands to run, a comma list of collapse,rank,report")
    parser.add_argument("--no-f32", action="store_true", help="skip the --products float32 runs")
    parser.add_argument("--workdir", type=Path, default=WORKDIR)
    parser.add_argument("--plan", action="store_true", help="measure the per-row costs and print the planning estimates")
    parser.add_argument("--plan-rows", type=float, default=1e8)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse()
    if args.child:
        kind, path, *rest = args.child
        if kind.startswith("floor"):
            result = child_floor(path, 2 if kind == "floor1x2" else 1)
        elif kind == "plan":
            result = plan_child(path, *(int(v) for v in rest))
        else:
            result = child_command(kind, path)
        result["peak_rss_mib"] = peak_rss_mib()
        print(json.dumps(result))
        return
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(only) - set(COMMANDS)
    if unknown:
        sys.exit(f"--only: {', '.join(sorted(unknown))} not among {', '.join(COMMANDS)}")
    path = lm_dump(args.workdir, args.rows, args.units, args.classes, args.seq_len)
    print(f"N={args.rows} D={args.units} C={args.classes} bfloat16 token-level; cpus={os.cpu_count()}; "
          f"load {load_average()}", flush=True)
    if args.plan:
        print_plan(run_child("plan", path, [str(args.classes)]), args.units, args.classes, args.plan_rows)
        return
    kinds = ["floor1", *(["floor1x2"] if "report" in only else []), *only, *([] if args.no_f32 else [k + FAST for k in only])]
    run_child("floor1", path)  # warm the page cache
    rows = []
    for n in range(args.repeat):
        rows += round_of_runs(path, kinds, n, load_average())
    print_table(rows)
    print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
    main()
