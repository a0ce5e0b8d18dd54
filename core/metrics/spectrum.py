"""Spectrum and effective-dimension metrics (docs/metrics.md, "Spectrum and effective dimension"): pure
functions of eigenvalues.

The eigenvalues of a layer are computed once (:func:`layer_spectra`) and shared by every
metric; each metric is a function of a :class:`Spectrum` and keyword-only options.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from actgeom.core.base.options import RANK_PRESETS as PRESETS
from actgeom.core.base.options import STORAGE_RTOL, RankOptions  # noqa: F401 (re-exported)
from actgeom.core.base.presets import resolve
from actgeom.core.base.registry import Unavailable, registry
from actgeom.core.base.stats import ClassStats, pooled
from actgeom.core.base.threads import blas_threads
from actgeom.core.metrics.intrinsic import mle, twonn


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

    def why_zero(self) -> str | None:
        """Why every eigenvalue is 0 (the spectrum has no shape: no ratio of eigenvalues, no
        k_p, no entropy of them), or None when one is positive."""
        if self.eigenvalues.size and self.eigenvalues[0] > 0:
            return None
        if not self.centred:
            return "every row is zero: the second-moment spectrum is 0"
        if self.n_rows == 1:
            return "one row: the covariance needs 2 (its spectrum is 0)"
        return "all rows are identical: the covariance spectrum is 0"


def total_moments(stats: ClassStats) -> tuple[np.ndarray, np.ndarray]:
    """(mean x̄, covariance Σ_T) of all rows, exactly from class moments:
    N Σ_T = within scatter + Σ_c n_c (μ_c − x̄)(μ_c − x̄)ᵀ."""
    total = pooled(stats)
    return total.means[0], total.within_scatter / total.n


def layer_spectra(stats: ClassStats, *, rtol: float, max_eigs: int | None = None) -> dict[str, Spectrum]:
    """The centred (covariance) and raw (second moment) spectra of one layer."""
    mean, covariance = total_moments(stats)
    out = {}
    for name, matrix in (("centred", covariance), ("raw", covariance + np.outer(mean, mean))):
        with blas_threads(matrix.shape[0]):
            lam = without_rounding(np.linalg.eigvalsh(matrix)[::-1])
        out[name] = Spectrum(lam[:max_eigs], centred=name == "centred", n_rows=stats.n, rtol=rtol)
    return out


def without_rounding(eigenvalues: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric float64 matrix with those at rounding level (≤ n·eps·λ_max,
    the accuracy of the eigensolver) and negatives set to 0.

    Why: a direction of zero variance (a dead unit) comes out as ±1e-16·λ_max, whose square root
    (σ ≈ 1e-8·σ_max) would enter σ-based metrics such as RankMe at the 1e-8 level, and would differ
    between two exact ways of accumulating the same moments."""
    lam = np.asarray(eigenvalues, dtype=np.float64)
    return np.where(lam > lam.size * np.finfo(np.float64).eps * lam.max(initial=0.0), lam, 0.0)


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


@dataclass
class RankInputs:
    """What the rank metrics of one layer are computed from: both spectra (eigenvalues computed
    once), the total mean and covariance trace (before any --max-eigs truncation), Σ x/‖x‖ over
    rows, and the seeded sample's nearest-neighbour distances (None without a sample)."""

    spectra: dict[str, Spectrum]
    mean: np.ndarray
    covariance_trace: float
    unit_vector_sum: np.ndarray
    n_direction_rows: int
    distances: np.ndarray | None = None

    def chosen(self, options: RankOptions) -> Spectrum:
        return self.spectra["centred" if options.center else "raw"]


def rankmes(r: RankInputs, o: RankOptions) -> dict:
    """RankMe three ways (Garrido et al., ICML 2023): on σ of the raw second moment (as
    published), on σ of the covariance, and on λ of the covariance (Li et al. 2025). A spectrum
    that is 0 (all rows identical; for the raw one, all rows zero) has none: unavailable."""
    raw, centred = r.spectra["raw"], r.spectra["centred"]
    values = {"rankme": Unavailable(raw.why_zero()) if raw.why_zero() else rankme(np.sqrt(raw.eigenvalues), eps=o.eps)}
    if centred.why_zero():
        return values | dict.fromkeys(("rankme_centered", "rankme_lambda"), Unavailable(centred.why_zero()))
    return values | {"rankme_centered": rankme(np.sqrt(centred.eigenvalues), eps=o.eps),
                     "rankme_lambda": rankme(centred.eigenvalues, eps=o.eps)}


_SHAPE = ("erank", "stable_rank", "participation_ratio", "k90", "k95", "k99")  # undefined on a zero spectrum


