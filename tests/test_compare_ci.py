"""compare --ci / --null (docs/metrics.md, "Uncertainty and nulls"): each leave-one-group-out pass of
aligned rows holds exactly the moments of the rows outside the group; the cells' intervals are the
jackknife of the measures on those rows, the same for any block size, row-range merge and backend;
the permutation null of CKA, RSA and mutual k-NN gives 1/(K+1) for a layer and a rotated copy of
itself and uniform p-values for unrelated layers."""

from __future__ import annotations

import numpy as np
import pytest
import reference_compare as ref
from conftest import write_dump
from scipy import stats
from test_dask import CHUNK_ROWS, _dask, assert_same_comparison, cluster, needs_dask  # noqa: F401 (cluster: a fixture)

import actgeom
from actgeom.core.base.errors import OptionError
from actgeom.core.base.options import CompareOptions
from actgeom.core.dump import Dump, DumpWriter
from actgeom.core.metrics.compare_null import TESTED, pair_nulls
from actgeom.core.metrics.compare_sample import SampleView
from actgeom.core.metrics.uncertainty import jackknife
from actgeom.core.state.compare_pass import CompareMoments, Stream, accumulate_rows, compare_pass
from actgeom.core.state.groups import Grouping

G = 6
EXACT = 1e-10  # leave-one-group-out moments against the rows outside the group, computed directly
REF_RTOL = 1e-8  # measures against tests/reference_compare.py (N × N Grams, QR): as tests/test_compare.py


def _layers(rng, n=240, d_a=7, d_b=5, offset=0.0):
    """Related layers X and Y = X·M + noise, shifted by ``offset`` (the shifted sums must stay exact)."""
    X = rng.standard_normal((n, d_a)) * rng.uniform(0.5, 3.0, d_a)
    Y = X @ rng.standard_normal((d_a, d_b)) / 3 + 0.7 * rng.standard_normal((n, d_b))
    return X + offset, Y - offset


def _files(tmp_path, X, Y, chunk_rows=None, name="p"):
    return (write_dump(tmp_path / f"{name}_a.h5", {"h": X}, chunk_rows=chunk_rows),
            write_dump(tmp_path / f"{name}_b.h5", {"g": Y}, chunk_rows=chunk_rows))


def _streamed_reference(X, Y) -> dict:
    """The measures of moments, by tests/reference_compare.py's textbook formulas."""
    mean_corr, r2 = ref.cca(X, Y)
    return {"cka_linear": ref.cka_linear(X, Y), "cka_debiased": ref.cka_debiased(X, Y),
            "shape_distance": ref.shape_distance(X, Y), "procrustes_distance": ref.procrustes_distance(X, Y),
            "cca_mean_corr": mean_corr, "cca_r2": r2, "svcca": ref.svcca(X, Y), "pwcca": ref.pwcca(X, Y),
            "unit_best_corr": ref.unit_best_corr(X, Y)[0]}


def _direct(X, Y) -> dict:
    """The centred moments of aligned rows X, Y, in memory (core/metrics/compare_moments.py's fields)."""
    x, y = X - X.mean(axis=0), Y - Y.mean(axis=0)
    kx, ky = (x * x).sum(axis=1), (y * y).sum(axis=1)
    return {"x.scatter": x.T @ x, "x.q": kx.sum(), "x.qx": x.T @ kx, "x.q2": kx @ kx, "x.mean": X.mean(axis=0),
            "y.scatter": y.T @ y, "y.qx": y.T @ ky, "cross.scatter": x.T @ y, "cross.kxy": y.T @ kx,
            "cross.kyx": x.T @ ky, "cross.kk": kx @ ky}


def _found(result, i=0, j=1) -> dict:
    x, y, cross = result.sides[i], result.sides[j], result.cross(i, j)
    return {"x.scatter": x.scatter, "x.q": x.q, "x.qx": x.qx, "x.q2": x.q2, "x.mean": x.mean, "y.scatter": y.scatter,
            "y.qx": y.qx, "cross.scatter": cross.scatter, "cross.kxy": cross.kxy, "cross.kyx": cross.kyx,
            "cross.kk": cross.kk}


