"""compare: closed forms, invariances, the in-memory reference, alignment, the pass, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import reference_compare as ref
from conftest import assert_metrics_close, write_dump, write_h5

import actgeom
from actgeom.core.base.sample import row_keys
from actgeom.core.dump import Dump
from actgeom.core.metrics.compare import REGISTRY
from actgeom.core.metrics.compare_moments import CrossMoments, SideMoments
from actgeom.core.metrics.compare_sample import SampleView, doubled_ranks

# Streamed moments vs the reference's N × N Grams / QR: both float64, agreeing to ~1e-12 on
# well-conditioned data; 1e-8 is the acceptance bar.
REF_RTOL = 1e-8
# Distances at an exact match are arccos(1 − ε) ≈ √(2ε): float64 rounding ε ~ 1e-15 → ~5e-8.
ZERO_DISTANCE = 1e-6
# Measures equal to 1 at an exact match: rounding of the ratio of moments.
ONE_RTOL = 1e-9
SEEDS = (0, 1, 2)
SYMMETRIC = ("cka_linear", "cka_debiased", "shape_distance", "procrustes_distance", "cca_mean_corr", "cca_r2", "svcca",
             "rsa_spearman", "rsa_pearson", "mutual_knn")


def _correlated(rng, n_rows=150, d_a=12, d_b=9):
    """X and Y = X·M + noise: related, not identical, full rank."""
    X = rng.standard_normal((n_rows, d_a)) * rng.uniform(0.5, 3.0, d_a)
    Y = X @ rng.standard_normal((d_a, d_b)) / 3 + 0.7 * rng.standard_normal((n_rows, d_b))
    return X, Y


def _pair(tmp_path, X, Y, *, dtype="float64", chunk_rows=None, ids=True, name="a"):
    ids_a = {"sample_id": np.arange(X.shape[0])} if ids else {}
    a = write_dump(tmp_path / f"{name}_A.h5", {"h": X}, dtype=dtype, chunk_rows=chunk_rows, **ids_a)
    b = write_dump(tmp_path / f"{name}_B.h5", {"g": Y}, dtype=dtype, chunk_rows=chunk_rows, **ids_a)
    return a, b


def _values(a, b, **options) -> dict:
    result = actgeom.compare([a, b], **options)
    return {name: matrix[0][0] for name, matrix in result.to_dict()["matrices"].items()}


def _stored(X, dtype):
    return X.astype(dtype).astype(np.float64)


@pytest.mark.parametrize("dtype,offset,spread", [("float64", 1e3, 1.0), ("float32", 1e3, 1.0), ("float16", 0.0, 1.0),
                                                 ("float16", 1e3, 20.0)])
@pytest.mark.parametrize("seed", SEEDS)
def test_every_measure_matches_the_in_memory_reference(tmp_path, seed, dtype, offset, spread):
    """Streamed (random HDF5 chunk and block sizes) = textbook formulas on the stored values."""
    rng = np.random.default_rng(seed)
    X, Y = _correlated(rng)
    X, Y = _stored(offset + spread * X, dtype), _stored(-offset + spread * Y, dtype)
    a, b = _pair(tmp_path, X, Y, dtype=dtype, chunk_rows=int(rng.integers(3, 40)))
    got = _values(a, b, subsample=100, seed=seed, block_rows=int(rng.integers(5, 60)))
    want = ref.every_measure(X, Y, subsample=100, seed=seed)
    assert set(got) == set(REGISTRY) == set(want)
    assert_metrics_close(got, want, rtol=REF_RTOL)


def test_unbiased_hsic_needs_no_centring(rng):
    """HSIC_u of raw linear kernels = of centred ones (what lets the moments be centred)."""
    X, Y = _correlated(rng)
    shifted = ref.hsic_unbiased((X + 5) @ (X + 5).T, (Y - 3) @ (Y - 3).T)
    assert shifted == pytest.approx(ref.hsic_unbiased(ref.centred(X) @ ref.centred(X).T,
                                                       ref.centred(Y) @ ref.centred(Y).T), rel=1e-9)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_shape_distance_matches_the_reference_at_every_alpha(tmp_path, rng, alpha):
    X, Y = _correlated(rng)
    a, b = _pair(tmp_path, X + 1e3, Y, chunk_rows=17)
    got = _values(a, b, alpha=alpha, subsample=0, block_rows=29)["shape_distance"]
    assert got == pytest.approx(ref.shape_distance(X, Y, alpha), rel=REF_RTOL)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_a_layer_compared_with_itself_is_at_distance_exactly_zero(tmp_path, alpha):
    """The nuclear-norm ratio of a layer with itself is 1 up to a few ulps; arccos(1 − ε) = √(2ε)
    turned one ulp into 2.1e-08. Seeds 0, 1, 3 gave 1.5e-08 – 3e-08 before the ratio was clipped."""
    for seed in range(4):
        rng = np.random.default_rng(seed)
        X = rng.standard_normal((150, 12)) * rng.uniform(0.5, 3.0, 12) + 2.0
        result = actgeom.compare([write_dump(tmp_path / f"{seed}.h5", {"h": X})], subsample=0, alpha=alpha)
        for name in ("shape_distance", "procrustes_distance"):
            assert result.matrix(name)[0][0] == 0.0, (seed, name)


def test_a_small_distance_is_not_clipped(tmp_path, rng):
    """Y = X + 1e-6 noise: distances ~1e-6, far above the clipping tolerance (~1e-7 at D = 12)."""
    X = rng.standard_normal((150, 12)) * rng.uniform(0.5, 3.0, 12)
    Y = X + 1e-6 * rng.standard_normal(X.shape)
    a, b = _pair(tmp_path, X, Y)
    got = _values(a, b, subsample=0)
    assert got["shape_distance"] == pytest.approx(ref.shape_distance(X, Y), rel=1e-3)
    assert got["procrustes_distance"] == pytest.approx(ref.procrustes_distance(X, Y), rel=1e-3)
    assert 1e-7 < got["shape_distance"] < 1e-5

def test_units_list_every_unit_with_its_best_match(tmp_path, rng):
    X, Y = _correlated(rng)
    a, b = _pair(tmp_path, X, Y)
    result = actgeom.compare([a, b], units=True, unit_threshold=0.3, subsample=0)
    fraction, best = ref.unit_best_corr(X, Y, 0.3)
    assert result.metric("unit_best_corr") == pytest.approx(fraction)
    units = result.to_dict()["pairs"][0]["compare"]["units"]
    assert [(u["unit_b"], u["corr"]) for u in units] == [(b, pytest.approx(c, rel=REF_RTOL)) for b, c in best]


@pytest.mark.parametrize("seed", SEEDS)
def test_similarity_transform_gives_ideal_values(tmp_path, seed):
    """Y = X·Q·s + t (Q orthogonal): CKA 1 (both), shape and Procrustes distance 0, CCA family 1."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((120, 10)) * rng.uniform(0.5, 2, 10) + 5.0
    Q = np.linalg.qr(rng.standard_normal((10, 10)))[0]
    Y = X @ Q * rng.uniform(0.1, 10) + rng.standard_normal(10) * 100
    a, b = _pair(tmp_path, X, Y, chunk_rows=13)
    got = _values(a, b, subsample=0, block_rows=31)
    for name in ("cka_linear", "cka_debiased", "cca_mean_corr", "cca_r2", "svcca", "pwcca"):
        assert got[name] == pytest.approx(1.0, rel=ONE_RTOL), name
    for name in ("shape_distance", "procrustes_distance"):
        assert abs(got[name]) < ZERO_DISTANCE, name
    assert got["unit_best_corr"] < 1.0  # units are rotated: not a unit-level match


