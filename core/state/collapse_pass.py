"""The collapse family's part of the shared second pass: NC4 (the network's decision against the
nearest class mean, counted row by row) and the within scatter of the rows of classes dropped by
--min-count, from the first pass's class means."""

from __future__ import annotations

import numpy as np

from actgeom.core.base.stats import ClassStats, argmax_tiled


class Decisions:
    """The network's decision for every row of the block being read, made once and shared by a
    consumer and its jackknife twins (core/state/grouped_pass.py), which all read the same block
    in turn: the dump's predictions, or argmax(Wx + b) (``offsets`` b, or 0 for logits-nobias)."""

    def __init__(self):
        self.block = self.values = None

    def of(self, dump, mode: str, weight, offsets, start: int, X: np.ndarray) -> np.ndarray:
        if self.block != (start, X.shape[0], mode):
            self.block = (start, X.shape[0], mode)
            with np.errstate(invalid="ignore", over="ignore"):  # rows with NaN/inf are not used
                self.values = (dump.predictions(start, start + X.shape[0]) if mode == "predictions"
                               else argmax_tiled(X, weight, offsets))
        return self.values


class NC4Pass:
    """NC4 (network decision vs nearest class mean) and the scatter of dropped classes' rows.
    ``decisions``: a :class:`Decisions` shared with the consumers reading the same blocks."""

    def __init__(self, dump, stats: ClassStats, kept, dropped, mode: str | None, weight, bias,
                 decisions: Decisions | None = None):
        self.dump, self.mode, self.kept = dump, mode, kept
        self.decisions = decisions or Decisions()
        self.means = stats.means
        self.centre = self.means[kept].mean(axis=0)
        self.m = self.means[kept] - self.centre  # NCC on centred means: argmax x̃·m_c − ½‖m_c‖² (no offset cancellation)
        self.half_sq = -0.5 * np.einsum("ij,ij->i", self.m, self.m)
        self.weight = weight
        self.offsets = None if weight is None else (bias if mode == "logits" else np.zeros(weight.shape[0]))
        self.is_kept = np.zeros(self.means.shape[0], dtype=bool)
        self.is_kept[kept] = True
        multi = dropped[stats.counts[dropped] > 1]
        self.is_dropped = np.zeros(self.means.shape[0], dtype=bool)
        self.is_dropped[multi] = True
        self.dropped_scatter = np.zeros((self.means.shape[1],) * 2) if multi.size else None
        self.mismatches = self.considered = 0

    def update(self, start: int, X: np.ndarray, labels: np.ndarray, usable: np.ndarray) -> None:
        known = (labels >= 0) & (labels < self.means.shape[0])  # rows outside --tokens may carry labels never seen
        labelled = known & usable
        y = np.where(known, labels, 0)
        if self.dropped_scatter is not None:
            rows = labelled & self.is_dropped[y]
            dev = X[rows] - self.means[y[rows]]
            self.dropped_scatter += dev.T @ dev
        if self.mode is None:
            return
        rows = labelled & self.is_kept[y]
        ncc = self.kept[argmax_tiled(X[rows] - self.centre, self.m, self.half_sq)]
        network = self.decisions.of(self.dump, self.mode, self.weight, self.offsets, start, X)[rows]
        self.mismatches += int((network != ncc).sum())
        self.considered += int(rows.sum())

    def partial(self) -> dict:
        """What the rows seen so far added (plain values): a row range's part, for :meth:`merge`."""
        return {"dropped_scatter": self.dropped_scatter, "mismatches": self.mismatches, "considered": self.considered}

    def merge(self, part: dict) -> None:
        """Add the :meth:`partial` of another row range's consumer (made from the same statistics)."""
        if self.dropped_scatter is not None:
            self.dropped_scatter += part["dropped_scatter"]
        self.mismatches += part["mismatches"]
        self.considered += part["considered"]

    @property
    def mismatch(self) -> float | None:
        if self.mode is None:
            return None
        return self.mismatches / self.considered if self.considered else float("nan")
