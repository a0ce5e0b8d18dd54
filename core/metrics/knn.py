"""The k-th largest cosine of each row against a fixed set of rows (kNN's OOD score, core/metrics/ood.py),
found with a float32 product and made exact: the value is the float64 one, as the product Z·Rᵀ gives it
(up to the order of the D-term sum).

For unit rows z, r the float32 similarity s̃ = fl32(z)·fl32(r) (any summation order) differs from
the float64 one s by at most ε = ((D + 2)·u + 2·u²)·(1 + 1e-3) + 1e-12, u = 2⁻²⁴: the rounding of
the two casts (2u + u², |z|·|r| ≤ ‖z‖‖r‖ = 1) plus the γ_D bound of a D-term float32 sum, with slack
for the float64 side's own rounding. Let t̃ be the k-th largest of the s̃ of a row. Then the
float64 k-th largest t obeys |t − t̃| ≤ ε, so every r with s̃ > t̃ + 2ε is surely above t (s > t̃ + ε
≥ t), every r with s̃ < t̃ − 2ε surely below, and t is the (k − a)-th largest float64 similarity among
the rows in the band |s̃ − t̃| ≤ 2ε (a: the rows surely above). Only the band — usually the one row
at t̃, more at near-ties — is recomputed in float64: the float32 product does the work.

t̃ itself is found without sorting or partitioning the S similarities of a row: the minimum over k
disjoint column blocks of each block's maximum is at most t̃ (k entries are at least it), so the
few entries at or above it less 2ε hold t̃ (the k-th largest of them: a sort of each row's
survivors) and the whole band.
"""

from __future__ import annotations

import numpy as np

TILE_ELEMENTS = 1 << 23  # similarities of at most this many (row, reference row) pairs at a time (32 MiB float32)
UNIT = 2.0 ** -24  # float32's unit roundoff


def margin(n_units: int) -> float:
    """ε: the bound on |float32 − float64| similarity of two unit vectors of ``n_units`` components."""
    return ((n_units + 2) * UNIT + 2 * UNIT * UNIT) * (1 + 1e-3) + 1e-12


def kth_largest_similarity(Z: np.ndarray, R: np.ndarray, k: int) -> np.ndarray:
    """For each unit row z of Z (n, D) float64: the k-th largest z·r over the unit rows r of R (S, D)
    float64 (1 ≤ k ≤ S), the float64 value (module docstring). Fast when R's rows come in no
    particular order (e.g. shuffled): sorted by class, the k column blocks' maxima keep a low floor
    and most entries stay candidates."""
    n, S = Z.shape[0], R.shape[0]
    out = np.empty(n)
    R32 = np.ascontiguousarray(R, dtype=np.float32)
    eps = margin(Z.shape[1])
    starts = np.linspace(0, S, k + 1).astype(np.int64)[:-1]  # k column blocks, none empty
    tile = max(1, TILE_ELEMENTS // S)
    for a in range(0, n, tile):
        block = Z[a:a + tile]
        similar = block.astype(np.float32) @ R32.T
        floor = np.maximum.reduceat(similar, starts, axis=1).min(axis=1)  # ≤ t̃: k entries are at least it
        flat = np.flatnonzero(similar >= (floor.astype(np.float64) - 2 * eps)[:, None])  # ≥ t̃ − 2ε: the band too
        values = similar.ravel()[flat].astype(np.float64)
        rows, cols = np.divmod(flat, S)
        approx = _ranked(rows, values, k, block.shape[0])  # t̃, the float32 k-th largest
        keep = values >= approx[rows] - 2 * eps  # the ones surely above t, and the band
        out[a:a + tile] = _refined(block, R, rows[keep], cols[keep], values[keep], approx, k, eps)
    return out


def _refined(Z: np.ndarray, R: np.ndarray, rows, cols, values, approx, k: int, eps: float) -> np.ndarray:
    """The float64 k-th largest of each row of Z from its float32 candidates (``values`` ≥ t̃ − 2ε, at
    ``rows``, ``cols``): a of them surely above t, and the (k − a)-th largest of the band in float64."""
    above = np.bincount(rows[values > approx[rows] + 2 * eps], minlength=Z.shape[0])
    band = values <= approx[rows] + 2 * eps
    rows, cols = rows[band], cols[band]
    return _ranked(rows, np.einsum("ij,ij->i", Z[rows], R[cols]), k - above, Z.shape[0])


def _ranked(rows: np.ndarray, values: np.ndarray, ranks, n: int) -> np.ndarray:
    """The ranks[i]-th largest (one rank, or one per row) of the ``values`` of each row i of 0..n−1
    (``rows``: each value's row, ascending; every row with at least that many): the values laid out
    one row each, padded with −∞, sorted along the rows."""
    counts = np.bincount(rows, minlength=n)
    width = int(counts.max())
    first = np.r_[0, np.cumsum(counts)[:-1]]
    table = np.full((n, width), -np.inf)
    table[rows, np.arange(rows.size) - first[rows]] = values
    table.sort(axis=1)
    return table[np.arange(n), width - np.asarray(ranks)]
