"""Class sums under K seeded label permutations, in the same pass (DESIGN: "Inference on the same pass").

Only class counts and class sums depend on the labels, so a permutation null costs C × D per
permutation, never a second D × D product. Permutation k moves the labels of the dump's labelled
sampling units (rows; whole sequences of a token-level dump, whose labels must then be constant within
each sequence): unit u takes the label of unit π_k(u) = F⁻¹((F(u) + b_k) mod L), F one keyed
bijection of [0, L) (L labelled units; a 4-round Feistel network with cycle-walking) and b_k a seeded
shift. The K permutations are uniform draws from a group (the cyclic shifts of the units in F's
order), so the p-value (1 + #)/(K + 1) is exact under exchangeable labels (Hemerik & Goeman 2018),
and each costs an addition and a look-up per row: the labels in F's order, T[F(u)] = label(u), are
made once, and the label of π_k(u) is T[(F(u) + b_k) mod L]. It depends on the unit's number alone,
so every block size, row range, shard, merge order and backend sees the same permutation (memory:
the dump's labels and T, N labels each).

Per permutation k the accumulator keeps n_kc, Σ_{i∈c} (x_i − r) and Σ_{i∈c} ‖x_i − r‖² (r: one
reference row, the mean of the first labelled block: the permuted classes are random, so one shift
suffices); the permuted within-class scatter is exact from the total moments: S_W,k = S_T − Σ_c n_kc
(μ_kc − x̄)(μ_kc − x̄)ᵀ (:meth:`PermutedClasses.stats`). The shifted rows are added 4 MiB at a time
by one sparse indicator product (K·C × n, K ones per column: K·D additions per row, against D²/2 for
the scatter), row-compressed so that each class sum stays in a core's L1 cache while its rows (in
L3) are added to it in place.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from scipy import sparse

try:  # `csr @ dense`'s kernels (Y += A X) add into the sums in place: private to scipy, stable for a decade
    from scipy.sparse._sparsetools import csr_matvec, csr_matvecs
except ImportError:  # a scipy without them: the public product, into a temporary (~1.5 × slower)
    csr_matvec = csr_matvecs = None

from actgeom.core.base.errors import InvalidInputError, OptionError
from actgeom.core.base.sample import hash_keys
from actgeom.core.base.stats import ClassStats
from actgeom.core.base.threads import usable_cpus
from actgeom.core.dump.validate import memory_bytes
from actgeom.core.state.accumulators.base import Rows, Spec

PERMUTATION_SALT = 0x3C6EF372  # the permutations' keys differ from the groups', the sample's and the split's
SHIFT_SALT = 0x1F83D9AB  # the shifts' keys differ from F's
_ORDER_CHUNK = 1 << 20  # units placed in F's order at a time
ROUNDS = 4  # Feistel rounds (Luby–Rackoff: 4 rounds of a pseudorandom function give a pseudorandom permutation)
CACHED_BYTES = 2**22  # rows added at a time (float64): they stay in the L3 cache while K permutations read them
ROW_VECTOR = "permuted_labels"  # the per-row (n, K) labels under each permutation, read by the engine


class Bijection:
    """A keyed bijection of [0, size): a balanced Feistel network on the smallest even number of
    bits covering ``size``, cycle-walked (a value ≥ size is encrypted again until it falls inside,
    which keeps it a bijection of [0, size)); fewer than 4 walks on average since 2^bits < 4·size."""

    def __init__(self, size: int, seed: int):
        self.size = size
        bits = max(2, int(size - 1).bit_length() + (int(size - 1).bit_length() % 2))
        self.half = np.uint64(bits // 2)
        self.mask = np.uint64((1 << (bits // 2)) - 1)
        self.keys = hash_keys(hash_keys(np.arange(ROUNDS, dtype=np.int64), seed).view(np.int64), PERMUTATION_SALT)

    def __call__(self, units: np.ndarray) -> np.ndarray:
        """The image of every unit (n,) as int64; only the values that fell outside are walked on."""
        x = self._encrypt(np.asarray(units, dtype=np.uint64))
        walking = np.flatnonzero(x >= self.size)
        while walking.size:
            x[walking] = self._encrypt(x[walking])
            walking = walking[x[walking] >= self.size]
        return x.astype(np.int64)

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        """One pass of the Feistel network over x."""
        left, right = x >> self.half, x & self.mask
        with np.errstate(over="ignore"):
            for key in self.keys:
                mixed = (right + key) * np.uint64(0xBF58476D1CE4E5B9)
                mixed = (mixed ^ (mixed >> np.uint64(31))) * np.uint64(0x94D049BB133111EB)
                left, right = right, left ^ ((mixed ^ (mixed >> np.uint64(29))) & self.mask)
        return (left << self.half) | right


class LabelPermutations:
    """The labels of a dump's rows under K permutations of its labelled sampling units.

    ``unit_labels`` (U,): each unit's label (−1: none); ``offsets``: a token-level dump's sequence
    offsets (its units are the sequences), or None (each row is its unit)."""

    def __init__(self, unit_labels: np.ndarray, permutations: int, seed: int, offsets: np.ndarray | None = None):
        labelled = unit_labels >= 0
        self.offsets = offsets
        self.rank = np.cumsum(labelled) - 1  # a labelled unit's number among the labelled ones
        self.labelled = labelled
        pool = unit_labels[labelled]
        self.size = int(pool.size)
        self.order = Bijection(self.size, seed)  # F
        self.dtype = np.int16 if pool.size == 0 or pool.max() < 2**15 else np.int32  # −1 must fit
        self.in_order = np.empty(self.size, dtype=self.dtype)  # T: the labels in F's order
        for first in range(0, self.size, _ORDER_CHUNK):
            units = np.arange(first, min(first + _ORDER_CHUNK, self.size))
            self.in_order[self.order(units)] = pool[units]
        self.shifts = _shifts(self.size, permutations, seed)  # b_k
        self.permutations = permutations

    @classmethod
    def of(cls, dump, permutations: int, seed: int) -> "LabelPermutations":
        """From a dump's labels: by row, or by sequence on a token-level dump (refused unless each
        sequence has one label: a permutation moves whole sequences)."""
        labels = dump.labels()
        if labels is None:
            raise InvalidInputError(f"--null permutes the labels, and {dump.path} has none (give --labels)")
        offsets = dump.offsets()
        if offsets is None:
            return cls(labels, permutations, seed)
        lengths = np.diff(offsets)
        first = np.where(lengths > 0, labels[np.minimum(offsets[:-1], max(labels.size - 1, 0))], -1)
        varying = np.flatnonzero(labels != np.repeat(first, lengths))
        if varying.size:
            row = int(varying[0])
            raise InvalidInputError(f"--null on a token-level dump permutes whole sequences, so each sequence needs "
                                    f"one label; row {row} of {dump.path} has label {labels[row]}, not its "
                                    f"sequence's {first[np.searchsorted(offsets, row, side='right') - 1]}")
        return cls(first, permutations, seed, offsets)

    def read(self, start: int, stop: int) -> np.ndarray:
        """(stop − start, K) labels of rows [start, stop) under each permutation (−1: unlabelled); a
        transposed view of a (K, n) array, whose rows are each permutation's labels."""
        units = np.arange(start, stop)
        if self.offsets is not None:
            units = np.searchsorted(self.offsets, units, side="right") - 1
        mine = np.flatnonzero(self.labelled[units])
        shifted = self.shifts[:, None] + self.order(self.rank[units[mine]])  # F(u) + b_k, < 2L
        np.subtract(shifted, self.size, out=shifted, where=shifted >= self.size)
        if mine.size == units.size:
            return self.in_order[shifted].T
        out = np.full((self.permutations, units.size), -1, dtype=self.dtype)
        out[:, mine] = self.in_order[shifted]
        return out.T


