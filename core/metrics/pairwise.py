"""Statistics over all unordered pairs of class vectors, in tiles (C may be 10^5).

A C×C matrix of float64 would be 80 GB at C = 10^5, so pairs are visited in square tiles of
at most ``tile`` classes a side; each tile's values are reduced at once and merged with the
running totals (Chan's rule for the variance: exact and stable, in any tile order).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from actgeom.core.base.stages import announce

TILE = 512  # 2 MiB of float64 per tile: the temporaries stay in cache (measured 2× faster than 2048)
# Through the Gram matrix, squared distances below a few ulps of ‖v_c‖² + ‖v_c'‖² cannot be told
# from 0: such pairs count as coincident.
_RESOLUTION = 8 * np.finfo(np.float64).eps


@dataclass
class Moments:
    """Count, mean and sum of squared deviations of a stream of numbers (Chan-mergeable)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: np.ndarray) -> None:
        k = values.size
        if k == 0:
            return
        mean = float(values.mean())
        m2 = float(((values - mean) ** 2).sum())
        total = self.n + k
        delta = mean - self.mean
        self.m2 += m2 + delta * delta * self.n * k / total
        self.mean += delta * k / total
        self.n = total

    def variance(self, ddof: int = 0) -> float:
        return self.m2 / (self.n - ddof) if self.n > ddof else float("nan")


@dataclass
class PairStats:
    """What the collapse metrics need from the pairs of one set of class vectors."""

    n_pairs: int
    cos: Moments  # cos(v_c, v_c') over pairs
    abs_cos_plus: float  # mean over pairs of |cos + 1/(C−1)|
    log_inv_dist: Moments  # log(1/‖p_c − p_c'‖), p = v/‖v‖, over pairs with p_c ≠ p_c'
    n_coincident_directions: int  # pairs with p_c = p_c' (log 1/0 = inf)
    cdnv: float  # mean over pairs of (v_c + v_c')/(2‖Δ‖²)
    cdnv_lc: float  # mean over pairs of (v_c + v_c')/(2‖Δ‖⁴)
    n_coincident_means: int  # pairs with ‖Δ‖ = 0 (cdnv = inf)


def _tiles(n: int, tile: int):
    for a in range(0, n, tile):
        for b in range(a, n, tile):
            yield slice(a, min(a + tile, n)), slice(b, min(b + tile, n))


def pair_stats(vectors: np.ndarray, variances: np.ndarray | None = None, *, tile: int = TILE) -> PairStats:
    """Pair statistics of the rows of ``vectors`` (C, D); ``variances`` (C,) enable the CDNV.

    ``vectors`` should be centred (class means minus the global mean): distances come from
    the Gram matrix, ‖v_c − v_c'‖² = ‖v_c‖² + ‖v_c'‖² − 2 v_c·v_c', exact enough only when
    the vectors are not dominated by a common offset. Cosines come from the same Gram product,
    divided by the norms (one GEMM per tile: at C = 32 000, D = 4 096 the pairs cost C²D flops, the
    metric's bulk); each tile's sums are merged with Chan's rule.
    """
    C = vectors.shape[0]
    sq = np.einsum("ij,ij->i", vectors, vectors)
    norms = np.sqrt(sq)
    cos_moments, log_moments = Moments(), Moments()
    abs_total = cdnv_total = cdnv_lc_total = 0.0
    coincident_dirs = coincident_means = 0
    etf_cos = -1.0 / (C - 1) if C > 1 else 0.0  # the pairwise cosine of a simplex ETF
    tiles = list(_tiles(C, tile))
    began = time.perf_counter()
    for done, (rows, cols) in enumerate(tiles):
        if done == 1:  # the first tile timed: the rest take about as long each
            rest = (time.perf_counter() - began) * (len(tiles) - 1)
            announce(f"pairwise statistics of {C} classes ({len(tiles)} tiles)", lambda rest=rest: rest)
        if rows == cols:  # each unordered pair once: the strict upper triangle
            upper = np.triu(np.ones((rows.stop - rows.start,) * 2, dtype=bool), 1)

            def pick(a: np.ndarray, upper: np.ndarray = upper) -> np.ndarray:
                return a[upper]
        else:
            pick = np.ravel
        gram = vectors[rows] @ vectors[cols].T  # the tile's one product: cosines and distances both
        with np.errstate(divide="ignore", invalid="ignore"):  # a zero vector has no direction: NaN cosines
            cos = pick(gram / np.multiply.outer(norms[rows], norms[cols]))
        np.clip(cos, -1.0, 1.0, out=cos)  # rounding can step past ±1
        cos_moments.add(cos)
        abs_total += float(np.abs(cos - etf_cos).sum())
        chord = 2.0 - 2.0 * cos  # ‖p_c − p_c'‖² of unit vectors
        apart = chord > _RESOLUTION
        if not apart.all():
            coincident_dirs += int((~apart).sum())
            chord = chord[apart]
        log_moments.add(-0.5 * np.log(chord))
        if variances is not None:
            scale = pick(np.add.outer(sq[rows], sq[cols]))
            dist2 = scale - 2.0 * pick(gram)
            spread = pick(np.add.outer(variances[rows], variances[cols]))
            apart_means = dist2 > _RESOLUTION * scale
            if not apart_means.all():
                coincident_means += int((~apart_means).sum())
                dist2, spread = dist2[apart_means], spread[apart_means]
            spread /= 2.0 * dist2
            cdnv_total += float(spread.sum())
            spread /= dist2
            cdnv_lc_total += float(spread.sum())
    n_pairs = C * (C - 1) // 2
    mean_or_nan = (lambda total: total / n_pairs) if n_pairs else (lambda total: float("nan"))
    cdnv = float("inf") if coincident_means else mean_or_nan(cdnv_total)
    cdnv_lc = float("inf") if coincident_means else mean_or_nan(cdnv_lc_total)
    return PairStats(n_pairs=n_pairs, cos=cos_moments, abs_cos_plus=mean_or_nan(abs_total),
                     log_inv_dist=log_moments, n_coincident_directions=coincident_dirs,
                     cdnv=cdnv if variances is not None else float("nan"),
                     cdnv_lc=cdnv_lc if variances is not None else float("nan"),
                     n_coincident_means=coincident_means)
