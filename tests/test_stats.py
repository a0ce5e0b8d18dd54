"""The streamed one-pass statistics equal an in-memory float64 computation, under hostile numerics."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
from conftest import class_data, every, write_dump
from reference import class_statistics, relative_error, unit_statistics

from actgeom.core.base.errors import InvalidInputError, UsageError
from actgeom.core.dump import Dump
from actgeom.core.state.accumulators import SampleSpec, UnitsSpec
from actgeom.core.state.engine import PassOptions, accumulate
from actgeom.core.state.partial import load_partial, merge_stats, save_partial

# float64 sums of ~10^4 shifted, well-conditioned terms keep ~1e-13 relative accuracy; 1e-10 is
# the acceptance bar and leaves three orders of margin. A raw-moment float32 method misses it by
# orders of magnitude (see test_naive_float32_raw_moments_fail).
STREAM_RTOL = 1e-10
SEEDS = [0, 1, 2]

# Imbalanced classes; class 3 is empty (absent between present ones), class 5 has one sample.
COUNTS = [400, 150, 37, 0, 220, 1, 90]

CASES = {
    "float64+1e4": dict(dtype="float64", offset=1e4, spread=1.0),
    "float32+1e4": dict(dtype="float32", offset=1e4, spread=1.0),
    "float16+1e3": dict(dtype="float16", offset=1e3, spread=8.0),
    "float16+1e4": dict(dtype="float16", offset=1e4, spread=64.0),  # float16 spacing at 1e4 is 8
    "bfloat16": dict(dtype="bfloat16", offset=10.0, spread=1.0),
}


def _stored(path: str, layer: str = "h") -> np.ndarray:
    with Dump(path) as dump:
        return dump.read_rows(layer).astype(np.float64)


def assert_matches_reference(stats, X: np.ndarray, y: np.ndarray, rtol: float = STREAM_RTOL) -> None:
    keep = y >= 0
    ref = class_statistics(X[keep], y[keep])
    got = stats.get("moments").classes
    n = ref["counts"].sum()
    present = ref["counts"] > 0
    np.testing.assert_array_equal(got.counts, ref["counts"])
    assert relative_error(got.means, ref["means"]) <= rtol
    assert relative_error(got.within_scatter / n, ref["within_scatter"] / n) <= rtol
    multi = ref["counts"] > 1  # v_c of a single-sample class is exactly 0 (checked below)
    np.testing.assert_allclose(got.sq_dev[multi] / got.counts[multi], ref["sq_dev"][multi] / ref["counts"][multi], rtol=rtol)
    single = present & ~multi
    assert np.all(got.sq_dev[single] <= rtol * np.abs(got.means[single]).max(initial=1.0) ** 2)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", CASES)
def test_streamed_equals_reference(tmp_path, case, seed):
    rng = np.random.default_rng(seed)
    spec = CASES[case]
    X, y = class_data(rng, COUNTS, 24, offset=spec["offset"], spread=spec["spread"])
    y[rng.random(y.size) < 0.05] = -1  # some unlabelled rows
    path = write_dump(tmp_path / "d.h5", {"h": X}, dtype=spec["dtype"], labels=y,
                      chunk_rows=int(rng.integers(1, 300)), batch=int(rng.integers(50, 400)))
    with Dump(path) as dump:
        stats = accumulate(dump, specs=every(), options=PassOptions(block_rows=int(rng.integers(1, 700))))["h"]
    X_stored = _stored(path)
    assert stats.n_rows == y.size and stats.n_unlabeled == int((y < 0).sum())
    assert_matches_reference(stats, X_stored, y)


@pytest.mark.parametrize("seed", SEEDS)
def test_shards_merged_in_every_order(tmp_path, seed):
    rng = np.random.default_rng(seed)
    X, y = class_data(rng, COUNTS, 16, offset=1e4)
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y, chunk_rows=64)
    cuts = sorted(rng.choice(np.arange(1, y.size), size=2, replace=False))
    ranges = [(0, cuts[0]), (cuts[0], cuts[1]), (cuts[1], y.size)]
    with Dump(path) as dump:
        shards = [accumulate(dump, specs=every(reservoir=50),
                             options=PassOptions(row_range=r, block_rows=int(rng.integers(1, 500))))
                  for r in ranges]
    for i, part in enumerate(shards):  # through files, as separate jobs would hand them over
        save_partial(tmp_path / f"part{i}.npz", part, meta={"rows": list(ranges[i])})
    samples = []
    for order in itertools.permutations(range(3)):
        parts = [load_partial(tmp_path / f"part{i}.npz")[0] for i in order]
        merged = merge_stats(parts)["h"]
        assert merged.n_rows == y.size
        assert_matches_reference(merged, X, y)
        samples.append(merged.get("sample").sample()[0])
    assert all(np.array_equal(s, samples[0]) for s in samples)


def test_more_classes_than_units(tmp_path):
    """C = 5 000 > D = 64: class statistics stay C×D and D×D; nothing of size C×D×D."""
    rng = np.random.default_rng(7)
    counts = rng.integers(0, 16, size=5000)
    counts[-1] = 3  # the largest class index is present
    X, y = class_data(rng, list(counts), 64, offset=1e4)
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y, chunk_rows=512)
    with Dump(path) as dump:
        stats = accumulate(dump, specs=every(), options=PassOptions(block_rows=3000))["h"]
    assert stats.get("moments").classes.means.shape == (5000, 64)
    assert_matches_reference(stats, X, y)


def _naive_float32_within(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Σ_W from raw float32 moments, E[xxᵀ] − Σ_c (n_c/N) μ_c μ_cᵀ: what the engine must not do."""
    X32 = X.astype(np.float32)
    n = np.float32(X32.shape[0])
    second = X32.T @ X32 / n
    between = np.zeros_like(second)
    for c in np.unique(y):
        mu = X32[y == c].mean(axis=0)
        between += np.float32((y == c).sum()) / n * np.outer(mu, mu)
    return (second - between).astype(np.float64)


