"""Jackknife intervals from one grouped pass (docs/metrics.md, "Uncertainty and nulls"): each
leave-one-group-out statistic is the statistic of the rows outside the group; intervals do not
depend on chunking, row-range shards or merging; the jackknife matches its closed forms."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_dump

from actgeom.core.analysis import analyze_dump, facts_of, family_options, specs_for
from actgeom.core.base.errors import OptionError
from actgeom.core.base.stats import product_rows
from actgeom.core.dump import Dump, DumpWriter
from actgeom.core.metrics.uncertainty import jackknife, t_quantile
from actgeom.core.state.accumulators import DirectionsSpec, MomentsSpec, SampleSpec, SequencesSpec, UnitsSpec
from actgeom.core.state.engine import PassOptions, accumulate, feed, new_layer_stats
from actgeom.core.state.groups import Grouping, leave_out
from actgeom.core.state.partial import merge_stats, stats_arrays, stats_from_arrays

G = 5
SPECS = [MomentsSpec(by_class=True, all_rows=True), UnitsSpec(threshold=0.1), DirectionsSpec(), SampleSpec(size=40, seed=3)]


def _labelled(rng, n=300, d=6, offset=0.0):
    y = rng.integers(-1, 3, n)  # some unlabelled rows (-1)
    X = rng.standard_normal((n, d)) + offset + 2.0 * np.eye(d)[np.maximum(y, 0) % d]
    return X, y


def _finalized(stats) -> dict:
    """What the metrics read of each statistic, as arrays."""
    moments = stats.get("moments")
    units = stats.get("units")
    index, labels, rows = stats.get("sample").sample()
    return {"counts": moments.classes.counts, "means": moments.classes.means, "within": moments.classes.within_scatter,
            "sq_dev": moments.classes.sq_dev, "total_within": moments.total.within_scatter,
            "total_means": moments.total.means, **{f"units/{k}": v for k, v in units.to_arrays().items()},
            "directions": stats.get("directions").matrix(), "sample_index": index, "sample_labels": labels,
            "sample_rows": rows, "n_rows": stats.n_rows, "n_unlabeled": stats.n_unlabeled}


def _assert_same(got: dict, expected: dict, rtol=1e-10):
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, rtol=rtol, atol=1e-10 * (1 + np.abs(value).max(initial=0)), err_msg=key)


def test_each_group_left_out_equals_the_rows_outside_it(tmp_path, rng):
    X, y = _labelled(rng, offset=1e4)  # a huge offset: the shifted sums must stay exact
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y, chunk_rows=23)
    with Dump(path) as dump:
        stats = accumulate(dump, specs=SPECS, options=PassOptions(ci_groups=G, ci_seed=7, block_rows=37))["h"]
        layer = dump.layer("h")
    group = Grouping(G, 7).of(np.arange(X.shape[0]))
    assert sorted(set(group)) == list(range(G))
    for g in range(G):
        outside = np.flatnonzero(group != g)
        direct = new_layer_stats(layer, {spec.slot: spec for spec in SPECS})
        feed(direct, X[outside], y[outside], outside)
        _assert_same(_finalized(leave_out(stats, g)), _finalized(direct))
    whole = new_layer_stats(layer, {spec.slot: spec for spec in SPECS})
    feed(whole, X, y, np.arange(X.shape[0]))
    _assert_same(_finalized(stats), _finalized(whole))


def _token_dump(tmp_path, rng, n_sequences=30):
    lengths = rng.integers(3, 12, n_sequences)
    offsets = np.r_[0, np.cumsum(lengths)]
    X = np.abs(rng.standard_normal((offsets[-1], 5)))
    path = str(tmp_path / "tok.h5")
    with DumpWriter(path, layers={"h": 5}, dtype="float64", chunk_bytes=11 * 5 * 8, model="test") as writer:
        writer.append({"h": X})
        writer.set_offsets(offsets)
    return path, X, offsets


def test_token_level_groups_hold_whole_sequences(tmp_path, rng):
    path, X, offsets = _token_dump(tmp_path, rng)
    specs = [MomentsSpec(by_class=False), SequencesSpec(alpha=1.0)]
    with Dump(path) as dump:
        stats = accumulate(dump, specs=specs, options=PassOptions(ci_groups=G, block_rows=13))["h"]
        layer = dump.layer("h")
    sequence_group = Grouping(G, 0).of(offsets[:-1])
    for g in range(G):
        direct = new_layer_stats(layer, {spec.slot: spec for spec in specs})
        for s in np.flatnonzero(sequence_group != g):  # each kept sequence as a block of its own
            rows = np.arange(offsets[s], offsets[s + 1])
            feed(direct, X[rows], None, rows, block=X[rows], boundaries=np.array([0, rows.size]))
        left = leave_out(stats, g)
        assert left.n_rows == direct.n_rows == sum(np.diff(offsets)[sequence_group != g])
        got, expected = left.get("sequences"), direct.get("sequences")
        for key, value in expected.to_arrays().items():
            np.testing.assert_allclose(got.to_arrays()[key], value, rtol=1e-10, atol=1e-12, err_msg=key)
        np.testing.assert_allclose(left.get("moments").total.within_scatter,
                                   direct.get("moments").total.within_scatter, rtol=1e-10)


FAMILIES = {"collapse": family_options("collapse"), "rank": family_options("rank")}


def _collapse_record(path, pass_options, precomputed=None):
    with Dump(path) as dump:
        return analyze_dump(dump, FAMILIES, pass_options=pass_options, precomputed=precomputed)


def test_intervals_do_not_depend_on_chunks_shards_or_merge_order(tmp_path, rng):
    X, y = _labelled(rng, n=400)
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y, chunk_rows=17)
    reference = _collapse_record(path, PassOptions(ci_groups=G))["layers"][0]
    assert reference["intervals"]["nc1"]["se"] > 0
    for block_rows in (7, 64, 1000):
        layer = _collapse_record(path, PassOptions(ci_groups=G, block_rows=block_rows))["layers"][0]
        _assert_intervals_equal(layer, reference)
    with Dump(path) as dump:
        specs = specs_for(FAMILIES, facts_of(dump))
        shards = [accumulate(dump, specs=specs, options=PassOptions(ci_groups=G, row_range=r), check=False)
                  for r in ((250, 400), (0, 90), (90, 250))]
    saved = [stats_from_arrays(stats_arrays(part))[0] for part in shards]  # through the file format
    layer = _collapse_record(path, PassOptions(ci_groups=G), precomputed=merge_stats(saved))["layers"][0]
    _assert_intervals_equal(layer, reference)


def _assert_intervals_equal(layer: dict, reference: dict):
    assert set(layer["intervals"]) == set(reference["intervals"]) and layer["intervals_unavailable"].keys() == \
        reference["intervals_unavailable"].keys()
    for metric, interval in reference["intervals"].items():
        for key, value in interval.items():
            assert layer["intervals"][metric][key] == pytest.approx(value, rel=1e-10, abs=1e-12), (metric, key)


def test_the_jackknife_of_a_mean_is_the_textbook_formula():
    # equal groups of m values: θ₋g = (S − S_g)/(N − m) and se = √(Σ_g (ḡ_g − ḡ)² / (G(G−1)))
    values = np.random.default_rng(3).standard_normal((8, 5))  # G = 8 groups of 5
    loo = [(values.sum() - group.sum()) / (values.size - group.size) for group in values]
    group_means = values.mean(axis=1)
    textbook = np.sqrt(((group_means - group_means.mean()) ** 2).sum() / (8 * 7))
    got = jackknife(values.mean(), loo)
    assert got["se"] == pytest.approx(textbook, rel=1e-12)
    assert got["bias"] == pytest.approx(0.0, abs=1e-12)  # a mean is unbiased
    assert got["ci_high"] - values.mean() == pytest.approx(t_quantile(8) * textbook, rel=1e-12)


def test_a_firing_rate_from_grouped_statistics_has_the_closed_form_se(tmp_path, rng):
    # a linear statistic with unequal groups: θ₋g = θ̂ + n_g (θ̂ − ḡ_g) / (N − n_g)
    X = rng.standard_normal((500, 3))
    path = write_dump(tmp_path / "d.h5", {"h": X})
    with Dump(path) as dump:
        stats = accumulate(dump, specs=[UnitsSpec(threshold=0.2)], options=PassOptions(ci_groups=G, block_rows=41))["h"]
    rate = lambda s: s.get("units").n_active / s.n_rows  # noqa: E731
    loo = np.array([rate(leave_out(stats, g)) for g in range(G)])
    group = Grouping(G, 0).of(np.arange(500))
    n_g = np.bincount(group, minlength=G)
    means = np.array([(X[group == g] > 0.2).mean(axis=0) for g in range(G)])
    theta = (X > 0.2).mean(axis=0)
    closed = theta + n_g[:, None] * (theta - means) / (500 - n_g[:, None])
    np.testing.assert_allclose(loo, closed, rtol=1e-12)
    se = np.sqrt((G - 1) / G * ((closed - closed.mean(axis=0)) ** 2).sum(axis=0))
    assert [jackknife(t, loo[:, u])["se"] for u, t in enumerate(theta)] == pytest.approx(se, rel=1e-12)


def test_group_options_are_checked(tmp_path, rng):
    X, y = _labelled(rng, n=30)
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y)
    with pytest.raises(OptionError, match="ci_groups.*≥ 2"):
        PassOptions(ci_groups=1)
    with pytest.raises(OptionError, match="more than the 30 rows"):
        _collapse_record(path, PassOptions(ci_groups=31))
    with pytest.raises(OptionError, match="ci_seed"):
        PassOptions(ci_groups=2, ci_seed=-1)


def test_dse_intervals_beyond_the_feasible_kernel_name_the_option(tmp_path, rng, monkeypatch):
    from actgeom.core.families import entropy

    X, y = _labelled(rng, n=400)  # 100-row samples of every 2 of 3 groups
    path = write_dump(tmp_path / "d.h5", {"h": np.abs(X)}, labels=y)
    options = family_options("entropy", {"subsample": 100, "threshold": 0.0, "dsmi_repeats": 1})
    with Dump(path) as dump:
        record = analyze_dump(dump, {"entropy": options}, pass_options=PassOptions(ci_groups=3))["layers"][0]
    assert {"dse", "dsmi", "dead_fraction"} <= set(record["intervals"])
    monkeypatch.setattr(entropy, "INTERVAL_KERNEL_ROWS", 99)
    with Dump(path) as dump:
        record = analyze_dump(dump, {"entropy": options}, pass_options=PassOptions(ci_groups=3))["layers"][0]
    assert "dse" in record["metrics"] and "dse" not in record["intervals"]
    assert "--subsample 99" in record["intervals_unavailable"]["dse"]
    assert "dead_fraction" in record["intervals"]


def test_groups_that_do_not_fit_in_memory_are_refused_before_the_pass(tmp_path, rng, monkeypatch):
    from actgeom.core.state import groups

    X, y = _labelled(rng, n=60, d=40)
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y)
    each = 8 * (40 * 40 + 3 * 3 * 40 + 3 * product_rows(40) // 2 * 40)  # 3 classes × 40 units, rows awaiting a product
    monkeypatch.setattr(groups, "memory_bytes", lambda: 7 * each)
    monkeypatch.setattr("actgeom.core.state.engine.accumulate", lambda *a, **k: pytest.fail("the pass ran"))
    with pytest.raises(OptionError, match=r"ci_groups.*layer 'h' in 20 groups.*--ci-groups 5 would fit"):
        with Dump(path) as dump:
            analyze_dump(dump, {"collapse": family_options("collapse")}, pass_options=PassOptions(ci_groups=20))


def test_statistics_files_record_their_groups_and_refuse_others(tmp_path, rng):
    from actgeom.core.base.errors import InvalidInputError
    from actgeom.core.state.partial import check_provenance, provenance

    X, y = _labelled(rng, n=60)
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y)
    stats_file = tmp_path / "s.npz"
    stats_file.write_bytes(b"")  # written after the dump, as statistics are
    with Dump(path) as dump:
        made = provenance(dump, PassOptions(ci_groups=4, ci_seed=2))
        assert made["pass"]["ci_groups"] == 4 and made["pass"]["ci_seed"] == 2
        check_provenance(stats_file, made, dump, PassOptions())  # grouped statistics serve a run without --ci
        check_provenance(stats_file, made, dump, PassOptions(ci_groups=4, ci_seed=2))
        with pytest.raises(InvalidInputError, match="--ci-groups 4; this command uses --ci-groups 5"):
            check_provenance(stats_file, made, dump, PassOptions(ci_groups=5, ci_seed=2))
        with pytest.raises(InvalidInputError, match="--ci-seed 2; this command uses --ci-seed 0"):
            check_provenance(stats_file, made, dump, PassOptions(ci_groups=4))
        plain = provenance(dump, PassOptions())
        with pytest.raises(InvalidInputError, match="no jackknife groups.*actgeom stats --ci-groups 4"):
            check_provenance(stats_file, plain, dump, PassOptions(ci_groups=4))


@pytest.mark.parametrize("family", ["collapse", "rank", "entropy", "neurons"])
def test_every_family_left_out_equals_the_family_on_the_rows_outside_the_group(tmp_path, rng, family):
    """The record a family makes from the statistics without group g (an interval's re-evaluation)
    is the record of the rows outside g, fed directly (with their row numbers: the same samples)."""
    from actgeom.core.analysis import FAMILIES, layer_context
    from actgeom.core.inference import replicate

    X, y = _labelled(rng, n=240)
    X = np.abs(X)
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y, chunk_rows=29)
    options = family_options(family, {"entropy": {"subsample": 150, "threshold": 0.0, "dsmi_repeats": 1},
                                      "rank": {"subsample": 150}, "neurons": {"threshold": 0.0}}.get(family))
    group = Grouping(4, 0).of(np.arange(X.shape[0]))
    with Dump(path) as dump:
        specs = specs_for({family: options}, facts_of(dump))
        grouped = accumulate(dump, specs=specs, options=PassOptions(ci_groups=4, block_rows=50))
        compared = 0
        for g in range(4):
            outside = np.flatnonzero(group != g)
            direct = new_layer_stats(dump.layer("h"), specs)
            feed(direct, X[outside], y[outside], outside)
            ctx = layer_context(dump, "h", grouped, PassOptions(ci_groups=4), dump.classifier())
            left = FAMILIES[family].layer(replicate(ctx, g), options)
            ctx_direct = layer_context(dump, "h", {"h": direct}, PassOptions(), dump.classifier())
            expected = FAMILIES[family].layer(ctx_direct, options)
            assert left.metrics.keys() == expected.metrics.keys()
            for name, value in expected.metrics.items():
                assert left.metrics[name] == pytest.approx(value, rel=1e-10, abs=1e-12), (family, g, name)
                compared += 1
    assert compared >= 4 * 4


def test_counts_say_why_they_have_no_interval_and_ci_needs_two_groups(tmp_path, rng):
    X, y = _labelled(rng, n=90)
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y)
    from actgeom.core import api

    layer = api.collapse(path, ci=True, ci_groups=3).to_dict()["files"][0]["layers"][0]
    assert "nc1_rank_used" in layer["metrics"] and "not an estimate" in layer["intervals_unavailable"]["nc1_rank_used"]
    with pytest.raises(OptionError, match="ci_groups=0 must be ≥ 2"):
        api.collapse(path, ci=True, ci_groups=0)