def _shifts(size: int, permutations: int, seed: int) -> np.ndarray:
    """K seeded shifts of [0, size): distinct and never 0 (draws without replacement from the group
    without its identity, exact as the draws with replacement are: Hemerik & Goeman 2018),
    unless the group has fewer than K other elements (then uniform draws with replacement)."""
    if size - 1 < permutations:
        keys = hash_keys(np.arange(permutations, dtype=np.int64), seed ^ SHIFT_SALT)
        return (keys % np.uint64(max(size, 1))).astype(np.int64)
    chosen: dict[int, None] = {}
    drawn = 0
    while len(chosen) < permutations:  # candidates in a seeded order, repeats skipped
        keys = hash_keys(np.arange(drawn, drawn + 2 * permutations, dtype=np.int64), seed ^ SHIFT_SALT)
        drawn += 2 * permutations
        for shift in (1 + keys % np.uint64(size - 1)).tolist():
            if len(chosen) < permutations:
                chosen.setdefault(shift)
    return np.fromiter(chosen, dtype=np.int64, count=permutations)


@dataclass(frozen=True)
class PermutationsSpec(Spec):
    """Class counts, shifted class sums and squared norms under ``permutations`` seeded label permutations."""

    slot: ClassVar[str] = "permutations"
    row_vectors: ClassVar[tuple[str, ...]] = (ROW_VECTOR,)
    permutations: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.permutations < 1:
            raise OptionError("null", self.permutations, "must be ≥ 1 permutations (0 turns the nulls off)")
        if self.seed < 0:
            raise OptionError("null_seed", self.seed, "must be ≥ 0")

    def describe(self) -> str:
        return f"class sums under {self.permutations} label permutations with seed {self.seed} (--null, --null-seed)"

    def state_bytes(self, n_units: int, n_classes: int) -> int:
        return 8 * self.permutations * n_classes * (n_units + 2) + 8 * n_units

    def readers(self, dump, copies: int = 2) -> dict:
        self.check_memory(dump, copies)
        permuted = LabelPermutations.of(dump, self.permutations, self.seed)
        return {ROW_VECTOR: permuted.read}

    def check_memory(self, dump, copies: int = 2) -> None:
        """Refuse K permutations whose class sums (K × C × D float64) of the widest layer, ``copies``
        times (a block's tile and the merge; more for what is made from them per permutation), exceed
        this machine's memory, naming the K that would fit."""
        label_range = (dump.class_ranges or (None, None))[0]
        n_classes = 1 if label_range is None else label_range[1] + 1
        widest = max(dump.layers, key=lambda layer: layer.n_units)
        each = self.state_bytes(widest.n_units, n_classes) / self.permutations
        need, have = copies * self.permutations * each, memory_bytes()
        if need > have:
            fits = int(have // (copies * each))
            hint = f"--null {fits} would fit" if fits >= 1 else "no number of permutations fits; select fewer --layers units"
            raise OptionError("null", self.permutations, f"needs about {need / 2**30:.1f} GiB for the class sums of layer "
                              f"'{widest.name}' ({n_classes} classes × {widest.n_units} units) under every permutation, "
                              f"more than this machine's {have / 2**30:.1f} GiB; {hint}")

    def build(self, n_units: int, storage_dtype: str, products: str = "float64") -> "Permutations":
        return Permutations(n_units, self.permutations)


class Permutations:
    """Per permutation k and class c: n_kc, Σ (x − r), Σ ‖x − r‖² of the labelled rows."""

    kind = "permutations"

    def __init__(self, n_units: int, permutations: int):
        self.n_units, self.permutations = n_units, permutations
        self.ref = np.zeros(n_units)
        self.counts = np.zeros((permutations, 0), dtype=np.int64)
        self.sums = np.zeros((permutations, 0, n_units))
        self.sumsq = np.zeros((permutations, 0))
        self._z = np.empty((0, n_units))  # reused block buffer of shifted rows

    @property
    def n(self) -> int:
        return int(self.counts[0].sum()) if self.permutations else 0

    def _ensure(self, n_classes: int) -> None:
        grow = n_classes - self.counts.shape[1]
        if grow > 0:
            self.counts = np.pad(self.counts, ((0, 0), (0, grow)))
            self.sums = np.pad(self.sums, ((0, 0), (0, grow), (0, 0)))
            self.sumsq = np.pad(self.sumsq, ((0, 0), (0, grow)))

    def update(self, rows: Rows) -> None:
        X, permuted = rows.X, rows.vectors[ROW_VECTOR]
        labelled = rows.labels >= 0
        if not labelled.all():
            X, permuted = X[labelled], permuted[labelled]
        n = X.shape[0]
        if n == 0:
            return
        if self.n == 0:
            self.ref = X.mean(axis=0)
        self._ensure(int(permuted.max()) + 1)
        if self._z.shape[0] < n:
            self._z = np.empty((n, self.n_units))
        z = np.subtract(X, self.ref, out=self._z[:n])
        step = max(1, CACHED_BYTES // (8 * max(self.n_units, 1)))
        for first in range(0, n, step):
            self._add(z[first:first + step], permuted[first:first + step])

    def _add(self, z: np.ndarray, permuted: np.ndarray) -> None:
        """Counts, class sums and squared norms of shifted rows z (n, D; C-contiguous) with their labels
        under each permutation (n, K)."""
        n, c, k = z.shape[0], self.counts.shape[1], self.permutations
        index = (permuted + np.arange(k) * c).ravel()  # row i, permutation k → k·C + its label
        counts = np.bincount(index, minlength=k * c)
        self.counts += counts.reshape(k, c)
        indptr, rows_of = class_rows(permuted, counts)
        ones = np.ones(n * k)
        sums = self.sums.view()
        sums.shape = (k * c, self.n_units)  # a view, never a copy: the kernel writes into it (raises otherwise)
        # sums += indicator @ z in place: each class sum takes its rows while it sits in L1 (one core: ~0.5 ns
        # an addition, against ~0.7–1 ns for a column-compressed product per permutation into a temporary)
        sumsq = self.sumsq.view()
        sumsq.shape = (k * c,)
        norms = np.einsum("ij,ij->i", z, z)
        if csr_matvecs is None:
            indicator = sparse.csr_matrix((ones, rows_of, indptr), shape=(k * c, n))
            sums += indicator @ z
            sumsq += indicator @ norms
            return
        csr_matvec(k * c, n, indptr, rows_of, ones, norms, sumsq)
        add = functools.partial(_add_class_rows, indptr, rows_of, ones, z, sums)
        if k == 1 or usable_cpus() < 2:
            add(0, k * c)
            return
        half = (k // 2) * c  # two threads, each on half of the permutations (the kernel releases the GIL)
        other = _helper().submit(add, half, k * c)
        add(0, half)
        other.result()

    def merge(self, other: "Permutations") -> None:
        """Add another accumulator's rows, re-basing its sums onto our reference:
        x − r = (x − r') + δ, δ = r' − r: Σ += n δ, Σ‖·‖² += 2 δ·Σ' + n ‖δ‖²."""
        if other.n == 0:
            return
        if self.n == 0:
            self.ref = other.ref.copy()
        self._ensure(other.counts.shape[1])
        c = other.counts.shape[1]
        delta = other.ref - self.ref
        n = other.counts.astype(np.float64)
        self.sumsq[:, :c] += other.sumsq + 2 * other.sums @ delta + n * (delta @ delta)
        self.sums[:, :c] += other.sums + n[:, :, None] * delta
        self.counts[:, :c] += other.counts

    def finalize(self) -> "PermutedClasses":
        return PermutedClasses(self.counts, self.ref, self.sums, self.sumsq)

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"counts": self.counts, "ref": self.ref, "sums": self.sums, "sumsq": self.sumsq}

    @classmethod
    def from_arrays(cls, spec: PermutationsSpec, arrays: dict[str, np.ndarray]) -> "Permutations":
        acc = cls(arrays["ref"].shape[0], spec.permutations)
        acc.counts, acc.ref, acc.sums, acc.sumsq = (np.array(arrays[k]) for k in ("counts", "ref", "sums", "sumsq"))
        return acc


def _add_class_rows(indptr, rows_of, ones, z, sums, first: int, stop: int) -> None:
    """sums[first:stop] += (the indicator's rows first:stop) @ z, in place."""
    where = slice(indptr[first], indptr[stop])
    csr_matvecs(stop - first, z.shape[0], z.shape[1], indptr[first:stop + 1] - indptr[first], rows_of[where],
                ones[where], z.ravel(), sums[first:stop].ravel())


@functools.cache
def _helper() -> ThreadPoolExecutor:
    """The one thread that adds the second half of the permutations' class sums."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="actgeom-permutations")


os.register_at_fork(after_in_child=_helper.cache_clear)  # a forked child has no such thread: it makes its own


def class_rows(permuted: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The block's (K·C × n) class indicator, row-compressed: ``indptr`` (K·C + 1,) and, permutation
    by permutation, the rows of each permuted class in ascending order (a class sum adds its rows in
    row order). A stable sort of each permutation's labels in the narrowest unsigned type, which numpy
    radix-sorts (8 or 16 bits: ~1 ms a block of 2 048 rows × 100 permutations, where scipy converts a
    column-compressed indicator in ~8 ms)."""
    n_classes = counts.size // permuted.shape[1]
    keys = np.ascontiguousarray(permuted.T, dtype=np.min_scalar_type(max(n_classes - 1, 0)))
    rows_of = np.argsort(keys, axis=1, kind="stable").ravel()
    indptr = np.zeros(counts.size + 1, dtype=rows_of.dtype)
    np.cumsum(counts, out=indptr[1:])
    return indptr, rows_of


@dataclass
class PermutedClasses:
    """Finalised class sums under each permutation: counts (K, C), ref (D,), sums (K, C, D) of x − ref,
    sumsq (K, C) of ‖x − ref‖²."""

    counts: np.ndarray
    ref: np.ndarray
    sums: np.ndarray
    sumsq: np.ndarray

    @property
    def permutations(self) -> int:
        return self.counts.shape[0]

    def means(self, k: int) -> np.ndarray:
        """(C, D) class means under permutation k (rows of absent classes 0)."""
        counts = self.counts[k]
        return np.where(counts[:, None] > 0, self.ref + self.sums[k] / np.maximum(counts, 1)[:, None], 0.0)

    def stats(self, k: int, total: ClassStats) -> ClassStats:
        """The class statistics under permutation k, given the total moments of the same rows (``total``:
        one class of every labelled row; its within scatter S_T, None for class means only):
        sq_dev_c = Σ‖x − r‖² − ‖Σ(x − r)‖²/n_c, S_W = S_T − Σ_c n_c (μ_c − x̄)(μ_c − x̄)ᵀ."""
        counts = self.counts[k]
        n = np.maximum(counts, 1).astype(np.float64)
        sums = self.sums[k]
        sq_dev = np.maximum(self.sumsq[k] - np.einsum("ij,ij->i", sums, sums) / n, 0.0)
        within = None
        if total.within_scatter is not None:
            centred = (sums / n[:, None] - (total.means[0] - self.ref)) * np.sqrt(counts)[:, None]
            within = total.within_scatter - centred.T @ centred
        return ClassStats(counts=counts.copy(), means=self.means(k), within_scatter=within, sq_dev=sq_dev)