@pytest.mark.parametrize("seed", SEEDS)
def test_cca_is_invariant_to_invertible_linear_maps(tmp_path, seed):
    rng = np.random.default_rng(seed)
    X, Y = _correlated(rng)
    A, B = rng.standard_normal((12, 12)), rng.standard_normal((9, 9))
    a, b = _pair(tmp_path, X, Y, name="plain")
    c, d = _pair(tmp_path, X @ A + 3.0, Y @ B - 7.0, name="mapped")
    plain, mapped = _values(a, b, subsample=0), _values(c, d, subsample=0)
    for name in ("cca_mean_corr", "cca_r2"):
        assert mapped[name] == pytest.approx(plain[name], rel=1e-8), name  # conditioning of A, B: ~1e-10
    assert _values(a, c, subsample=0)["cca_mean_corr"] == pytest.approx(1.0, rel=ONE_RTOL)  # X vs X·A + t


@pytest.mark.parametrize("seed", SEEDS)
def test_declared_invariances_hold(tmp_path, seed):
    """Every registry entry's declared invariances (rotation, scale, shift, affine) on one side."""
    rng = np.random.default_rng(seed)
    X, Y = _correlated(rng, n_rows=80)
    Q = np.linalg.qr(rng.standard_normal((12, 12)))[0]
    maps = {"rotation": lambda Z: Z @ Q, "scale": lambda Z: 3.7 * Z, "shift": lambda Z: Z + rng.standard_normal(12) * 50,
            "affine": lambda Z: Z @ rng.standard_normal((12, 12)) + 2.0}
    a, b = _pair(tmp_path, X, Y, name="base")
    base = _values(a, b, subsample=60)
    for invariance, transform in maps.items():
        c, d = _pair(tmp_path, transform(X), Y, name=invariance)
        moved = _values(c, d, subsample=60)
        for name, metric in REGISTRY.items():
            if invariance in metric.invariant:
                assert moved[name] == pytest.approx(base[name], rel=1e-7, abs=1e-7), (name, invariance)


