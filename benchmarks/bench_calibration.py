"""Calibration of actgeom's jackknife intervals and permutation nulls (issue #24) on synthetic
Gaussian mixtures whose population values are known.

One fixed design (class means μ_c, a shared within-class covariance Σ, equal class probabilities
1/C, and for CKA two linear maps of one Gaussian) is drawn once from --design-seed; each of
--datasets seeded datasets draws N rows from it (labels uniform i.i.d.), is written as a dump, and
is measured with ``ci=True``. A 95 % interval "covers" when ci_low ≤ population value ≤ ci_high;
the report is the share of datasets covered per metric (binomial se ≈ 1.5 % at 200 datasets),
with the mean error of the estimate, the mean jackknife se and the mean jackknife bias estimate.

Population values under the conventions of docs/metrics.md (defaults: μ_G = mean of the class
means, Σ_B⁺ from the top C−1 eigenpairs, /C; Σ_W pooled over rows), m_c = μ_c − (1/C)Σ_c μ_c,
Σ_B = (1/C) Σ_c m_c m_cᵀ:
  nc1           = Tr(Σ Σ_B⁺)/C                           (Σ_W → Σ)
  nc1_quotient  = Tr Σ / Tr Σ_B
  cdnv          = mean over pairs c < c′ of 2 Tr Σ / (2‖μ_c − μ_c′‖²)   (v_c → Tr Σ)
  mean_energy_fraction = ‖μ̄‖² / (‖μ̄‖² + Tr Σ + Tr Σ_B),  μ̄ = (1/C)Σ_c μ_c (mixture mean and covariance)
  lda_accuracy  = accuracy of the population LDA rule with the probe's shrinkage s (Σ_s =
                  (1−s)Σ + s·(Tr Σ/D)·I, w_c = Σ_s⁻¹(μ_c − μ̄), b_c = −½ w_cᵀ(μ_c − μ̄) + log 1/C) on the
                  mixture: estimated by Monte Carlo on --mc-rows independent rows (its se is printed);
                  the estimate at N rows is the accuracy of a rule fitted on (1 − test_fraction)·N rows,
                  lower by O(D/N) — part of what the coverage measures
  cka_linear    = ‖Σ_XY‖_F² / (‖Σ_XX‖_F ‖Σ_YY‖_F), X = zA, Y = zB + ε, z ~ N(0, I), ε ~ N(0, σ²I):
                  Σ_XX = AᵀA, Σ_YY = BᵀB + σ²I, Σ_XY = AᵀB.
Nulls (when the api takes ``null=K``): under labels drawn independently of the rows the
permutation p-values of nc1 and lda_accuracy must be uniform (KS test against U(0, 1), p > 0.01;
they live on the grid k/(K+1)); with the planted structure every p-value must be 1/(K+1).

    python benchmarks/bench_calibration.py                          # 200 datasets, the default design
    python benchmarks/bench_calibration.py --rows 1000 --units 64 --classes 10   # few rows per class
"""

from __future__ import annotations

import argparse
import inspect
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats as scipy_stats

COLLAPSE_METRICS = ("nc1", "nc1_quotient", "cdnv")
RANK_METRICS = ("mean_energy_fraction",)
PROBE_METRICS = ("lda_accuracy",)
NULL_METRICS = ("nc1", "lda_accuracy")
SHRINKAGE = 0.1  # the probe's default s (core/base/options.py DEFAULT_SHRINKAGE)


@dataclass(frozen=True)
class Design:
    """One population: class means (C, D), the within-class covariance factor L (Σ = LLᵀ), and
    the two linear maps A, B (D, D) and noise σ of the CKA pair."""

    means: np.ndarray
    factor: np.ndarray
    map_a: np.ndarray
    map_b: np.ndarray
    noise: float

    @property
    def sigma(self) -> np.ndarray:
        return self.factor @ self.factor.T


def make_design(classes: int, units: int, separation: float, offset: float, seed: int) -> Design:
    """Means of norm ~separation·√D around a common offset; Σ with eigenvalues spread over [0.25, 4]."""
    rng = np.random.default_rng(seed)
    means = offset + separation * rng.standard_normal((classes, units))
    q, _ = np.linalg.qr(rng.standard_normal((units, units)))
    factor = q * np.sqrt(np.geomspace(0.25, 4.0, units))
    return Design(means=means, factor=factor, map_a=rng.standard_normal((units, units)),
                  map_b=rng.standard_normal((units, units)), noise=2.0)


