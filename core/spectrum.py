"""Spectrum and effective-dimension metrics (METRICS.md §2): pure functions of eigenvalues.

The eigenvalues of a layer are computed once (:func:`layer_spectra`) and shared by every
metric; each metric is a function of a :class:`Spectrum` and keyword-only options.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from actgeom.core.errors import UsageError
from actgeom.core.presets import resolve
from actgeom.core.stats import ClassStats

# Relative size, in λ, of the noise that storing activations adds (METRICS.md §2): eigenvalues
# below rtol·λ_1 are indistinguishable from storage noise. float64/float32: a few ulps of λ_1.
STORAGE_RTOL = {"float16": 1e-8, "bfloat16": 1e-6, "float32": 1e-11, "float64": 1e-14}


@dataclass(frozen=True)
class RankOptions:
    """Every convention that changes a rank number; recorded in the output."""

    center: bool = True  # spectrum of the covariance (True) or of the raw second moment
    max_eigs: int | None = None  # keep only the largest eigenvalues (the tracing preset: 2048)
    eps: float = 1e-7  # RankMe's ε (Garrido et al.)
    fit_range: tuple[int, int] = (12, 100)  # α-ReQ ranks, 1-based, inclusive
    ge: bool = False  # k_p: Σ_{i≤k} λ_i/Σλ ≥ p instead of > p
    rtol: float | None = None  # numerical rank tolerance; None: by input dtype (STORAGE_RTOL)
    subsample: int = 2_000  # rows for TwoNN / MLE (their k-NN costs ~n²·D: 10 000 rows at D = 1024 take 2 s)
    seed: int = 0
    mle_k: int = 20
    preset: str | None = None

    def __post_init__(self) -> None:
        start, stop = self.fit_range
        if not 1 <= start < stop:
            raise UsageError(f"--fit-range {start}:{stop} must be two ranks 1 ≤ start < stop")
        if self.max_eigs is not None and self.max_eigs < 1:
            raise UsageError(f"--max-eigs must be ≥ 1, got {self.max_eigs}")
        if self.subsample < 0 or self.eps < 0:
            raise UsageError("--subsample and --eps must be ≥ 0")


PRESETS = {
    "garrido": {"center": False, "eps": 1e-7},  # RankMe as published: raw singular values
    "tracing": {"center": True, "max_eigs": 2048},  # Li et al. 2025 / reptrix: centred λ, top 2048
}


def resolve_options(preset: str | None = None, **given) -> RankOptions:
    """Defaults, then the preset's conventions, then every option given explicitly (not None)."""
    return resolve(RankOptions, PRESETS, preset, given)


@dataclass(frozen=True)
class Spectrum:
    """Eigenvalues λ_1 ≥ … ≥ 0 (negatives from rounding clipped to 0) and how they were made."""

    eigenvalues: np.ndarray
    centred: bool
    n_rows: int
    rtol: float  # storage-noise floor relative to λ_1

    @property
    def floor(self) -> float:
        return self.rtol * float(self.eigenvalues[0]) if self.eigenvalues.size else 0.0


def total_moments(stats: ClassStats) -> tuple[np.ndarray, np.ndarray]:
    """(mean x̄, covariance Σ_T) of all rows, exactly from class moments:
    N Σ_T = within scatter + Σ_c n_c (μ_c − x̄)(μ_c − x̄)ᵀ."""
    n = stats.counts.astype(np.float64)
    mean = n @ stats.means / n.sum()
    centred = (stats.means - mean) * np.sqrt(n)[:, None]
    return mean, (stats.within_scatter + centred.T @ centred) / n.sum()


def layer_spectra(stats: ClassStats, *, rtol: float, max_eigs: int | None = None) -> dict[str, Spectrum]:
    """The centred (covariance) and raw (second moment) spectra of one layer."""
    mean, covariance = total_moments(stats)
    out = {}
    for name, matrix in (("centred", covariance), ("raw", covariance + np.outer(mean, mean))):
        lam = np.maximum(np.linalg.eigvalsh(matrix)[::-1], 0.0)
        out[name] = Spectrum(lam[:max_eigs], centred=name == "centred", n_rows=stats.n, rtol=rtol)
    return out


def _entropy_exp(p: np.ndarray) -> float:
    """exp(−Σ p log p) with 0 log 0 = 0."""
    nonzero = p[p > 0]
    return float(np.exp(-(nonzero * np.log(nonzero)).sum()))


def rankme(values: np.ndarray, *, eps: float) -> float:
    """RankMe (Garrido et al., ICML 2023): exp(−Σ p_k log p_k), p_k = v_k/Σv + ε.
    Between ~1 and len(values); ideal depends on the use. ``values`` are σ (or λ)."""
    total = values.sum()
    return _entropy_exp(values / total + eps) if total > 0 else float("nan")


def erank(sigma: np.ndarray) -> float:
    """Effective rank (Roy & Vetterli 2007): exp(H(σ/Σσ)), no ε. k equal σ → k."""
    total = sigma.sum()
    return _entropy_exp(sigma / total) if total > 0 else float("nan")


