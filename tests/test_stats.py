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