def test_naive_float32_raw_moments_fail(tmp_path):
    """The offset case is hostile enough: the naive method misses the bar, the engine meets it."""
    rng = np.random.default_rng(3)
    X, y = class_data(rng, COUNTS, 24, offset=1e4)
    y_naive = y.copy()
    ref = class_statistics(X, y)["within_scatter"] / y.size
    assert relative_error(_naive_float32_within(X, y_naive), ref) > 1e3 * STREAM_RTOL
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y)
    with Dump(path) as dump:
        stats = accumulate(dump, specs=every(), options=PassOptions(block_rows=100))["h"]
    assert relative_error(stats.get("moments").classes.within_scatter / y.size, ref) <= STREAM_RTOL


@pytest.mark.parametrize("seed", SEEDS)
def test_row_order_and_chunking_do_not_matter(tmp_path, seed):
    rng = np.random.default_rng(seed)
    X, y = class_data(rng, COUNTS, 12, offset=100.0)
    order = rng.permutation(y.size)
    a = write_dump(tmp_path / "a.h5", {"h": X}, labels=y, chunk_rows=17)
    b = write_dump(tmp_path / "b.h5", {"h": X[order]}, labels=y[order], chunk_rows=301)
    with Dump(a) as da, Dump(b) as db:
        sa = accumulate(da, specs=every(), options=PassOptions(block_rows=17))["h"].get("moments").classes
        sb = accumulate(db, specs=every(), options=PassOptions(block_rows=1000))["h"].get("moments").classes
    assert relative_error(sa.means, sb.means) <= STREAM_RTOL
    assert relative_error(sa.within_scatter, sb.within_scatter) <= STREAM_RTOL


@pytest.mark.parametrize("dtype", ["float64", "float16"])
def test_unit_statistics_match_reference(tmp_path, rng, dtype):
    X = np.maximum(rng.standard_normal((900, 10)), 0) * 3  # ReLU-like: many exact zeros
    X[:, 4] = 0.0  # a dead unit
    X[17] = 0.0  # an all-zero row has no direction
    path = write_dump(tmp_path / "d.h5", {"h": X}, dtype=dtype, chunk_rows=31)
    with Dump(path) as dump:
        units = accumulate(dump, specs=every(threshold=0.5), options=PassOptions(block_rows=77))["h"].get("units")
    ref = unit_statistics(_stored(path), threshold=0.5)
    for name, expected in ref.items():
        np.testing.assert_allclose(getattr(units, name), expected, rtol=1e-12, atol=1e-12, err_msg=name)
    assert units.n_active[4] == 0 and units.n_zero_rows == 1 and units.n_rows == 900


def test_nonfinite_rows_refused_or_dropped(tmp_path, rng):
    X, y = class_data(rng, [50, 50], 6)
    X[[3, 40, 41], 2] = [np.nan, np.inf, -np.inf]
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y, chunk_rows=8)
    with Dump(path) as dump:
        with pytest.raises(InvalidInputError, match=r"layer 'h' .* has 3 rows with NaN or inf"):
            accumulate(dump, specs=every(), options=PassOptions(block_rows=16))
        stats = accumulate(dump, specs=every(), options=PassOptions(block_rows=16, nonfinite="drop"))["h"]
    keep = np.isfinite(X).all(axis=1)
    assert stats.n_nonfinite == 3 and stats.n_rows == 97
    assert_matches_reference(stats, X[keep], y[keep])


