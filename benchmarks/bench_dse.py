"""DSE on N rows: actgeom against dse-dsmi (Liao et al.'s own package) and against one in-place
float64 eigensolve of an N×N matrix, all measured in the same run (issue #14).

For each N in --sizes, on the same rows (written once to benchmarks/_work/dse_rows_<N>x<D>.npy):

eigensolve = scipy.linalg.eigh(A, eigvals_only=True, overwrite_a=True, check_finite=False) on one
             Fortran-ordered N×N float64 matrix A (standard normal entries; LAPACK reads only
             its lower triangle, so it solves the symmetric matrix that triangle defines; its
             cost is the O(N³) reduction to tridiagonal form, whatever the spectrum): the
             floor of any exact DSE, since DSE needs every eigenvalue of an N×N kernel;
actgeom    = actgeom.core.metrics.diffusion.diffusion_spectral_entropy on the rows;
command    = actgeom.entropy() end to end on a float16 dump holding exactly those rows, with
             subsample = N (so its sample is every row): the pass, the sample, DSE and the other
             entropies (no labels, so no DSMI). --skip-command leaves it out;
dse-dsmi   = dse_dsmi.diffusion_spectral_entropy (version 1.1, MIT licence: we run it, we do
             not copy it), installed once in its own venv, benchmarks/_work/dse-venv, and run
             there, so none of its imports enter actgeom's environment.

Each measurement runs in a fresh process: its time excludes starting Python and importing
(`import_seconds` is printed apart for dse-dsmi, whose scikit-learn import is slow), and its
peak RSS is the process's own VmHWM (imports included). With --repeat k the four alternate k
times and the fastest run of each is kept (every run's time is printed): on a loaded machine
a 2-thread OpenBLAS call can take 10–100× its quiet time at small N.

The definitions are the same. dse-dsmi builds G = exp(−‖x_i − x_j‖²/(2σ²)) / (σ√(2π)) from
scikit-learn's pairwise_distances, K = Deg^{-1/2} G Deg^{-1/2} with Deg = diag(rowsum G), takes
|eig K|^t (numpy's eigvalsh when K passes its allclose symmetry check), p = that / its sum +
float eps (2.22e-16), and −Σ p log₂ p: METRICS.md §3's definition, except the constant factor
1/(σ√(2π)) in G, which cancels in Deg^{-1/2} G Deg^{-1/2}. It is called with the same σ and t
(`gaussian_kernel_sigma=sigma, t=t`; both default to 10 and 1, as ours do) and with
`max_N=None` (its default, 10 000, would subsample larger inputs with Python's `random`; at
N ≤ 10 000 it changes nothing). What still differs is rounding only: its distances are computed
uncentred (‖x‖² + ‖y‖² − 2xᵀy, then √, then squared again), ours from centred rows; its
eigensolver is LAPACK's dsyevd (numpy), ours dsyevr (scipy); its kernel is a product of dense
matrices. The acceptance is the same value to 1e-9 relative.

The rows: 10 classes of D-dimensional Gaussians (class means standard normal, noise of
standard deviation --noise, default 0.3), rounded to float16 (as activations are dumped) and
held as float64, so every implementation reads identical numbers. With σ = 10 and D = 512,
rows of one class are ~8 apart (G ≈ e^{-0.5}), of two classes ~33 (G ≈ e^{-5.5}): K is far
from I (≈ 98 % of its mass off the diagonal at N = 1 000) and DSE well below log₂ N, so the
comparison exercises the whole spectrum. (With --noise 1 most of K's mass is on its diagonal
and DSE ≈ log₂ N, a weaker test.)

    python benchmarks/bench_dse.py                        # N = 2 000, 5 000, 10 000; D = 512
    python benchmarks/bench_dse.py --sizes 1000,2000      # a quick check
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
from bench_engine import WORKDIR, peak_rss_mib  # noqa: E402

DSE_VENV = WORKDIR / "dse-venv"
DSE_DSMI = "dse-dsmi==1.1"
MATCH_RTOL = 1e-9  # issue #14: "same value as dse-dsmi to 1e-9 relative on the same rows"
N_CLASSES = 10


def make_rows(n_rows: int, n_units: int, noise: float, seed: int = 0) -> Path:
    """Class-structured rows rounded to float16, stored as float64 (written once)."""
    path = WORKDIR / f"dse_rows_noise{noise:g}_{n_rows}x{n_units}.npy"
    if not path.exists():
        rng = np.random.default_rng(seed)
        means = rng.standard_normal((N_CLASSES, n_units))
        X = means[rng.integers(0, N_CLASSES, n_rows)] + noise * rng.standard_normal((n_rows, n_units))
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, X.astype(np.float16).astype(np.float64))
        tmp.replace(path)
    return path


def make_dump(rows: Path) -> Path:
    """A float16 dump holding exactly the rows (no labels), for the end-to-end command."""
    from actgeom.core.dump import DumpWriter

    path = rows.with_suffix(".h5")
    if not path.exists():
        X = np.load(rows)
        tmp = path.with_suffix(".tmp.h5")
        with DumpWriter(tmp, layers={"layer": X.shape[1]}, dtype="float16", model="synthetic") as writer:
            writer.append({"layer": X.astype(np.float16)})
        tmp.replace(path)
    return path


def dse_python() -> Path:
    """The benchmark-only venv's interpreter, with dse-dsmi installed (once)."""
    python = DSE_VENV / "bin" / "python"
    if subprocess.run([str(python), "-c", "import dse_dsmi"], capture_output=True).returncode if python.exists() else 1:
        print(f"installing {DSE_DSMI} in {DSE_VENV} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(DSE_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", DSE_DSMI], check=True)
    return python


