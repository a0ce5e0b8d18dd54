"""Collapse metrics: closed forms, the slow reference, invariances, presets, scale."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
from conftest import METRIC_RTOL, assert_metrics_close, class_data, every, run_family, write_dump
from reference import collapse_reference

from actgeom.core.base.errors import UsageError
from actgeom.core.dump import Dump
from actgeom.core.families import collapse as collapse_family
from actgeom.core.metrics.collapse import REGISTRY, CollapseOptions, geometry, resolve_options
from actgeom.core.metrics.pairwise import pair_stats
from actgeom.core.state.engine import PassOptions, accumulate
from actgeom.core.state.partial import merge_stats

SEEDS = [0, 1, 2]
# Imbalanced; class 2 is empty, class 4 has a single row.
COUNTS = [120, 60, 0, 35, 1, 80, 44]


def _classifier(rng, n_classes, n_units):
    return rng.standard_normal((n_classes, n_units)), rng.standard_normal(n_classes)


def _add_classifier(path, weight, bias):
    with h5py.File(path, "a") as f:
        f["classifier/weight"], f["classifier/bias"] = weight, bias


def _metrics(path, block_rows: int = 37, **options) -> dict:
    report = run_family("collapse", path, options=CollapseOptions(**options), pass_options=PassOptions(block_rows=block_rows))
    return report["layers"][0]["metrics"]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype, offset", [("float64", 1e3), ("float16", 1e3), ("float32", 0.0)])
def test_every_metric_matches_the_reference(tmp_path, seed, dtype, offset):
    rng = np.random.default_rng(seed)
    X, y = class_data(rng, COUNTS, 12, offset=offset, spread=2.0 if dtype == "float16" else 1.0)
    W, b = _classifier(rng, len(COUNTS), 12)
    predictions = rng.integers(0, len(COUNTS), y.size)
    path = write_dump(tmp_path / "d.h5", {"h": X}, dtype=dtype, labels=y, prediction=predictions,
                      chunk_rows=int(rng.integers(5, 200)))
    with Dump(path) as dump:
        stored = dump.read_rows("h").astype(np.float64)
    _add_classifier(path, W, b)
    got = _metrics(path, block_rows=int(rng.integers(1, 300)))
    assert_metrics_close(got, collapse_reference(stored, y, W, b, predictions))


@pytest.mark.parametrize("options", [
    dict(global_mean="sample"), dict(nc1_inverse="pinv"), dict(divide_by_c=False), dict(min_count=40),
    dict(nc4_decision="logits"), dict(nc4_decision="logits-nobias"),
])
def test_options_match_the_reference(tmp_path, options):
    rng = np.random.default_rng(11)
    X, y = class_data(rng, COUNTS, 10, offset=50.0)
    W, b = _classifier(rng, len(COUNTS), 10)
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y, chunk_rows=64)
    _add_classifier(path, W, b)
    got = _metrics(path, **options)
    assert_metrics_close(got, collapse_reference(X, y, W, b, **options))


def _simplex_etf(n_classes: int, n_units: int, rng) -> np.ndarray:
    """C unit vectors with pairwise cosine −1/(C−1), rotated into D ≥ C dimensions."""
    etf = (np.eye(n_classes) - 1 / n_classes) * math.sqrt(n_classes / (n_classes - 1))
    rotation = np.linalg.qr(rng.standard_normal((n_units, n_units)))[0][:, :n_classes]
    return etf @ rotation.T


def test_simplex_etf_is_collapsed(tmp_path, rng):
    """Rows = ETF vertex + 1e-6 noise, W = the ETF, b = −W μ_G: every collapse metric ≈ 0.

    Noise σ = 1e-6 around unit-norm means: second-order quantities (NC1, CDNV, VCI) are
    ~σ²·D ≈ 1e-11, first-order ones (norm and angle spreads, duality) ~σ ≈ 1e-6, and the ETF
    errors, computed as √(2 − 2x), have a floor of ~1e-8. So 1e-5 bounds every one.
    """
    C, D = 6, 16
    means = 5.0 + _simplex_etf(C, D, rng)  # an offset: the ETF is about the global mean
    y = np.repeat(np.arange(C), 30)
    X = means[y] + 1e-6 * rng.standard_normal((y.size, D))
    W = means - means.mean(axis=0)
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y, prediction=y, chunk_rows=16)
    _add_classifier(path, W, -W @ means.mean(axis=0))
    got = _metrics(path)
    for name in ("nc1", "nc1_quotient", "vci", "cdnv", "nc2_equinorm_means", "nc2_equiangular_means",
                 "nc2_maxangle_means", "nc2_etf_error_means", "nc2_equinorm_weights", "nc2_equiangular_weights",
                 "nc2_etf_error_weights", "nc3_self_duality", "nc3_wh_etf_error", "unc3_cos_var", "bias_collapse",
                 "nc4_mismatch", "gnc2_log_var"):
        assert abs(got[name]) < 1e-5, (name, got[name])
    assert got["unc3_cos_mean"] == pytest.approx(1.0, abs=1e-5)


def test_orthogonal_frame_has_zero_of_error(rng):
    """Uncentred means on orthogonal axes of different lengths: of_error ≠ 0 (unequal norms),
    gof_offdiag_ratio = 0; equal lengths: both 0."""
    C, D = 5, 9
    basis = np.linalg.qr(rng.standard_normal((D, D)))[0][:C]
    for lengths, of_zero in ((np.full(C, 3.0), True), (np.arange(1.0, C + 1), False)):
        means = lengths[:, None] * basis
        values, _ = collapse_family.metrics(_geometry_of(means, rng, spread=0.0), CollapseOptions())
        assert values["gof_offdiag_ratio_means"] < 1e-12
        assert (values["of_error_means"] < 1e-7) == of_zero


def _geometry_of(means, rng, per_class=20, spread=0.1):
    from actgeom.core.base.stats import ClassMoments

    y = np.repeat(np.arange(means.shape[0]), per_class)
    acc = ClassMoments(means.shape[1])
    acc.update(means[y] + spread * rng.standard_normal((y.size, means.shape[1])), y)
    return geometry(acc.finalize(), CollapseOptions())


@pytest.mark.parametrize("seed", SEEDS)
def test_invariances(tmp_path, seed):
    """Row order, chunking and shard split change nothing; scaling changes nothing in the
    scale-invariant metrics; an invertible affine map changes nothing in VCI."""
    rng = np.random.default_rng(seed)
    X, y = class_data(rng, [50, 30, 70, 20], 8, offset=10.0)
    order = rng.permutation(y.size)
    A = rng.standard_normal((8, 8)) + 3 * np.eye(8)
    variants = {"base": (X, y), "shuffled": (X[order], y[order]), "scaled": (7.3 * X, y), "affine": (X @ A.T + 2.0, y)}
    got = {}
    for name, (data, labels) in variants.items():
        path = write_dump(tmp_path / f"{name}.h5", {"h": data}, labels=labels, chunk_rows=int(rng.integers(3, 50)))
        got[name] = _metrics(path)
    with Dump(tmp_path / "base.h5") as dump:  # three shards, merged
        parts = [accumulate(dump, specs=every(), options=PassOptions(row_range=r, block_rows=11)) for r in ((0, 40), (40, 41),
                                                                                                            (41, 170))]
    merged_geometry = geometry(merge_stats(parts)["h"].get("moments").classes, CollapseOptions())
    merged = collapse_family.metrics(merged_geometry, CollapseOptions())[0]
    for name, value in got["base"].items():
        assert got["shuffled"][name] == pytest.approx(value, rel=METRIC_RTOL, abs=1e-12), name
        if name != "nc4_mismatch":
            assert merged[name] == pytest.approx(value, rel=METRIC_RTOL, abs=1e-12), name
    scale_free = {name for name, m in REGISTRY.items() if "scale" in m.invariant}
    for name in scale_free & set(got["base"]):
        assert got["scaled"][name] == pytest.approx(got["base"][name], rel=METRIC_RTOL, abs=1e-12), name
    assert got["affine"]["vci"] == pytest.approx(got["base"]["vci"], rel=1e-8)
    assert got["affine"]["nc1"] != pytest.approx(got["base"]["nc1"], rel=1e-3)  # so the VCI check can fail


def test_presets_reproduce_their_conventions(tmp_path, rng):
    X, y = class_data(rng, [40, 40, 40, 40, 40], 6, offset=3.0)  # balanced
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y)
    default = _metrics(path)
    papyan = run_family("collapse", path, options=resolve_options("papyan"))["layers"][0]["metrics"]
    assert papyan["nc1"] == pytest.approx(5 * default["nc1"], rel=1e-12)  # no /C, C = 5
    Xi, yi = class_data(rng, [100, 10, 40, 5], 6, offset=3.0)  # imbalanced: μ_G conventions differ
    path = write_dump(tmp_path / "i.h5", {"h": Xi}, labels=yi)
    zhu = run_family("collapse", path, options=resolve_options("zhu"))["layers"][0]["metrics"]
    assert_metrics_close(zhu, collapse_reference(Xi, yi, global_mean="sample", nc1_inverse="pinv"))
    assert zhu["nc1"] != pytest.approx(_metrics(path)["nc1"], rel=1e-6)
    assert resolve_options("linguistic").nc4_decision == "logits-nobias"
    assert resolve_options("papyan", global_mean="sample").global_mean == "sample"  # explicit options win
    with pytest.raises(UsageError, match="preset='nope' is not one of papyan, zhu, linguistic"):
        resolve_options("nope")


def test_pairs_in_tiles_equal_one_tile(rng):
    """C > D at small scale; tiles of 7 classes give what one tile gives."""
    vectors = rng.standard_normal((300, 16))
    variances = rng.random(300)
    one, tiled = pair_stats(vectors, variances, tile=4096), pair_stats(vectors, variances, tile=7)
    for field in ("cdnv", "cdnv_lc", "abs_cos_plus"):
        assert getattr(tiled, field) == pytest.approx(getattr(one, field), rel=1e-12)
    assert tiled.cos.variance() == pytest.approx(one.cos.variance(), rel=1e-10)
    assert tiled.log_inv_dist.mean == pytest.approx(one.log_inv_dist.mean, rel=1e-12)


def test_more_classes_than_units_match_the_reference(tmp_path, rng):
    counts = rng.integers(2, 6, size=400)
    X, y = class_data(rng, list(counts), 8, offset=20.0)
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y, chunk_rows=128)
    assert_metrics_close(_metrics(path), collapse_reference(X, y))


@pytest.mark.parametrize("global_mean", ["class", "sample"])
def test_more_classes_than_units_with_a_singular_between_scatter_match_the_reference(tmp_path, rng, global_mean):
    """C > D, the class means in a 5-dimensional subspace of 8 units: Σ_B and SS_B are singular, so
    NC1 and the separation fuzziness leave the Cholesky route for the eigensolve (pseudo-inverse)."""
    means = rng.standard_normal((300, 5)) @ rng.standard_normal((5, 8)) + 30.0
    y = np.repeat(np.arange(300), rng.integers(2, 5, size=300))
    noise = rng.standard_normal((y.size, 8))
    noise -= (np.stack([np.bincount(y, weights=noise[:, j]) for j in range(8)], axis=1) / np.bincount(y)[:, None])[y]
    X = means[y] + noise  # class means exactly the planted ones
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y, chunk_rows=100)
    got = _metrics(path, nc1_inverse="pinv", global_mean=global_mean)
    expected = collapse_reference(X, y, nc1_inverse="pinv", global_mean=global_mean)
    assert got["nc1_rank_used"] == 5  # the eigensolve's rank, not D
    assert_metrics_close(got, expected)


def test_the_cholesky_trace_equals_the_eigensolve_and_refuses_near_the_cutoff(rng):
    """Tr(Σ A⁻¹) through the Cholesky factor equals Σ_j v_jᵀΣv_j/λ_j when A is regular; with an
    eigenvalue near the pseudo-inverse's cut (or below it, or A not positive definite) it gives way."""
    from actgeom.core.metrics.collapse_geometry import trace_against_regular_inverse

    basis = np.linalg.qr(rng.standard_normal((6, 6)))[0]
    sigma = np.cov(rng.standard_normal((6, 40)))
    regular = basis @ np.diag([5.0, 3.0, 2.0, 1.0, 0.5, 0.1]) @ basis.T
    lam, vectors = np.linalg.eigh(regular)
    expected = sum(vectors[:, j] @ sigma @ vectors[:, j] / lam[j] for j in range(6))
    assert trace_against_regular_inverse(sigma, regular, 6) == pytest.approx(expected, rel=1e-12)
    eps = np.finfo(float).eps
    for smallest in (100 * 6 * eps, 6 * eps, 0.0, -1.0):  # 100 × the cut (within the bound's margin), at it, singular, indefinite
        near = basis @ np.diag([1.0, 1.0, 1.0, 1.0, 1.0, smallest]) @ basis.T
        assert trace_against_regular_inverse(sigma, near, 6) is None, smallest


