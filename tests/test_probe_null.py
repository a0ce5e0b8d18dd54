"""The probe's permutation nulls (#24): under permutation k the probe is refitted on the train rows'
class moments under the permuted labels (kept in the same pass as the split) and scored in the shared
second pass on the test rows against their permuted labels, so every null value equals the probe run
on a dump whose labels are the permuted labels; p-values on the grid k/(K + 1), calibrated; the same
for any block size, --ci grouping and shards + merge; whole sequences on token-level dumps."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from conftest import class_data, run_family, write_dump
from scipy import stats

from actgeom.core import api
from actgeom.core.base.errors import OptionError
from actgeom.core.base.stats import ClassMoments
from actgeom.core.dump import Dump, DumpWriter
from actgeom.core.metrics.probe import REGISTRY, ProbeOptions
from actgeom.core.metrics.probesplit import is_test, split_keys
from actgeom.core.metrics.uncertainty import permutation_test
from actgeom.core.state.accumulators import SplitSpec
from actgeom.core.state.accumulators.permutations import LabelPermutations
from actgeom.core.state.engine import PassOptions, accumulate
from actgeom.core.state.partial import stats_arrays, stats_from_arrays

SCORES = ("lda_accuracy", "lda_balanced_accuracy", "lda_macro_f1", "ridge_accuracy", "ridge_balanced_accuracy",
          "ridge_macro_f1", "ncc_accuracy")
TWO_CLASS = SCORES + ("lda_auroc", "direction_norm", "fisher_ratio", "majority", "control_accuracy", "selectivity")


def _probe(path, options: ProbeOptions, k: int = 0, seed: int = 0, **pass_kw) -> dict:
    pass_options = PassOptions(null=k, null_seed=seed, **pass_kw)
    return run_family("probe", path, options, pass_options)["layers"][0]


def _token_dump(path, X, labels, offsets) -> str:
    with DumpWriter(str(path), layers={"h": X.shape[1]}, dtype="float64", model="test", level="token") as writer:
        writer.append({"h": X}, labels=labels)
        writer.set_offsets(offsets)
    return str(path)


def _expected(tmp_path, path, X, options, k, seed, write=None) -> dict:
    """Each metric's null summary from the probe run on K dumps whose labels are the permuted labels."""
    with Dump(path) as dump:
        permuted = LabelPermutations.of(dump, k, seed).read(0, X.shape[0])
    write = write or (lambda p, labels: write_dump(p, {"h": X}, labels=labels))
    runs = [_probe(write(tmp_path / f"permuted{j}.h5", permuted[:, j]), options)["metrics"] for j in range(k)]
    return {name: [run[name] for run in runs] for name in runs[0]}


def _check(layer: dict, direct: dict, metrics) -> None:
    for name in metrics:
        expected = permutation_test(layer["metrics"][name], direct[name], REGISTRY[name].direction)
        got = layer["nulls"][name]
        assert got["p_value"] == expected["p_value"] and got["permutations"] == expected["permutations"], name
        for key in ("null_mean", "null_sd", "z"):
            rel = 0 if name in SCORES else 1e-10  # accuracies: the same counts, exactly
            assert got[key] == pytest.approx(expected[key], rel=rel, abs=1e-12), (name, key)


def test_two_class_nulls_are_the_probe_on_permuted_labels(tmp_path, rng):
    """Every score, AUROC, the direction, the control task: each null value is the probe on the permuted dump."""
    X, y = class_data(rng, [70, 90], 6, separation=0.4, offset=30.0)
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y, chunk_rows=23)
    options = ProbeOptions(control="row", seed=4)
    layer = _probe(path, options, k=6, seed=2, block_rows=37)
    assert set(layer["nulls"]) == set(TWO_CLASS) and layer["nulls_unavailable"] == {
        "chance": "does not change under label permutation (the labels enter it only through the class counts)"}
    _check(layer, _expected(tmp_path, path, X, options, 6, 2), TWO_CLASS)


