"""Mergeable one-pass statistics of a layer (README: "Scale"), exact in float64.

Each accumulator has ``update`` (one block of rows), ``merge`` (another accumulator of the same layer,
e.g. another shard's: any split of the rows, merged in any order, gives the same statistics up to
float64 rounding) and ``to_arrays``/``from_arrays`` (for partial-statistics files).

Numerics: second moments are never formed as E[xxᵀ] − μμᵀ from raw sums (that cancels
catastrophically when the spread is small next to the mean, as in the collapsed regime). Each
row is shifted by a per-class reference ref_c (the class mean of the block where the class first
appears) before the block GEMM; the sums of the shifted rows correct the result once, at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.linalg import blas, lapack

_TILE_BYTES = 32 << 20  # scores of a block of rows against a tile of classes
_CLASS_TILE = 2048  # classes per product of weighted_gram: 64 MiB of temporaries at D = 4 096, whatever C
_PRODUCT_BYTES = 16 << 20  # shifted rows per D×D product: at most 1 536 rows or 16 MiB, at least 256 rows


def column_sums(A: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Σ_i w_i A[i, :] for a C-ordered float64 block, as one float64 BLAS gemv.

    scipy's BLAS (the one dsyrk uses) on purpose: mixing numpy's and scipy's BLAS thread pools
    in one loop makes their idle threads spin against each other (measured 1.4× slower).
    """
    w = np.ones(A.shape[0]) if weights is None else weights
    return blas.dgemv(1.0, A.T, w)