def test_coincident_means_make_cdnv_unavailable_and_are_counted(rng):
    """Two coincident means: CDNV divides by 0 — unavailable with the reason (it was inf, shown as null)."""
    means = rng.standard_normal((4, 5))
    means[3] = means[1]
    values, unavailable = collapse_family.metrics(_geometry_of(means, rng, spread=0.0), CollapseOptions())
    assert values["cdnv_coincident_pairs"] == 1 and values["gnc2_coincident_pairs"] == 1
    for name in ("cdnv", "cdnv_lc", "gnc2_log_mean", "gnc2_log_var"):
        assert name not in values and unavailable[name].startswith("1 "), name
    assert "coincident means" in unavailable["cdnv"] and "same mean direction" in unavailable["gnc2_log_mean"]


def test_metrics_without_a_classifier_say_why(tmp_path, rng):
    X, y = class_data(rng, [20, 20, 20], 4)
    report = run_family("collapse", write_dump(tmp_path / "d.h5", {"h": X}, labels=y))["layers"][0]
    assert report["unavailable"]["nc3_self_duality"].startswith("no classifier weight")
    assert "nc4_mismatch" in report["unavailable"]
    assert set(report["metrics"]) | set(report["unavailable"]) == set(REGISTRY)


def test_token_selection_reaches_both_passes(tmp_path, rng):
    """--tokens last: collapse (and NC4's second pass) see only the last row of each sequence."""
    from actgeom.core.dump import DumpWriter

    lengths = rng.integers(2, 6, size=150)
    offsets = np.r_[0, np.cumsum(lengths)]
    n = int(offsets[-1])
    last = np.isin(np.arange(n) + 1, offsets[1:])
    X, y = class_data(rng, [n // 3, n // 3, n - 2 * (n // 3)], 5, offset=4.0)
    y[~last] = 7  # a class only unselected rows carry
    predictions = rng.integers(0, 3, n)
    path = tmp_path / "tok.h5"
    with DumpWriter(path, layers={"h": 5}, dtype="float64", level="token") as writer:
        writer.append({"h": X}, labels=y, prediction=predictions)
        writer.set_offsets(offsets)
    report = run_family("collapse", path, pass_options=PassOptions(tokens="last", block_rows=17))["layers"][0]
    expected = collapse_reference(X[last], y[last], predictions=predictions[last])
    assert report["collapse"]["n_rows_used"] == last.sum()
    assert_metrics_close(report["metrics"], expected)


def test_pseudo_inverse_keeps_small_eigenvalues_above_the_cutoff(rng):
    from actgeom.core.base.stats import ClassMoments

    """Σ_B with eigenvalues ~1 and ~1e-10 (and a rounding-level third): the pseudo-inverse keeps the
    second and drops the third, as an explicit eigendecomposition does; the cutoff itself is
    max(C, D)·eps·λ_max exactly (numpy's default)."""
    from actgeom.core.metrics.collapse_geometry import pinv_rank

    eps = np.finfo(float).eps
    assert pinv_rank(np.array([1.0, 3 * eps * 1.01, 3 * eps * 0.99]), 3) == 2
    C, D = 3, 3
    basis = np.linalg.qr(rng.standard_normal((D, D)))[0]
    means = np.array([[1.0, 1e-5, 0.0], [-1.0, 1e-5, 0.0], [0.0, -2e-5, 0.0]]) @ basis.T
    noise = rng.standard_normal((C, 20, D))
    noise -= noise.mean(axis=1, keepdims=True)  # class means exactly the planted ones
    acc = ClassMoments(D)
    acc.update((means[:, None, :] + 0.3 * noise).reshape(-1, D), np.repeat(np.arange(C), 20))
    g = geometry(acc.finalize(), CollapseOptions())
    options = CollapseOptions(nc1_inverse="pinv")
    lam, vectors = np.linalg.eigh(g.centred.T @ g.centred / C)
    keep = lam > max(C, D) * np.finfo(float).eps * lam.max()
    assert keep.sum() == 2 and lam[keep].min() / lam.max() < 1e-9  # the second eigenvalue is tiny but kept
    expected = sum(vectors[:, j] @ g.sigma_w @ vectors[:, j] / lam[j] for j in np.flatnonzero(keep)) / C
    # the small eigenvalue carries ~eps·λ_max/λ_small ≈ 1e-6 relative error in both computations
    assert collapse_family.metrics(g, options)[0]["nc1"] == pytest.approx(expected, rel=1e-4)


def test_a_zero_classifier_row_has_no_angles(rng):
    """A class whose classifier row is 0: its cosines are 0/0 — unavailable, no RuntimeWarning."""
    import dataclasses
    import warnings

    g = _geometry_of(rng.standard_normal((3, 5)), rng)
    weight = rng.standard_normal((3, 5))
    weight[1] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values, unavailable = collapse_family.metrics(dataclasses.replace(g, weight=weight), CollapseOptions())
        _, silent = collapse_family.metrics(dataclasses.replace(g, weight=np.zeros((3, 5))), CollapseOptions())
    assert "class 1's classifier row is 0" in unavailable["nc2_equiangular_weights"]
    assert "class 1" in unavailable["unc3_cos_mean"] and np.isfinite(values["nc2_equinorm_weights"])
    assert all(silent[name] == "every classifier row is 0" for name in ("nc2_equinorm_weights", "nc3_self_duality"))