def _assert_same(got: dict, want: dict, rtol=EXACT):
    for key, value in want.items():
        value = np.asarray(value, dtype=np.float64)
        np.testing.assert_allclose(got[key], value, rtol=rtol, atol=rtol * np.abs(value).max(initial=0), err_msg=key)


def _pass(paths, *, block_rows, groups=G, seed=3, subsample=80, rows=None):
    with Dump(paths[0]) as a, Dump(paths[1]) as b:
        streams = [Stream(a, a.layers[0]), Stream(b, b.layers[0])]
        if rows is None:
            return compare_pass(streams, [(0, 1)], block_rows=block_rows, subsample=subsample, seed=1,
                                ci_groups=groups, ci_seed=seed)
        return accumulate_rows(streams, [(0, 1)], block_rows=block_rows, subsample=subsample, seed=1,
                               ci_groups=groups, ci_seed=seed, rows=rows)


# -- exactness: the leave-one-group-out moments are those of the rows outside the group ---------------

def test_each_group_left_out_holds_the_moments_of_the_rows_outside_it(tmp_path, rng):
    X, Y = _layers(rng, offset=1e4)
    paths = _files(tmp_path, X, Y, chunk_rows=17)
    found = _pass(paths, block_rows=29)
    group = Grouping(G, 3).of(np.arange(X.shape[0]))
    assert sorted(set(group)) == list(range(G))
    _assert_same(_found(found), _direct(X, Y))
    sampled = ref.sample_rows(X.shape[0], 80, 1)  # the seeded sample's rows (_pass: subsample 80, seed 1)
    np.testing.assert_array_equal(found.samples[0], X[np.sort(sampled)])
    for g in range(G):
        outside = group != g
        left = found.leave_out(g)
        assert left.n_rows == outside.sum()
        _assert_same(_found(left), _direct(X[outside], Y[outside]))
        _assert_same(_found(left, 1, 0), _direct(Y[outside], X[outside]))  # the pair seen from B
        rows = np.intersect1d(sampled, np.flatnonzero(outside))  # the sample's rows outside g, in row order
        np.testing.assert_array_equal(left.samples[0], X[rows])
        np.testing.assert_array_equal(left.samples[1], Y[rows])


def test_token_level_groups_hold_whole_sequences(tmp_path, rng):
    lengths = rng.integers(2, 9, 40)
    offsets = np.r_[0, np.cumsum(lengths)]
    X, Y = _layers(rng, n=int(offsets[-1]))
    paths = []
    for name, layer, values in (("a", "h", X), ("b", "g", Y)):
        paths.append(str(tmp_path / f"{name}.h5"))
        with DumpWriter(paths[-1], layers={layer: values.shape[1]}, dtype="float64", chunk_bytes=13 * 8 * 8,
                        model="test") as writer:
            writer.append({layer: values})
            writer.set_offsets(offsets)
    found = _pass(paths, block_rows=23, subsample=0)
    sequence_group = np.repeat(Grouping(G, 3).of(offsets[:-1]), lengths)  # a sequence is named by its first row
    for g in range(G):
        outside = sequence_group != g
        _assert_same(_found(found.leave_out(g)), _direct(X[outside], Y[outside]))
    document = actgeom.compare(paths, ci=True, ci_groups=G, subsample=0).to_dict()
    assert [f["sampling_unit"] for f in document["files"]] == ["sequence", "sequence"]
    with pytest.raises(OptionError, match="41 is more than the 40 sequences"):
        actgeom.compare(paths, ci=True, ci_groups=41, subsample=0)


