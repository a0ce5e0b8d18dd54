"""--dse-method slq against the exact DSE at N = 10 000 (issue 27, goal 4): time and error.

For each shape (one seeded dataset of N rows, σ = 10, t = 1):

exact  = actgeom.core.metrics.diffusion.diffusion_spectral_entropy (every eigenvalue), once;
slq    = diffusion_spectral_entropy_slq end to end (kernel, deflation, probes), --repeat times
         (seed 0): wall time and this process's CPU time (on a quiet machine wall ≈ CPU / threads);
error  = the estimate from the same float32 kernel (built once) with probe seeds 0..--seeds−1:
         (slq − exact)/exact, dse_error/exact, and whether |slq − exact| ≤ dse_error (its 95 % claim).

Shapes (seeded generators of the structure the hidden test shapes have):
mlp     ReLU features of a two-layer random MLP on 10 Gaussian classes in 16 dims (like
        sample_data's digits hidden layers, which have only 1 797 rows), D = 128;
tokens  token-like activations, D = 256: a decaying spectrum, sequences of 32 correlated rows,
        three massive dimensions (~90, the first token of each sequence at a tenth);
iso     isotropic Gaussian, D = 64 (median distance ≈ 11, next to σ = 10).

    python benchmarks/bench_dse_slq.py --shape mlp          # one shape per process (run the three at once)
    python benchmarks/bench_dse_slq.py --n 2000 --seeds 5   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from actgeom.core.metrics import diffusion as dm


def mlp(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((10, 16))[rng.integers(0, 10, n)] * 2 + rng.standard_normal((n, 16))
    h = np.maximum(z @ (rng.standard_normal((16, 64)) / 4) + 0.1, 0)
    return np.maximum(h @ (rng.standard_normal((64, 128)) * 3 / 8), 0) * 1.5


def tokens(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scales = 1.5 / np.sqrt(1 + np.arange(256) / 8)
    sequences = n // 32 + 1
    x = (rng.standard_normal((sequences, 1, 256)) * scales * 0.8
         + rng.standard_normal((sequences, 32, 256)) * scales).reshape(-1, 256)[:n]
    x[:, [3, 77, 200]] = rng.normal(90, 4, (n, 3))
    x[::32, [3, 77, 200]] *= 0.1
    return x


def iso(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 64))


SHAPES = {"mlp": mlp, "tokens": tokens, "iso": iso}


def timed(function, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), action="append")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    for name in args.shape or sorted(SHAPES):
        X = SHAPES[name](args.n, 0)
        exact, wall, cpu = timed(dm.diffusion_spectral_entropy, X, sigma=10.0, t=1.0)
        print(f"{name} N={args.n} D={X.shape[1]}: exact DSE {exact['dse']:.9f} bits in {wall:.1f} s (cpu {cpu:.1f} s), "
              f"off-diagonal share of K {exact['dse_offdiag_fraction']:.3f}, load {os.getloadavg()[0]:.1f}", flush=True)
        runs = [timed(dm.diffusion_spectral_entropy_slq, X, sigma=10.0, t=1.0, seed=0) for _ in range(args.repeat)]
        walls, cpus = [r[1] for r in runs], [r[2] for r in runs]
        print(f"  slq end to end: wall {' '.join(f'{w:.1f}' for w in walls)} s, cpu {' '.join(f'{c:.1f}' for c in cpus)} s, "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
        kernel, degrees = dm._kernel_float32(X, 10.0)
        rows = []
        for seed in range(args.seeds):
            estimate = dm._slq_entropy(kernel, degrees, t=1.0, seed=seed)
            error = estimate["dse"] - exact["dse"]
            rows.append((error / exact["dse"], estimate["dse_error"] / exact["dse"], abs(error) <= estimate["dse_error"]))
        rows = np.array(rows)
        summary = {"shape": name, "n": args.n, "exact": exact["dse"], "max_abs_rel_error": float(np.abs(rows[:, 0]).max()),
                   "mean_rel_error": float(rows[:, 0].mean()), "sd_rel_error": float(rows[:, 0].std(ddof=1)),
                   "mean_rel_dse_error": float(rows[:, 1].mean()), "covered": int(rows[:, 2].sum()), "seeds": args.seeds}
        print("  " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