def test_symmetric_measures_are_symmetric_across_checkpoints(tmp_path, rng):
    X, Y = _correlated(rng, n_rows=90, d_a=8, d_b=8)
    Z = X + rng.standard_normal(X.shape)
    paths = [write_dump(tmp_path / f"ckpt_{i}.h5", {"h": M}, chunk_rows=11) for i, M in enumerate((X, Y, Z))]
    result = actgeom.compare(paths, layers="h", subsample=50, block_rows=23)
    for name in SYMMETRIC:
        M = np.array(result.matrix(name), dtype=float)
        np.testing.assert_allclose(M, M.T, rtol=1e-9, atol=1e-9, err_msg=name)
    assert result.matrix("pwcca")[0][1] != pytest.approx(result.matrix("pwcca")[1][0], rel=1e-6)  # weights from A
    assert result.matrix("cka_linear")[0][0] == pytest.approx(1.0, rel=ONE_RTOL)
    assert abs(result.matrix("shape_distance")[1][1]) < ZERO_DISTANCE


@pytest.mark.parametrize("seed", SEEDS)
def test_debiased_cka_of_independent_matrices_is_near_zero(tmp_path, seed):
    """Independent Gaussians, N = 200, D = 100: biased CKA ≈ 0.33 (its bias), debiased ≈ 0 (±0.02)."""
    rng = np.random.default_rng(seed)
    a, b = _pair(tmp_path, rng.standard_normal((200, 100)), rng.standard_normal((200, 100)))
    got = _values(a, b, subsample=0)
    assert abs(got["cka_debiased"]) < 0.02
    assert got["cka_linear"] > 0.25


def test_layer_by_layer_matrix_is_oriented_rows_a_columns_b(tmp_path, rng):
    X, Y = _correlated(rng)
    a = write_dump(tmp_path / "A.h5", {"l1": X, "l2": X[:, :5] ** 2}, sample_id=np.arange(150))
    b = write_dump(tmp_path / "B.h5", {"m1": Y, "m2": X * 2, "m3": Y[:, :3]}, sample_id=np.arange(150))
    result = actgeom.compare([a, b], subsample=0, block_rows=37)
    doc = result.to_dict()
    assert [r["layer"] for r in doc["rows"]] == ["l1", "l2"]
    assert [c["layer"] for c in doc["columns"]] == ["m1", "m2", "m3"]
    assert "rows = layers of A" in doc["orientation"]
    assert result.matrix("cka_linear")[0][1] == pytest.approx(1.0, rel=ONE_RTOL)  # l1 vs m2 = 2·l1
    assert result.matrix("cka_linear")[0][0] == pytest.approx(ref.cka_linear(X, Y), rel=REF_RTOL)
    assert result.matrix("cka_linear")[1][2] == pytest.approx(ref.cka_linear(X[:, :5] ** 2, Y[:, :3]), rel=REF_RTOL)
    only = actgeom.compare([a, b], layers="l2", layers_b=["m1", "m3"], subsample=0)
    assert np.array(only.matrix("cka_linear")).shape == (1, 2)
    assert only.matrix("cka_linear")[0][1] == pytest.approx(result.matrix("cka_linear")[1][2], rel=1e-12)