def test_row_ranges_merged_through_plain_arrays_equal_one_pass(tmp_path, rng):
    """What Dask does with the groups: ranges accumulated apart, saved as arrays, merged."""
    X, Y = _layers(rng, offset=50.0)
    paths = _files(tmp_path, X, Y, chunk_rows=16)
    whole = _pass(paths, block_rows=32)
    parts = [_pass(paths, block_rows=32, rows=rows) for rows in ((0, 96), (96, 160), (160, X.shape[0]))]
    merged, _ = CompareMoments.from_arrays(parts[2].to_arrays())
    merged.merge(CompareMoments.from_arrays(parts[0].to_arrays())[0])
    merged.merge(parts[1])
    with Dump(paths[0]) as a:
        found = merged.result([Stream(a, a.layers[0])], "error")
    for g in range(G):
        _assert_same(_found(found.leave_out(g)), _found(whole.leave_out(g)))
        np.testing.assert_array_equal(found.leave_out(g).samples[1], whole.leave_out(g).samples[1])


# -- the cells' intervals ------------------------------------------------------------------------------

def test_intervals_are_the_jackknife_of_the_measures_without_each_group(tmp_path, rng):
    """Every measure's interval = the jackknife of the in-memory reference on the rows outside each
    group (the sample measures: on the sample's rows outside it)."""
    X, Y = _layers(rng)
    paths = _files(tmp_path, X, Y, chunk_rows=21)
    result = actgeom.compare(paths, ci=True, ci_groups=G, ci_seed=3, subsample=90, seed=2, block_rows=37)
    cell = result.document["pairs"][0]
    assert result.document["inference"]["ci"] == {"method": "delete-a-group jackknife", "groups": G, "seed": 3,
                                                  "level": 0.95}
    group = Grouping(G, 3).of(np.arange(X.shape[0]))
    sampled = ref.sample_rows(X.shape[0], 90, 2)
    outside = [group != g for g in range(G)]
    replicates = [_streamed_reference(X[o], Y[o]) for o in outside]
    sample = [np.intersect1d(sampled, np.flatnonzero(o)) for o in outside]
    for g, rows in enumerate(sample):
        replicates[g]["rsa_spearman"], replicates[g]["rsa_pearson"] = ref.rsa(X[rows], Y[rows])
        replicates[g]["mutual_knn"] = ref.mutual_knn(X[rows], Y[rows])
    assert set(cell["intervals"]) == set(cell["metrics"]) and cell["intervals_unavailable"] == {}
    for name, value in cell["metrics"].items():
        want = jackknife(value, [r[name] for r in replicates])
        for field in ("se", "ci_low", "ci_high", "bias"):
            assert cell["intervals"][name][field] == pytest.approx(want[field], rel=REF_RTOL, abs=1e-12), (name, field)
    assert cell["intervals"]["cka_linear"]["se"] > 0
    records = [r for r in result.records() if r["metric"] == "cka_linear"]
    assert records[0]["se"] == cell["intervals"]["cka_linear"]["se"]
    assert records[0]["ci_low"] < records[0]["value"] < records[0]["ci_high"]


def test_intervals_are_the_same_for_any_block_size(tmp_path, rng):
    X, Y = _layers(rng, offset=300.0)
    paths = _files(tmp_path, X, Y, chunk_rows=13)
    cells = [actgeom.compare(paths, ci=True, ci_groups=G, subsample=70, block_rows=block).document["pairs"][0]
             for block in (5, 64, None)]
    for cell in cells[1:]:
        assert cell["intervals"].keys() == cells[0]["intervals"].keys()
        for name, fields in cells[0]["intervals"].items():
            for field, value in fields.items():
                assert cell["intervals"][name][field] == pytest.approx(value, rel=EXACT, abs=1e-12), (name, field)


