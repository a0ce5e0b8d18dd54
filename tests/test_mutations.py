"""Boundary conventions a one-character change would break unnoticed (issue 23's surviving mutations).

Each test places its data exactly on the boundary of one convention — an eigenvalue just inside
or outside the numerical range, a variance equal to δ, a KL equal to the cutoff, a correlation
equal to the threshold — so that turning ``>`` into ``≥`` (or a tolerance into another) changes
the number. The compare and probe conventions are checked on hand-made moments: their boundary
values (a correlation of exactly 0.5, a share of variance that rounds below ``keep``) cannot be
made exact through a streamed pass; the neurons conventions run the family on a dump, so both
the layer metric and the per-unit flag are held.
"""

from __future__ import annotations

import numpy as np
from conftest import run_family, write_dump

from actgeom.core.base.options import STORAGE_RTOL, CompareOptions, NeuronsOptions
from actgeom.core.base.registry import Unavailable
from actgeom.core.metrics.compare import PairInputs, cca, svcca, unit_best_corr
from actgeom.core.metrics.compare_moments import CentredCross, CentredSide
from actgeom.core.metrics.compare_sample import SampleView, rsa
from actgeom.core.metrics.probe import Confusion


def _side(variances) -> CentredSide:
    """A layer whose covariance is diag(``variances``) over one row's worth of moments (n = 1)."""
    lam = np.asarray(variances, dtype=np.float64)
    return CentredSide(n=1, mean=np.zeros(lam.size), scatter=np.diag(lam), q=float(lam.sum()),
                       qx=np.zeros(lam.size), q2=float(lam.sum() ** 2))


def _pair(x: CentredSide, y: CentredSide | None = None, cross: np.ndarray | None = None, **more) -> PairInputs:
    """A pair of layers; without ``y`` a layer against itself (cross-moments = its own)."""
    if y is None:
        return PairInputs(x=x, y=x, cross=CentredCross.of_itself(x), **more)
    zeros = (np.zeros(x.scatter.shape[0]), np.zeros(y.scatter.shape[0]))
    return PairInputs(x=x, y=y, cross=CentredCross(scatter=cross, kxy=zeros[1], kyx=zeros[0], kk=0.0), **more)


# -- compare ----------------------------------------------------------------------------------------

def test_numerical_range_keeps_eigenvalues_above_rtol_times_the_largest():
    """CCA, SVCCA, PWCCA and the shape distance (α < 1) invert Σ on its numerical range, the
    directions with λ > rtol·λ₁, rtol the storage noise of the input dtype (float64: 1e-14). An
    eigenvalue at 2·rtol·λ₁ is in the range, one at rtol·λ₁/2 is not, whatever else the tolerance is."""
    rtol = STORAGE_RTOL["float64"]
    pair = _pair(_side([1.0, 2 * rtol, rtol / 2]), rtol=rtol)
    cca(pair, CompareOptions())
    assert pair.found["cca_n_correlations"] == 2


def test_svcca_keeps_the_smallest_k_reaching_keep_despite_rounding():
    """SVCCA keeps the top k principal components explaining ≥ keep of the variance, the smallest
    such k. λ = (0.5, 0.43, 0.07) and keep = 0.93: two components explain 93 %, though their share
    (0.5 + 0.43)/1 rounds to 0.9299999999999999 — 1e-12 of slack keeps it two, not three."""
    assert np.cumsum([0.5, 0.43, 0.07])[1] < 0.93  # the rounding this test is about
    pair = _pair(_side([0.5, 0.43, 0.07]))
    svcca(pair, CompareOptions(svcca_keep=0.93))
    assert pair.found["svcca_components"] == [2, 2]


def test_unit_best_corr_counts_correlations_strictly_above_the_threshold():
    """unit_best_corr is the share of A's units whose best correlation exceeds --unit-threshold
    (strictly): unit 0's best correlation is exactly 0.5 = 1/(2·1), unit 1's is 1."""
    x, y = _side([4.0, 1.0]), _side([1.0, 1.0])
    pair = _pair(x, y, cross=np.eye(2), rtol=STORAGE_RTOL["float64"])
    assert unit_best_corr(pair, CompareOptions(unit_threshold=0.5)) == {"unit_best_corr": 0.5}