def test_reservoir_same_rows_across_layers_runs_and_chunkings(tmp_path, rng):
    X, y = class_data(rng, [300, 500, 200], 8)
    path = write_dump(tmp_path / "d.h5", {"a": X, "b": 2 * X[:, :3]}, labels=y, chunk_rows=50)
    with Dump(path) as dump:
        first = accumulate(dump, specs=every(reservoir=100, seed=5), options=PassOptions(block_rows=64))
        second = accumulate(dump, specs=every(reservoir=100, seed=5), options=PassOptions(block_rows=999))
        other_seed = accumulate(dump, specs=every(reservoir=100, seed=6), options=PassOptions(block_rows=64))
    index_a, labels_a, rows_a = first["a"].get("sample").sample()
    assert index_a.size == 100 and np.unique(index_a).size == 100
    np.testing.assert_array_equal(index_a, first["b"].get("sample").sample()[0])
    np.testing.assert_array_equal(index_a, second["a"].get("sample").sample()[0])
    assert not np.array_equal(index_a, other_seed["a"].get("sample").sample()[0])
    np.testing.assert_array_equal(rows_a, X[index_a])
    np.testing.assert_array_equal(labels_a, y[index_a])


def test_partial_file_is_written_atomically_and_validated(tmp_path, rng):
    X, y = class_data(rng, [20, 20], 4)
    path = write_dump(tmp_path / "d.h5", {"h": X}, labels=y)
    with Dump(path) as dump:
        stats = accumulate(dump, specs=every())
    save_partial(tmp_path / "p.npz", stats)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.h5", "p.npz"]
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InvalidInputError, match="not an actgeom partial-statistics file"):
        load_partial(tmp_path / "junk.npz")


def _token_dump(tmp_path, rng, *, positions: bool):
    lengths = rng.integers(1, 9, size=40)
    offsets = np.r_[0, np.cumsum(lengths)]
    n = int(offsets[-1])
    X = rng.standard_normal((n, 5)) + 3.0
    pos = np.concatenate([np.arange(k) for k in lengths])
    path = tmp_path / f"tok{positions}.h5"
    from actgeom.core.dump import DumpWriter

    with DumpWriter(path, layers={"h": 5}, dtype="float64", level="token") as writer:
        writer.append({"h": X}, position=pos if positions else None)
        writer.set_offsets(offsets)
    return path, X, pos, offsets


@pytest.mark.parametrize("positions", [True, False])
@pytest.mark.parametrize("tokens", ["last", "from:1", "from:3"])
def test_token_selection(tmp_path, rng, tokens, positions):
    path, X, pos, offsets = _token_dump(tmp_path, rng, positions=positions)
    keep = np.isin(np.arange(len(pos)) + 1, offsets[1:]) if tokens == "last" else pos >= int(tokens[5:])
    with Dump(path) as dump:
        stats = accumulate(dump, specs=every(reservoir=1000), options=PassOptions(tokens=tokens, block_rows=7))["h"]
    assert stats.n_rows == keep.sum()
    assert_matches_reference(stats, X[keep], np.zeros(int(keep.sum()), dtype=np.int64))
    np.testing.assert_array_equal(stats.get("sample").sample()[0], np.flatnonzero(keep))


def test_token_selection_needs_positions_or_offsets(tmp_path, rng):
    path = write_dump(tmp_path / "d.h5", {"h": rng.standard_normal((10, 2))})
    with Dump(path) as dump:
        with pytest.raises(InvalidInputError, match="--tokens last needs token positions"):
            accumulate(dump, specs=every(), options=PassOptions(tokens="last"))
    with pytest.raises(UsageError, match=re.escape("tokens='first' is not one of all | last | from:K")):
        PassOptions(tokens="first")


def test_shard_files_with_row_offsets_merge_like_one_dump(tmp_path, rng):
    """Two files holding rows 0:300 and 300:700 of one dump, the second passed row_offset=300."""
    X, y = class_data(rng, [300, 250, 150], 6, offset=50.0)
    whole = write_dump(tmp_path / "whole.h5", {"h": X}, labels=y, chunk_rows=64)
    first = write_dump(tmp_path / "a.h5", {"h": X[:300]}, labels=y[:300], chunk_rows=64)
    second = write_dump(tmp_path / "b.h5", {"h": X[300:]}, labels=y[300:], chunk_rows=64)
    options = PassOptions(block_rows=50)
    with Dump(whole) as a:
        reference = accumulate(a, specs=every(reservoir=80, seed=4), options=options)["h"]
    with Dump(first) as a, Dump(second) as b:
        merged = merge_stats([accumulate(a, specs=every(reservoir=80, seed=4), options=options),
                              accumulate(b, specs=every(reservoir=80, seed=4),
                                         options=PassOptions(block_rows=50, row_offset=300))])["h"]
    np.testing.assert_array_equal(merged.get("sample").sample()[0], reference.get("sample").sample()[0])
    assert_matches_reference(merged, X, y)