def test_many_class_nulls_with_unlabelled_rows(tmp_path, rng):
    X, y = class_data(rng, [40, 30, 50, 35], 5, separation=0.5)
    y[rng.random(y.size) < 0.1] = -1  # unlabelled rows keep no label under any permutation
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y)
    options = ProbeOptions(shrinkage=0.3, ridge_lambda=1.0)
    layer = _probe(path, options, k=5, seed=9)
    _check(layer, _expected(tmp_path, path, X, options, 5, 9), SCORES + ("majority",))


@pytest.mark.parametrize("split_by", ["auto", "row"])
def test_token_level_nulls_permute_whole_sequences(tmp_path, rng, split_by):
    """Whole sequences carry their permuted label; split by sequence (auto) or by row (the sequence's
    tokens on both sides, the permuted label shared by them), the nulls are the probe on the permuted dump."""
    lengths = rng.integers(2, 7, 80)
    offsets = np.r_[0, np.cumsum(lengths)]
    sequence_labels = rng.integers(0, 3, lengths.size)
    labels = np.repeat(sequence_labels, lengths)
    X = rng.standard_normal((offsets[-1], 4)) + 0.8 * np.eye(4)[labels]
    path = _token_dump(tmp_path / "tok.h5", X, labels, offsets)
    options = ProbeOptions(split_by=split_by)
    layer = _probe(path, options, k=5, seed=1, block_rows=29)
    with Dump(path) as dump:
        permuted = LabelPermutations.of(dump, 5, 1).read(0, X.shape[0])
    assert all((part == part[0]).all() for part in np.split(permuted, offsets[1:-1]))
    direct = _expected(tmp_path, path, X, options, 5, 1, write=lambda p, moved: _token_dump(p, X, moved, offsets))
    _check(layer, direct, SCORES)


def test_planted_classes_have_the_smallest_p_value(tmp_path, rng):
    X, y = class_data(rng, [50, 50, 50], 8, separation=3.0)
    layer = _probe(write_dump(tmp_path / "d.h5", {"h": X}, labels=y), ProbeOptions(), k=19, seed=3)
    for name in SCORES:
        assert layer["nulls"][name]["p_value"] == 1 / 20 and layer["nulls"][name]["permutations"] == 19, name
        assert layer["nulls"][name]["z"] > 3


def test_random_labels_give_uniform_p_values_on_the_grid(tmp_path):
    p_values = []
    for seed in range(40):
        data = np.random.default_rng(2000 + seed)
        X, y = data.standard_normal((90, 4)), data.integers(0, 3, 90)
        layer = _probe(write_dump(tmp_path / f"d{seed}.h5", {"h": X}, labels=y), ProbeOptions(), k=19, seed=seed)
        p_values.append(layer["nulls"]["lda_accuracy"]["p_value"])
    assert all(round(p * 20, 9) == int(round(p * 20)) for p in p_values)  # on the grid k/(K + 1)
    assert stats.kstest(p_values, "uniform").pvalue > 0.01  # seeded data: deterministic, not a flaky test
    assert 0.3 < np.mean(p_values) < 0.7


def test_nulls_do_not_depend_on_blocks_or_ci_groups(tmp_path, rng):
    X, y = class_data(rng, [60, 45, 55], 5, separation=0.6, offset=100.0)
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y, chunk_rows=17)
    options = ProbeOptions(control="row")
    reference = _probe(path, options, k=7, seed=5, block_rows=1000)
    for pass_kw in ({"block_rows": 13}, {"block_rows": 41, "ci_groups": 4}):
        other = _probe(path, options, k=7, seed=5, **pass_kw)
        assert other["nulls"].keys() == reference["nulls"].keys() and len(reference["nulls"]) >= len(SCORES)
        for name, null in reference["nulls"].items():
            assert other["nulls"][name] == pytest.approx(null, rel=1e-10, abs=1e-12), (pass_kw, name)


