"""The probe's train/test split and control task, keyed by seeded hashes (docs/metrics.md, "Linear
probes and concept directions").

The split hashes the sampling unit (``split_by``): the row (its global row number), the sequence
(on token-level dumps: every token of a sentence on the same side — named by the global row
number of its first row, from the sequence offsets) or ``/rows/sample_id``; "auto" is the
sequence on token-level dumps, else the row. A row is a test row when the key of its unit —
splitmix64 (:func:`hash_keys` of core/base/sample.py) of the unit's value, with the seed — is below
``test_fraction``·2⁶⁴. The key depends only on (seed, unit), so the split is the same in every
layer, every chunking, every shard and every run, and the second pass finds the test rows again
without keeping a list of them.

The control task (Hewitt & Liang, EMNLP 2019) gives every row a control class through a
*group*: its token id ("token"), or a bucket of a seeded hash of its unit ("row", the chance
baseline; the rows of one sequence share a bucket when the split is by sequence). Each group gets a
uniform u ∈ [0, 1) from a seeded hash, and its class is the inverse CDF of the real train class
frequencies at u, so control classes keep the class frequencies (exactly in expectation over
token types; to 1/CONTROL_BUCKETS for row buckets). The pass keeps Σx and the count per group of
the train rows (G×D); the control class moments follow at the end.

``--shrinkage auto`` splits the train units once more (seed + 2): the probes for each candidate s
are fitted on the other train rows and scored on these validation rows in the second pass, where
the test rows are scored by every candidate fitted on all train rows; the best candidate's scores
are reported.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from actgeom.core.base.errors import InvalidInputError
from actgeom.core.base.sample import hash_keys
from actgeom.core.base.stats import ClassStats, pooled

VALIDATION_FRACTION = 0.25  # --shrinkage auto: share of the train rows that choose s
CONTROL_BUCKETS = 1024  # row control: class frequencies kept to 1/1024; memory 1024×D floats
_BUCKET_SHIFT = np.uint64(64 - 10)  # 2¹⁰ = CONTROL_BUCKETS


SPLIT_UNITS = ("row", "sequence", "sample_id")  # what a split may hash (SPLIT_BY less "auto")
# where each unit's values come from, for messages (the row's number is always known)
UNIT_SOURCES = {"sequence": "sequence offsets", "sample_id": "/rows/sample_id"}


def split_unit(split_by: str, token_level: bool) -> str:
    """The unit a split hashes: ``split_by``, with "auto" the sequence on token-level dumps (rows with
    sequence offsets), else the row."""
    if split_by == "auto":
        return "sequence" if token_level else "row"
    return split_by


def unit_values(unit: str, index: np.ndarray, vectors: dict[str, np.ndarray]) -> np.ndarray:
    """What the split hashes for each row: its global row number ``index``, or the per-row vector of
    the unit ("sequence": the first row of its sequence; "sample_id")."""
    if unit == "row":
        return index
    values = vectors.get(unit)
    if values is None:
        raise InvalidInputError(f"--split-by {unit} needs {UNIT_SOURCES[unit]}; rows fed from memory have none")
    return values


def split_keys(units: np.ndarray, seed: int) -> np.ndarray:
    """The split key of each row: splitmix64 of its unit's value (:func:`unit_values`) with the seed."""
    return hash_keys(units, seed)


def is_test(keys: np.ndarray, test_fraction: float) -> np.ndarray:
    """Whether each key falls in the test share: key < test_fraction·2⁶⁴."""
    return keys < np.uint64(min(int(test_fraction * 2.0**64), 2**64 - 1))


def is_validation(units: np.ndarray, seed: int) -> np.ndarray:
    """Whether each (train) row is a validation row for --shrinkage auto: its unit's key with seed + 2
    is below VALIDATION_FRACTION·2⁶⁴ (independent of the test split; whole units, like it)."""
    return is_test(split_keys(units, seed + 2), VALIDATION_FRACTION)