# -- the measurements, each run in a child process ------------------------------------------------

def child_eigensolve(n: int) -> dict:
    from scipy import linalg

    A = np.random.default_rng(0).standard_normal((n, n)).T  # Fortran order: LAPACK overwrites it in place
    t0 = time.perf_counter()
    linalg.eigh(A, eigvals_only=True, overwrite_a=True, check_finite=False)
    return {"seconds": time.perf_counter() - t0}


def child_actgeom(rows: str, sigma: float, t: float) -> dict:
    from actgeom.core.metrics.diffusion import diffusion_spectral_entropy

    X = np.load(rows)
    t0 = time.perf_counter()
    value = diffusion_spectral_entropy(X, sigma=sigma, t=t)["dse"]
    return {"seconds": time.perf_counter() - t0, "dse": value}


def child_command(dump: str, sigma: float, t: float) -> dict:
    import actgeom

    n_rows = int(Path(dump).stem.split("_")[-1].split("x")[0])
    t0 = time.perf_counter()
    result = actgeom.entropy(dump, subsample=n_rows, threshold=0.0, sigma=sigma, t=t)
    layer = result.files()[0]["layers"][0]
    return {"seconds": time.perf_counter() - t0, "dse": layer["metrics"]["dse"], "dse_rows": layer["metrics"]["dse_rows"]}


def child_dse_dsmi(rows: str, sigma: float, t: float) -> dict:
    """Runs in the dse-dsmi venv: numpy and dse_dsmi only."""
    X = np.load(rows)
    t0 = time.perf_counter()
    import dse_dsmi

    t1 = time.perf_counter()
    value = dse_dsmi.diffusion_spectral_entropy(X, gaussian_kernel_sigma=sigma, t=t, max_N=None)
    return {"seconds": time.perf_counter() - t1, "import_seconds": t1 - t0, "dse": float(value)}


CHILDREN = {"eigensolve": child_eigensolve, "actgeom": child_actgeom, "command": child_command,
            "dse-dsmi": child_dse_dsmi}


def run_child(python: Path | str, kind: str, target, sigma: float, t: float) -> dict:
    """One measurement in a fresh process of ``python``; it prints one JSON line."""
    out = subprocess.run([str(python), __file__, "--child", kind, str(target), "--sigma", str(sigma), "--t", str(t)],
                         capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{kind} failed (exit {out.returncode}):\n{out.stderr}")
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,5000,10000", help="comma-separated N")
    parser.add_argument("--units", type=int, default=512)
    parser.add_argument("--sigma", type=float, default=10.0)
    parser.add_argument("--t", type=float, default=1.0)
    parser.add_argument("--noise", type=float, default=0.3, help="within-class standard deviation of the rows")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each measurement; the fastest is kept")
    parser.add_argument("--skip-command", action="store_true", help="leave out actgeom.entropy() end to end")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, target = args.child
        result = CHILDREN[kind](int(target)) if kind == "eigensolve" else CHILDREN[kind](target, args.sigma, args.t)
        result["peak_rss_mib"] = peak_rss_mib()
        print(json.dumps(result))
        return
    WORKDIR.mkdir(exist_ok=True)
    theirs_python = dse_python()
    print(f"D={args.units} noise={args.noise:g} sigma={args.sigma:g} t={args.t:g}; dse-dsmi runs in {DSE_VENV}", flush=True)
    for n in (int(s) for s in args.sizes.split(",")):
        rows = make_rows(n, args.units, args.noise)
        plan = {"eigensolve": (sys.executable, n), "actgeom": (sys.executable, rows)}
        if not args.skip_command:
            plan["command"] = (sys.executable, make_dump(rows))
        plan["dse-dsmi"] = (theirs_python, rows)
        every: dict[str, list[dict]] = {kind: [] for kind in plan}
        for _ in range(args.repeat):
            for kind, (python, target) in plan.items():
                every[kind].append(run_child(python, kind, target, args.sigma, args.t))
        runs = {kind: min(results, key=lambda r: r["seconds"]) for kind, results in every.items()}
        print(f"N={n} (one {n}×{n} float64 matrix = {n * n * 8 / 2**20:.0f} MiB)")
        for kind, r in runs.items():
            value = f"  DSE {r['dse']:.15g}" if "dse" in r else ""
            extra = f"  (import {r['import_seconds']:.2f} s)" if "import_seconds" in r else ""
            times = "  (runs: " + ", ".join(f"{x['seconds']:.2f}" for x in every[kind]) + ")" if args.repeat > 1 else ""
            print(f"  {kind:10s}: {r['seconds']:8.2f} s  peak RSS {r['peak_rss_mib']:6.0f} MiB{value}{extra}{times}")
        theirs, solve = runs["dse-dsmi"], runs["eigensolve"]["seconds"]
        for kind in ("actgeom", "command"):
            if kind in runs:
                ours = runs[kind]
                rel = abs(ours["dse"] - theirs["dse"]) / abs(theirs["dse"])
                print(f"  {kind} vs dse-dsmi: relative difference {rel:.2e} "
                      f"({'within' if rel <= MATCH_RTOL else 'BEYOND'} {MATCH_RTOL:g}); "
                      f"time / eigensolve {ours['seconds'] / solve:.3f}, / dse-dsmi {ours['seconds'] / theirs['seconds']:.3f}")
        print(f"  dse-dsmi / eigensolve: {theirs['seconds'] / solve:.3f}", flush=True)


if __name__ == "__main__":
    main()