def test_permuted_train_moments_from_shards_and_merge(tmp_path, rng):
    """The split's train moments under each permutation equal the train rows' class moments under the
    permuted labels, for one pass, row-range shards merged through the saved form, and --ci groups."""
    X, y = class_data(rng, [50, 40, 60], 4, offset=1e3)
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y, chunk_rows=19)
    spec = SplitSpec(permutations=4, null_seed=6, seed=2)
    with Dump(path) as dump:
        whole = accumulate(dump, specs=[spec], options=PassOptions(block_rows=23))["h"]
        shards = [accumulate(dump, specs=[spec], options=PassOptions(row_range=r, block_rows=31), check=False)["h"]
                  for r in ((90, 150), (0, 40), (40, 90))]
        grouped = accumulate(dump, specs=[spec], options=PassOptions(ci_groups=3, block_rows=29))["h"]
        permuted = LabelPermutations.of(dump, 4, 6).read(0, X.shape[0])
    merged = shards[0]
    for shard in shards[1:]:
        merged.merge(stats_from_arrays(stats_arrays({"h": shard}))[0]["h"])
    train = ~is_test(split_keys(np.arange(X.shape[0]), spec.seed), spec.test_fraction)
    assert 0 < whole.get("split").train.n == train.sum() < X.shape[0]
    for kept in (whole, merged, grouped):
        split = kept.get("split")
        for k in range(4):
            got = split.permutation(k).train
            direct = ClassMoments(4)
            direct.update(X[train], permuted[train, k])
            expected = direct.finalize()
            assert (got.counts == expected.counts).all()
            for name in ("means", "within_scatter"):
                np.testing.assert_allclose(getattr(got, name), getattr(expected, name), rtol=1e-10,
                                           atol=1e-10 * np.abs(getattr(expected, name)).max())


def test_shrinkage_auto_says_why_it_has_no_null(tmp_path, rng):
    X, y = class_data(rng, [40, 40], 4)
    layer = _probe(write_dump(tmp_path / "d.h5", {"h": X}, labels=y), ProbeOptions(shrinkage="auto"), k=5)
    assert layer["nulls"] == {} and "--shrinkage" in layer["nulls_unavailable"]["lda_accuracy"]


def test_api_and_cli_record_the_nulls(tmp_path, rng, cli):
    X, y = class_data(rng, [40, 40, 40], 5, separation=2.0)
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y)
    document = api.probe(path, null=20, null_seed=1).to_dict()
    assert document["inference"]["null"] == {"method": "label permutation", "permutations": 20, "seed": 1}
    assert document["files"][0]["layers"][0]["nulls"]["lda_accuracy"]["p_value"] == 1 / 21
    out = cli.json("probe", path, "--null", "20", "--null-seed", "1", "-q")
    assert out["files"][0]["layers"][0]["nulls"]["lda_accuracy"]["p_value"] == 1 / 21
    code, out, err = cli("probe", path, "--null", "20", "--null-seed", "1", "--format", "csv", "-q")
    assert code == 0, err
    rows = {row["metric"]: row for row in csv.DictReader(io.StringIO(out))}
    assert float(rows["lda_accuracy"]["p_value"]) == 1 / 21 and float(rows["lda_accuracy"]["z"]) > 3
    code, table, err = cli("probe", path, "--null", "20", "--format", "table", "-q")
    assert code == 0 and "h p" in table and "0.0476" in table, err


def test_memory_for_the_refitted_probes_is_checked_before_the_pass(tmp_path, rng, monkeypatch):
    """K refitted probes (four C × D models each) beside the K permuted class sums: a K whose class
    sums alone would fit (collapse --null runs) is refused for the probe, naming the K that fits."""
    from actgeom.core.state.accumulators import permutations

    X, y = class_data(rng, [30, 30, 30], 4)
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y)
    each = 8 * 3 * (4 + 2)  # one permutation's class sums: C × (D + 2) float64
    monkeypatch.setattr(permutations, "memory_bytes", lambda: 2 * 10 * each + 100)  # 10 permutations: two copies
    assert api.collapse(path, null=10).files()[0]["layers"][0]["nulls"]
    with pytest.raises(OptionError, match=r"--null 3 would fit"):
        api.probe(path, null=10)