def control_groups(control: str, units: np.ndarray, token_ids: np.ndarray | None, seed: int) -> np.ndarray:
    """Each row's control group: its token id, or a hash bucket (seed + 1) of its unit (:func:`unit_values`)."""
    if control == "token":
        if token_ids is None:
            raise InvalidInputError("--control token needs /rows/token_id; rows fed from memory have none")
        return np.asarray(token_ids, dtype=np.int64)
    return (split_keys(units, seed + 1) >> _BUCKET_SHIFT).astype(np.int64)


def group_uniforms(control: str, groups: np.ndarray, seed: int) -> np.ndarray:
    """u ∈ [0, 1) of each group: a hash (seed + 1) of the token id, or the middle of the bucket."""
    if control == "token":
        return (hash_keys(groups, seed + 1) >> np.uint64(11)).astype(np.float64) * 2.0**-53  # 53 bits: exact
    return (groups + 0.5) / CONTROL_BUCKETS


def control_classes(uniforms: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The class at u of the inverse CDF of the class counts (classes without rows are never drawn)."""
    cdf = np.cumsum(counts) / counts.sum()
    return np.minimum(np.searchsorted(cdf, uniforms, side="right"), counts.size - 1)


class ControlSums:
    """Count and Σx of the rows of each group (token id or bucket), float64, growing with the ids.

    Raw sums suffice here: they give means (no cancellation), not variances; the control task's
    within-class scatter comes from the shifted class moments (:func:`control_stats`)."""

    def __init__(self, n_units: int):
        self.counts = np.zeros(0, dtype=np.int64)
        self.sums = np.zeros((0, n_units))

    def update(self, groups: np.ndarray, X: np.ndarray) -> None:
        if groups.size == 0:
            return
        if groups.min() < 0:
            raise InvalidInputError(f"token id {int(groups.min())} in /rows/token_id: --control token needs ids ≥ 0")
        present, inverse = np.unique(groups, return_inverse=True)
        size = int(present[-1]) + 1
        if size > self.counts.size:
            self.counts = np.concatenate([self.counts, np.zeros(size - self.counts.size, dtype=np.int64)])
            self.sums = np.concatenate([self.sums, np.zeros((size - self.sums.shape[0], self.sums.shape[1]))])
        indicator = sparse.csr_matrix((np.ones(groups.size), (inverse, np.arange(groups.size))),
                                      shape=(present.size, groups.size))
        self.sums[present] += indicator @ X
        self.counts[present] += np.bincount(inverse, minlength=present.size)

    def merge(self, other: "ControlSums") -> None:
        size = max(self.counts.size, other.counts.size)
        counts, sums = np.zeros(size, dtype=np.int64), np.zeros((size, self.sums.shape[1]))
        for part in (self, other):
            counts[: part.counts.size] += part.counts
            sums[: part.counts.size] += part.sums
        self.counts, self.sums = counts, sums

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"counts": self.counts, "sums": self.sums}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "ControlSums":
        acc = cls(arrays["sums"].shape[1])
        acc.counts, acc.sums = np.array(arrays["counts"]), np.array(arrays["sums"], dtype=np.float64)
        return acc


def control_stats(train: ClassStats, groups: ControlSums, classes: np.ndarray) -> ClassStats:
    """Class moments of the train rows under the control labels (group g → class ``classes[g]``):
    n_k and μ_k from the group sums, S_W = S_T − Σ_k n_k (μ_k − x̄)(μ_k − x̄)ᵀ with S_T of the
    real classes. sq_dev is not kept (zeros): no probe uses it."""
    total = pooled(train)
    mean, scatter = total.means[0], total.within_scatter
    k = train.counts.size
    counts = np.bincount(classes, weights=groups.counts, minlength=k)
    sums = np.zeros((k, train.means.shape[1]))
    np.add.at(sums, classes, groups.sums)
    means = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], 0.0)
    centred = (means - mean) * np.sqrt(counts)[:, None]
    return ClassStats(counts=counts.astype(np.int64), means=means, within_scatter=scatter - centred.T @ centred,
                      sq_dev=np.zeros(k))