def product_rows(n_units: int) -> int:
    """How many shifted rows of this width make one D×D product of the class moments: 1 536 up to
    D = 1 365 (a dsyrk of 1 024 rows runs ~15 % below its rate at D = 512, one of 512 rows ~25 %:
    benchmarks/RESULTS.md, "Session 12"), then 16 MiB of rows, at least 256."""
    return max(256, min(1536, _PRODUCT_BYTES // (8 * max(n_units, 1))))


def weighted_gram(rows: np.ndarray, weights: np.ndarray, centre: np.ndarray | None = None) -> np.ndarray:
    """Σ_c w_c² (r_c − centre)(r_c − centre)ᵀ (D, D) over the rows r_c of a C × D array, a tile of
    classes at a time: the temporaries stay 64 MiB at D = 4 096 whatever C (never a C × D copy)."""
    out = np.zeros((rows.shape[1], rows.shape[1]))
    for start in range(0, rows.shape[0], _CLASS_TILE):
        w = weights[start:start + _CLASS_TILE, None]
        tile = rows[start:start + _CLASS_TILE] * w if centre is None else rows[start:start + _CLASS_TILE] - centre
        if centre is not None:
            tile *= w
        out += tile.T @ tile
    return out


def _buffer(buffer: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``buffer`` if it has room for ``shape``, else a new one.

    Hot loops reuse their block buffers: on this class of machine, touching freshly allocated
    memory costs ~2 s per GiB in page faults, more than the arithmetic on it.
    """
    return buffer if buffer.shape[0] >= shape[0] else np.empty(shape, dtype=buffer.dtype)


def _grow(array: np.ndarray, rows: int) -> np.ndarray:
    """``array`` with at least ``rows`` rows along axis 0 (amortised doubling); new rows are 0."""
    if array.shape[0] >= rows:
        return array
    grown = np.zeros((max(rows, 2 * array.shape[0]),) + array.shape[1:], dtype=array.dtype)
    grown[: array.shape[0]] = array
    return grown


def _class_indicator(inverse: np.ndarray, n_present: int) -> sparse.csr_matrix:
    """Sparse (n_present, n_rows) 0/1 matrix: row k selects the rows of the k-th present class."""
    n_rows = inverse.shape[0]
    return sparse.csr_matrix((np.ones(n_rows), (inverse, np.arange(n_rows))), shape=(n_present, n_rows))


@dataclass
class ClassStats:
    """Finalised class moments of the labelled rows (all float64).

    counts (C,), means (C, D) (rows of absent classes are 0), within_scatter (D, D) =
    Σ_i (x_i − μ_{y_i})(x_i − μ_{y_i})ᵀ (so Σ_W = within_scatter / n), and
    sq_dev (C,) = Σ_{i∈c} ‖x_i − μ_c‖² (so v_c = sq_dev / n_c).
    """

    counts: np.ndarray
    means: np.ndarray
    within_scatter: np.ndarray | None  # None when the scatter was not kept (class means only)
    sq_dev: np.ndarray

    @property
    def n(self) -> int:
        return int(self.counts.sum())


def argmax_tiled(X: np.ndarray, rows: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """argmax_c (x·rows_c + offsets_c) for each row x of X (the first c on ties), over tiles of
    classes small enough to bound the memory of the scores (NC4's nearest class mean, the probes)."""
    tile = max(1, _TILE_BYTES // max(8 * X.shape[0], 1))
    best = np.full(X.shape[0], -np.inf)
    arg = np.zeros(X.shape[0], dtype=np.int64)
    for start in range(0, rows.shape[0], tile):
        scores = X @ rows[start : start + tile].T + offsets[start : start + tile]
        local = scores.argmax(axis=1)
        value = scores[np.arange(X.shape[0]), local]
        better = value > best
        best[better], arg[better] = value[better], local[better] + start
    return arg


def pooled(*groups: ClassStats) -> ClassStats:
    """Every row of the groups as one class, exactly from their class moments: with N = Σ_g n_g and
    x̄ = Σ_g n_g μ_g / N (0 when N = 0), the total scatter S_T = Σ_g S_W,g + Σ_g n_g (μ_g − x̄)(μ_g − x̄)ᵀ
    and sq_dev = Σ_g sq_dev_g + Σ_g n_g ‖μ_g − x̄‖². The groups are the classes of one ClassStats
    (its total), or those of several (labelled and unlabelled rows)."""
    counts = np.concatenate([group.counts for group in groups]).astype(np.float64)
    means = np.concatenate([group.means for group in groups])
    n = counts.sum()
    mean = counts @ means / n if n else np.zeros(means.shape[1])
    centred = (means - mean) * np.sqrt(counts)[:, None]
    within = groups[0].within_scatter
    for group in groups[1:]:
        within = within + group.within_scatter
    sq_dev = float(sum(group.sq_dev.sum() for group in groups) + (centred**2).sum())
    return ClassStats(counts=np.array([int(n)]), means=mean[None, :], within_scatter=within + centred.T @ centred,
                      sq_dev=np.array([sq_dev]))


class BlockProducts:
    """Adds Σ_i z_i z_iᵀ of a block of float64 rows to a float64 upper triangle (Fortran order).

    "float64" (the default): one dsyrk in place: exact to float64 rounding. "float32" (offered for
    float16/bfloat16 layers only): the block rounded to float32 and one ssyrk into a float32 D×D,
    added to the float64 total — about half the time of the product, which dominates a pass. Each
    block's sums then carry float32 rounding (relative ~1e-7·√rows per block), far below the
    storage noise of 16-bit activations (2^-11 relative per value); totals stay float64.
    """

    def __init__(self, n_units: int, products: str = "float64"):
        self._z32 = np.empty((0, n_units), dtype=np.float32)
        self._c32 = np.zeros((n_units, n_units), dtype=np.float32, order="F") if products == "float32" else None

    def add(self, scatter: np.ndarray, z: np.ndarray) -> None:
        if self._c32 is None:
            blas.dsyrk(1.0, z.T, beta=1.0, c=scatter, trans=0, overwrite_c=1)
            return
        self._z32 = _buffer(self._z32, z.shape)
        z32 = self._z32[: z.shape[0]]
        np.copyto(z32, z, casting="same_kind")
        blas.ssyrk(1.0, z32.T, beta=0.0, c=self._c32, trans=0, overwrite_c=1)  # the upper triangle (the lower stays 0)
        scatter += self._c32


class ClassMoments:
    """Per-class counts and shifted sums, per-class shifted squared norms, pooled shifted scatter."""

    def __init__(self, n_units: int, *, scatter: bool = True, products: str = "float64"):
        self.n_units = n_units
        self.counts = np.zeros(0, dtype=np.int64)
        self.ref = np.zeros((0, n_units))
        self.sums = np.zeros((0, n_units))
        self.sumsq = np.zeros(0)
        # keeps_scatter False: class means only (no D×D product per block). The float64 scatter is
        # allocated with the first rows (an accumulator that never sees any, e.g. of unlabelled rows,
        # or one about to be loaded from arrays, costs no D×D float64 zeros); Fortran order: dsyrk
        # updates it in place. Only the upper triangle is maintained.
        self.keeps_scatter = scatter
        self.scatter: np.ndarray | None = None
        self._products = BlockProducts(n_units, products) if scatter else None
        # Shifted rows wait in this buffer until at least `_batch` of them make one product: a small
        # dsyrk (a jackknife group's share of a block) runs well below a block's rate
        self._z = np.empty((0, n_units))
        self._waiting = 0
        self._batch = product_rows(n_units)

    @property
    def n_classes(self) -> int:
        """One more than the largest class index seen (absent classes in between count)."""
        seen = np.flatnonzero(self.counts)
        return int(seen[-1]) + 1 if seen.size else 0

    def _ensure(self, n_classes: int) -> None:
        self.counts = _grow(self.counts, n_classes)
        self.ref = _grow(self.ref, n_classes)
        self.sums = _grow(self.sums, n_classes)
        self.sumsq = _grow(self.sumsq, n_classes)

    def update(self, X: np.ndarray, y: np.ndarray) -> None:
        """Add rows X (n, D) float64 with class indices y (n,) ≥ 0."""
        n = X.shape[0]
        if n == 0:
            return
        present, inverse, block_counts = np.unique(y, return_inverse=True, return_counts=True)
        self._ensure(int(present[-1]) + 1)
        indicator = _class_indicator(inverse, present.size) if present.size > 1 else None
        new = self.counts[present] == 0
        if new.any():  # reference of a class = its mean in the block where it first appears
            block_means = (column_sums(X)[None, :] if indicator is None else indicator @ X) / block_counts[:, None]
            self.ref[present[new]] = block_means[new]
        z = self._shifted_rows(n)
        if indicator is None:  # one class (no labels, or a spectrum): a broadcast, no gather
            np.subtract(X, self.ref[present[0]], out=z)
            block_sums = column_sums(z)[None, :]
        else:
            np.take(self.ref, y, axis=0, out=z, mode="clip")  # mode "raise" would copy `out` first
            np.subtract(X, z, out=z)
            block_sums = indicator @ z
        self.counts[present] += block_counts
        self.sums[present] += block_sums
        self.sumsq[present] += np.bincount(inverse, weights=np.einsum("ij,ij->i", z, z), minlength=present.size)
        if self.keeps_scatter:
            self._waiting += n
            if self._waiting >= self._batch:
                self._flush()

    def _shifted_rows(self, n: int) -> np.ndarray:
        """Room for n shifted rows after those waiting for the product. The buffer grows by doubling
        (the waiting rows copied) up to a batch plus a share like this one (a jackknife group's share of
        a block), or one block; past that, the waiting rows get their product first."""
        waiting, room = self._waiting, self._z.shape[0]
        if waiting + n > room:
            limit = self._batch + n if n < self._batch else n
            if room < limit:
                grown = np.empty((min(limit, max(waiting + n, 2 * room)), self.n_units))
                grown[:waiting] = self._z[:waiting]
                self._z = grown
            if waiting + n > self._z.shape[0]:
                self._flush()
        return self._z[self._waiting:self._waiting + n]

    def _flush(self) -> None:
        """Add the waiting shifted rows' Σ z zᵀ to the scatter."""
        if self._waiting:
            if self.scatter is None:
                self.scatter = np.zeros((self.n_units, self.n_units), order="F")
            self._products.add(self.scatter, self._z[: self._waiting])
            self._waiting = 0

    def merge(self, other: "ClassMoments") -> None:
        """Add another accumulator's rows, re-basing its shifted sums onto our references."""
        self._flush()
        other._flush()
        theirs = np.flatnonzero(other.counts)
        if theirs.size == 0:
            return
        self._ensure(int(theirs[-1]) + 1)
        shared = theirs[self.counts[theirs] > 0]
        only = theirs[self.counts[theirs] == 0]
        self.ref[only] = other.ref[only]
        # Shared classes: x − ref_ours = (x − ref_theirs) + δ, δ = ref_theirs − ref_ours.
        delta = other.ref[shared] - self.ref[shared]
        n_shared = other.counts[shared].astype(np.float64)
        their_sums = other.sums[shared]
        if self.keeps_scatter:
            if self.scatter is None:  # no rows of ours yet: theirs as they are (nothing shared)
                self.scatter = np.array(other.scatter, order="F")
            else:
                self.scatter += other.scatter  # only the upper triangles are read
            if shared.size:  # + Σ_c S_c δ_cᵀ + δ_c S_cᵀ + n_c δ_c δ_cᵀ = Aᵀδ + δᵀA, A = S + n δ / 2: one dsyr2k
                half = their_sums + 0.5 * n_shared[:, None] * delta
                self.scatter = blas.dsyr2k(1.0, half, delta, beta=1.0, c=self.scatter, trans=1, overwrite_c=1)
        self.sumsq[shared] += 2 * np.einsum("ij,ij->i", delta, their_sums) + n_shared * np.einsum("ij,ij->i", delta, delta)
        self.sums[shared] += n_shared[:, None] * delta
        self.sumsq[theirs] += other.sumsq[theirs]
        self.sums[theirs] += other.sums[theirs]
        self.counts[theirs] += other.counts[theirs]

    def finalize(self) -> ClassStats:
        """Class means, pooled within-class scatter and per-class squared deviations."""
        self._flush()
        c = self.n_classes
        counts = self.counts[:c].copy()
        n = np.maximum(counts, 1).astype(np.float64)  # absent classes: sums are 0, so 0/1 = 0
        sums = self.sums[:c]
        means = sums / n[:, None]  # in place from here on: at C = 32 000, D = 4 096 a C × D array is 1 GiB
        means += self.ref[:c]
        means[counts == 0] = 0.0
        within = None
        if self.keeps_scatter:
            within = np.zeros((self.n_units, self.n_units)) if self.scatter is None else _symmetric(self.scatter)
            within -= weighted_gram(sums, 1 / np.sqrt(n))  # − Σ_c S_c S_cᵀ / n_c
        sq_dev = self.sumsq[:c] - np.einsum("ij,ij->i", sums, sums) / n
        return ClassStats(counts=counts, means=means, within_scatter=within, sq_dev=np.maximum(sq_dev, 0.0))

    def to_arrays(self) -> dict[str, np.ndarray]:
        self._flush()
        c = self.n_classes
        arrays = {"counts": self.counts[:c], "ref": self.ref[:c], "sums": self.sums[:c], "sumsq": self.sumsq[:c]}
        if not self.keeps_scatter:
            return arrays
        return arrays | {"scatter": np.zeros(0) if self.scatter is None else pack_upper(self.scatter)}  # empty: no row

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "ClassMoments":
        acc = cls(arrays["ref"].shape[1], scatter="scatter" in arrays)
        acc.counts, acc.ref, acc.sums, acc.sumsq = (np.array(arrays[k]) for k in ("counts", "ref", "sums", "sumsq"))
        if arrays.get("scatter", np.zeros(0)).size:  # empty: no row was added (the scatter stays None)
            acc.scatter = unpack_upper(arrays["scatter"])
        return acc


def pack_upper(matrix: np.ndarray) -> np.ndarray:
    """The upper triangle of a square float64 matrix, column by column (LAPACK's packed form):
    half the bytes of the matrix to store, ship between workers or merge."""
    packed, _ = lapack.dtrttp(matrix)
    return packed


def unpack_upper(packed: np.ndarray) -> np.ndarray:
    """The inverse of :func:`pack_upper`: a Fortran-ordered matrix, its lower triangle zero."""
    n = int(round((np.sqrt(8 * packed.size + 1) - 1) / 2))
    matrix, _ = lapack.dtpttr(n, np.asarray(packed, dtype=np.float64))
    return matrix


def _symmetric(upper: np.ndarray) -> np.ndarray:
    """The full symmetric matrix from its upper triangle."""
    return np.triu(upper) + np.triu(upper, 1).T