# -- population values ------------------------------------------------------------------------

def population_collapse(d: Design) -> dict:
    """nc1, nc1_quotient, cdnv and mean_energy_fraction of the mixture (closed forms above)."""
    C = d.means.shape[0]
    centre = d.means.mean(axis=0)
    m = d.means - centre
    sigma_b = m.T @ m / C
    lam, vectors = np.linalg.eigh(sigma_b)
    top = vectors[:, ::-1][:, : C - 1] / np.sqrt(lam[::-1][: C - 1])  # Σ_B⁺ = top topᵀ (rank C − 1)
    trace_w = float(np.trace(d.sigma))
    pairs = [(a, b) for a in range(C) for b in range(a + 1, C)]
    cdnv = np.mean([trace_w / float(((d.means[a] - d.means[b]) ** 2).sum()) for a, b in pairs])
    energy = float(centre @ centre)
    return {"nc1": float(np.einsum("ij,ij->", top, d.sigma @ top)) / C, "nc1_quotient": trace_w / float(np.trace(sigma_b)),
            "cdnv": float(cdnv), "mean_energy_fraction": energy / (energy + trace_w + float(np.trace(sigma_b)))}


def population_lda(d: Design, rows: int, seed: int) -> tuple[float, float]:
    """(accuracy, its Monte-Carlo se) of the population shrunk-LDA rule on ``rows`` fresh rows."""
    C, D = d.means.shape
    centre = d.means.mean(axis=0)
    sigma_s = (1 - SHRINKAGE) * d.sigma + SHRINKAGE * np.trace(d.sigma) / D * np.eye(D)
    m = d.means - centre
    weight = np.linalg.solve(sigma_s, m.T).T
    bias = -0.5 * np.einsum("ij,ij->i", weight, m)
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, rows, 500_000):
        n = min(500_000, rows - start)
        y = rng.integers(0, C, n)
        X = d.means[y] + rng.standard_normal((n, D)) @ d.factor.T
        hits += int(((X - centre) @ weight.T + bias).argmax(axis=1).__eq__(y).sum())
    p = hits / rows
    return p, math.sqrt(p * (1 - p) / rows)


def population_cka(d: Design) -> float:
    D = d.map_a.shape[0]
    xx, yy, xy = d.map_a.T @ d.map_a, d.map_b.T @ d.map_b + d.noise**2 * np.eye(D), d.map_a.T @ d.map_b
    return float((xy**2).sum() / (np.linalg.norm(xx) * np.linalg.norm(yy)))


# -- one dataset --------------------------------------------------------------------------------

def write_dataset(d: Design, rows: int, seed: int, folder: Path, random_labels: bool = False) -> dict[str, Path]:
    """The mixture dump (layer "h", labels; random_labels: labels drawn again, independent of the
    rows) and the CKA pair (layer "x" in one file, "y" in the other, the same rows)."""
    from actgeom.core.dump import DumpWriter

    rng = np.random.default_rng(seed)
    C, D = d.means.shape
    y = rng.integers(0, C, rows)
    X = d.means[y] + rng.standard_normal((rows, D)) @ d.factor.T
    labels = rng.integers(0, C, rows) if random_labels else y
    z = rng.standard_normal((rows, D))
    paths = {"mixture": folder / f"m{seed}.h5", "x": folder / f"x{seed}.h5", "y": folder / f"y{seed}.h5"}
    arrays = {"mixture": ("h", X), "x": ("x", z @ d.map_a), "y": ("y", z @ d.map_b + d.noise * rng.standard_normal((rows, D)))}
    for key, (layer, values) in arrays.items():
        with DumpWriter(paths[key], layers={layer: D}, dtype="float32") as writer:
            writer.append({layer: values.astype(np.float32)}, labels=labels)
    return paths


