"""The sample-based compare measures (METRICS.md §5): RSA and mutual k-NN on a seeded row sample.

The sample is the same rows in every file (keys of the row number and the seed, core/stats.py
``row_keys``). What each layer's rows give — the RDM, its ranks, each row's nearest neighbours —
is computed once per layer (:class:`SampleView`), not once per pair.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import numpy as np

from actgeom.core.family import Unavailable

if TYPE_CHECKING:
    from actgeom.core.compare import CompareOptions, PairInputs


@functools.lru_cache(maxsize=4)
def _upper(m: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(m, 1)


class SampleView:
    """A layer's rows in the seeded sample, with what RSA and mutual k-NN derive from them,
    computed once per layer (not once per pair): the RDM, its ranks, each row's k nearest rows."""

    def __init__(self, rows: np.ndarray):
        self.rows = np.asarray(rows, dtype=np.float64)
        self.constant = np.ptp(self.rows, axis=1) == 0 if self.rows.size else np.ones(self.rows.shape[0], dtype=bool)
        self._rdm: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}
        self._knn: dict[int, np.ndarray] = {}

    def rdm(self, usable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(upper triangle of 1 − corr(x_i, x_j) over the usable rows, its average ranks)."""
        key = usable.tobytes()
        if key not in self._rdm:
            rows = self.rows[usable]
            centred = rows - rows.mean(axis=1, keepdims=True)
            unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
            upper = 1.0 - (unit @ unit.T)[_upper(rows.shape[0])]
            # float32 ranks: integers and half-integers below 2^24 are exact
            from scipy.stats import rankdata  # scipy.stats costs 0.7 s to import: only when RSA runs

            self._rdm = {key: (upper, rankdata(upper).astype(np.float32))}
        return self._rdm[key]

    def knn(self, k: int) -> np.ndarray:
        """(m, k) indices of each row's k nearest other rows by cosine similarity (zero rows: similarity 0)."""
        if k not in self._knn:
            norms = np.linalg.norm(self.rows, axis=1, keepdims=True)
            unit = np.divide(self.rows, norms, out=np.zeros_like(self.rows), where=norms > 0)
            similarity = unit @ unit.T
            np.fill_diagonal(similarity, -np.inf)  # a row is not its own neighbour
            self._knn[k] = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        return self._knn[k]


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean(dtype=np.float64)
    b = b - b.mean(dtype=np.float64)
    return float(a @ b / math.sqrt(float(a @ a) * float(b @ b)))


def rsa(p: PairInputs, o: CompareOptions) -> dict:
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
    return {"rsa_spearman": _pearson(rank_a.astype(np.float64), rank_b.astype(np.float64)), "rsa_pearson": _pearson(a, b)}


def mutual_knn(p: PairInputs, o: CompareOptions) -> dict:
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