def test_reference_compares_every_file_layer_by_layer(tmp_path, rng):
    X, Y = _correlated(rng)
    files = [write_dump(tmp_path / f"run_{i}.h5", {"a": X + i * Y[:, :1], "b": Y * (i + 1)}) for i in range(3)]
    result = actgeom.compare(files, reference=files[0], subsample=0)
    doc = result.to_dict()
    assert doc["mode"] == "reference" and [c["file"] for c in doc["columns"]] == files[1:]
    assert [r["layer"] for r in doc["rows"]] == ["a", "b"]
    assert result.matrix("cka_linear")[0][1] == pytest.approx(ref.cka_linear(X, X + 2 * Y[:, :1]), rel=REF_RTOL)
    assert result.matrix("cka_linear")[1][0] == pytest.approx(1.0, rel=ONE_RTOL)


def test_merged_moments_equal_one_pass(rng):
    """Any split of the rows, merged (through to_arrays/from_arrays), gives the same moments."""
    X, Y = rng.standard_normal((200, 6)) + 1e3, rng.standard_normal((200, 4)) * 3 - 40

    def accumulate(rows):
        sx, sy, cross = SideMoments(6), SideMoments(4), CrossMoments(6, 4)
        for start in range(rows.start, rows.stop, 19):
            block = slice(start, min(start + 19, rows.stop))
            a, b = sx.shift(X[block]), sy.shift(Y[block])
            sx.update(a), sy.update(b), cross.update(a, b)
        return sx, sy, cross

    whole = accumulate(range(0, 200))
    parts = [accumulate(range(s, e)) for s, e in ((120, 200), (0, 57), (57, 120))]
    merged = [type(acc).from_arrays(acc.to_arrays()) for acc in parts[0]]
    for part in parts[1:]:
        for acc, other in zip(merged, part):
            acc.merge(other)
    for one, many in zip(whole, merged):
        f1, f2 = one.finalize(), many.finalize()
        for key in vars(f1):
            if not key.startswith("_"):
                np.testing.assert_allclose(getattr(f2, key), getattr(f1, key), rtol=1e-10, atol=1e-9, err_msg=key)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    kx, ky = (Xc**2).sum(1), (Yc**2).sum(1)
    cross = merged[2].finalize()
    np.testing.assert_allclose(cross.scatter, Xc.T @ Yc, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(cross.kyx, Xc.T @ ky, rtol=1e-9, atol=1e-8)
    assert cross.kk == pytest.approx(kx @ ky, rel=1e-12)


def test_nonfinite_rows_leave_every_layer(tmp_path, rng, cli):
    X, Y = _correlated(rng)
    X[17, 3] = np.nan
    a, b = _pair(tmp_path, X, Y)
    code, _, err = cli("compare", a, b)
    assert code == 3 and "1 rows have NaN or inf values" in err and "--nonfinite drop" in err
    result = actgeom.compare([a, b], nonfinite="drop", subsample=0)
    keep = np.ones(150, dtype=bool)
    keep[17] = False
    assert result.to_dict()["pass"]["n_nonfinite_dropped"] == 1
    assert result.metric("cka_linear") == pytest.approx(ref.cka_linear(X[keep], Y[keep]), rel=REF_RTOL)
    Y[:5] = np.inf  # a whole first block of B, and one row of A elsewhere: 6 rows leave both files
    keep[:5] = False
    a, b = _pair(tmp_path, X, Y, name="blocks")
    result = actgeom.compare([a, b], nonfinite="drop", subsample=40, block_rows=5)
    assert result.to_dict()["pass"]["n_nonfinite_dropped"] == 6
    assert result.metric("cka_debiased") == pytest.approx(ref.cka_debiased(X[keep], Y[keep]), rel=REF_RTOL)
    kept = np.flatnonzero(keep)  # the sample: the kept rows with the smallest keys of their global row numbers
    chosen = np.sort(kept[np.argsort(row_keys(0, 150, 0)[kept])[:40]])
    assert result.metric("rsa_pearson") == pytest.approx(ref.rsa(X[chosen], Y[chosen])[1], rel=REF_RTOL)


# -- alignment ------------------------------------------------------------------------------

def test_misaligned_ids_are_refused_naming_the_row(tmp_path, rng, cli):
    X, Y = _correlated(rng)
    ids = np.arange(150)
    shuffled = ids.copy()
    shuffled[17], shuffled[40] = shuffled[40], shuffled[17]
    a = write_dump(tmp_path / "A.h5", {"h": X}, sample_id=ids)
    b = write_dump(tmp_path / "B.h5", {"h": Y}, sample_id=shuffled)
    code, out, err = cli("compare", a, b)
    assert code == 3 and out == ""
    assert err.startswith("Error: rows differ at row 17: ") and "id 17" in err and "40" in err
    assert err.count("\n") == 1


def test_string_ids_and_ids_option(tmp_path, rng, cli):
    X, Y = _correlated(rng, n_rows=30)
    names = np.array([f"img{i:03d}" for i in range(30)], dtype="S6")
    other = names.copy()
    other[29] = b"imgXXX"
    a = write_h5(tmp_path / "A.h5", {"feats": X, "meta/name": names})
    b = write_h5(tmp_path / "B.h5", {"feats": Y, "meta/name": other})
    code, _, err = cli("compare", a, b, "--layers", "feats", "--ids", "meta/name")
    assert code == 3 and "rows differ at row 29: " in err and "'img029'" in err and "'imgXXX'" in err
    code, _, err = cli("compare", a, b, "--layers", "feats", "--ids", "meta/nothing")
    assert code == 3 and "no dataset 'meta/nothing'" in err and "--ids" in err


def test_without_ids_alignment_is_assumed_and_said(tmp_path, rng, cli):
    X, Y = _correlated(rng, n_rows=40)
    a, b = _pair(tmp_path, X, Y, ids=False)
    doc = cli.json("compare", a, b, "--subsample", "0")
    assert doc["alignment"]["by"] == "assumed" and "alignment assumed" in doc["alignment"]["note"]
    c = write_dump(tmp_path / "short.h5", {"h": X[:39]})
    code, _, err = cli("compare", a, c)
    assert code == 3 and "has 40 rows but" in err and "has 39" in err


# -- the command ----------------------------------------------------------------------------------

def test_cli_outputs_state_the_orientation(tmp_path, rng, cli):
    X, Y = _correlated(rng, n_rows=60)
    a = write_dump(tmp_path / "A.h5", {"l1": X, "l2": X[:, :4]})
    b = write_dump(tmp_path / "B.h5", {"m1": Y})
    doc = cli.json("compare", a, b, "--subsample", "30")
    assert set(doc["matrices"]) == set(REGISTRY) and len(doc["matrices"]["cka_linear"]) == 2
    code, out, _ = cli("compare", a, b, "--subsample", "30", "--format", "jsonl")
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(records) == 2 * len(REGISTRY)
    assert set(records[0]) == {"file_a", "layer_a", "file_b", "layer_b", "metric", "value", "note"}
    assert {(r["layer_a"], r["layer_b"]) for r in records} == {("l1", "m1"), ("l2", "m1")}
    code, out, _ = cli("compare", a, b, "--subsample", "30", "--format", "table")
    assert code == 0 and "rows = layers of A" in out and "cka_linear" in out and "m1" in out
    code, out, _ = cli("compare", a, b, "--subsample", "30", "--format", "csv")
    assert code == 0 and out.splitlines()[0].startswith("file_a,layer_a,file_b,layer_b,metric,value")


def test_cli_refusals(tmp_path, rng, cli):
    X, Y = _correlated(rng, n_rows=40)
    paths = [write_dump(tmp_path / f"c{i}.h5", {"h": X, "g": Y}) for i in range(3)]
    code, _, err = cli("compare", *paths)
    assert code == 2 and err.startswith("Error: --layers must select one layer of each file") and "has g, h" in err
    code, _, err = cli("compare", paths[0], paths[1], "--max-memory", "1KB")
    assert code == 2 and "--max-memory '1KB' is below what this comparison holds" in err
    code, _, err = cli("compare", paths[0], paths[1], "--max-memory", "lots")
    assert code == 2 and "is not a size such as 4GiB" in err
    code, _, err = cli("compare", paths[0], paths[1], "--alpha", "2")
    assert code == 2 and "--alpha '2.0' must be in [0, 1]" in err
    code, _, err = cli("compare", *paths, "-l", "h", "--layers-b", "g")
    assert code == 2 and "--layers-b" in err
    code, _, err = cli("compare", paths[0], paths[1], "-l", "h", "--layers-b", "nope")
    assert code == 3 and "no dataset matches --layers 'nope'" in err


def test_one_file_alone_is_compared_with_itself(tmp_path, rng):
    X, Y = _correlated(rng, n_rows=50)
    a = write_dump(tmp_path / "A.h5", {"h": X, "g": Y})
    result = actgeom.compare([a], subsample=0)
    M = np.array(result.matrix("cka_linear"))
    assert M.shape == (2, 2) and M[0, 0] == pytest.approx(1.0) and M[0, 1] == pytest.approx(ref.cka_linear(Y, X))


def test_sample_data_gives_finite_values_for_every_measure():
    paths = ["sample_data/digits_mlp_epoch0300.h5", "sample_data/digits_mlp_epoch1500.h5"]
    with Dump(paths[0]) as dump:
        assert dump.ids_path() is not None
    result = actgeom.compare(paths, layers="hidden3", subsample=300)
    for name in REGISTRY:
        assert math.isfinite(result.metric(name)), name


def test_one_read_of_each_layer_whatever_the_number_of_pairs(tmp_path, rng, monkeypatch):
    """2 × 3 layers: five streams read once each (not six pairs × two reads)."""
    import actgeom.core.state.compare_pass as compare_pass

    reads = []
    original = compare_pass.iter_blocks

    def counting(dump, layer, *args, **kwargs):
        reads.append((dump.path.name, layer.name))
        return original(dump, layer, *args, **kwargs)

    monkeypatch.setattr(compare_pass, "iter_blocks", counting)
    X, Y = _correlated(rng, n_rows=50)
    a = write_dump(tmp_path / "A.h5", {"l1": X, "l2": Y})
    b = write_dump(tmp_path / "B.h5", {"m1": Y, "m2": X, "m3": X + Y[:, :1]})
    result = actgeom.compare([a, b], subsample=0, block_rows=7)
    assert sorted(reads) == [("A.h5", "l1"), ("A.h5", "l2"), ("B.h5", "m1"), ("B.h5", "m2"), ("B.h5", "m3")]
    assert result.matrix("cka_linear")[1][0] == pytest.approx(1.0, rel=ONE_RTOL)  # l2 = m1


def test_cli_reference_and_units(tmp_path, rng, cli):
    X, Y = _correlated(rng, n_rows=60)
    files = [write_dump(tmp_path / f"run_step{i}.h5", {"a": X + i * Y[:, :1], "b": Y}) for i in range(3)]
    code, out, _ = cli("compare", *files, "--reference", files[0], "--subsample", "0", "--format", "table")
    assert code == 0 and "step1" in out and "step2" in out and "rows = layers, columns = files" in out
    doc = cli.json("compare", files[0], files[1], "-l", "b", "--units", "--subsample", "0")
    units = doc["pairs"][0]["compare"]["units"]
    assert len(units) == 9 and all(u["unit_a"] == u["unit_b"] and u["corr"] == pytest.approx(1.0) for u in units)
    assert doc["matrices"]["unit_best_corr"] == [[1.0]]


def test_constant_layers_give_reasons_not_numbers(tmp_path, rng):
    """A constant layer: every measure unavailable with the reason; a constant unit leaves unit_best_corr."""
    X = rng.standard_normal((30, 6))
    X[:, 3] = 1.0
    a = write_dump(tmp_path / "a.h5", {"x": X, "z": np.zeros((30, 4))})
    b = write_dump(tmp_path / "b.h5", {"y": X[:, :5] * 2})
    pairs = actgeom.compare([a, b], subsample=20).to_dict()["pairs"]
    assert pairs[0]["compare"]["units_constant_a"] == 1
    assert pairs[0]["metrics"]["unit_best_corr"] == pytest.approx(4 / 5)  # units 0, 1, 2, 4 match themselves
    assert pairs[1]["metrics"] == {} and set(pairs[1]["unavailable"]) == set(REGISTRY)
    assert pairs[1]["unavailable"]["cka_linear"] == "a layer is constant over the rows"
    assert pairs[1]["unavailable"]["mutual_knn"] == "every sampled row of a layer is zero"


# Row ranges merged vs one pass: the same float64 sums in another order (rounding only).
SPLIT_RTOL = 1e-12


@pytest.mark.parametrize("cuts", [(0, 40, 41, 150), (0, 75, 150), (0, 13, 90, 120, 150)])
def test_row_ranges_merged_through_plain_arrays_equal_one_pass(tmp_path, rng, cuts):
    """What a Dask task returns: each range's moments as plain arrays, merged in any order →
    one pass's moments (sample identical, NaN rows counted) — without dask installed."""
    from actgeom.core.state.compare_pass import CompareMoments, Stream, accumulate_rows

    X, Y = _correlated(rng)
    X[[5, 77]] = np.nan  # dropped from both streams, counted once each
    a, b = _pair(tmp_path, X + 100.0, Y)
    with Dump(a) as da, Dump(b) as db:
        streams = [Stream(da, da.layers[0]), Stream(db, db.layers[0])]
        settings = {"block_rows": 16, "subsample": 60, "seed": 4}
        whole = accumulate_rows(streams, [(0, 1)], **settings).result(streams, "drop")
        parts = [CompareMoments.from_arrays(accumulate_rows(streams, [(0, 1)], rows=(lo, hi), **settings).to_arrays())[0]
                 for lo, hi in zip(cuts, cuts[1:])]
        merged = parts.pop()  # the last range first: merging needs no order
        for part in parts:
            merged.merge(part)
        split = merged.result(streams, "drop")
        with pytest.raises(actgeom.InvalidInputError, match="^2 rows have NaN or inf values in a compared layer"):
            merged.result(streams, "error")
    assert (split.n_rows, split.n_nonfinite) == (whole.n_rows, whole.n_nonfinite) == (148, 2)
    for mine, theirs in zip(whole.samples, split.samples):
        np.testing.assert_array_equal(mine, theirs)
    for got, want in zip(split.sides, whole.sides):
        np.testing.assert_allclose(got.mean, want.mean, rtol=SPLIT_RTOL)
        np.testing.assert_allclose(got.scatter, want.scatter, rtol=SPLIT_RTOL, atol=SPLIT_RTOL * np.abs(want.scatter).max())
        assert got.q2 == pytest.approx(want.q2, rel=SPLIT_RTOL)
    got, want = split.crosses[(0, 1)], whole.crosses[(0, 1)]
    for field in ("scatter", "kxy", "kyx"):
        value = getattr(want, field)
        np.testing.assert_allclose(getattr(got, field), value, rtol=SPLIT_RTOL, atol=SPLIT_RTOL * np.abs(value).max())
    assert got.kk == pytest.approx(want.kk, rel=SPLIT_RTOL)


def test_rsa_ranks_are_exact_beyond_float32():
    """RSA's Spearman ranks are kept exact at any sample size: 2²³ tied zeros and two tied ones
    have the average ranks 2²² + 0.5 and 2²³ + 1.5, and float32 (spacing 1 above 2²³) cannot
    hold the second: float32 ranks put rsa_spearman 7.7e-12 off rsatoolbox at 8 000 sampled rows."""
    values = np.zeros(2**23 + 2, dtype=np.uint8)  # any sortable vector; one byte a value keeps the test light
    values[-2:] = 1
    doubled = doubled_ranks(values)
    assert doubled[[0, -3, -2, -1]].tolist() == [2**23 + 1, 2**23 + 1, 2**24 + 3, 2**24 + 3]  # Python ints: no rounding


def test_rsa_ranks_are_average_ranks_of_the_rdm(rng):
    """The stored ranks, halved, are scipy's average ranks of the RDM exactly (ties included)."""
    from scipy.stats import rankdata

    rows = rng.integers(0, 3, (60, 4)).astype(float)  # few distinct rows: the RDM has many ties
    rows[0] = 1.0  # a constant row, left out of the RDM
    view = SampleView(rows)
    usable = ~view.constant
    upper, doubled = view.rdm(usable)
    assert np.unique(upper).size < upper.size / 10
    np.testing.assert_array_equal(doubled.astype(np.float64) / 2, rankdata(upper))
    values = rng.standard_normal(1000).round(1)
    np.testing.assert_array_equal(doubled_ranks(values) / 2, rankdata(values))