def interval_of(layer: dict, metric: str) -> dict:
    """{value, ci_low, ci_high, se, bias} of ``metric`` in one layer entry, or {value, why}."""
    value = layer["metrics"].get(metric)
    interval = layer.get("intervals", {}).get(metric)
    if interval is None:
        return {"value": value, "why": layer.get("intervals_unavailable", {}).get(metric, "no interval")}
    return {"value": value} | interval


def measure_dataset(paths: dict[str, Path], groups: int, parts: set[str]) -> dict[str, dict]:
    """The calibrated metrics of one dataset with their intervals: ``parts`` of "moments"
    (collapse and rank), "probe", "cka"."""
    import actgeom

    out = {}
    if "moments" in parts:
        layer = actgeom.analyze(str(paths["mixture"]), families=("collapse", "rank"), ci=True, ci_groups=groups,
                                options={"rank": {"subsample": 200}}).files()[0]["layers"][0]
        out |= {metric: interval_of(layer, metric) for metric in COLLAPSE_METRICS + RANK_METRICS}
    if "probe" in parts:
        layer = actgeom.probe(str(paths["mixture"]), ci=True, ci_groups=groups).files()[0]["layers"][0]
        out |= {metric: interval_of(layer, metric) for metric in PROBE_METRICS}
    if "cka" in parts:
        out["cka_linear"] = compare_interval(paths, groups)
    return out


def compare_interval(paths: dict[str, Path], groups: int) -> dict:
    """cka_linear of the pair with its interval, read from the compare document's cell."""
    import actgeom

    result = actgeom.compare([str(paths["x"]), str(paths["y"])], ci=True, ci_groups=groups,
                             subsample=256)  # cka_linear is streamed; a small sample keeps the sample measures cheap
    return interval_of(result.document["pairs"][0], "cka_linear")


def takes(function, keyword: str) -> bool:
    return keyword in inspect.signature(function).parameters


# -- coverage -------------------------------------------------------------------------------------

def coverage(d: Design, truth: dict, args, folder: Path) -> None:
    """Run every dataset, then print per metric: coverage, mean error, mean se, mean bias estimate."""
    import actgeom

    parts = set(args.parts.split(","))
    with_cka = takes(actgeom.compare, "ci") and "cka" in parts
    rows: dict[str, list[dict]] = {}
    t0 = time.perf_counter()
    for seed in range(args.datasets):
        paths = write_dataset(d, args.rows, 1000 + seed, folder)
        for metric, found in measure_dataset(paths, args.groups, parts if with_cka else parts - {"cka"}).items():
            rows.setdefault(metric, []).append(found)
        for path in paths.values():
            path.unlink()
    print(f"{args.datasets} datasets measured in {time.perf_counter() - t0:.0f} s"
          + ("" if with_cka or "cka" not in parts else "; cka_linear: actgeom.compare takes no ci= yet (not measured)"))
    print(f"{'metric':22s} {'population':>11s} {'coverage':>9s} {'n':>4s} {'mean est−pop':>13s} {'mean se':>10s} "
          f"{'sd of est':>10s} {'mean bias est':>13s} {'cov. of est−bias':>16s}")
    for metric, found in rows.items():
        summarise(metric, truth[metric], found)


def summarise(metric: str, truth: float, found: list[dict]) -> None:
    """One line: the share of intervals covering ``truth`` (and of the bias-corrected intervals)."""
    with_interval = [f for f in found if "se" in f]
    if not with_interval:
        reasons = sorted({str(f.get("why")) for f in found})
        print(f"{metric:22s} {truth:11.5f}  no interval: {reasons[0]}")
        return
    value = np.array([f["value"] for f in with_interval])
    low, high = np.array([f["ci_low"] for f in with_interval]), np.array([f["ci_high"] for f in with_interval])
    se, bias = np.array([f["se"] for f in with_interval]), np.array([f["bias"] for f in with_interval])
    covered = (low <= truth) & (truth <= high)
    corrected = (low - bias <= truth) & (truth <= high - bias)  # θ̂ − bias ± t·se
    print(f"{metric:22s} {truth:11.5f} {covered.mean():9.3f} {covered.size:4d} {np.mean(value - truth):13.3e} "
          f"{se.mean():10.3e} {value.std(ddof=1):10.3e} {bias.mean():13.3e} {corrected.mean():16.3f}")


# -- nulls ------------------------------------------------------------------------------------------