def test_a_layer_with_itself_and_without_a_sample(tmp_path, rng):
    """Checkpoint × checkpoint: the diagonal's CKA is 1 in every replicate (se 0); with --subsample 0
    the sample measures have no value, hence no interval and no null."""
    X, Y = _layers(rng, n=120)
    paths = [write_dump(tmp_path / f"c{i}.h5", {"h": Z}) for i, Z in enumerate((X[:, :5], Y, Y + 0.1 * X[:, :5]))]
    document = actgeom.compare(paths, ci=True, ci_groups=4, subsample=0, null=9).to_dict()
    diagonal = next(cell for cell in document["pairs"] if cell["row"] == cell["column"] == 1)
    assert diagonal["intervals"]["cka_linear"]["se"] == pytest.approx(0, abs=1e-12)
    assert "rsa_spearman" in diagonal["unavailable"] and "rsa_spearman" not in diagonal["intervals"]
    assert diagonal["nulls"] == {} and set(diagonal["nulls_unavailable"]) == set(TESTED)


def test_options_are_checked(tmp_path, rng):
    paths = _files(tmp_path, *_layers(rng, n=30))
    with pytest.raises(OptionError, match="ci_groups"):
        actgeom.compare(paths, ci=True, ci_groups=1)
    with pytest.raises(OptionError, match="31 is more than the 30 rows"):
        actgeom.compare(paths, ci=True, ci_groups=31)
    with pytest.raises(OptionError, match="null"):
        actgeom.compare(paths, null=-1)
    with pytest.raises(OptionError, match="null_seed"):
        actgeom.compare(paths, null=5, null_seed=-1)
    plain = actgeom.compare(paths, ci_groups=31).to_dict()  # no --ci: no groups, no check
    assert plain["inference"] == {"ci": None, "null": None} and "intervals" not in plain["pairs"][0]


def test_the_command_line(tmp_path, rng, cli):
    """--ci / --null on `actgeom compare`: records with the inference fields, ± in the table, a p row."""
    import json

    paths = _files(tmp_path, *_layers(rng, n=120))
    code, out, err = cli("compare", *paths, "--ci", "--ci-groups", "5", "--null", "9", "--subsample", "60",
                         "--format", "jsonl", "-q")
    assert code == 0, err
    rows = {row["metric"]: row for row in map(json.loads, out.splitlines())}
    assert rows["cka_linear"]["ci_groups"] == 5 and rows["cka_linear"]["ci_low"] < rows["cka_linear"]["value"]
    assert rows["rsa_spearman"]["p_value"] == 0.1 and rows["shape_distance"]["p_value"] is None
    code, out, err = cli("compare", *paths, "--ci", "--null", "9", "--format", "md", "-q")
    assert code == 0, err
    assert "| cka_linear | h | " in out and " ± " in out and "| cka_linear p | h | 0.1 |" in out
    code, _, err = cli("compare", *paths, "--null-seed", "3")
    assert code != 0 and "--null-seed is an option of --null" in err
    code, _, err = cli("compare", *paths, "--ci", "--ci-groups", "1")
    assert code != 0 and "ci_groups" in err.replace("-", "_")


# -- permutation nulls -----------------------------------------------------------------------------

K = 39


def test_a_rotated_copy_is_beyond_every_permutation(tmp_path, rng):
    X = rng.standard_normal((300, 6)) * np.arange(1, 7)
    Q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    paths = _files(tmp_path, X, X @ Q)  # mutual k-NN (cosine) is not invariant to shifts
    result = actgeom.compare(paths, subsample=100, null=K, null_seed=8)
    cell = result.document["pairs"][0]
    assert result.document["inference"]["null"]["permutations"] == K
    assert set(cell["nulls"]) == set(TESTED) and cell["nulls_unavailable"] == {}
    for name, null in cell["nulls"].items():
        assert null["p_value"] == 1 / (K + 1), name
        assert null["permutations"] == K and null["z"] > 5, name
    assert cell["nulls"]["cka_linear"]["sample_value"] == pytest.approx(1.0, rel=1e-12)
    assert cell["nulls"]["mutual_knn"]["sample_value"] == cell["metrics"]["mutual_knn"] == 1.0
    row = next(r for r in result.records() if r["metric"] == "rsa_spearman")
    assert row["p_value"] == 1 / (K + 1) and row["null_mean"] == cell["nulls"]["rsa_spearman"]["null_mean"]


