"""Permutation nulls from the same pass (docs/metrics.md, "Uncertainty and nulls"): the class
statistics under each permutation equal those of the rows with the permuted labels; the permutations
do not depend on chunking, row-range shards or merging; p-values are calibrated; BH q-values."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from conftest import class_data, run_family, write_dump
from scipy import stats

from actgeom.core import api
from actgeom.core.analysis import FAMILIES
from actgeom.core.base.errors import InvalidInputError, OptionError
from actgeom.core.base.stats import ClassMoments, pooled
from actgeom.core.dump import Dump, DumpWriter
from actgeom.core.metrics.neurons import NeuronsOptions, class_selectivity
from actgeom.core.metrics.uncertainty import bh_qvalues, permutation_test
from actgeom.core.state.accumulators import MomentsSpec, PermutationsSpec, permutations
from actgeom.core.state.accumulators.permutations import Bijection, LabelPermutations
from actgeom.core.state.engine import PassOptions, accumulate
from actgeom.core.state.partial import stats_arrays, stats_from_arrays

K = 7
SPECS = [MomentsSpec(by_class=True), PermutationsSpec(permutations=K, seed=3)]


def _labelled(rng, n=240, d=5, offset=0.0):
    y = rng.integers(-1, 4, n)  # some unlabelled rows (-1)
    X = rng.standard_normal((n, d)) + offset + 3.0 * np.eye(d)[np.maximum(y, 0) % d]
    return X, y


def _close(got, expected, err_msg=""):
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10 * (1 + np.abs(expected).max(initial=0)), err_msg=err_msg)


def test_the_bijection_is_a_permutation_of_every_size():
    for size in (1, 2, 3, 5, 17, 64, 65, 1000):
        for seed in range(4, 7):
            assert sorted(Bijection(size, seed=seed)(np.arange(size))) == list(range(size))
    moved, other = Bijection(1000, seed=4)(np.arange(1000)), Bijection(1000, seed=5)(np.arange(1000))
    assert (moved != np.arange(1000)).mean() > 0.9 and (moved != other).mean() > 0.9


@pytest.mark.parametrize("size, permutations", [(300, 50), (6, 9)])
def test_the_permutations_are_shifts_of_one_order_distinct_and_never_the_identity(rng, size, permutations):
    labels = rng.integers(-1, 5, size)
    permuted = LabelPermutations(labels, permutations, seed=7)
    labelled = np.flatnonzero(labels >= 0)
    place = permuted.order(np.arange(labelled.size))  # F
    unit_at = np.argsort(place)  # F⁻¹
    got = permuted.read(0, size)
    assert (got[labels < 0] == -1).all()
    shifts = []
    for k in range(permutations):  # the one b with label(π_k(u)) = label(F⁻¹((F(u) + b) mod L)) for every u
        matching = [b for b in range(labelled.size)
                    if (got[labelled, k] == labels[labelled][unit_at[(place + b) % labelled.size]]).all()]
        assert matching
        shifts.append(matching)
    if labelled.size - 1 >= permutations:  # room for K distinct shifts besides the identity
        assert all(0 not in found for found in shifts)
        assert len({tuple(found) for found in shifts}) == permutations


def test_permuted_class_statistics_equal_the_rows_with_permuted_labels(tmp_path, rng):
    X, y = _labelled(rng, offset=1e4)  # a huge offset: the shifted sums must stay exact
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y, chunk_rows=23)
    with Dump(path) as dump:
        stats = accumulate(dump, specs=SPECS, options=PassOptions(block_rows=37))["h"]
        permuted_labels = LabelPermutations.of(dump, K, 3).read(0, X.shape[0])
    labelled = y >= 0
    assert (permuted_labels[~labelled] == -1).all()
    total = pooled(stats.get("moments").classes)
    permuted = stats.get("permutations")
    for k in range(K):
        assert sorted(permuted_labels[labelled, k]) == sorted(y[labelled])  # a permutation of the labels
        assert (permuted_labels[labelled, k] != y[labelled]).mean() > 0.4
        direct = ClassMoments(X.shape[1])
        direct.update(X[labelled], permuted_labels[labelled, k])
        expected, got = direct.finalize(), permuted.stats(k, total)
        for name in ("counts", "means", "within_scatter", "sq_dev"):
            _close(getattr(got, name), getattr(expected, name), name)


def test_token_level_permutations_move_whole_sequences(tmp_path, rng):
    lengths = rng.integers(2, 9, 40)
    offsets = np.r_[0, np.cumsum(lengths)]
    sequence_labels = rng.integers(-1, 3, lengths.size)
    labels = np.repeat(sequence_labels, lengths)
    path = str(tmp_path / "tok.h5")
    with DumpWriter(path, layers={"h": 3}, dtype="float64", model="test") as writer:
        writer.append({"h": rng.standard_normal((offsets[-1], 3))}, labels=labels)
        writer.set_offsets(offsets)
    specs = [MomentsSpec(by_class=True), PermutationsSpec(permutations=4, seed=0)]
    with Dump(path) as dump:
        permuted = LabelPermutations.of(dump, 4, 0).read(0, int(offsets[-1]))
        stats = accumulate(dump, specs=specs, options=PassOptions(block_rows=17, tokens="from:1"))["h"]
        X = dump.read_rows("h")
    used = (labels >= 0) & (np.arange(labels.size) - np.repeat(offsets[:-1], lengths) >= 1)  # --tokens from:1
    total = pooled(stats.get("moments").classes)
    for k in range(4):
        direct = ClassMoments(3)
        direct.update(X[used], permuted[used, k])
        expected, got = direct.finalize(), stats.get("permutations").stats(k, total)
        for name in ("counts", "means", "within_scatter", "sq_dev"):
            _close(getattr(got, name), getattr(expected, name), name)
    for k in range(4):
        per_sequence = np.split(permuted[:, k], offsets[1:-1])
        assert all((part == part[0]).all() for part in per_sequence)  # one label per sequence
        moved = np.array([part[0] for part in per_sequence])
        assert sorted(moved[sequence_labels >= 0]) == sorted(sequence_labels[sequence_labels >= 0])
        assert (moved[sequence_labels < 0] == -1).all()
    labels[offsets[3] + 1] = (labels[offsets[3]] + 1) % 3  # a label that varies within its sequence
    with DumpWriter(str(tmp_path / "varying.h5"), layers={"h": 3}, dtype="float64", model="test") as writer:
        writer.append({"h": rng.standard_normal((offsets[-1], 3))}, labels=labels)
        writer.set_offsets(offsets)
    with Dump(str(tmp_path / "varying.h5")) as dump, pytest.raises(InvalidInputError, match="one label"):
        LabelPermutations.of(dump, 4, 0)


def _arrays(stats) -> dict:
    permuted = stats.get("permutations")
    total = pooled(stats.get("moments").classes)
    return {f"{name}{k}": getattr(permuted.stats(k, total), name) for k in range(K)
            for name in ("counts", "means", "within_scatter", "sq_dev")}


def test_permutations_do_not_depend_on_blocks_shards_or_merge_order(tmp_path, rng):
    X, y = _labelled(rng, offset=50.0)
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y, chunk_rows=19)
    with Dump(path) as dump:
        whole = accumulate(dump, specs=SPECS, options=PassOptions(block_rows=1000))["h"]
        small = accumulate(dump, specs=SPECS, options=PassOptions(block_rows=11))["h"]
        shards = [accumulate(dump, specs=SPECS, options=PassOptions(row_range=r, block_rows=29), check=False)["h"]
                  for r in ((150, 240), (0, 70), (70, 150))]
        grouped = accumulate(dump, specs=SPECS, options=PassOptions(ci_groups=4, block_rows=31))["h"]
    reference = _arrays(whole)
    merged = shards[0]
    for shard in shards[1:]:
        merged.merge(stats_from_arrays(stats_arrays({"h": shard}))[0]["h"])  # through the saved form
    for other in (small, merged, grouped):
        for key, value in _arrays(other).items():
            _close(value, reference[key], key)


def test_null_options_are_checked(tmp_path, rng, monkeypatch):
    with pytest.raises(OptionError, match="null"):
        PassOptions(null=-1)
    with pytest.raises(OptionError, match="row offset"):
        PassOptions(null=10, row_offset=5)
    with pytest.raises(OptionError, match="null"):
        PermutationsSpec(permutations=0)
    X, y = class_data(rng, [10, 10], 3)
    with Dump(write_dump(tmp_path / "d.h5", {"h": X}, labels=y)) as dump, monkeypatch.context() as patch:
        patch.setattr(permutations, "memory_bytes", lambda: 2 * 8 * 2 * (3 + 2) + 8 * 3)  # one permutation fits
        with pytest.raises(OptionError, match="--null 1 would fit"):
            PermutationsSpec(permutations=50).readers(dump)
    path = write_dump(tmp_path / "nolabels.h5", {"h": rng.standard_normal((20, 3))})
    with Dump(path) as dump, pytest.raises(InvalidInputError, match="--null"):
        accumulate(dump, specs=[PermutationsSpec(permutations=3)])


def test_bh_qvalues_by_hand_and_against_scipy(rng):
    p = np.array([0.01, 0.04, 0.03, 0.5, 0.02])
    # sorted: 0.01, 0.02, 0.03, 0.04, 0.5 → ·5/rank: 0.05, 0.05, 0.05, 0.05, 0.5 (running minimum from the top)
    np.testing.assert_allclose(bh_qvalues(p), [0.05, 0.05, 0.05, 0.5, 0.05])
    scipy_stats = pytest.importorskip("scipy.stats")
    if hasattr(scipy_stats, "false_discovery_control"):
        many = rng.uniform(size=200) ** 3
        np.testing.assert_allclose(bh_qvalues(many), scipy_stats.false_discovery_control(many, method="bh"), rtol=1e-12)


def _collapse_nulls(path, k, seed=0, **pass_kw) -> dict:
    return run_family("collapse", path, pass_options=PassOptions(null=k, null_seed=seed, **pass_kw))["layers"][0]


def test_planted_classes_have_the_smallest_p_value(tmp_path, rng):
    X, y = class_data(rng, [40, 40, 40], 6, separation=4.0)
    layer = _collapse_nulls(write_dump(tmp_path / "d.h5", {"h": X}, labels=y), 19)
    nulls = layer["nulls"]
    for metric in ("nc1", "nc1_quotient", "cdnv", "vci"):
        assert nulls[metric]["p_value"] == 1 / 20 and nulls[metric]["permutations"] == 19
        assert nulls[metric]["z"] < 0  # below its null (a heavy-tailed one: ratios of traces)
    assert "nc4_mismatch" not in nulls
    assert set(nulls) | set(layer["nulls_unavailable"]) <= set(FAMILIES["collapse"].metrics)


def test_random_labels_give_uniform_p_values(tmp_path):
    p_values = {"nc1": [], "cdnv": []}
    for seed in range(40):
        data = np.random.default_rng(1000 + seed)
        X, y = data.standard_normal((60, 4)), data.integers(0, 3, 60)
        layer = _collapse_nulls(write_dump(tmp_path / f"d{seed}.h5", {"h": X}, labels=y), 19, seed=seed)
        for metric in p_values:
            p_values[metric].append(layer["nulls"][metric]["p_value"])
    for metric, p in p_values.items():  # seeded data: deterministic, not a flaky test
        assert stats.kstest(p, "uniform").pvalue > 0.01, metric
        assert 0.3 < np.mean(p) < 0.7


@pytest.mark.parametrize("units", [5, 2])  # C < D: Σ_W kept as S_T − ZᵀZ (core/metrics/collapse_null.py); C > D: dense
def test_the_null_values_are_the_metric_on_the_permuted_rows(tmp_path, rng, units):
    X, y = class_data(rng, [30, 25, 35], units, separation=1.0)
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y)
    layer = _collapse_nulls(path, 5, seed=2)
    with Dump(path) as dump:
        permuted = LabelPermutations.of(dump, 5, 2).read(0, X.shape[0])
    null = []
    for k in range(5):
        moved = write_dump(tmp_path / f"p{k}.h5", {"h": X}, labels=permuted[:, k])
        null.append(run_family("collapse", moved)["layers"][0]["metrics"])
    assert {"nc1", "nc1_quotient", "vci", "separation_fuzziness"} <= set(layer["nulls"])
    for metric, got in layer["nulls"].items():
        direction = registry_direction(metric)
        expected = permutation_test(layer["metrics"][metric], [values[metric] for values in null], direction)
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (metric, key)


def registry_direction(metric: str) -> str:
    from actgeom.core.analysis import REGISTRIES

    return REGISTRIES["collapse"][metric].direction


def test_the_document_records_the_permutations(tmp_path, rng):
    X, y = class_data(rng, [20, 20], 3)
    result = api.collapse(write_dump(tmp_path / "d.h5", {"h": X}, labels=y), null=9, null_seed=4)
    assert result.to_dict()["inference"]["null"] == {"method": "label permutation", "permutations": 9, "seed": 4}
    assert api.collapse(tmp_path / "d.h5").to_dict()["inference"]["null"] is None


def _selective(rng, n=400, d=12, planted=(0, 1, 2)):
    y = rng.integers(0, 4, n)
    X = np.abs(rng.standard_normal((n, d)))
    for unit in planted:
        X[:, unit] += 4.0 * (y == unit % 4)
    return X, y


def test_planted_selective_units_are_found_at_the_fdr(tmp_path, rng):
    X, y = _selective(rng)
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y)
    options = NeuronsOptions(threshold=0.0, fdr=0.05)
    layer = run_family("neurons", path, options, PassOptions(null=99, null_seed=1, block_rows=53))["layers"][0]
    units = layer["neurons"]["units"]
    p, q = np.array(units["p_value"]), np.array(units["q_value"])
    assert (p[:3] == 1 / 100).all() and (q[:3] <= 0.05).all()
    np.testing.assert_allclose(q, bh_qvalues(p), rtol=1e-12)
    assert layer["metrics"]["selective_unit_fraction_fdr"] == float((q <= 0.05).mean()) == 3 / 12
    assert "selective_unit_fraction" in layer["nulls"]
    assert "selective_unit_fraction_fdr" in layer["nulls_unavailable"]
    assert "mean_excess_kurtosis" not in layer["nulls"] | layer["nulls_unavailable"]  # no labels in it: no null
    without = run_family("neurons", path, options)["layers"][0]
    assert "p_value" not in without["neurons"]["units"] and "--null" in without["unavailable"]["selective_unit_fraction_fdr"]


def test_unit_p_values_equal_the_selectivity_on_permuted_rows(tmp_path, rng):
    X, y = _selective(rng, n=150, d=6)
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y)
    options = NeuronsOptions(threshold=0.0)
    units = run_family("neurons", path, options, PassOptions(null=6, null_seed=5))["layers"][0]["neurons"]["units"]
    with Dump(path) as dump:
        permuted = LabelPermutations.of(dump, 6, 5).read(0, X.shape[0])
    observed = np.array(units["class_selectivity"])
    null = np.array([class_selectivity(np.array([X[permuted[:, k] == c].mean(axis=0) for c in range(4)]))
                     for k in range(6)])
    expected = (1 + (null >= observed).sum(axis=0)) / 7
    np.testing.assert_allclose(units["p_value"], expected, rtol=1e-12)


@pytest.mark.skipif(importlib.util.find_spec("distributed") is None, reason="the dask extra is not installed")
def test_dask_nulls_equal_a_local_run(tmp_path, rng):
    """Each task reads the label vector and permutes the same units: the nulls of a Dask run are a local run's."""
    import logging

    from distributed import LocalCluster

    from actgeom.core.backends import BackendOptions, open_backend
    from actgeom.core.backends.dask import RANGE_SLOT

    X, y = class_data(rng, [50, 40, 60], 6, separation=1.0)
    path = write_dump(tmp_path / "d.h5", {"h": np.abs(X)}, labels=y, chunk_rows=32)
    families = ("collapse", "neurons")
    options = {"neurons": {"threshold": 0.0}}
    local = api.analyze([path], families=families, options=options, null=9, null_seed=2).to_dict()
    with LocalCluster(n_workers=2, threads_per_worker=1, resources={RANGE_SLOT: 1}, processes=True,
                      dashboard_address=":0", silence_logs=logging.ERROR) as cluster:
        with open_backend(BackendOptions("dask", scheduler=cluster.scheduler_address, ranges=4)) as backend:
            dask = api.analyze([path], families=families, options=options, null=9, null_seed=2, backend=backend).to_dict()
    a, b = local["files"][0]["layers"][0], dask["files"][0]["layers"][0]
    assert a["nulls"].keys() == b["nulls"].keys() and len(a["nulls"]) > 10
    for name, null in a["nulls"].items():
        assert b["nulls"][name] == pytest.approx(null, rel=1e-10, abs=1e-12), name
    assert a["neurons"]["units"]["p_value"] == b["neurons"]["units"]["p_value"]


def test_permuted_sums_without_scipys_private_kernels_are_the_same(rng, monkeypatch):
    """The in-place kernels (scipy.sparse._sparsetools) and the public sparse product they replace give
    the same counts, class sums and squared norms (a scipy without the private module still works)."""
    from actgeom.core.state.accumulators import permutations
    from actgeom.core.state.accumulators.base import Rows

    X = rng.standard_normal((700, 9)) + 50.0
    permuted = rng.integers(0, 6, size=(700, 5))

    def accumulated():
        acc = permutations.Permutations(9, 5)
        for start in range(0, 700, 256):
            part = slice(start, start + 256)
            acc.update(Rows(X=X[part], labels=permuted[part, 0], index=np.arange(700)[part],
                            vectors={permutations.ROW_VECTOR: permuted[part]}))
        return acc

    fast = accumulated()
    monkeypatch.setattr(permutations, "csr_matvecs", None)
    public = accumulated()
    np.testing.assert_array_equal(public.counts, fast.counts)
    np.testing.assert_allclose(public.sums, fast.sums, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(public.sumsq, fast.sumsq, rtol=1e-12)
    assert fast.counts.sum() == 700 * 5 and np.abs(fast.sums).max() > 1.0  # rows were added (not two zero states)