def test_rsa_needs_at_least_three_non_constant_sampled_rows():
    """RSA correlates the upper triangles of two RDMs: two usable rows give one dissimilarity, no
    correlation — unavailable with the reason, not NaN; three give a number."""
    rows = np.array([[0.0, 1.0, 3.0], [2.0, 1.0, 0.0], [5.0, 5.0, 5.0], [1.0, 4.0, 2.0]])  # row 2 is constant
    two = SampleView(rows[:3])
    values = rsa(_pair(_side([1.0, 1.0, 1.0]), sample_x=two, sample_y=two), CompareOptions())
    assert all(isinstance(v, Unavailable) and "needs at least 3 sampled rows" in str(v) for v in values.values()), values
    three = SampleView(rows)
    values = rsa(_pair(_side([1.0, 1.0, 1.0]), sample_x=three, sample_y=three), CompareOptions())
    assert values["rsa_spearman"] == values["rsa_pearson"] == 1.0


# -- probe --------------------------------------------------------------------------------------------

def test_macro_f1_averages_over_true_or_predicted_classes_as_scikit_learn():
    """Macro-F1 averages F1 over every class that is true or predicted on the test rows
    (scikit-learn's f1_score(average="macro")): class 2, predicted once and never true, counts with
    F1 = 0. Over the true classes only it would be (2/3 + 1)/2 = 5/6."""
    from sklearn.metrics import f1_score

    y, predicted = np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1])
    confusion = Confusion()
    confusion.add(y, predicted)
    macro_f1 = confusion.scores()["macro_f1"]
    assert macro_f1 == f1_score(y, predicted, average="macro")
    assert abs(macro_f1 - 5 / 9) < 1e-15


# -- neurons ------------------------------------------------------------------------------------------

ROWS = 8  # a power of two: every mean, variance and score below is exact in float64


def test_dormant_is_a_score_at_most_tau(tmp_path):
    """A unit is dormant when its dormant score s_u = mean|a_u| / mean_j mean|a_j| is ≤ τ (ReDo):
    mean|a| = (0.25, 1.75, 1, 1) has mean 1, so unit 0's score is exactly τ = 0.25."""
    X = np.tile([0.25, -1.75, 1.0, 1.0], (ROWS, 1))
    path = write_dump(tmp_path / "d.h5", {"h": X})
    layer = run_family("neurons", path, NeuronsOptions(threshold=0.0, tau=0.25))["layers"][0]
    assert layer["neurons"]["units"]["dormant_score"] == [0.25, 1.75, 1.0, 1.0]
    assert layer["neurons"]["units"]["dormant"] == [True, False, False, False]
    assert layer["metrics"]["dormant_unit_fraction"] == 0.25


def _vae(tmp_path) -> dict:
    """Posterior means ±1, ±2, 0 (Var = 1, 4, 0) with log-variances 0: KL = ½Var = 0.5, 2, 0 nats."""
    sign = np.tile([1.0, -1.0], ROWS // 2)
    mu = np.column_stack([sign, 2.0 * sign, np.zeros(ROWS)])
    path = write_dump(tmp_path / "vae.h5", {"mu": mu, "logvar": np.zeros((ROWS, 3))})
    options = NeuronsOptions(threshold=0.0, mu="mu", logvar="logvar", delta=1.0, collapsed_kl=0.5)
    return next(layer for layer in run_family("neurons", path, options)["layers"] if layer["layer"] == "mu")


def test_vae_active_is_variance_strictly_greater_than_delta(tmp_path):
    """A latent is active when Var_x(μ_u(x)) > δ (Burda et al. 2016): Var = δ = 1 is not active."""
    layer = _vae(tmp_path)
    assert layer["neurons"]["units"]["vae_active"] == [False, True, False]
    assert layer["metrics"]["vae_active_units"] == 1


def test_vae_collapsed_is_kl_strictly_below_the_cutoff(tmp_path):
    """A latent is collapsed when its mean KL to the prior is < collapsed_kl: KL = 0.5 = the cutoff
    is not collapsed, KL = 0 is."""
    layer = _vae(tmp_path)
    assert layer["neurons"]["units"]["vae_kl"] == [0.5, 2.0, 0.0]
    assert layer["neurons"]["units"]["vae_collapsed"] == [False, False, True]
    assert layer["metrics"]["vae_collapsed_fraction"] == 1 / 3
