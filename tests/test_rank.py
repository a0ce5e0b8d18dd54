"""Rank metrics: closed forms, the SVD reference, presets, refusals, intrinsic dimension."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_metrics_close, run_family, write_dump
from reference import rank_reference

from actgeom.core.base.errors import UsageError
from actgeom.core.dump import Dump
from actgeom.core.metrics.intrinsic import distinct_rows, mle, nearest_distances, twonn
from actgeom.core.metrics.spectrum import RankOptions, alpha_req, isoscore, resolve_options
from actgeom.core.state.engine import PassOptions

# Streamed covariance vs SVD of the data: both are float64-exact to ~1e-13 relative in the
# leading eigenvalues; 1e-8 is the acceptance bar and leaves room for the small eigenvalues of
# an offset raw spectrum (absolute error ~eps·λ_1).
RANK_RTOL = 1e-8


def _rank(path, **options):
    """The layer's record and its spectra (centred, raw)."""
    layer = run_family("rank", path, RankOptions(**options), PassOptions(block_rows=23), details=True)["layers"][0]
    return layer, layer["details"]


def _embedded(rows: np.ndarray, n_units: int, rng) -> np.ndarray:
    rotation = np.linalg.qr(rng.standard_normal((n_units, n_units)))[0][:, : rows.shape[1]]
    return rows @ rotation.T


def test_k_isotropic_dimensions_give_rank_k(tmp_path, rng):
    """Rows ±c·e_j (j < k), rotated into D = 24: covariance exactly (c²/k)·I_k."""
    k, D = 7, 24
    rows = np.concatenate([np.eye(k), -np.eye(k)]) * 3.0
    path = write_dump(tmp_path / "d.h5", {"h": _embedded(np.tile(rows, (5, 1)), D, rng)})
    layer, _ = _rank(path)
    m = layer["metrics"]
    for name in ("participation_ratio", "stable_rank"):
        assert m[name] == pytest.approx(k, rel=1e-9), name
    # σ = √λ turns rounding-level λ ≈ 1e-16·λ_1 on the D − k empty directions into σ ≈ 1e-8·σ_1
    assert m["erank"] == pytest.approx(k, rel=1e-6)
    assert m["numerical_rank"] == k
    # RankMe's ε adds (D−k)·ε of mass on the zero directions: within 1e-4 of k
    for name in ("rankme", "rankme_centered", "rankme_lambda"):
        assert m[name] == pytest.approx(k, rel=1e-4), name


def test_power_law_spectrum_gives_its_exponent(tmp_path, rng):
    """Rows ±s_r·e_r with s_r² ∝ r^−a: eigenvalues exactly r^−a (up to scale)."""
    a, D = 1.3, 120
    s = np.sqrt(D * np.arange(1, D + 1, dtype=float) ** -a)
    rows = np.concatenate([np.diag(s), -np.diag(s)])
    path = write_dump(tmp_path / "d.h5", {"h": _embedded(rows, D, rng)})
    layer, _ = _rank(path)
    assert layer["metrics"]["alpha_req"] == pytest.approx(a, abs=1e-6)
    assert layer["metrics"]["alpha_req_r2"] == pytest.approx(1.0, abs=1e-9)


def test_mean_cosine_of_offset_and_isotropic_rows(tmp_path, rng):
    offset = write_dump(tmp_path / "a.h5", {"h": 100.0 + rng.standard_normal((400, 16))})
    iso = write_dump(tmp_path / "b.h5", {"h": rng.standard_normal((400, 16))})
    assert _rank(offset)[0]["metrics"]["mean_cosine"] > 0.99
    assert abs(_rank(iso)[0]["metrics"]["mean_cosine"]) < 0.02


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype, offset, spread", [("float64", 1e3, 1.0), ("float16", 1e3, 8.0), ("float32", 0.0, 1.0)])
def test_every_metric_matches_the_svd_reference(tmp_path, seed, dtype, offset, spread):
    rng = np.random.default_rng(seed)
    # a decaying spectrum (D = 130 ≥ 100 for α-ReQ), shallow enough that float16 at 1e3 resolves it
    scales = np.arange(1, 131, dtype=float) ** -0.3
    X = offset + spread * rng.standard_normal((900, 130)) * scales
    path = write_dump(tmp_path / "d.h5", {"h": X}, dtype=dtype, chunk_rows=int(rng.integers(5, 300)))
    with Dump(path) as dump:
        stored = dump.read_rows("h").astype(np.float64)
    for center in (True, False):
        report = run_family("rank", path, RankOptions(center=center, rtol=1e-10),
                            PassOptions(block_rows=int(rng.integers(1, 400))))
        layer = report["layers"][0]
        expected = rank_reference(stored, center=center, rtol=1e-10)
        if "alpha_req" in layer["unavailable"]:  # refused: only right if the range is at the noise floor
            assert "noise floor" in layer["unavailable"]["alpha_req"]
            lam = np.linalg.svd(stored if not center else stored - stored.mean(axis=0), compute_uv=False) ** 2 / 900
            assert lam[11:100].min() <= layer["noise_floor"] * (1 + 1e-6)
            expected.pop("alpha_req")
        assert_metrics_close(layer["metrics"], expected, rtol=RANK_RTOL, atol=0.0)