def spectrum_shape(r: RankInputs, o: RankOptions) -> dict:
    """Effective rank, stable rank, participation ratio, numerical rank, k_p and IsoScore of the
    chosen spectrum (see each function's formula). On a spectrum that is 0 (every row the same
    vector; one row) the numerical rank is 0 and the others, ratios of eigenvalues, are
    unavailable with the reason; IsoScore also needs two units."""
    chosen, centred = r.chosen(o), r.spectra["centred"]
    lam = chosen.eigenvalues
    values = {"numerical_rank": numerical_rank(lam, rtol=chosen.rtol)}
    if centred.why_zero() or centred.eigenvalues.size < 2:
        values["isoscore"] = Unavailable(centred.why_zero() or "one unit: IsoScore needs 2")
    else:
        values["isoscore"] = isoscore(centred.eigenvalues)
    if chosen.why_zero():
        return values | dict.fromkeys(_SHAPE, Unavailable(chosen.why_zero()))
    values |= {"erank": erank(np.sqrt(lam)), "stable_rank": stable_rank(lam), "participation_ratio": participation_ratio(lam)}
    for p in (90, 95, 99):
        values[f"k{p}"] = k_explained(lam, p / 100, ge=o.ge)
    return values


def alpha_req_fit(r: RankInputs, o: RankOptions) -> dict:
    """α-ReQ and the R² of its fit (see :func:`alpha_req`); unavailable with the reason when the
    spectrum is too short or reaches the storage-noise floor in the fit range."""
    chosen = r.chosen(o)
    try:
        alpha, r2 = alpha_req(chosen.eigenvalues, fit_range=o.fit_range, floor=chosen.floor)
    except ValueError as why:
        return dict.fromkeys(("alpha_req", "alpha_req_r2"), Unavailable(str(why)))
    return {"alpha_req": alpha, "alpha_req_r2": r2}


def mean_cosine_of_rows(r: RankInputs, o: RankOptions) -> dict:
    """Exact mean pairwise cosine of the rows (see :func:`mean_cosine`); unavailable with fewer
    than two nonzero rows (a zero row has no direction)."""
    if r.n_direction_rows < 2:
        why = "every row is zero: no direction" if r.n_direction_rows == 0 else "one nonzero row: a cosine needs 2"
        return {"mean_cosine": Unavailable(why)}
    return {"mean_cosine": mean_cosine(r.unit_vector_sum, r.n_direction_rows)}


def mean_energy_fraction(r: RankInputs, o: RankOptions) -> dict:
    """Share of the second moment along the mean: ‖μ‖² / E‖x‖² = ‖μ‖² / (‖μ‖² + tr Σ).

    In [0, 1]; 1 when every row is the same vector (rank collapse, the "mean mode" of deep
    transformers, Dong et al. 2021; Noci et al. 2022), 0 for centred rows. Exact from one pass.
    Unavailable when every row is zero (0/0)."""
    energy = float(r.mean @ r.mean)
    total = energy + r.covariance_trace
    return {"mean_energy_fraction": energy / total if total > 0 else Unavailable("every row is zero: E‖x‖² = 0")}


def intrinsic_dimension(r: RankInputs, o: RankOptions) -> dict:
    """TwoNN and Levina–Bickel MLE intrinsic dimension of the seeded sample (core/metrics/intrinsic.py).
    Rows whose nearest distance rounds to 0 (distinct, but within rounding of another row) are
    left out as duplicates are; unavailable with the reason when no fit exists."""
    if r.distances is None:
        reason = f"too few distinct sampled rows; the nearest-neighbour estimates need more than k = {o.mle_k}"
        return dict.fromkeys(("twonn_id", "mle_id"), Unavailable(reason))
    distances = r.distances[r.distances[:, 0] > 0]  # a row within rounding of another is its duplicate: no log 0
    if distances.shape[0] == 0:
        return dict.fromkeys(("twonn_id", "mle_id"), Unavailable("every sampled row is within rounding of another"))
    values = {}
    for name, estimate in (("twonn_id", lambda: twonn(distances[:, :2])), ("mle_id", lambda: mle(distances, k=o.mle_k))):
        try:
            values[name] = estimate()
        except ValueError as why:
            values[name] = Unavailable(str(why))
    return values


_GARRIDO = "Garrido et al., ICML 2023"
_REF = "tests/test_rank.py::test_every_metric_matches_the_svd_reference"
_SIMILARITY = frozenset({"scale", "rotation"})
_CENTRED = frozenset({"scale", "rotation", "shift"})