def test_the_null_is_the_measure_of_shuffled_rows(rng):
    """Each null value is the reference measure with B's sampled rows in the permuted order."""
    from actgeom.core.metrics.compare_null import permutations

    X, Y = _layers(rng, n=50)
    nulls, _ = pair_nulls(SampleView(X), SampleView(Y), CompareOptions(knn_k=4), 5, 11)
    orders = permutations(50, 5, 11)
    by_hand = {"cka_linear": [ref.cka_linear(X, Y[o]) for o in orders],
               "cka_debiased": [ref.cka_debiased(X, Y[o]) for o in orders],
               "rsa_spearman": [ref.rsa(X, Y[o])[0] for o in orders], "rsa_pearson": [ref.rsa(X, Y[o])[1] for o in orders],
               "mutual_knn": [ref.mutual_knn(X, Y[o], 4) for o in orders]}
    for name, values in by_hand.items():
        assert nulls[name]["null_mean"] == pytest.approx(np.mean(values), rel=REF_RTOL), name
        assert nulls[name]["null_sd"] == pytest.approx(np.std(values, ddof=1), rel=1e-6), name


def test_unrelated_layers_have_uniform_p_values():
    """60 seeded pairs of independent layers: every measure's p-values are uniform on {1/(K+1), …, 1}
    (Kolmogorov–Smirnov against the discrete uniform's midpoints; seeded, so the test is fixed)."""
    p_values = {name: [] for name in TESTED}
    for seed in range(60):
        data = np.random.default_rng(1000 + seed)
        X, Y = data.standard_normal((60, 5)), data.standard_normal((60, 4))
        nulls, unavailable = pair_nulls(SampleView(X), SampleView(Y), CompareOptions(knn_k=5), K, seed)
        assert unavailable == {}
        for name in TESTED:
            p_values[name].append(nulls[name]["p_value"])
    for name, values in p_values.items():
        jittered = np.asarray(values) - 0.5 / (K + 1)  # the midpoint of each p-value's step: continuous uniform
        assert stats.kstest(jittered, "uniform").pvalue > 0.01, (name, sorted(values))
        assert 0.3 < np.mean(values) < 0.7, name


# -- Dask: the groups travel with each row range's moments --------------------------------------------

@needs_dask
def test_intervals_and_nulls_are_the_same_on_dask(tmp_path, rng, cluster):  # noqa: F811 (test_dask's fixture)
    X, Y = _layers(rng, n=230, offset=20.0)
    paths = _files(tmp_path, X, Y, chunk_rows=CHUNK_ROWS)
    local = actgeom.compare(paths, ci=True, ci_groups=G, ci_seed=4, subsample=100, null=K).to_dict()
    dask = actgeom.compare(paths, ci=True, ci_groups=G, ci_seed=4, subsample=100, null=K, backend=_dask(cluster)).to_dict()
    assert assert_same_comparison(local, dask) > 2 * len(local["pairs"][0]["metrics"])
    assert local["pairs"][0]["intervals"]["cka_linear"]["se"] > 0


def test_a_sample_without_a_group_is_the_sample_of_its_rows(rng):
    """The replicate's RDM and ranks taken from the whole sample's equal those computed afresh
    (values with ties: the ranks are recounted, not re-sorted)."""
    rows = rng.standard_normal((40, 6))
    rows[[5, 9]] = rows[3], 2 * rows[3]  # rows of the same correlations: tied RDM entries
    rows[7] = 3.0  # a constant row: not usable
    whole, keep = SampleView(rows), rng.random(40) < 0.7
    keep[[3, 5, 9]] = True
    usable = ~whole.constant
    whole.rdm(usable)
    part, fresh = whole.without(keep), SampleView(rows[keep])
    upper, ranks = part.rdm(usable[keep])
    want_upper, want_ranks = fresh.rdm(usable[keep])
    np.testing.assert_allclose(upper, want_upper, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(ranks, want_ranks)
    assert part._whole is not None and len(np.unique(ranks)) < ranks.size  # taken from the whole; ties there