def null_p_values(d: Design, args, folder: Path, random_labels: bool) -> dict[str, list]:
    """The permutation p-values of NULL_METRICS over the datasets (labels random or planted); the
    reason instead of a p-value when a metric has no null."""
    import actgeom

    found: dict[str, list] = {metric: [] for metric in NULL_METRICS}
    commands = {"nc1": actgeom.collapse, "lda_accuracy": actgeom.probe}
    for seed in range(args.null_datasets):
        paths = write_dataset(d, args.null_rows, 5000 + seed, folder, random_labels=random_labels)
        for metric, command in commands.items():
            if found[metric] and isinstance(found[metric][0], str):
                continue  # no null (the reason is kept): not asked again
            layer = command(str(paths["mixture"]), null=args.permutations, null_seed=seed).files()[0]["layers"][0]
            null = layer.get("nulls", {}).get(metric)
            found[metric].append(null["p_value"] if null else layer.get("nulls_unavailable", {}).get(metric, "no null"))
        for path in paths.values():
            path.unlink()
    return found


def nulls(d: Design, args, folder: Path) -> None:
    import actgeom

    if not takes(actgeom.collapse, "null"):
        print("nulls: actgeom.collapse takes no null= yet (not measured)")
        return
    K = args.permutations
    print(f"\nnulls: K = {K} permutations, {args.null_datasets} datasets of {args.null_rows} rows each")
    for random_labels in (True, False):
        t0 = time.perf_counter()
        found = null_p_values(d, args, folder, random_labels)
        seconds = time.perf_counter() - t0
        for metric, p in found.items():
            if any(isinstance(value, str) for value in p):
                print(f"{metric}: no permutation null: {next(value for value in p if isinstance(value, str))}")
                continue
            p = np.array(p)
            if random_labels:
                ks = scipy_stats.kstest(p, "uniform")
                print(f"random labels  {metric:13s} KS statistic {ks.statistic:.4f}, KS p = {ks.pvalue:.4f}, "
                      f"mean p {p.mean():.4f} (uniform: {0.5 + 0.5 / (K + 1):.4f}), share p ≤ 0.05: "
                      f"{np.mean(p <= 0.05):.3f}  [{seconds:.0f} s]")
            else:
                print(f"planted labels {metric:13s} p = 1/(K+1) = {1 / (K + 1):.5f} in {np.sum(np.isclose(p, 1 / (K + 1)))} "
                      f"of {p.size} datasets (max p {p.max():.5f})  [{seconds:.0f} s]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=200)
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--units", type=int, default=8)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--separation", type=float, default=1.0, help="sd of the class means' coordinates")
    parser.add_argument("--offset", type=float, default=1.0, help="common offset of the class means (mean energy)")
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--design-seed", type=int, default=0)
    parser.add_argument("--mc-rows", type=int, default=4_000_000)
    parser.add_argument("--permutations", type=int, default=99)
    parser.add_argument("--null-datasets", type=int, default=200)
    parser.add_argument("--null-rows", type=int, default=2000)
    parser.add_argument("--parts", default="moments,probe,cka", help="what the coverage measures: moments (collapse, "
                        "rank), probe, cka")
    parser.add_argument("--skip-coverage", action="store_true")
    parser.add_argument("--skip-nulls", action="store_true")
    args = parser.parse_args()
    d = make_design(args.classes, args.units, args.separation, args.offset, args.design_seed)
    truth = population_collapse(d) | {"cka_linear": population_cka(d)}
    truth["lda_accuracy"], mc_se = population_lda(d, args.mc_rows, args.design_seed + 1)
    print(f"design: C={args.classes} D={args.units} separation={args.separation} offset={args.offset} "
          f"seed={args.design_seed}; N={args.rows} rows per dataset (~{args.rows // args.classes} per class), "
          f"G={args.groups}; lda_accuracy population by Monte Carlo on {args.mc_rows} rows (se {mc_se:.1e})")
    with tempfile.TemporaryDirectory() as scratch:
        if not args.skip_coverage:
            coverage(d, truth, args, Path(scratch))
        if not args.skip_nulls:
            nulls(d, args, Path(scratch))


if __name__ == "__main__":
    main()