def stable_rank(lam: np.ndarray) -> float:
    """Σλ / λ_1, in [1, D]."""
    return float(lam.sum() / lam[0]) if lam[0] > 0 else float("nan")


def participation_ratio(lam: np.ndarray) -> float:
    """(Σλ)² / Σλ², in [1, D]; k equal eigenvalues → k."""
    squares = float((lam**2).sum())
    return float(lam.sum()) ** 2 / squares if squares > 0 else float("nan")


def numerical_rank(lam: np.ndarray, *, rtol: float) -> int:
    """#{λ_i > rtol·λ_1}."""
    return int((lam > rtol * lam[0]).sum()) if lam[0] > 0 else 0


def k_explained(lam: np.ndarray, p: float, *, ge: bool = False) -> int:
    """Smallest k with Σ_{i≤k} λ_i/Σλ > p (sklearn's convention), or ≥ p with ``ge``."""
    ratio = np.cumsum(lam) / lam.sum()
    return int(np.searchsorted(ratio, p, side="left" if ge else "right") + 1)


def alpha_req(lam: np.ndarray, *, fit_range: tuple[int, int], floor: float) -> tuple[float, float]:
    """α-ReQ (Agrawal et al., NeurIPS 2022): weighted least squares (weights 1/r) of
    log λ_r = c − α log r over ranks r in fit_range (1-based, inclusive) → (α, weighted R²).
    Raises ValueError with the reason when the spectrum is too short or at the noise floor."""
    start, stop = fit_range
    if lam.size < stop:
        raise ValueError(f"needs {stop} eigenvalues (fit range {start}:{stop}); min(N, D) gives {lam.size}")
    window = lam[start - 1 : stop]
    if (window <= floor).any():
        raise ValueError(f"eigenvalues in ranks {start}:{stop} reach the storage-noise floor {floor:.3g}")
    r = np.arange(start, stop + 1, dtype=np.float64)
    x, y, w = np.log(r), np.log(window), 1.0 / r
    xm, ym = (w @ x) / w.sum(), (w @ y) / w.sum()
    slope = float((w * (x - xm)) @ (y - ym) / ((w * (x - xm)) @ (x - xm)))
    residual = y - (ym + slope * (x - xm))
    total = float(w @ (y - ym) ** 2)
    return -slope, (1.0 - float(w @ residual**2) / total) if total > 0 else float("nan")


def isoscore(lam: np.ndarray) -> float:
    """IsoScore (Rudman et al. 2022) from covariance eigenvalues, in [0, 1] (1 = isotropic).
    The variances in the principal basis are scaled to norm √n; δ = ‖λ̂ − 1‖/√(2(n − √n));
    φ = (n − δ²(n − √n))²/n²; IsoScore = (nφ − 1)/(n − 1)."""
    n = lam.size
    norm = np.linalg.norm(lam)
    if n < 2 or norm == 0:
        return float("nan")
    scaled = math.sqrt(n) * lam / norm
    defect = float(np.linalg.norm(scaled - 1.0)) / math.sqrt(2 * (n - math.sqrt(n)))
    phi = (n - defect**2 * (n - math.sqrt(n))) ** 2 / n**2
    return (n * phi - 1) / (n - 1)


def mean_cosine(unit_vector_sum: np.ndarray, n_rows: int) -> float:
    """Exact mean over pairs i ≠ j of cos(x_i, x_j) = (‖Σ u_i‖² − N)/(N(N−1)), u = x/‖x‖
    (anisotropy, Ethayarajh 2019), N = rows with ‖x‖ > 0. In [−1/(N−1), 1]."""
    if n_rows < 2:
        return float("nan")
    return (float(unit_vector_sum @ unit_vector_sum) - n_rows) / (n_rows * (n_rows - 1))


def spectral_metrics(spectra: dict[str, Spectrum], options: RankOptions) -> tuple[dict, dict]:
    """Every eigenvalue metric → (values, reasons for the unavailable ones)."""
    chosen = spectra["centred" if options.center else "raw"]
    lam = chosen.eigenvalues
    values = {
        "rankme": rankme(np.sqrt(spectra["raw"].eigenvalues), eps=options.eps),
        "rankme_centered": rankme(np.sqrt(spectra["centred"].eigenvalues), eps=options.eps),
        "rankme_lambda": rankme(spectra["centred"].eigenvalues, eps=options.eps),
        "erank": erank(np.sqrt(lam)),
        "stable_rank": stable_rank(lam),
        "participation_ratio": participation_ratio(lam),
        "numerical_rank": numerical_rank(lam, rtol=chosen.rtol),
        "isoscore": isoscore(spectra["centred"].eigenvalues),
    }
    for p in (90, 95, 99):
        values[f"k{p}"] = k_explained(lam, p / 100, ge=options.ge)
    missing = {}
    try:
        values["alpha_req"], values["alpha_req_r2"] = alpha_req(lam, fit_range=options.fit_range, floor=chosen.floor)
    except ValueError as why:
        missing["alpha_req"] = missing["alpha_req_r2"] = str(why)
    return values, missing
