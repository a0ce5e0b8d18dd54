"""The sample-based compare measures: RSA and mutual k-NN on a seeded row sample (docs/metrics.md,
"Similarity between representations").

The sample is the same rows in every file (keys of the row number and the seed, core/base/stats.py
``row_keys``). What each layer's rows give — the RDM, its ranks, each row's nearest neighbours —
is computed once per layer (:class:`SampleView`), not once per pair.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from actgeom.core.base.options import CompareOptions
from actgeom.core.base.registry import Unavailable

_ROW_BLOCK = 256  # sampled rows per product of the RDM: 256 × m float64 at a time (16 MB at m = 8 000)
_CHUNK = 1 << 20  # pairs per step of a correlation: three 8 MB float64 buffers, whatever the sample


class SampleView:
    """A layer's rows in the seeded sample, with what RSA and mutual k-NN derive from them,
    computed once per layer (not once per pair): the RDM, its ranks, each row's k nearest rows.

    Kept per layer until the comparison ends, for P = m(m − 1)/2 pairs of m sampled rows: the
    RDM in float64 and its doubled ranks in int32, 12·P bytes (384 MB at m = 8 000). Computing
    them peaks at ~33·P (the RDM, argsort's int64 order and the int32 rank arrays)."""

    def __init__(self, rows: np.ndarray):
        self.rows = np.asarray(rows, dtype=np.float64)
        self.constant = np.ptp(self.rows, axis=1) == 0 if self.rows.size else np.ones(self.rows.shape[0], dtype=bool)
        self._rdm: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
        self._knn: dict[int, np.ndarray] = {}
        self._whole: tuple[SampleView, np.ndarray] | None = None  # (the view this one is a part of, which rows)

    def without(self, keep: np.ndarray) -> "SampleView":
        """The view of the rows ``keep`` selects (a jackknife replicate's sample). Its RDM is the
        entries of this view's for the pairs of kept rows (the same numbers, no products), its ranks
        recounted from this view's in O(P) (:func:`recounted`), when this view has made its RDM for
        the same usable rows."""
        part = SampleView(self.rows[keep])
        part._whole = (self, keep)
        return part

    def rdm(self, usable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(upper triangle of 1 − corr(x_i, x_j) over the usable rows, row by row; its doubled
        average ranks, :func:`doubled_ranks`)."""
        key = usable.tobytes()
        if key not in self._rdm:
            made = self._from_whole(usable)
            if made is None:
                upper = _upper_rdm(self.rows[usable])
                made = (upper, doubled_ranks(upper))
            self._rdm = {key: made}
        return self._rdm[key]

    def _from_whole(self, usable: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The RDM of the usable rows taken from the whole view's (None: it has none for them)."""
        if self._whole is None:
            return None
        whole, keep = self._whole
        for key, (upper, ranks) in whole._rdm.items():
            usable_whole = np.frombuffer(key, dtype=bool)
            if np.array_equal(usable_whole[keep], usable):
                pairs = _kept_pairs(keep[usable_whole])
                return upper[pairs], recounted(ranks[pairs])
        return None

    def knn(self, k: int) -> np.ndarray:
        """(m, k) indices of each row's k nearest other rows by cosine similarity (zero rows: similarity 0)."""
        if k not in self._knn:
            norms = np.linalg.norm(self.rows, axis=1, keepdims=True)
            unit = np.divide(self.rows, norms, out=np.zeros_like(self.rows), where=norms > 0)
            similarity = unit @ unit.T
            np.fill_diagonal(similarity, -np.inf)  # a row is not its own neighbour
            self._knn[k] = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        return self._knn[k]


def _upper_rdm(rows: np.ndarray) -> np.ndarray:
    """1 − corr(x_i, x_j) for i < j, row i's entries after row i − 1's, of non-constant rows (m, D):
    products of :data:`_ROW_BLOCK` rows with the rows from theirs on, never the m × m matrix."""
    m = rows.shape[0]
    centred = rows - rows.mean(axis=1, keepdims=True)
    unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    upper = np.empty(m * (m - 1) // 2)
    filled = 0
    for top in range(0, m, _ROW_BLOCK):
        block = unit[top:top + _ROW_BLOCK] @ unit[top:].T  # row i of the block: corr(x_top+i, x_j), j ≥ top
        for i in range(block.shape[0]):
            later = block[i, i + 1:]
            upper[filled:filled + later.size] = later
            filled += later.size
    return np.subtract(1.0, upper, out=upper)


def _kept_pairs(kept: np.ndarray) -> np.ndarray:
    """Which pairs i < j of an upper triangle (row by row) have both rows kept."""
    u = kept.size
    if u < 2:
        return np.zeros(0, dtype=bool)
    return np.concatenate([kept[i + 1:] if kept[i] else np.zeros(u - i - 1, dtype=bool) for i in range(u - 1)])


def recounted(ranks: np.ndarray) -> np.ndarray:
    """The doubled average ranks of a subset of values, from the doubled ranks they had among all
    (equal ranks ⇔ equal values): a value with s subset values below it and t equal to it (itself
    included) ranks s + 1 … s + t, doubled mean 2s + t + 1 — counted, not sorted.

    >>> recounted(np.array([9, 2, 9, 6])).tolist()  # values ranked 4.5, 1, 4.5, 3 among more
    [6, 2, 6, 4]
    """
    counts = np.bincount(ranks)
    below = np.cumsum(counts) - counts
    return (2 * below[ranks] + counts[ranks] + 1).astype(ranks.dtype)


def doubled_ranks(values: np.ndarray) -> np.ndarray:
    """2·r, r the average ranks of ``values`` (1-based; tied values share the mean of their
    ranks), as integers: exact at any length. A tie group at sorted positions s … e has the
    ranks s + 1 … e + 1, doubled mean s + e + 2. (Float32 ranks are not exact above 2²⁴ —
    --subsample 5 793 — where an odd rank or a tied .5 rounds.) int32 below 2³⁰ values (46 341
    sampled rows), int64 above; beyond the input, ~21 bytes per value at the peak (argsort's
    int64 order, three int32 arrays)."""
    n = values.size
    dtype = np.int32 if n < 2**30 else np.int64
    order = np.argsort(values)  # not stable: tied values get one rank whatever their order
    ordered = values[order]
    starts = np.empty(n + 1, dtype=bool)  # starts[i]: sorted position i begins a tie group; starts[n]: the end
    starts[0] = starts[n] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:n])
    del ordered
    first = np.arange(n, dtype=dtype)
    first[~starts[:n]] = 0
    np.maximum.accumulate(first, out=first)  # s of each position's group
    last = np.arange(n, dtype=dtype)
    last[~starts[1:]] = n - 1
    last = np.minimum.accumulate(last[::-1])[::-1]  # e of each position's group
    first += last
    first += 2
    del last
    ranks = np.empty(n, dtype=dtype)
    ranks[order] = first
    return ranks


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equal-length vectors (any numeric dtype), in float64 chunks of
    :data:`_CHUNK`: no full-length float64 copy of either."""
    mean_a, mean_b = a.mean(dtype=np.float64), b.mean(dtype=np.float64)
    ab = aa = bb = 0.0
    for start in range(0, a.size, _CHUNK):
        x = a[start:start + _CHUNK] - mean_a
        y = b[start:start + _CHUNK] - mean_b
        ab, aa, bb = ab + float(x @ y), aa + float(x @ x), bb + float(y @ y)
    return ab / math.sqrt(aa * bb)


class SampledPair(Protocol):
    """What the sample measures read of a pair (core/metrics/compare.py's ``PairInputs``): each side's
    sampled rows, and ``found`` for what they report besides metrics."""

    sample_x: SampleView
    sample_y: SampleView
    found: dict


def rsa(p: SampledPair, o: CompareOptions) -> dict:
    """Representational similarity analysis (Kriegeskorte et al. 2008): the Spearman and Pearson
    correlations of the upper triangles of the RDMs 1 − corr(x_i, x_j) of A and of B, on the
    seeded row sample shared by both files.

    Similarities in [−1, 1]. Rows constant across units (no correlation) leave both RDMs; Spearman
    uses average ranks of ties. Invariant to scaling (not to shifts or rotations of the units,
    which change row correlations).
    """
    usable = ~p.sample_x.constant & ~p.sample_y.constant
    p.found["rsa_rows"] = int(usable.sum())
    if usable.sum() < 3:
        reason = Unavailable(f"needs at least 3 sampled rows that are not constant ({int(usable.sum())})")
        return {"rsa_spearman": reason, "rsa_pearson": reason}
    (a, rank_a), (b, rank_b) = p.sample_x.rdm(usable), p.sample_y.rdm(usable)
    return {"rsa_spearman": pearson(rank_a, rank_b), "rsa_pearson": pearson(a, b)}


def mutual_knn(p: SampledPair, o: CompareOptions) -> dict:
    """Mutual k-NN alignment (Huh et al., ICML 2024): mean over sampled rows i of
    |N_A(i) ∩ N_B(i)| / k, N the k = ``--knn-k`` (10) nearest other rows by cosine similarity.

    Similarity in [0, 1] (1: same neighbourhoods); invariant to rotations and scaling of either side.
    """
    m = p.sample_x.rows.shape[0]
    if not (p.sample_x.rows.any() and p.sample_y.rows.any()):  # cosine similarity needs some nonzero rows
        return {"mutual_knn": Unavailable("every sampled row of a layer is zero")}
    if m <= o.knn_k:
        return {"mutual_knn": Unavailable(f"needs more sampled rows ({m}) than --knn-k ({o.knn_k})")}
    in_a = np.zeros((m, m), dtype=bool)
    in_a[np.arange(m)[:, None], p.sample_x.knn(o.knn_k)] = True
    shared = in_a[np.arange(m)[:, None], p.sample_y.knn(o.knn_k)].sum(axis=1)
    return {"mutual_knn": float(shared.mean() / o.knn_k)}