REGISTRY = registry(
    "rank",
    dict(name="rankme", formula="exp(−Σ p_k log p_k), p_k = σ_k/Σσ + ε, σ of the raw second moment", compute=rankmes,
         direction="neither", range=(1, math.inf), invariant=_SIMILARITY,
         source=_GARRIDO, test=_REF),
    dict(name="rankme_centered", formula="the same on σ of the covariance", compute=rankmes, direction="neither",
         range=(1, math.inf), invariant=_CENTRED,
         source=_GARRIDO, test=_REF),
    dict(name="rankme_lambda", formula="the same on λ of the covariance", compute=rankmes, direction="neither",
         range=(1, math.inf), invariant=_CENTRED,
         source="Li et al. 2025 (Tracing the representation geometry of LMs)", test=_REF),
    dict(name="erank", formula="exp(H(σ/Σσ)) of the chosen spectrum, no ε", compute=spectrum_shape, direction="neither",
         range=(1, math.inf), invariant=_CENTRED,
         source="Roy & Vetterli 2007", test=_REF),
    dict(name="stable_rank", formula="Σλ / λ_1", compute=spectrum_shape, direction="neither", range=(1, math.inf),
         invariant=_CENTRED,
         source="Rudelson & Vershynin 2007", test=_REF),
    dict(name="participation_ratio", formula="(Σλ)² / Σλ²", compute=spectrum_shape, direction="neither", range=(1, math.inf),
         invariant=_CENTRED, source="Gao et al. 2017", test=_REF),
    dict(name="numerical_rank", formula="#{λ_i > rtol·λ_1}, rtol by storage dtype", compute=spectrum_shape, direction="neither",
         range=(0, math.inf), invariant=_CENTRED,
         source="Golub & Van Loan", test=_REF),
    dict(name="isoscore", formula="(nφ − 1)/(n − 1) from the covariance eigenvalues scaled to norm √n", compute=spectrum_shape,
         ideal=1.0, direction="higher", range=(0, 1), invariant=_CENTRED,
         source="Rudman et al. 2022", test=_REF),
    dict(name="k90", formula="smallest k with Σ_{i≤k} λ_i / Σλ > 0.90", compute=spectrum_shape, direction="neither",
         range=(1, math.inf), invariant=_CENTRED,
         source="PCA explained variance (scikit-learn's convention)", test=_REF),
    dict(name="k95", formula="smallest k with Σ_{i≤k} λ_i / Σλ > 0.95", compute=spectrum_shape, direction="neither",
         range=(1, math.inf), invariant=_CENTRED,
         source="PCA explained variance (scikit-learn's convention)", test=_REF),
    dict(name="k99", formula="smallest k with Σ_{i≤k} λ_i / Σλ > 0.99", compute=spectrum_shape, direction="neither",
         range=(1, math.inf), invariant=_CENTRED,
         source="PCA explained variance (scikit-learn's convention)", test=_REF),
    dict(name="alpha_req", formula="−slope of the 1/r-weighted least-squares fit log λ_r = c − α log r over the fit range",
         compute=alpha_req_fit, direction="neither", range=(-math.inf, math.inf),
         invariant=_CENTRED, source="Agrawal et al., NeurIPS 2022",
         test="tests/test_rank.py::test_power_law_spectrum_gives_its_exponent"),
    dict(name="alpha_req_r2", formula="weighted R² of that fit", compute=alpha_req_fit, direction="higher", ideal=1.0,
         range=(-math.inf, 1),
         invariant=_CENTRED, source="Agrawal et al., NeurIPS 2022",
         test="tests/test_rank.py::test_power_law_spectrum_gives_its_exponent",
         diagnostic=True),
    dict(name="mean_cosine", formula="(‖Σ_i u_i‖² − N) / (N(N−1)), u_i = x_i/‖x_i‖", compute=mean_cosine_of_rows, ideal=0.0,
         range=(-1, 1), invariant=_SIMILARITY,
         source="Ethayarajh 2019", test=_REF),
    dict(name="mean_energy_fraction", formula="‖μ‖² / (‖μ‖² + tr Σ) = ‖μ‖² / E‖x‖²", compute=mean_energy_fraction, ideal=0.0,
         range=(0, 1), invariant=_SIMILARITY,
         source="Dong, Cordonnier & Loukas 2021; Noci et al. 2022",
         test="tests/test_rank.py::test_mean_energy_fraction_closed_forms"),
    dict(name="twonn_id", formula="slope through the origin of −log(1 − F(μ)) against log μ, μ = r₂/r₁, top 10 % of μ dropped",
         compute=intrinsic_dimension, needs=("sample",), direction="neither", range=(0, math.inf),
         invariant=_CENTRED, source="Facco et al. 2017", test="tests/test_rank.py::test_twonn_and_mle_match_slow_formulas"),
    dict(name="mle_id", formula="1 / mean_x[(1/(k−1)) Σ_{j<k} log(T_k(x)/T_j(x))], k = 20", compute=intrinsic_dimension,
         needs=("sample",), direction="neither", range=(0, math.inf),
         invariant=_CENTRED, source="Levina & Bickel 2005; MacKay & Ghahramani 2005",
         test="tests/test_rank.py::test_twonn_and_mle_match_slow_formulas"),
)
