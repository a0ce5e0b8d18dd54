"""neurons: planted units, streamed scores vs the in-memory reference, exact higher moments,
exact merges, invariances, the command and its errors."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from conftest import run_family, write_dump
from reference_neurons import neurons_reference, vae_kl_reference

import actgeom
from actgeom.core.analysis import facts_of, specs_for
from actgeom.core.dump import Dump, DumpWriter
from actgeom.core.metrics.neurons import REGISTRY, NeuronsOptions, top_k
from actgeom.core.metrics.unitstats import ExpSums, GroupSums, UnitMoments
from actgeom.core.state.engine import PassOptions, accumulate
from actgeom.core.state.partial import load_partial, merge_partials, provenance, save_partial

# Streamed (blocks, Pébay merges, shifted group sums) vs two-pass fsum references: both float64,
# agreeing to ~1e-13 relative; 1e-8 is the acceptance bar.
SCORE_RTOL = 1e-8
# Scores that are 0 up to rounding (a skewness of symmetric data, η² of a position-free unit)
# differ by a few ulps of their O(1) ingredients, not relative to themselves.
SCORE_ATOL = 1e-12
# The naive kurtosis from raw power sums under a +1e3 offset loses ~12 of float64's 16 digits
# of Σx⁴ (x⁴ ~ 1e12, spread ~1): its error is far above this, ours far below.
RAW_MOMENTS_FAIL = 1e-6
UNIT_SCORES = ("mean", "std", "min", "max", "skewness", "kurtosis", "firing_rate", "dormant_score",
               "class_selectivity", "probeless_score", "token_concentration", "position_eta2")


def _planted(rng, n_rows=1200, n_units=8, vocab=50, n_classes=5, seq_len=40):
    """A ReLU-like layer with planted units (0: fires only on token 17, 1: equals the position,
    2: dead, 3: fires only on class 3) and a VAE whose latent 2 is collapsed."""
    tokens = rng.integers(0, vocab, n_rows)
    tokens[:5] = 17
    positions = np.tile(np.arange(seq_len), n_rows // seq_len)
    labels = rng.integers(0, n_classes, n_rows)
    X = np.maximum(rng.standard_normal((n_rows, n_units)), 0.0)
    X[:, 0] = np.where(tokens == 17, 1.0 + rng.random(n_rows), 0.0)
    X[:, 1] = positions
    X[:, 2] = 0.0
    X[:, 3] = np.where(labels == 3, 2.0 + rng.random(n_rows), 0.0)
    mu = rng.standard_normal((n_rows, 4))
    logvar = -2.0 + 0.3 * rng.standard_normal((n_rows, 4))
    mu[:, 2] = 0.01 * rng.standard_normal(n_rows)  # the posterior is the prior: KL ≈ 1e-4 nats, Var ≈ 1e-4
    logvar[:, 2] = 0.01 * rng.standard_normal(n_rows)
    return {"h": X, "z_mu": mu, "z_logvar": logvar}, labels, tokens, positions


def _layers(record: dict) -> dict:
    return {layer["layer"]: layer for layer in record["layers"]}


def _where(flags) -> set[int]:
    return {i for i, flag in enumerate(flags) if flag}


def test_planted_units_are_found(tmp_path, rng):
    layers, labels, tokens, positions = _planted(rng)
    path = write_dump(tmp_path / "d.h5", layers, labels=labels, token_id=tokens, position=positions, chunk_rows=97)
    options = NeuronsOptions(threshold=0.0, mu="z_mu", logvar="z_logvar")
    found = _layers(run_family("neurons", path, options, PassOptions(block_rows=131)))
    h, units = found["h"], found["h"]["neurons"]["units"]
    assert _where(units["dead"]) == {2}
    tc = np.array(units["token_concentration"], dtype=float)
    assert _where(tc >= options.cutoff) == {0} and tc[0] == 1.0
    assert units["top_tokens"][0][0] == 17 and units["top_token_shares"][0][0] == 1.0
    eta = np.array(units["position_eta2"], dtype=float)
    assert _where(eta >= options.cutoff) == {1} and eta[1] == pytest.approx(1.0, rel=1e-12)
    si = np.array(units["class_selectivity"], dtype=float)
    assert _where(si >= options.cutoff) == {3} and si[3] == 1.0 and units["top_classes"][3][0] == 3
    assert np.isnan(si[2])  # a dead unit has no selectivity (0/0)
    m = h["metrics"]
    assert m["dead_unit_fraction"] == m["token_detector_fraction"] == m["positional_unit_fraction"] == 1 / 8
    assert m["selective_unit_fraction"] == 1 / 8
    z = found["z_mu"]
    assert _where(z["neurons"]["units"]["vae_collapsed"]) == {2}
    assert _where(z["neurons"]["units"]["vae_active"]) == {0, 1, 3}
    assert z["metrics"]["vae_collapsed_fraction"] == 0.25 and z["metrics"]["vae_active_units"] == 3
    np.testing.assert_allclose(z["neurons"]["units"]["vae_kl"], vae_kl_reference(layers["z_mu"], layers["z_logvar"]),
                               rtol=SCORE_RTOL)
    assert z["metrics"]["vae_kl_total"] == pytest.approx(vae_kl_reference(layers["z_mu"], layers["z_logvar"]).sum(),
                                                         rel=SCORE_RTOL)
    assert "vae_active_units" in h["unavailable"] and "not the VAE" in h["unavailable"]["vae_active_units"]


def test_positions_from_sequence_offsets_equal_the_position_vector(tmp_path, rng):
    layers, labels, tokens, positions = _planted(rng)
    with_vector = write_dump(tmp_path / "a.h5", {"h": layers["h"]}, position=positions)
    offsets_only = tmp_path / "b.h5"
    with DumpWriter(offsets_only, layers={"h": 8}, dtype="float64") as writer:
        writer.append({"h": layers["h"]})
        writer.set_offsets(np.arange(0, layers["h"].shape[0] + 1, 40))
    options = NeuronsOptions(threshold=0.0, max_position=25)  # pools positions 25..39
    a = run_family("neurons", with_vector, options, PassOptions(block_rows=77))["layers"][0]["neurons"]["units"]
    b = run_family("neurons", offsets_only, options, PassOptions(block_rows=50))["layers"][0]["neurons"]["units"]
    np.testing.assert_allclose(a["position_eta2"], b["position_eta2"], rtol=SCORE_RTOL)
    expected = neurons_reference(layers["h"], positions=positions, max_position=25)["position_eta2"]
    np.testing.assert_allclose(a["position_eta2"], expected, rtol=SCORE_RTOL, atol=SCORE_ATOL)
    assert a["position_eta2"][1] < 1.0  # pooled positions no longer explain the unit fully


@pytest.mark.parametrize("dtype, offset, seed", [("float64", 0.0, 0), ("float16", 0.0, 1), ("float64", 1e3, 2),
                                                 ("float16", 1e3, 3)])
def test_streamed_scores_match_the_in_memory_reference(tmp_path, dtype, offset, seed):
    rng = np.random.default_rng(seed)
    n_rows, n_units = int(rng.integers(700, 1100)), 7
    X = offset + np.maximum(rng.standard_normal((n_rows, n_units)) * rng.uniform(0.5, 3, n_units), 0.0)
    X[:, 4] = rng.exponential(2.0, n_rows) ** 2 + offset  # heavy-tailed
    labels = rng.integers(-1, 4, n_rows)  # -1: unlabelled rows count for moments, not for class means
    tokens = rng.integers(0, 30, n_rows)
    positions = rng.integers(0, 60, n_rows)
    path = write_dump(tmp_path / "d.h5", {"h": X}, dtype=dtype, labels=labels, token_id=tokens, position=positions,
                      chunk_rows=int(rng.integers(16, 200)), batch=int(rng.integers(50, 400)))
    with Dump(path) as dump:
        stored = dump.read_rows("h").astype(np.float64)  # the float16-decoded values are the data
    threshold = offset + 0.5
    options = NeuronsOptions(threshold=threshold, max_position=45, score="probeless_score", top=3)
    layer = run_family("neurons", path, options, PassOptions(block_rows=int(rng.integers(20, 300))))["layers"][0]
    units = layer["neurons"]["units"]
    expected = neurons_reference(stored, labels=labels, token_ids=tokens, positions=positions, threshold=threshold,
                                 max_position=45)
    for name in UNIT_SCORES:
        np.testing.assert_allclose(np.array(units[name], dtype=float), expected[name], rtol=SCORE_RTOL,
                                   atol=SCORE_ATOL, err_msg=name)
    m = layer["metrics"]
    assert m["dormant_unit_fraction"] == np.mean(expected["dormant_score"] <= options.tau)
    assert m["dead_unit_fraction"] == np.mean(expected["firing_rate"] == 0)
    assert m["token_detector_fraction"] == np.mean(expected["token_concentration"] >= options.cutoff)
    assert m["mean_excess_kurtosis"] == pytest.approx(np.mean(expected["kurtosis"]), rel=SCORE_RTOL)
    ranked = np.argsort(-expected["probeless_score"], kind="stable")[:3]
    assert [entry["unit"] for entry in layer["neurons"]["top_units"]] == ranked.tolist()


def _raw_moment_kurtosis(x: np.ndarray) -> float:
    """The naive streamed kurtosis: raw power sums Σx^k, expanded about the mean at the end."""
    n = x.size
    s1, s2, s3, s4 = (np.sum(x**k) / n for k in (1, 2, 3, 4))
    m2 = s2 - s1**2
    m4 = s4 - 4 * s1 * s3 + 6 * s1**2 * s2 - 3 * s1**4
    return m4 / m2**2 - 3


def test_kurtosis_is_exact_under_offsets_where_raw_moments_fail(tmp_path):
    rng = np.random.default_rng(7)
    X = np.column_stack([rng.standard_normal(2000), rng.exponential(1.0, 2000), rng.uniform(-1, 1, 2000)])
    closed = [0.0, 6.0, -1.2]  # normal, exponential, uniform: the data's kurtosis is near these
    results = {}
    for offset in (0.0, 1e3):
        path = write_dump(tmp_path / f"d{offset}.h5", {"h": X + offset}, chunk_rows=61)
        units = run_family("neurons", path, NeuronsOptions(threshold=0.0), PassOptions(block_rows=173))["layers"][0]
        results[offset] = units["neurons"]["units"]
    reference = neurons_reference(X)
    for name in ("skewness", "kurtosis", "std"):
        np.testing.assert_allclose(results[1e3][name], reference[name], rtol=SCORE_RTOL, err_msg=name)
        np.testing.assert_allclose(results[1e3][name], results[0.0][name], rtol=SCORE_RTOL, err_msg=name)
    np.testing.assert_allclose(results[0.0]["kurtosis"], closed, atol=0.6)  # sampling error of 2000 rows
    naive = np.array([_raw_moment_kurtosis(X[:, u] + 1e3) for u in range(3)])
    assert np.max(np.abs(naive - reference["kurtosis"]) / np.abs(reference["kurtosis"])) > RAW_MOMENTS_FAIL


def test_accumulators_merge_exactly_in_any_split(rng):
    X = 50.0 + rng.standard_normal((500, 5)) * [1, 2, 3, 0.1, 10]
    groups = rng.integers(0, 9, 500)
    cuts = np.sort(rng.choice(np.arange(1, 500), 4, replace=False))
    parts = np.split(np.arange(500), cuts)
    whole_m, whole_g, whole_e = UnitMoments(5), GroupSums(5, shifted=True), ExpSums(5)
    whole_m.update(X)
    whole_g.update(X, groups, "group", "test")
    whole_e.update(X - 50)
    merged_m, merged_g, merged_e = UnitMoments(5), GroupSums(5, shifted=True), ExpSums(5)
    for part in reversed(parts):  # merged in another order than the rows
        m, g, e = UnitMoments(5), GroupSums(5, shifted=True), ExpSums(5)
        m.update(X[part])
        g.update(X[part], groups[part], "group", "test")
        e.update(X[part] - 50)
        merged_m.merge(UnitMoments.from_arrays(m.to_arrays()))
        merged_g.merge(GroupSums.from_arrays(g.to_arrays()))
        merged_e.merge(ExpSums.from_arrays(e.to_arrays()))
    for name in UnitMoments.FIELDS:
        np.testing.assert_allclose(getattr(merged_m, name), getattr(whole_m, name), rtol=1e-10, atol=1e-9, err_msg=name)
    np.testing.assert_array_equal(merged_g.means()[0], whole_g.means()[0])
    np.testing.assert_allclose(merged_g.means()[1], whole_g.means()[1], rtol=1e-12)
    np.testing.assert_allclose(merged_e.log_mean(500), np.log(np.exp(X - 50).mean(axis=0)), rtol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_declared_invariances_hold(tmp_path, seed):
    rng = np.random.default_rng(seed)
    layers, labels, tokens, positions = _planted(rng, n_rows=400)
    options = NeuronsOptions(threshold=0.0, mu="z_mu", logvar="z_logvar")

    def metrics(transform):
        moved = {name: transform(X) for name, X in layers.items()}
        path = write_dump(tmp_path / f"{transform.__name__}.h5", moved, labels=labels, token_id=tokens,
                          position=positions)
        return {layer["layer"]: layer["metrics"] for layer in run_family("neurons", path, options)["layers"]}

    def same(X):
        return X

    def scaled(X):
        return 2.5 * X

    def shifted(X):
        return X + 3.0

    base = metrics(same)
    for invariance, transform in (("scale", scaled), ("shift", shifted)):
        moved = metrics(transform)
        for layer, values in base.items():
            for name, value in values.items():
                if invariance in REGISTRY[name].invariant:
                    assert moved[layer][name] == pytest.approx(value, rel=1e-9), (invariance, layer, name)


def test_command_ranks_units_and_writes_every_unit_in_json(cli, tmp_path, rng):
    layers, labels, tokens, positions = _planted(rng)
    path = write_dump(tmp_path / "d.h5", layers, labels=labels, token_id=tokens, position=positions)
    code, out, err = cli("neurons", path, "--layers", "h", "--threshold", "0", "--score", "token_concentration",
                         "--top", "2", "--format", "table")
    assert code == 0, err
    first = next(line for line in out.splitlines() if line.startswith("h "))
    assert first.split("│")[1].strip() == "1" and first.split("│")[2].strip() == "0" and "17:1" in first
    document = cli.json("neurons", path, "--threshold", "0", "--mu", "z_mu", "--logvar", "z_logvar", "--layers", "h")
    found = {layer["layer"]: layer for layer in document["files"][0]["layers"]}
    assert set(found) == {"h", "z_mu", "z_logvar"}  # --mu and --logvar layers are read too
    assert len(found["h"]["neurons"]["units"]["kurtosis"]) == 8
    assert found["z_mu"]["metrics"]["vae_collapsed_fraction"] == 0.25
    assert json.dumps(document)  # strict JSON: NaN scores are null


def test_python_api_matches_the_command(tmp_path, rng):
    layers, labels, tokens, positions = _planted(rng)
    path = write_dump(tmp_path / "d.h5", layers, labels=labels, token_id=tokens, position=positions)
    result = actgeom.neurons(path, layers="h", threshold=0.0, score="class_selectivity", top=1)
    assert result.metric("selective_unit_fraction") == 1 / 8
    assert result.to_dict()["files"][0]["layers"][0]["neurons"]["top_units"][0]["unit"] == 3
    pd = pytest.importorskip("pandas", reason="pandas is in the test extra; CI installs it")
    frame = pd.DataFrame(result.to_dict()["files"][0]["layers"][0]["neurons"]["units"])
    assert frame.shape[0] == 8 and frame.loc[frame["class_selectivity"].idxmax(), "unit"] == 3


@pytest.mark.parametrize("args, code, message", [
    (["--score", "bogus"], 2, "Error: --score 'bogus' is not one of kurtosis, skewness"),
    (["--top", "0"], 2, "Error: --top '0' must be ≥ 1"),
    (["--logvar", "z_logvar"], 2, "Error: --logvar 'z_logvar' needs --mu"),
    (["--mu", "nope"], 3, "Error: no dataset matches --layers 'nope'"),
    (["--cutoff", "2"], 2, "Error: --cutoff '2.0' must be in (0, 1]"),
])
def test_command_errors_name_the_option(cli, tmp_path, rng, args, code, message):
    layers, labels, tokens, positions = _planted(rng, n_rows=80)
    path = write_dump(tmp_path / "d.h5", layers, labels=labels)
    got, _, err = cli("neurons", path, "--layers", "h", *args)
    assert got == code and err.startswith(message), err
    assert "Traceback" not in err


def test_mu_must_be_a_selected_layer_and_token_ids_non_negative(cli, tmp_path, rng):
    layers, labels, tokens, positions = _planted(rng, n_rows=80)
    path = write_dump(tmp_path / "d.h5", {"h": layers["h"]}, labels=labels, token_id=tokens)
    with pytest.raises(actgeom.OptionError, match="mu='zz' is not a layer of this analysis; layers: h"):
        actgeom.neurons(path, threshold=0.0, mu="zz")
    with h5py.File(path, "r+") as f:
        f["rows/token_id"][3] = -4
    code, _, err = cli("neurons", path, "--threshold", "0")
    assert code == 3 and err == "Error: /rows/token_id holds token id -4; token ids are indices ≥ 0\n"


def test_without_threshold_a_smooth_layer_reports_why(tmp_path, rng):
    path = write_dump(tmp_path / "d.h5", {"h": rng.standard_normal((50, 3))})
    layer = run_family("neurons", path, NeuronsOptions())["layers"][0]
    assert "give --threshold" in layer["unavailable"]["dead_unit_fraction"]
    assert "firing_rate" not in layer["neurons"]["units"]
    assert layer["unavailable"]["selective_unit_fraction"] == "needs labels (--labels)"


def test_shard_statistics_merge_to_the_whole(tmp_path, rng):
    """Two row ranges accumulated apart, saved, loaded and merged give the one-pass scores."""
    layers, labels, tokens, positions = _planted(rng)
    path = write_dump(tmp_path / "d.h5", layers, labels=labels, token_id=tokens, position=positions)
    options = NeuronsOptions(threshold=0.0, mu="z_mu", logvar="z_logvar")
    with Dump(path) as dump:
        specs = specs_for({"neurons": options}, facts_of(dump))
        for i, rows in enumerate(((0, 555), (555, 1200))):
            pass_options = PassOptions(row_range=rows, block_rows=90)
            part = accumulate(dump, specs=specs, options=pass_options)
            save_partial(tmp_path / f"p{i}.npz", part, provenance(dump, pass_options))
    merged, meta = merge_partials([(p, *load_partial(p)) for p in (tmp_path / "p1.npz", tmp_path / "p0.npz")])
    save_partial(tmp_path / "all.npz", merged, meta)
    whole = actgeom.neurons(path, threshold=0.0, mu="z_mu", logvar="z_logvar").to_dict()["files"][0]["layers"]
    again = actgeom.neurons(path, threshold=0.0, mu="z_mu", logvar="z_logvar", stats=tmp_path / "all.npz")
    for a, b in zip(whole, again.to_dict()["files"][0]["layers"]):
        assert a["metrics"] == pytest.approx(b["metrics"], rel=1e-12)
        for name in (*UNIT_SCORES, "vae_kl"):
            if name in a["neurons"]["units"]:
                np.testing.assert_allclose(np.array(b["neurons"]["units"][name], dtype=float),
                                           np.array(a["neurons"]["units"][name], dtype=float), rtol=1e-10, atol=1e-12)


def test_statistics_fed_from_memory(rng):
    layers, labels, tokens, positions = _planted(rng, n_rows=400)
    stats = actgeom.Statistics({"h": 8}, families=("neurons",), options={"neurons": {"threshold": 0.0}})
    for rows in np.array_split(np.arange(400), 3):
        stats.update({"h": layers["h"][rows]}, labels=labels[rows])
    layer = stats.metrics().to_dict()["files"][0]["layers"][0]
    expected = neurons_reference(layers["h"], labels=labels)
    np.testing.assert_allclose(np.array(layer["neurons"]["units"]["class_selectivity"], dtype=float),
                               expected["class_selectivity"], rtol=SCORE_RTOL)
    assert "needs token ids" in layer["unavailable"]["token_detector_fraction"]


def test_stats_neurons_keeps_what_neurons_needs(cli, tmp_path, rng):
    layers, labels, tokens, positions = _planted(rng)
    path = write_dump(tmp_path / "d.h5", layers, labels=labels, token_id=tokens, position=positions)
    code, _, err = cli("stats", path, "--rows", "0:700", "--neurons", "--save-stats", tmp_path / "a.npz", "--format", "json")
    assert code == 0, err
    cli("stats", path, "--rows", "700:1200", "--neurons", "--save-stats", tmp_path / "b.npz", "--format", "json")
    cli("merge", tmp_path / "a.npz", tmp_path / "b.npz", "--save-stats", tmp_path / "all.npz", "--format", "json")
    args = ("--threshold", "0", "--mu", "z_mu", "--logvar", "z_logvar")
    direct = cli.json("neurons", path, *args)["files"][0]["layers"]
    merged = cli.json("neurons", path, *args, "--stats", tmp_path / "all.npz")["files"][0]["layers"]
    for a, b in zip(direct, merged):
        assert b["metrics"] == pytest.approx(a["metrics"], rel=1e-12)
    code, _, err = cli("neurons", path, "--stats", tmp_path / "all.npz", "--max-position", "9")
    assert code == 3 and "positions ≥ 9 pooled" in err


@pytest.mark.parametrize("n_groups", [3, 5, 300])
def test_top_k_per_unit_equals_a_full_sort(rng, n_groups):
    table = rng.standard_normal((n_groups, 130))  # 130 units: three tiles, the last one short
    ids, values = top_k(table, 5)
    order = np.argsort(-table, axis=0, kind="stable")[:5].T
    np.testing.assert_array_equal(ids, order)
    np.testing.assert_array_equal(values, np.take_along_axis(table.T, order, axis=1))


def test_a_layer_without_rows_has_no_scores(tmp_path, rng):
    path = write_dump(tmp_path / "d.h5", {"h": np.abs(rng.standard_normal((30, 3)))}, position=np.arange(30) % 10)
    layer = actgeom.neurons(path, threshold=0.0, tokens="from:50").to_dict()["files"][0]["layers"][0]
    assert layer["n_rows"] == 0 and layer["metrics"] == {}
    assert set(layer["unavailable"]) == set(REGISTRY) and layer["neurons"]["top_units"] == []


def _sparse_layer(rng, n_rows=2000):
    """A ReLU-like layer of 6 units: 0 fires on one row (class 9), 1 on five rows, 2 is dead,
    3–5 fire on about half the rows; 10 classes."""
    labels = np.arange(n_rows) % 10
    X = np.maximum(rng.standard_normal((n_rows, 6)), 0.0)
    X[:, :3] = 0.0
    X[9, 0] = 0.08  # row 9: class 9
    X[[1, 11, 21, 31, 41], 1] = 0.5  # class 1 only
    return X, labels


def test_top_classes_are_only_classes_the_unit_responds_to(tmp_path, rng):
    """A unit that fired once lists the one class it fired on (it listed "9 0 2": two classes of
    mean 0); a dead unit lists none; a unit of every class lists three."""
    X, labels = _sparse_layer(rng)
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=labels)
    units = run_family("neurons", path, NeuronsOptions(threshold=0.0))["layers"][0]["neurons"]["units"]
    assert units["top_classes"][0] == [9] and units["top_classes"][1] == [1] and units["top_classes"][2] == []
    assert all(len(classes) == 3 for classes in units["top_classes"][3:])


def test_units_ranked_only_with_minimum_support(cli, tmp_path, rng):
    """Ranked by kurtosis, units seen on one or five rows came first (kurtosis ≈ N/rows). By default
    a ranked unit fires on ≥ max(10, 0.1 % of the rows) rows; the others are counted, not ranked."""
    X, labels = _sparse_layer(rng)
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=labels)
    found = run_family("neurons", path, NeuronsOptions(threshold=0.0))["layers"][0]["neurons"]
    assert [entry["unit"] for entry in found["top_units"]][:3] != [0, 1]
    assert {entry["unit"] for entry in found["top_units"]} == {3, 4, 5}
    assert found["min_support"] == 10 and found["units_below_support"] == 3
    assert found["units"]["firing_rows"][:3] == [1, 5, 0]
    everyone = run_family("neurons", path, NeuronsOptions(threshold=0.0, min_support=0))["layers"][0]["neurons"]
    assert [entry["unit"] for entry in everyone["top_units"]][:2] == [0, 1] and everyone["units_below_support"] == 0
    code, out, err = cli("neurons", path, "--threshold", "0", "--format", "table")
    assert code == 0, err
    assert "firing_rows" in out and "3 units fire on < 10 rows" in out
    code, _, err = cli("neurons", path, "--threshold", "0", "--min-support", "-1")
    assert code == 2 and err.startswith("Error: --min-support '-1' must be ≥ 0")


def test_without_a_threshold_the_ranking_says_it_has_no_support(tmp_path, rng):
    X, labels = _sparse_layer(rng, n_rows=200)
    path = write_dump(tmp_path / "d.h5", {"h": X - 0.1})  # not marked ReLU, no --threshold: firing undefined
    found = run_family("neurons", path, NeuronsOptions())["layers"][0]["neurons"]
    assert len(found["top_units"]) == 6 and found["top_units"][-1]["unit"] == 2  # constant: no kurtosis, last
    assert found["min_support"] is None and "firing_rows" not in found["units"]
    assert "give --threshold" in found["support_unavailable"]