def test_presets():
    assert resolve_options("garrido").center is False
    tracing = resolve_options("tracing")
    assert tracing.center is True and tracing.max_eigs == 2048
    assert resolve_options("tracing", max_eigs=10).max_eigs == 10  # explicit options win
    with pytest.raises(UsageError, match="preset='x' is not one of garrido, tracing"):
        resolve_options("x")


def test_garrido_preset_is_the_raw_spectrum(tmp_path, rng):
    X = 5.0 + rng.standard_normal((200, 12)) * np.arange(1, 13) ** -0.5
    path = write_dump(tmp_path / "d.h5", {"h": X})
    garrido = run_family("rank", path, resolve_options("garrido"))["layers"][0]["metrics"]
    expected = rank_reference(X, center=False, fit_range=(2, 12), rtol=1e-14)
    for name in ("rankme", "erank", "stable_rank", "participation_ratio", "k90"):
        assert garrido[name] == pytest.approx(expected[name], rel=RANK_RTOL), name
    assert garrido["erank"] != pytest.approx(rank_reference(X)["erank"], rel=1e-3)  # centring matters here


def test_max_eigs_truncates_the_spectrum(tmp_path, rng):
    X = rng.standard_normal((300, 30)) * np.arange(1, 31) ** -1.0
    path = write_dump(tmp_path / "d.h5", {"h": X})
    full, spectra = _rank(path)
    top, _ = _rank(path, max_eigs=10)
    lam = np.array(spectra["spectrum"][:10])
    p = lam / lam.sum() + 1e-7
    assert top["metrics"]["rankme_lambda"] == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-12)
    assert top["rank"]["n_eigenvalues"] == 10 and full["rank"]["n_eigenvalues"] == 30


def test_alpha_req_refuses_short_or_noisy_spectra():
    with pytest.raises(ValueError, match="needs 100 eigenvalues"):
        alpha_req(np.ones(64), fit_range=(12, 100), floor=0.0)
    with pytest.raises(ValueError, match="storage-noise floor"):
        alpha_req(np.r_[np.ones(50), np.zeros(60)], fit_range=(12, 100), floor=1e-8)


def test_isoscore_extremes():
    assert isoscore(np.ones(10)) == pytest.approx(1.0)
    assert isoscore(np.r_[1.0, np.zeros(9)]) == pytest.approx(0.0, abs=1e-12)


def test_intrinsic_dimension_of_a_flat_cube(rng):
    """Uniform points in a 3-cube embedded in 10 dimensions: both estimators near 3."""
    X = _embedded(rng.random((2000, 3)), 10, rng)
    distances = nearest_distances(X, 20)
    assert twonn(distances[:, :2]) == pytest.approx(3.0, abs=0.3)
    assert mle(distances, k=20) == pytest.approx(3.0, abs=0.3)
    brute = np.sort(np.linalg.norm(X[:50, None] - X[None], axis=2), axis=1)[:, 1:21]
    np.testing.assert_allclose(distances[:50], brute, rtol=1e-9)


def test_duplicate_rows_are_dropped_and_counted(rng):
    X = rng.random((100, 4))
    rows, dropped = distinct_rows(np.concatenate([X, X[:7]]))
    assert rows.shape[0] == 100 and dropped == 7


