"""The probe family: closed-form probes against scikit-learn and in-memory float64 references,
the seeded split (reproducible, identical across layers, chunkings and shards, no leak), the
control task, planted concept directions, and the command's error paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import class_data, run_family, write_dump
from reference_probe import control_labels, held_out, lda, nearest_mean, predict, ridge, row_buckets, sequence_starts
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score

import actgeom
from actgeom.core.analysis import facts_of
from actgeom.core.base.sample import hash_keys, row_keys
from actgeom.core.dump import Dump, DumpWriter
from actgeom.core.families import probe as probe_family
from actgeom.core.metrics.probe import REGISTRY, SHRINKAGE_GRID, ProbeOptions, lda_probe, ridge_probe
from actgeom.core.metrics.probesplit import is_test, split_keys
from actgeom.core.state.accumulators import SplitSpec
from actgeom.core.state.engine import PassOptions, RowVectors, accumulate

SEEDS = [0, 1, 2]
COEF_RTOL = 1e-8  # the acceptance bound: two float64 solves of a well-conditioned D×D system (cond ≲ 10²)
FORMULA_RTOL = 1e-9  # moments vs rows in float64 (offset 1e3 rows: shifted moments keep ~1e-12)
STATS_RTOL = 1e-10  # the same rows' moments accumulated in another order (chunking, shards)
DIRECTION_COS = 0.999  # planted mean difference 5·v, noise 1 per unit over ~800 rows per class: 1 − cos ≈ 1e-4


def _dump(tmp_path, X, y, *, name="d.h5", dtype="float64", chunk_rows=None, **vectors):
    return write_dump(tmp_path / name, {"h": X}, labels=y, dtype=dtype, chunk_rows=chunk_rows, **vectors)


def _stored(path) -> np.ndarray:
    with Dump(path) as dump:
        return dump.read_rows("h").astype(np.float64)


def _token_dump(tmp_path, X, y, offsets, *, name="tok.h5", chunk_rows=37, **vectors):
    with DumpWriter(tmp_path / name, layers={"h": X.shape[1]}, dtype="float64", level="token",
                    chunk_bytes=chunk_rows * X.shape[1] * 8) as writer:
        writer.append({"h": X}, labels=y, **vectors)
        writer.set_offsets(offsets)
    return tmp_path / name


def _train_stats(path, options: ProbeOptions, pass_options=PassOptions()):
    """The split's statistics as the probe keeps them (its unit resolved for the dump)."""
    with Dump(path) as dump:
        return accumulate(dump, specs=probe_family.needs(options, facts_of(dump)), options=pass_options)["h"].get("split")


def _metrics(path, options: ProbeOptions, pass_options=PassOptions()) -> dict:
    return run_family("probe", path, options, pass_options)["layers"][0]["metrics"]


def _scale(W: np.ndarray) -> float:
    return float(np.abs(W).max())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("counts", [[300, 300], [500, 60], [250, 120, 40]], ids=["balanced", "imbalanced", "three"])
@pytest.mark.parametrize("dtype", ["float64", "float16"])
def test_lda_equals_scikit_learn(tmp_path, seed, counts, dtype):
    rng = np.random.default_rng(seed)
    X, y = class_data(rng, counts, 6, separation=0.8)
    path = _dump(tmp_path, X, y, dtype=dtype, chunk_rows=int(rng.integers(7, 90)))
    options = ProbeOptions(shrinkage=0.0, seed=seed)
    X = _stored(path)  # float16: the values actgeom reads, exactly
    test = held_out(X.shape[0], seed, 0.2)
    sk = LinearDiscriminantAnalysis(solver="lsqr").fit(X[~test], y[~test])
    probe = lda_probe(_train_stats(path, options, PassOptions(block_rows=int(rng.integers(5, 200)))).train, 0.0)
    W, b = probe.uncentred()
    if len(counts) == 2:  # scikit-learn keeps w₁ − w₀ for two classes
        W, b = (W[1] - W[0])[None, :], np.array([b[1] - b[0]])
    else:  # scores are defined up to a class-independent term: compare differences to class 0
        W, b = W - W[0], b - b[0]
        sk_W, sk_b = sk.coef_ - sk.coef_[0], sk.intercept_ - sk.intercept_[0]
    sk_W, sk_b = (sk.coef_, sk.intercept_) if len(counts) == 2 else (sk_W, sk_b)
    np.testing.assert_allclose(W, sk_W, rtol=0, atol=COEF_RTOL * _scale(sk_W))
    np.testing.assert_allclose(b, sk_b, rtol=0, atol=COEF_RTOL * max(_scale(sk_b), 1.0))
    np.testing.assert_array_equal(probe.predict(X[test]), sk.predict(X[test]))
    assert _metrics(path, options)["lda_accuracy"] == accuracy_score(y[test], sk.predict(X[test]))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shrinkage", [0.05, 0.3, 1.0])