def test_class_means_without_the_scatter_equal_the_full_moments(rng):
    """ClassMoments(scatter=False) keeps counts, means and squared deviations exactly as the full
    accumulator does, merges and round-trips through arrays, and holds no D×D matrix."""
    from actgeom.core.base.stats import ClassMoments

    X, y = class_data(rng, [40, 25, 60], 6, offset=1e3)
    full, light, halves = ClassMoments(6), ClassMoments(6, scatter=False), [ClassMoments(6, scatter=False) for _ in range(2)]
    full.update(X, y)
    light.update(X, y)
    halves[0].update(X[:50], y[:50])
    halves[1].update(X[50:], y[50:])
    halves[0].merge(ClassMoments.from_arrays(halves[1].to_arrays()))
    a, b, c = full.finalize(), light.finalize(), halves[0].finalize()
    assert b.within_scatter is None and light.scatter is None and "scatter" not in light.to_arrays()
    np.testing.assert_array_equal(a.means, b.means)
    np.testing.assert_array_equal(a.sq_dev, b.sq_dev)
    np.testing.assert_allclose(c.means, a.means, rtol=1e-14)
    np.testing.assert_allclose(c.sq_dev, a.sq_dev, rtol=1e-10)


def test_packed_scatters_round_trip_and_an_empty_side_merges_either_way(rng):
    """The upper triangle packed and unpacked is the same matrix (lower triangle zero); accumulators
    that saw no rows (their scatter not even allocated) merge into full ones and full ones into
    them, directly or through their arrays, to exactly the moments of one pass."""
    from actgeom.core.base.stats import ClassMoments, pack_upper, unpack_upper

    A = np.asfortranarray(rng.standard_normal((7, 7)))
    packed = pack_upper(A)
    assert packed.shape == (7 * 8 // 2,)
    np.testing.assert_array_equal(unpack_upper(packed), np.triu(A))

    X, y = class_data(rng, [30, 20, 10], 5, offset=100.0)
    one = ClassMoments(5)
    one.update(X, y)
    expected = one.finalize()
    for empty_first in (True, False):
        for through_arrays in (False, True):
            empty, full = ClassMoments(5), ClassMoments(5)
            full.update(X, y)
            if through_arrays:
                empty, full = ClassMoments.from_arrays(empty.to_arrays()), ClassMoments.from_arrays(full.to_arrays())
            target, other = (empty, full) if empty_first else (full, empty)
            target.merge(other)
            got = target.finalize()
            np.testing.assert_array_equal(got.counts, expected.counts)
            np.testing.assert_allclose(got.means, expected.means, rtol=1e-15)
            np.testing.assert_allclose(got.within_scatter, expected.within_scatter, rtol=1e-13, atol=1e-12)
            assert target.scatter is not other.scatter  # merged in, not shared: a later update must not reach `other`
    nothing = ClassMoments(5).finalize()
    assert nothing.within_scatter.shape == (0, 0) or not nothing.within_scatter.any()


# -- `stats --families`: the file keeps what the families' `--stats` runs need (#23) ------------------
FAMILY_ARGS = {"collapse": (), "rank": (), "entropy": ("--threshold", "0"), "neurons": ("--threshold", "0"), "probe": ()}


def _families_dump(tmp_path, rng) -> str:
    X, y = class_data(rng, [60, 45, 35], 6, separation=2.0)
    H = np.maximum(X @ rng.standard_normal((6, 5)), 0)  # ReLU-like: dead and active units
    return write_dump(tmp_path / "d.h5", {"a": X, "b": H}, labels=y, token_id=rng.integers(0, 9, y.size),
                      position=rng.integers(0, 20, y.size))


def _layers_of(cli, *args) -> list[dict]:
    """The layers of a run's first file; with --stats, checked to come from the file."""
    document = cli.json(*args, "-q")
    assert (document["statistics"] is not None) == ("--stats" in args)
    return document["files"][0]["layers"]


@pytest.mark.parametrize("family", list(FAMILY_ARGS))
def test_stats_of_a_family_serve_its_stats_run(cli, tmp_path, rng, family):
    path = _families_dump(tmp_path, rng)
    code, _, err = cli("stats", path, "--families", family, "--save-stats", tmp_path / "s.npz", "--format", "json")
    assert code == 0, err
    direct = _layers_of(cli, family, path, *FAMILY_ARGS[family])
    served = _layers_of(cli, family, path, *FAMILY_ARGS[family], "--stats", tmp_path / "s.npz")
    assert [a["layer"] for a in direct] == [b["layer"] for b in served]
    for a, b in zip(direct, served):
        assert a["metrics"] and b["metrics"].keys() == a["metrics"].keys() and b["unavailable"] == a["unavailable"]
        for name, value in a["metrics"].items():
            assert b["metrics"][name] == pytest.approx(value, rel=1e-12, abs=1e-12), (family, name)


def test_stats_of_every_family_serve_each(cli, tmp_path, rng):
    path = _families_dump(tmp_path, rng)
    code, _, err = cli("stats", path, "--families", ",".join(FAMILY_ARGS), "--save-stats", tmp_path / "s.npz")
    assert code == 0, err
    for family, args in FAMILY_ARGS.items():
        direct = _layers_of(cli, family, path, *args)
        served = _layers_of(cli, family, path, *args, "--stats", tmp_path / "s.npz")
        for a, b in zip(direct, served):
            assert b["metrics"] == pytest.approx(a["metrics"], rel=1e-12, abs=1e-12), family


def test_stats_of_one_family_do_not_serve_another(cli, tmp_path, rng):
    path = _families_dump(tmp_path, rng)
    assert cli("stats", path, "--families", "collapse", "--save-stats", tmp_path / "c.npz")[0] == 0
    code, _, err = cli("entropy", path, "--threshold", "0", "--stats", tmp_path / "c.npz", "-q")
    assert code == 3 and "this analysis needs" in err and "actgeom stats" in err


def test_stats_default_keeps_what_it_always_kept(cli, tmp_path, rng):
    """Without --families: class moments (+ unlabelled rows) and unit activity, a sample only with
    --subsample (conftest.every, the statistics `stats` kept before it asked the families)."""
    path = _families_dump(tmp_path, rng)
    for args, reservoir in (((), 0), (("--subsample", "50", "--seed", "3"), 50), (("--threshold", "0.5"), 0)):
        assert cli("stats", path, *args, "--save-stats", tmp_path / "s.npz")[0] == 0
        layers, _ = load_partial(tmp_path / "s.npz")
        threshold = 0.5 if "--threshold" in args else 0.0
        expected = {spec.slot: spec for spec in every(reservoir=reservoir, seed=3 if reservoir else 0, threshold=threshold)}
        assert all(stats.specs == expected for stats in layers.values()), args
        (tmp_path / "s.npz").unlink()


def test_stats_options_map_onto_the_families(cli, tmp_path, rng):
    """--subsample / --seed / --threshold / --entropy-alpha are the families' options; --neurons is
    deprecated with one line and still keeps Σ exp(x) for any `neurons --logvar`."""
    from actgeom.core.state.accumulators import DirectionsSpec, SplitSpec, UnitMomentsSpec

    path = _families_dump(tmp_path, rng)
    code, _, err = cli("stats", path, "--families", "rank,probe", "--entropy-alpha", "2", "--subsample", "40", "--seed",
                       "5", "--threshold", "0.25", "--save-stats", tmp_path / "s.npz", "-q")
    assert code == 0 and err == ""
    specs = load_partial(tmp_path / "s.npz")[0]["a"].specs
    assert specs["sample"] == SampleSpec(size=40, seed=5) and specs["units"] == UnitsSpec(threshold=0.25)
    assert specs["directions"] == DirectionsSpec() and specs["split"].seed == 5 and isinstance(specs["split"], SplitSpec)
    code, _, err = cli("stats", path, "--neurons", "--save-stats", tmp_path / "n.npz", "-q")
    assert code == 0 and err == "Warning: --neurons is deprecated: give --families collapse,rank,neurons\n"
    assert load_partial(tmp_path / "n.npz")[0]["a"].specs["unit_moments"] == UnitMomentsSpec(exp_sums=True)
    code, _, err = cli("stats", path, "--families", "collapse,ood", "-q")
    assert code == 2 and "--families 'ood' is not one of collapse, rank, entropy, neurons, probe" in err


def test_stats_of_families_without_moments_summarise_what_they_have(cli, tmp_path, rng):
    path = _families_dump(tmp_path, rng)
    layer = cli.json("stats", path, "--families", "probe", "-q")["layers"][0]
    assert layer["n_rows"] == 140 and layer["n_classes_present"] == 0 and layer["n_units_ever_active"] is not None