def test_rank_cli_on_sample_data(cli, tmp_path):
    from pathlib import Path

    sample = Path(__file__).parent.parent / "sample_data" / "digits_mlp_epoch1500.h5"
    doc = cli.json("rank", sample, "--spectrum-out", tmp_path / "spec.csv", "--seed", "3")
    hidden3 = doc["files"][0]["layers"][2]
    assert "needs 100 eigenvalues" in hidden3["unavailable"]["alpha_req"]  # 64 units < 100
    assert hidden3["rank"]["sample_seed"] == 3 and hidden3["dtype"] == "float16" and hidden3["rank"]["noise_rtol"] == 1e-8
    lines = (tmp_path / "spec.csv").read_text().splitlines()
    assert lines[0] == "file,layer,spectrum,rank,eigenvalue" and len(lines) == 1 + 2 * (128 + 128 + 64)
    code, _, err = cli("rank", sample, "--fit-range", "100:12")
    assert code == 2 and err == "Error: --fit-range '100:12' must be two ranks 1 ≤ start < stop\n"


def test_mean_energy_fraction_closed_forms(tmp_path, rng):
    """Rows all equal to one vector → 1; rows μ + noise whose sample covariance is exactly Σ
    → ‖μ‖² / (‖μ‖² + tr Σ)."""
    v = rng.standard_normal(6)
    same = write_dump(tmp_path / "same.h5", {"h": np.tile(v, (50, 1))})
    assert _rank(same)[0]["metrics"]["mean_energy_fraction"] == pytest.approx(1.0, rel=1e-12)
    noise = rng.standard_normal((400, 6))
    noise -= noise.mean(axis=0)  # exactly centred: the sample mean of the rows is μ
    mu = np.array([3.0, -1.0, 0.5, 2.0, 0.0, 1.0])
    sigma = noise.T @ noise / 400  # the rows' sample covariance (1/N), exactly
    expected = mu @ mu / (mu @ mu + np.trace(sigma))
    got = _rank(write_dump(tmp_path / "mu.h5", {"h": mu + noise}))[0]["metrics"]["mean_energy_fraction"]
    assert got == pytest.approx(expected, rel=1e-12)


def test_twonn_and_mle_match_slow_formulas(tmp_path, rng):
    """Against the literal definitions (distances from differences, Python loops) at 1e-12."""
    from reference import mle_reference, twonn_reference

    X = rng.standard_normal((300, 5)) @ rng.standard_normal((5, 12))  # 5-dimensional in 12 units
    layer = _rank(write_dump(tmp_path / "d.h5", {"h": X}), subsample=300)[0]["metrics"]
    assert layer["twonn_id"] == pytest.approx(twonn_reference(X), rel=1e-12)
    assert layer["mle_id"] == pytest.approx(mle_reference(X), rel=1e-12)


def test_k_explained_strict_and_ge_at_an_exact_boundary(tmp_path):
    """Covariance diag(9, 1): 90 % of the variance is reached exactly at k = 1; strict (sklearn's
    > p) needs k = 2, --ge (≥ p) k = 1."""
    rows = np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 1.0], [0.0, -1.0]]) * np.sqrt(2.0)
    path = write_dump(tmp_path / "d.h5", {"h": rows})
    assert _rank(path)[0]["metrics"]["k90"] == 2
    assert _rank(path, ge=True)[0]["metrics"]["k90"] == 1


def test_equidistant_neighbours_give_no_intrinsic_dimension_fit():
    """Every row's neighbours equally far: log ratios are 0, TwoNN and the MLE have no fit (they were NaN)."""
    distances = np.ones((50, 20))
    with pytest.raises(ValueError, match="no slope"):
        twonn(distances[:, :2])
    with pytest.raises(ValueError, match="equally far"):
        mle(distances, k=20)
    with pytest.raises(ValueError, match="TwoNN needs 2"):
        twonn(np.array([[1.0, 2.0], [1.0, 3.0]]))


def test_rows_within_rounding_of_another_are_left_out_of_the_fits():
    """A nearest distance that rounds to 0 (distinct rows) has no log: such rows are left out, not inf/NaN."""
    import warnings

    from actgeom.core.metrics.spectrum import RankInputs, intrinsic_dimension

    distances = np.sort(np.random.default_rng(0).uniform(1.0, 2.0, (60, 20)), axis=1)
    inputs = RankInputs(spectra={}, mean=np.zeros(3), covariance_trace=1.0, unit_vector_sum=np.zeros(3),
                        n_direction_rows=60, distances=distances)
    expected = intrinsic_dimension(inputs, RankOptions())
    inputs.distances = np.vstack([np.zeros((1, 20)), distances])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert intrinsic_dimension(inputs, RankOptions()) == expected