def test_shrinkage_equals_the_formula_in_memory(tmp_path, seed, shrinkage):
    """C > D: Σ_W has rank ≤ n − C but s > 0 makes Σ_s definite; +1e3 offset, float16 storage."""
    rng = np.random.default_rng(seed)
    X, y = class_data(rng, [40] * 12, 5, offset=1e3, separation=2.0)
    path = _dump(tmp_path, X, y, dtype="float16", chunk_rows=int(rng.integers(7, 90)))
    X = _stored(path)
    test = held_out(X.shape[0], seed, 0.2)
    classes, W_ref, b_ref = lda(X[~test], y[~test], shrinkage)
    probe = lda_probe(_train_stats(path, ProbeOptions(seed=seed)).train, shrinkage)
    W, b = probe.uncentred()
    W_ref = W_ref - W_ref.mean(axis=0)  # the class-independent part (Σ_s⁻¹x̄) is not kept
    b_ref = b_ref - b_ref.mean()
    np.testing.assert_allclose(W - W.mean(axis=0), W_ref, rtol=0, atol=FORMULA_RTOL * _scale(W_ref))
    np.testing.assert_allclose(b - b.mean(), b_ref, rtol=0, atol=FORMULA_RTOL * _scale(b_ref))
    np.testing.assert_array_equal(probe.predict(X[test]), predict(classes, W_ref, b_ref, X[test]))
    sk = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage).fit(X[~test], y[~test])
    np.testing.assert_array_equal(probe.predict(X[test]), sk.predict(X[test]))  # the same formula in scikit-learn


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ridge_lambda", [1e-3, 0.1, 2.0])
def test_ridge_equals_a_direct_solve(tmp_path, seed, ridge_lambda):
    rng = np.random.default_rng(seed)
    X, y = class_data(rng, [200, 90, 150, 30], 7, offset=3.0, separation=0.7)
    path = _dump(tmp_path, X, y, chunk_rows=int(rng.integers(7, 90)))
    test = held_out(X.shape[0], seed, 0.2)
    classes, W_ref, b_ref = ridge(X[~test], y[~test], ridge_lambda)
    W, b = ridge_probe(_train_stats(path, ProbeOptions(seed=seed)).train, ridge_lambda).uncentred()
    np.testing.assert_allclose(W, W_ref, rtol=0, atol=FORMULA_RTOL * _scale(W_ref))
    np.testing.assert_allclose(b, b_ref, rtol=0, atol=FORMULA_RTOL * _scale(b_ref))
    got = _metrics(path, ProbeOptions(seed=seed, ridge_lambda=ridge_lambda))
    expected = predict(classes, W_ref, b_ref, X[test])
    assert got["ridge_accuracy"] == accuracy_score(y[test], expected)
    assert got["ridge_balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y[test], expected), abs=1e-15)
    assert got["ridge_macro_f1"] == pytest.approx(f1_score(y[test], expected, average="macro"), abs=1e-15)


@pytest.mark.parametrize("seed", SEEDS)
def test_auto_shrinkage_is_the_best_on_the_validation_rows(tmp_path, seed):
    """C > D/2 classes with few rows each: the validation accuracy depends on s."""
    rng = np.random.default_rng(seed)
    X, y = class_data(rng, [30] * 8, 12, separation=0.5)
    path = _dump(tmp_path, X, y, chunk_rows=int(rng.integers(7, 90)))
    test = held_out(X.shape[0], seed, 0.2)
    validation = held_out(X.shape[0], seed + 2, 0.25) & ~test  # an independent key (seed + 2) of the train rows
    fit = ~test & ~validation
    accuracy = {s: accuracy_score(y[validation], predict(*lda(X[fit], y[fit], s), X[validation])) for s in SHRINKAGE_GRID}
    best = max(s for s in SHRINKAGE_GRID if accuracy[s] == max(accuracy.values()))  # ties: the larger s
    layer = run_family("probe", path, ProbeOptions(seed=seed, shrinkage="auto"), PassOptions(block_rows=31))["layers"][0]
    assert layer["probe"]["shrinkage"] == best and layer["probe"]["n_validation"] == validation.sum()
    assert layer["probe"]["validation_accuracy"] == {str(s): pytest.approx(a, abs=1e-15) for s, a in accuracy.items()}
    assert layer["metrics"]["lda_accuracy"] == accuracy_score(y[test], predict(*lda(X[~test], y[~test], best), X[test]))
    assert len(set(accuracy.values())) > 1  # the choice mattered


@pytest.mark.parametrize("seed", SEEDS)
def test_ncc_is_nearest_train_mean(tmp_path, seed):
    rng = np.random.default_rng(seed)
    X, y = class_data(rng, [120, 80, 60], 4, offset=1e3, separation=0.6)
    path = _dump(tmp_path, X, y)
    test = held_out(X.shape[0], seed, 0.3)
    expected = nearest_mean(X[~test], y[~test], X[test])
    assert _metrics(path, ProbeOptions(seed=seed, test_fraction=0.3))["ncc_accuracy"] == accuracy_score(y[test], expected)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("counts", [[400, 150], [150, 100, 60, 20]], ids=["two", "four"])
def test_scores_equal_scikit_learn(tmp_path, seed, counts):
    rng = np.random.default_rng(seed)
    X, y = class_data(rng, counts, 5, separation=0.5)
    path = _dump(tmp_path, X, y, chunk_rows=37)
    test = held_out(X.shape[0], seed, 0.2)
    classes, W, b = lda(X[~test], y[~test], 0.1)
    predicted = predict(classes, W, b, X[test])
    got = _metrics(path, ProbeOptions(seed=seed), PassOptions(block_rows=29))
    assert got["lda_accuracy"] == accuracy_score(y[test], predicted)
    assert got["lda_balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y[test], predicted), abs=1e-15)
    assert got["lda_macro_f1"] == pytest.approx(f1_score(y[test], predicted, average="macro"), abs=1e-15)
    if len(counts) == 2:
        scores = X[test] @ (W[1] - W[0]) + b[1] - b[0]
        assert got["lda_auroc"] == pytest.approx(roc_auc_score(y[test] == 1, scores), abs=1e-15)
    else:
        assert "lda_auroc" not in got


def test_auroc_counts_ties_as_half():
    from actgeom.core.metrics.probe import auroc

    assert auroc(np.array([1.0, 1.0, 0.0, 2.0]), np.array([True, False, False, True])) == pytest.approx((2 + 0.5 + 1) / 4)


@pytest.mark.parametrize("seed", SEEDS)
def test_baselines(tmp_path, seed):
    rng = np.random.default_rng(seed)
    X, y = class_data(rng, [300, 100, 50], 3)
    path = _dump(tmp_path, X, y)
    test = held_out(X.shape[0], seed, 0.2)
    got = _metrics(path, ProbeOptions(seed=seed))
    assert got["chance"] == 1 / 3
    assert got["majority"] == np.bincount(y[~test]).max() / (~test).sum()


def test_hash_keys_are_row_keys():
    for seed in SEEDS:
        np.testing.assert_array_equal(hash_keys(np.arange(1000, 3000), seed), row_keys(1000, 3000, seed))


@pytest.mark.parametrize("seed", SEEDS)
def test_split_is_identical_across_layers_chunkings_and_shards(tmp_path, seed):
    rng = np.random.default_rng(seed)
    X, y = class_data(rng, [300, 200, 100], 4)
    path = write_dump(tmp_path / "two.h5", {"a": X, "b": 2 * X[:, :3]}, labels=y, chunk_rows=int(rng.integers(7, 90)))
    spec = SplitSpec(seed=seed)
    test = held_out(X.shape[0], seed, 0.2)
    with Dump(path) as dump:
        whole = accumulate(dump, specs=[spec], options=PassOptions(block_rows=int(rng.integers(5, 100))))
        cut = int(rng.integers(1, X.shape[0]))
        first = accumulate(dump, specs=[spec], options=PassOptions(row_range=(0, cut), block_rows=23))
        second = accumulate(dump, specs=[spec], options=PassOptions(row_range=(cut, X.shape[0]), block_rows=41))
    for layer in ("a", "b"):  # the same train rows in every layer: counts and (scaled) means of those rows
        stats = whole[layer].get("split")
        assert stats.n_test == test.sum()
        np.testing.assert_array_equal(stats.train.counts, np.bincount(y[~test]))
        width = 4 if layer == "a" else 3
        expected = np.array([X[~test & (y == c), :width].mean(axis=0) for c in range(3)]) * (1 if layer == "a" else 2)
        np.testing.assert_allclose(stats.train.means, expected, rtol=STATS_RTOL)
        first[layer].merge(second[layer])
        merged = first[layer].get("split")
        np.testing.assert_array_equal(merged.train.counts, stats.train.counts)
        np.testing.assert_allclose(merged.train.within_scatter, stats.train.within_scatter, rtol=STATS_RTOL,
                                   atol=STATS_RTOL * np.abs(stats.train.within_scatter).max())
    a = _metrics(path, ProbeOptions(seed=seed), PassOptions(block_rows=17))
    assert a == _metrics(path, ProbeOptions(seed=seed), PassOptions(block_rows=200))  # the second pass finds the same rows


def test_shard_files_with_row_offset_split_like_the_whole_dump(tmp_path):
    rng = np.random.default_rng(5)
    X, y = class_data(rng, [200, 150], 3)
    whole = _dump(tmp_path, X, y)
    head = _dump(tmp_path, X[:120], y[:120], name="head.h5")
    tail = _dump(tmp_path, X[120:], y[120:], name="tail.h5")
    options = ProbeOptions()
    reference = _train_stats(whole, options)
    merged = _train_stats(head, options)
    spec = SplitSpec()
    with Dump(tail) as dump:
        rest = accumulate(dump, specs=[spec], options=PassOptions(row_offset=120))["h"]
    with Dump(head) as dump:
        first = accumulate(dump, specs=[spec])["h"]
    first.merge(rest)
    merged = first.get("split")
    np.testing.assert_array_equal(merged.train.counts, reference.train.counts)
    np.testing.assert_allclose(merged.train.means, reference.train.means, rtol=STATS_RTOL)


def test_shard_statistics_saved_and_merged_give_the_same_probe(tmp_path):
    """The cluster workflow: shards accumulate the split (with control groups and validation rows),
    save, merge; the probe from the merged file equals the probe from one pass."""
    from actgeom.core.state.partial import load_partial, merge_partials, provenance, save_partial

    rng = np.random.default_rng(9)
    X, y = class_data(rng, [150, 120, 90], 4, separation=0.7)
    path = _dump(tmp_path, X, y, token_id=rng.integers(0, 40, X.shape[0]))
    options = ProbeOptions(control="token", shrinkage="auto", seed=4)
    spec = SplitSpec(seed=4, control="token", validation=True)
    parts = []
    with Dump(path) as dump:
        for i, rows in enumerate([(0, 100), (100, 250), (250, X.shape[0])]):
            pass_options = PassOptions(row_range=rows)
            save_partial(tmp_path / f"part{i}.npz", accumulate(dump, specs=[spec], options=pass_options),
                         provenance(dump, pass_options))
            parts.append((tmp_path / f"part{i}.npz", *load_partial(tmp_path / f"part{i}.npz")))
    save_partial(tmp_path / "merged.npz", *merge_partials(parts))
    direct = actgeom.probe(path, **{k: v for k, v in vars(options).items() if v is not None})
    merged = actgeom.probe(path, stats=tmp_path / "merged.npz", **{k: v for k, v in vars(options).items() if v is not None})
    a, b = direct.files()[0]["layers"][0], merged.files()[0]["layers"][0]
    assert a["probe"] == b["probe"]
    assert a["metrics"] == pytest.approx(b["metrics"], rel=1e-12)


def _sentences(rng, n_sequences: int, n_noise: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X, y, offsets) of token rows where a row-level split leaks: each sequence (15–44 tokens) has
    one label for all its tokens (half the sequences per class) and a signature only it has (unit k
    = 10 on sequence k), plus N(0, 1) noise. A fit that saw some tokens of a sequence knows the label
    of its other tokens; a fit on other sequences knows nothing of it (chance)."""
    lengths = rng.integers(15, 45, n_sequences)
    offsets = np.r_[0, np.cumsum(lengths)]
    sequence = np.repeat(np.arange(n_sequences), lengths)
    y = rng.permutation(np.arange(n_sequences) % 2)[sequence]
    signature = np.hstack([10.0 * np.eye(n_sequences)[sequence], np.zeros((sequence.size, n_noise))])
    return signature + rng.standard_normal(signature.shape), y, offsets


@pytest.mark.parametrize("seed", SEEDS)
def test_token_level_dumps_split_whole_sequences(tmp_path, seed):
    """The default split of a token-level dump is by sequence: no sequence has rows on both sides,
    and the probes equal the in-memory reference split the same way — not the leaking row split."""
    rng = np.random.default_rng(seed)
    X, y, offsets = _sentences(rng, 40)
    path = _token_dump(tmp_path, X, y, offsets, chunk_rows=int(rng.integers(7, 90)))
    with Dump(path) as dump:  # the keys themselves, as both passes compute them
        units = RowVectors(dump, ["sequence"]).read(0, X.shape[0])["sequence"]
    test = is_test(split_keys(units, seed), 0.2)
    sequence = np.repeat(np.arange(offsets.size - 1), np.diff(offsets))
    on_test = np.bincount(sequence, weights=test)
    assert np.all((on_test == 0) | (on_test == np.diff(offsets)))  # whole sequences on one side
    assert 0 < test.sum() < X.shape[0]
    np.testing.assert_array_equal(test, held_out(X.shape[0], seed, 0.2, keys_of=sequence_starts(offsets)))
    layer = run_family("probe", path, ProbeOptions(seed=seed), PassOptions(block_rows=int(rng.integers(5, 200))))["layers"][0]
    assert layer["probe"]["split_by"] == "sequence"
    assert (layer["probe"]["n_train"], layer["probe"]["n_test"]) == ((~test).sum(), test.sum())
    got = layer["metrics"]
    assert got["lda_accuracy"] == accuracy_score(y[test], predict(*lda(X[~test], y[~test], 0.1), X[test]))
    assert got["ridge_accuracy"] == accuracy_score(y[test], predict(*ridge(X[~test], y[~test], 0.1), X[test]))
    assert got["ncc_accuracy"] == accuracy_score(y[test], nearest_mean(X[~test], y[~test], X[test]))
    assert got["lda_accuracy"] < 0.75  # chance 0.5: nothing of a test sequence was seen
    rows = held_out(X.shape[0], seed, 0.2)  # the row split, explicitly: the data can show a leak
    leaked = run_family("probe", path, ProbeOptions(seed=seed, split_by="row"))["layers"][0]
    assert leaked["probe"]["split_by"] == "row"
    assert leaked["metrics"]["lda_accuracy"] == accuracy_score(y[rows], predict(*lda(X[~rows], y[~rows], 0.1), X[rows]))
    assert leaked["metrics"]["lda_accuracy"] > 0.9


def test_sequence_split_is_identical_across_chunkings_and_shards(tmp_path):
    """Row ranges cut inside sequences, saved and merged, and shard files with --row-offset give the
    same split (control buckets and validation rows included) as one pass."""
    from actgeom.core.state.partial import load_partial, merge_partials, provenance, save_partial

    rng = np.random.default_rng(8)
    X, y, offsets = _sentences(rng, 30)
    n = X.shape[0]
    path = _token_dump(tmp_path, X, y, offsets, chunk_rows=23)
    options = ProbeOptions(control="row", shrinkage="auto", seed=2)
    direct = run_family("probe", path, options, PassOptions(block_rows=41))["layers"][0]
    other = run_family("probe", path, options, PassOptions(block_rows=173))["layers"][0]
    assert other["probe"] == direct["probe"]  # the same split; the sums differ in their rounding only
    assert other["metrics"] == pytest.approx(direct["metrics"], rel=1e-12)
    parts = []
    cuts = [0, int(offsets[7]) + 5, int(offsets[19]) - 3, n]  # inside sequences 7 and 18
    with Dump(path) as dump:
        specs = probe_family.needs(options, facts_of(dump))
        for i, rows in enumerate(zip(cuts, cuts[1:])):
            pass_options = PassOptions(row_range=rows, block_rows=29)
            save_partial(tmp_path / f"part{i}.npz", accumulate(dump, specs=specs, options=pass_options),
                         provenance(dump, pass_options))
            parts.append((tmp_path / f"part{i}.npz", *load_partial(tmp_path / f"part{i}.npz")))
    save_partial(tmp_path / "merged.npz", *merge_partials(parts))
    keywords = {k: v for k, v in vars(options).items() if v is not None}
    whole = actgeom.probe(path, **keywords).files()[0]["layers"][0]
    merged = actgeom.probe(path, stats=tmp_path / "merged.npz", **keywords).files()[0]["layers"][0]
    assert whole["probe"] == merged["probe"] == direct["probe"]
    assert merged["metrics"] == pytest.approx(whole["metrics"], rel=1e-12)
    cut = int(offsets[12])  # shard files hold whole sequences, numbered from their own first row
    head = _token_dump(tmp_path, X[:cut], y[:cut], offsets[:13], name="head.h5")
    tail = _token_dump(tmp_path, X[cut:], y[cut:], offsets[12:] - cut, name="tail.h5")
    with Dump(head) as dump:
        first = accumulate(dump, specs=specs)["h"]
    with Dump(tail) as dump:
        first.merge(accumulate(dump, specs=specs, options=PassOptions(row_offset=cut))["h"])
    reference = _train_stats(path, options)
    sharded = first.get("split")
    assert sharded.n_test == reference.n_test and sharded.n_validation == reference.n_validation
    np.testing.assert_array_equal(sharded.train.counts, reference.train.counts)
    np.testing.assert_array_equal(sharded.groups.counts, reference.groups.counts)
    np.testing.assert_allclose(sharded.train.means, reference.train.means, rtol=STATS_RTOL)


def test_control_buckets_and_validation_rows_are_whole_sequences(tmp_path):
    """The row control task hashes the sequence (its tokens share a control class) and --shrinkage
    auto's validation rows (seed + 2) are whole sequences, as in the in-memory reference."""
    rng = np.random.default_rng(4)
    lengths = rng.integers(2, 12, size=300)
    offsets = np.r_[0, np.cumsum(lengths)]
    n = int(offsets[-1])
    y = np.repeat(rng.integers(0, 3, lengths.size), lengths)
    X = rng.standard_normal((n, 5)) + 1.2 * np.eye(5)[y]
    path = _token_dump(tmp_path, X, y, offsets)
    starts = sequence_starts(offsets)
    test = held_out(n, 0, 0.2, keys_of=starts)
    validation = held_out(n, 2, 0.25, keys_of=starts) & ~test
    control = control_labels(row_buckets(n, 0, keys_of=starts), y[~test], 0, "row")
    expected = accuracy_score(control[test], predict(*lda(X[~test], control[~test], 0.1), X[test]))
    layer = run_family("probe", path, ProbeOptions(control="row"), PassOptions(block_rows=57))["layers"][0]
    assert layer["metrics"]["control_accuracy"] == expected
    auto = run_family("probe", path, ProbeOptions(shrinkage="auto"), PassOptions(block_rows=57))["layers"][0]
    assert auto["probe"]["n_validation"] == validation.sum()


@pytest.mark.parametrize("split_by", ["auto", "row"])
def test_tokens_last_probes_the_last_row_of_each_sequence(tmp_path, split_by):
    """--tokens last: the split keys are those of the selected rows' units in both passes — their
    sequence (by default on a token-level dump), or their global row number."""
    rng = np.random.default_rng(11)
    lengths = rng.integers(1, 9, size=400)
    offsets = np.r_[0, np.cumsum(lengths)]
    n = int(offsets[-1])
    y = rng.integers(0, 3, n)
    X = rng.standard_normal((n, 4)) + 1.5 * np.eye(4)[y]
    path = _token_dump(tmp_path, X, y, offsets)
    last = offsets[1:] - 1
    test = held_out(n, 0, 0.2, keys_of=sequence_starts(offsets) if split_by == "auto" else None)[last]
    rows, labels = X[last], y[last]
    expected = predict(*lda(rows[~test], labels[~test], 0.1), rows[test])
    layer = run_family("probe", path, ProbeOptions(split_by=split_by), PassOptions(tokens="last", block_rows=53))["layers"][0]
    assert (layer["probe"]["n_train"], layer["probe"]["n_test"]) == ((~test).sum(), test.sum())
    assert layer["metrics"]["lda_accuracy"] == accuracy_score(labels[test], expected)


def test_split_by_sample_id_follows_the_rows_when_they_are_reordered(tmp_path):
    rng = np.random.default_rng(7)
    X, y = class_data(rng, [200, 150, 100], 4)
    ids = rng.permutation(10 * X.shape[0])[: X.shape[0]] - 2000  # arbitrary ids, some negative
    order = rng.permutation(X.shape[0])
    a = _dump(tmp_path, X, y, name="a.h5", sample_id=ids)
    b = _dump(tmp_path, X[order], y[order], name="b.h5", sample_id=ids[order])
    options = ProbeOptions(split_by="sample_id", seed=3)
    test = held_out(X.shape[0], 3, 0.2, keys_of=ids)
    assert _train_stats(a, options).n_test == test.sum()
    np.testing.assert_allclose(_train_stats(a, options).train.means, _train_stats(b, options).train.means, rtol=STATS_RTOL)
    assert _metrics(a, options) == pytest.approx(_metrics(b, options), abs=1e-15)
    classes, W, bias = lda(X[~test], y[~test], 0.1)
    assert _metrics(a, options)["lda_accuracy"] == accuracy_score(y[test], predict(classes, W, bias, X[test]))


@pytest.mark.parametrize("seed", SEEDS)
def test_test_rows_never_enter_the_fit(tmp_path, seed):
    """Train rows are noise with random labels; each test row also carries its label, one-hot ×50,
    in units that are 0 in every train row. A fit that saw the test rows would read those units
    and score ≈ 1; a fit on the train rows has nothing there and must stay at chance."""
    rng = np.random.default_rng(seed)
    n, d, n_classes = 2000, 8, 4
    test = held_out(n, seed, 0.2)
    y = rng.integers(0, n_classes, n)
    X = np.hstack([rng.standard_normal((n, d)), np.zeros((n, n_classes))])
    X[np.flatnonzero(test), d + y[test]] = 50.0  # memorisable: the label is written into the test rows
    path = _dump(tmp_path, X, y)
    got = _metrics(path, ProbeOptions(seed=seed))
    leaked = predict(*lda(X, y, 0.1), X[test])  # what a leaking fit would score: the test could fail
    assert accuracy_score(y[test], leaked) > 0.9
    for name in ("lda_accuracy", "ridge_accuracy", "ncc_accuracy"):
        assert got[name] < 0.35, (name, got[name])  # chance 0.25; ~400 test rows: sd ≈ 0.022


@pytest.mark.parametrize("mode", ["token", "row"])
@pytest.mark.parametrize("seed", SEEDS)
def test_control_task(tmp_path, seed, mode):
    rng = np.random.default_rng(seed)
    n = 1500
    tokens = rng.integers(0, 60, n)
    y = tokens % 3  # the word class is a function of the token, as in part-of-speech tagging
    X = 0.8 * rng.standard_normal((60, 5))[tokens] + rng.standard_normal((n, 5)) + np.eye(5)[y] * 1.5
    path = _dump(tmp_path, X, y, token_id=tokens, chunk_rows=int(rng.integers(7, 90)))
    test = held_out(n, seed, 0.2)
    groups = tokens if mode == "token" else row_buckets(n, seed)
    control = control_labels(groups, y[~test], seed, mode)
    classes, W, b = lda(X[~test], control[~test], 0.1)
    expected = accuracy_score(control[test], predict(classes, W, b, X[test]))
    got = _metrics(path, ProbeOptions(seed=seed, control=mode), PassOptions(block_rows=int(rng.integers(5, 200))))
    assert got["control_accuracy"] == expected
    assert got["selectivity"] == got["lda_accuracy"] - expected
    frequencies = np.bincount(control[~test], minlength=3) / (~test).sum()
    assert np.abs(frequencies - np.bincount(y[~test]) / (~test).sum()).max() < 0.15  # classes keep their shares


def _rotation(d: int, angle: float) -> np.ndarray:
    """A rotation by ``angle`` in the plane of units 0 and 1."""
    Q = np.eye(d)
    Q[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    return Q


@pytest.mark.parametrize("seed", SEEDS)
def test_planted_direction(tmp_path, seed):
    rng = np.random.default_rng(seed)
    d, n = 6, 2000
    v = np.eye(d)[0]
    y = rng.integers(0, 2, n)
    X = rng.standard_normal((n, d)) + 5.0 * y[:, None] * v + 1e3
    Q = _rotation(d, 0.7)
    base = write_dump(tmp_path / "base.h5", {"h": X, "h2": X @ Q.T}, labels=y, chunk_rows=61)
    tuned = write_dump(tmp_path / "tuned.h5", {"h": X @ Q.T, "h2": X}, labels=y, chunk_rows=53)
    result = actgeom.probe([base, tuned], seed=seed, details=True).to_dict()
    layer = result["files"][0]["layers"][0]
    direction = np.array(layer["details"]["direction"])
    assert direction @ v / np.linalg.norm(direction) > DIRECTION_COS
    test = held_out(n, seed, 0.2)
    train, ytrain = X[~test], y[~test]
    expected = train[ytrain == 1].mean(axis=0) - train[ytrain == 0].mean(axis=0)
    np.testing.assert_allclose(direction, expected, rtol=0, atol=FORMULA_RTOL * 5)
    assert layer["metrics"]["direction_norm"] == pytest.approx(np.linalg.norm(expected), rel=FORMULA_RTOL)
    dev = train - np.where(ytrain[:, None] == 1, train[ytrain == 1].mean(axis=0), train[ytrain == 0].mean(axis=0))
    assert layer["metrics"]["fisher_ratio"] == pytest.approx(expected @ expected / (np.trace(dev.T @ dev) / dev.shape[0]),
                                                             rel=FORMULA_RTOL)
    rotated = expected @ Q @ expected / (expected @ expected)  # cos between Δμ and QΔμ: the rotation's effect
    across = {entry["layer"]: entry["cosine"] for entry in result["direction_cosines_across_files"]}
    assert across["h"] == pytest.approx(rotated, abs=1e-12) and across["h2"] == pytest.approx(rotated, abs=1e-12)
    consecutive = result["files"][0]["direction_cosines"]
    assert consecutive[0]["layers"] == ["h", "h2"] and consecutive[0]["cosine"] == pytest.approx(rotated, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("counts", [[150, 110], [150, 100, 80]], ids=["two", "three"])
def test_declared_invariances_hold(tmp_path, seed, counts):
    """Every probe metric keeps its value under each transformation of the rows it declares
    (tests/test_registry.py checks the default families; probe is not among them)."""
    rng = np.random.default_rng(seed)
    X, y = class_data(rng, counts, 5, separation=0.6)
    transforms = {"scale": lambda Z: 3.7 * Z, "rotation": lambda Z: Z @ np.linalg.qr(rng.standard_normal((5, 5)))[0],
                  "shift": lambda Z: Z + 25.0 * rng.standard_normal(5),
                  "affine": lambda Z: Z @ (rng.standard_normal((5, 5)) + 2 * np.eye(5)) + 5.0}
    options = ProbeOptions(seed=seed, control="row")
    base = _metrics(_dump(tmp_path, X, y, name="base.h5"), options)
    checked = 0
    for kind, transform in transforms.items():
        got = _metrics(_dump(tmp_path, transform(X), y, name=f"{kind}.h5"), options)
        for name, metric in REGISTRY.items():
            if kind in metric.invariant and name in base:
                assert got[name] == pytest.approx(base[name], rel=1e-9, abs=1e-12), (name, kind)
                checked += 1
    assert checked >= 30 if len(counts) == 2 else checked >= 25


def test_a_false_invariance_would_be_caught(tmp_path):
    """The check above can fail: an affine map changes the shrunk LDA's accuracy, which does not declare it."""
    rng = np.random.default_rng(0)
    X, y = class_data(rng, [150, 100, 80], 5, separation=0.6)
    A = np.diag([1.0, 1.0, 1.0, 1.0, 30.0])  # stretches one unit: the isotropic shrinkage target is not moved along
    options = ProbeOptions(shrinkage=0.9)
    a = _metrics(_dump(tmp_path, X, y, name="a.h5"), options)["lda_accuracy"]
    b = _metrics(_dump(tmp_path, X @ A, y, name="b.h5"), options)["lda_accuracy"]
    assert "affine" not in REGISTRY["lda_accuracy"].invariant and a != b


def test_statistics_in_memory_give_directions_but_no_scores():
    rng = np.random.default_rng(0)
    X, y = class_data(rng, [100, 100], 3)
    stats = actgeom.Statistics({"h": 3}, families=("probe",))
    stats.update({"h": X}, labels=y)
    layer = stats.metrics().to_dict()["files"][0]["layers"][0]
    assert "fisher_ratio" in layer["metrics"] and "chance" in layer["metrics"]
    assert "second pass" in layer["unavailable"]["lda_accuracy"]


@pytest.mark.parametrize("option, message", [
    ({"split_by": "sample_id"}, "--split-by sample_id needs /rows/sample_id; rows fed from memory have none"),
    ({"control": "token"}, "--control token needs /rows/token_id; rows fed from memory have none"),
    ({"split_by": "sequence"}, "--split-by sequence needs sequence offsets; rows fed from memory have none"),
])
def test_statistics_in_memory_refuse_what_needs_row_vectors(option, message):
    stats = actgeom.Statistics({"h": 2}, families=("probe",), options={"probe": option})
    with pytest.raises(actgeom.InvalidInputError, match=message):
        stats.update({"h": np.eye(2)}, labels=[0, 1])


def test_negative_token_ids_are_refused(cli, tmp_path):
    X, y = class_data(np.random.default_rng(0), [30, 30], 3)
    path = _dump(tmp_path, X, y, token_id=np.arange(60) - 1)
    code, _, err = cli("probe", path, "--control", "token", "--test-fraction", "0")
    assert code == 3 and err == "Error: token id -1 in /rows/token_id: --control token needs ids ≥ 0\n"


def test_directions_only_with_test_fraction_zero(tmp_path):
    rng = np.random.default_rng(1)
    X, y = class_data(rng, [100, 100], 3)
    path = _dump(tmp_path, X, y)
    layer = run_family("probe", path, ProbeOptions(test_fraction=0.0))["layers"][0]
    assert layer["probe"]["n_test"] == 0 and layer["probe"]["n_train"] == 200
    assert layer["unavailable"]["lda_accuracy"] == "no test rows (--test-fraction 0.0)"
    expected = X[y == 1].mean(axis=0) - X[y == 0].mean(axis=0)
    assert layer["metrics"]["direction_norm"] == pytest.approx(np.linalg.norm(expected), rel=1e-12)


def test_one_class_makes_every_metric_unavailable(tmp_path):
    X = np.random.default_rng(2).standard_normal((50, 3))
    layer = run_family("probe", _dump(tmp_path, X, np.zeros(50, dtype=int)))["layers"][0]
    assert layer["metrics"] == {}
    assert layer["unavailable"]["lda_accuracy"] == "1 class(es) with train rows; probes need 2"


# -- the command --------------------------------------------------------------------------------

def test_cli_saves_directions_and_reports_cosines(cli, tmp_path):
    rng = np.random.default_rng(3)
    X, y = class_data(rng, [120, 80], 4)
    base = _dump(tmp_path, X, y, name="base.h5")
    tuned = _dump(tmp_path, -X, y, name="tuned.h5")
    saved = tmp_path / "dirs.npz"
    document = cli.json("probe", base, tuned, "--positive", "1", "--negative", "0", "--save-directions", saved)
    assert document["direction_cosines_across_files"][0]["cosine"] == pytest.approx(-1.0, abs=1e-12)
    assert "details" not in document["files"][0]["layers"][0]
    with np.load(saved) as arrays:
        assert sorted(arrays) == ["0/h", "1/h"]
        np.testing.assert_allclose(arrays["0/h"], -arrays["1/h"], rtol=1e-12)
    code, out, _ = cli("probe", base, tuned, "--format", "table")
    assert code == 0 and "direction cosine h" in out


def test_cli_label_names(cli, tmp_path):
    from actgeom.core.dump import DumpWriter

    rng = np.random.default_rng(4)
    X, y = class_data(rng, [60, 60, 60], 3)
    path = tmp_path / "named.h5"
    with DumpWriter(path, layers={"h": 3}, dtype="float64", label_names=["cat", "dog", "eel"]) as writer:
        writer.append({"h": X}, labels=y)
    layer = cli.json("probe", path, "--positive", "eel", "--negative", "cat")["files"][0]["layers"][0]
    assert (layer["probe"]["positive"], layer["probe"]["negative"]) == (2, 0)
    code, _, err = cli("probe", path, "--positive", "emu", "--negative", "cat")
    assert code == 2 and err == "Error: --positive 'emu' is not a class index or label name; label names: cat, dog, eel\n"


@pytest.mark.parametrize("args, code, message", [
    (["--test-fraction", "1"], 2, "Error: --test-fraction '1.0' must be in [0, 1)\n"),
    (["--shrinkage", "1.5"], 2, "Error: --shrinkage '1.5' must be a number in [0, 1] or auto\n"),
    (["--shrinkage", "big"], 2, "Error: --shrinkage 'big' must be a number in [0, 1] or auto\n"),
    (["--ridge-lambda", "-1"], 2, "Error: --ridge-lambda '-1.0' must be ≥ 0\n"),
    (["--split-by", "token"], 2, "Error: Invalid value for '--split-by': 'token' is not one of 'auto', 'row', "
                                 "'sequence', 'sample_id'. (see actgeom probe --help)\n"),
    (["--control", "yes"], 2, "Error: Invalid value for '--control': 'yes' is not one of 'token', 'row'. "
                              "(see actgeom probe --help)\n"),
    (["--positive", "1"], 2, "Error: --positive '1' needs its pair (--positive and --negative)\n"),
    (["--positive", "1", "--negative", "1"], 2, "Error: --negative '1' must differ from --positive\n"),
    (["--positive", "-1", "--negative", "1"], 2,
     "Error: --positive '-1' is not a class index or label name (the dump has no label names)\n"),
    (["--positive", "x", "--negative", "1"], 2,
     "Error: --positive 'x' is not a class index or label name (the dump has no label names)\n"),
    (["--control", "token"], 3, "Error: this analysis needs /rows/token_id in {path}, which has none\n"),
    (["--split-by", "sample_id"], 3, "Error: this analysis needs /rows/sample_id in {path}, which has none\n"),
    (["--split-by", "sequence"], 3, "Error: --split-by sequence needs sequence offsets (/sequences/offsets, or "
                                    "--offsets) in {path}, which has none\n"),
])
def test_cli_errors(cli, tmp_path, args, code, message):
    rng = np.random.default_rng(0)
    X, y = class_data(rng, [30, 30], 3)
    path = _dump(tmp_path, X, y)
    got, out, err = cli("probe", path, *args)
    assert (got, err) == (code, message.format(path=path)) and out == ""


def test_cli_records_the_unit_of_the_split(cli, tmp_path):
    """--split-by is in --help; the unit auto resolves to (sequence on a token-level dump, row on a
    sample-level one) is in each layer's probe block and the table's summary."""
    code, out, _ = cli("probe", "--help")
    assert code == 0 and "--split-by" in out and "sequence" in out
    rng = np.random.default_rng(6)
    X, y, offsets = _sentences(rng, 12)
    tokens = _token_dump(tmp_path, X, y, offsets)
    rows = _dump(tmp_path, X, y, name="rows.h5")
    document = cli.json("probe", tokens, rows)
    assert document["options"]["probe"]["split_by"] == "auto"
    assert [file["layers"][0]["probe"]["split_by"] for file in document["files"]] == ["sequence", "row"]
    code, out, _ = cli("probe", tokens, "--format", "md")
    assert code == 0 and "split by" in out and "sequence" in out


def test_a_token_level_dump_without_offsets_says_it_is_split_by_row(tmp_path):
    rng = np.random.default_rng(6)
    X, y = class_data(rng, [60, 60], 3)
    path = tmp_path / "tok.h5"
    with DumpWriter(path, layers={"h": 3}, dtype="float64", level="token") as writer:
        writer.append({"h": X}, labels=y)
    layer = run_family("probe", path)["layers"][0]
    assert layer["probe"]["split_by"] == "row"
    assert layer["notes"] == ["a token-level dump without sequence offsets is split by row: tokens of one sequence "
                              "may be on both sides of the split (give --offsets, or --split-by sample_id)"]
    assert run_family("probe", path, ProbeOptions(split_by="row"))["layers"][0]["notes"] == []  # chosen: no note


def test_cli_refuses_to_save_directions_over_an_input(cli, tmp_path):
    rng = np.random.default_rng(0)
    X, y = class_data(rng, [30, 30], 3)
    path = _dump(tmp_path, X, y)
    before = open(path, "rb").read()
    code, _, err = cli("probe", path, "--save-directions", path)
    assert code == 2 and err == (f"Error: --save-directions {path} is the input {path}; refusing to overwrite an input "
                                 "(choose another output path)\n")
    assert open(path, "rb").read() == before


def test_json_is_strict(cli, tmp_path):
    rng = np.random.default_rng(0)
    X, y = class_data(rng, [30, 30, 30], 3)
    code, out, _ = cli("probe", _dump(tmp_path, X, y), "--format", "json")
    assert code == 0 and json.loads(out)["files"][0]["layers"][0]["unavailable"]["direction_norm"].startswith("the direction")
