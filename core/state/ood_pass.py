"""The ood family's second pass: every row of each scored dump (the ID test rows, each OOD set)
scored by the model fitted on the ID fit rows (core/metrics/ood.py), and the OOD rows' sum for NC5.

It reads other dumps than the one its statistics come from (``dumps``: label → path), one pass
over each, the layer of the same name; with ``--fit-split`` the ID test rows are the held-out rows
of the fit dump itself (:class:`HeldOut`), scored in that dump's own second pass (``own_dump``).
Scores are kept per row (8 bytes × scores × rows scored) because AUROC and its kin are exact
functions of every score.

With --ci, :class:`OodTwins` feeds the consumer and its G leave-one-group-out twins (each a model
fitted without group g, core/state/grouped_pass.py): twin g scores only the rows outside group g
of each scored dump, the groups of that dump's own sampling units (its rows, or its whole
sequences), so each scored dump is grouped as if its rows were the fit dump's.
"""

from __future__ import annotations

import numpy as np

from actgeom.core.dump import Dump, DumpSpec
from actgeom.core.metrics.ood import OodModel, held_out, scores
from actgeom.core.metrics.probesplit import unit_values
from actgeom.core.state.engine import PassOptions, RowVectors
from actgeom.core.state.grouped_pass import LeftOutPass
from actgeom.core.state.groups import SamplingUnits


class HeldOut:
    """Finds the fit dump's held-out rows again in its second pass (core/metrics/ood.py :func:`held_out`):
    the keys of their units, read block by block (``row_offset``: a shard's first global row)."""

    def __init__(self, dump, split_by: str, seed: int, fraction: float, row_offset: int = 0):
        self.split_by, self.seed, self.fraction, self.row_offset = split_by, seed, fraction, row_offset
        self.vectors = RowVectors(dump, () if split_by == "row" else (split_by,), row_offset)

    def mask(self, start: int, n: int) -> np.ndarray:
        vectors = self.vectors.read(start, start + n)
        return held_out(unit_values(self.split_by, self.row_offset + start + np.arange(n), vectors), self.seed, self.fraction)


class OodPass:
    """Every score of every row of the ID test rows ("test") and of each OOD dump, and their sums."""

    def __init__(self, model: OodModel, dumps: dict[str, str], held_out: HeldOut | None = None, keep_rows: bool = False):
        self.model, self.dumps, self.held_out = model, dumps, held_out
        self.own_dump = held_out is not None  # the fit dump read again only for its held-out rows
        labels = ["test", *dumps]
        self._scores: dict[str, dict[str, list[np.ndarray]]] = {label: {} for label in labels}
        self._sums = {label: np.zeros(model.global_mean.size) for label in labels}
        self._counts = dict.fromkeys(labels, 0)
        self._rows: dict[str, list[np.ndarray]] | None = {label: [] for label in labels} if keep_rows else None
        self._reading: str | None = "test"  # the own second pass (held-out rows) comes before the other dumps

    def reading(self, label: str) -> OodPass:
        """This consumer, fed the rows of the dump ``label`` next."""
        self._reading = label
        return self

    def update(self, start: int, X: np.ndarray, labels: np.ndarray, usable: np.ndarray) -> None:
        self.add(start, X, usable & self.scored(start, X.shape[0]))

    def scored(self, start: int, n: int) -> np.ndarray | bool:
        """Which rows of a block of the dump being read are to be scored (the held-out ones of the
        fit dump, all of any other dump)."""
        if self.held_out is not None and self._reading == "test":
            return self.held_out.mask(start, n)
        return True

    def add(self, start: int, X: np.ndarray, usable: np.ndarray) -> None:
        """Score the rows ``usable`` of a block (read from row ``start`` of the dump being read)."""
        rows = X[usable]
        if self._rows is not None:  # the row numbers in the dump file, for --scores
            self._rows[self._reading].append(start + np.flatnonzero(usable))
        for name, values in scores(self.model, rows).items():
            self._scores[self._reading].setdefault(name, []).append(values)
        self._sums[self._reading] += rows.sum(axis=0)
        self._counts[self._reading] += rows.shape[0]

    def partial(self) -> dict:
        """What this consumer holds (plain values), for :meth:`merge` (a Dask task's row range)."""
        return {"scores": {label: self.scores(label) for label in self._scores}, "sums": self._sums,
                "counts": self._counts, "rows": None if self._rows is None else {label: self.rows(label) for label in self._rows}}

    def merge(self, part: dict) -> None:
        """Add the :meth:`partial` of the next row range (made from the same statistics)."""
        for label, named in part["scores"].items():
            for name, values in named.items():
                self._scores[label].setdefault(name, []).append(np.asarray(values))
            self._sums[label] = self._sums[label] + np.asarray(part["sums"][label])
            self._counts[label] += int(part["counts"][label])
            if self._rows is not None:
                self._rows[label].append(np.asarray(part["rows"][label], dtype=np.int64))

    def scores(self, label: str) -> dict[str, np.ndarray]:
        """Every score of every row of dump ``label``, in row order."""
        return {name: np.concatenate(parts) for name, parts in self._scores[label].items()}

    def rows(self, label: str) -> np.ndarray:
        """The row number (in its dump file) of every scored row of dump ``label`` (kept with ``keep_rows``)."""
        return np.concatenate(self._rows[label]) if self._rows[label] else np.zeros(0, dtype=np.int64)

    def n_rows(self, label: str) -> int:
        return self._counts[label]

    def mean(self, label: str) -> np.ndarray:
        return self._sums[label] / max(self._counts[label], 1)


class OodTwins(LeftOutPass):
    """An :class:`OodPass` and its G twins (:class:`LeftOutPass`), grouping the rows of each dump it
    reads by that dump's own sampling units; the held-out mask of --fit-split made once per block."""

    def __init__(self, consumer: OodPass, twins: list, units: SamplingUnits, layer: str, pass_options: PassOptions):
        super().__init__(consumer, twins, units)
        self.layer, self.group_options = layer, PassOptions(ci_groups=pass_options.ci_groups, ci_seed=pass_options.ci_seed)

    def reading(self, label: str) -> OodTwins:
        """The consumer and its twins, fed the rows of the dump ``label`` next, grouped by its own units."""
        with Dump(self.consumer.dumps[label], DumpSpec(layers=(self.layer,))) as dump:
            self.units = SamplingUnits(dump, self.group_options)  # its rows (or sequences) from 0: no row offset
        for part in [self.consumer, *self.twins]:
            if part is not None:
                part.reading(label)
        return self

    def update(self, start: int, X: np.ndarray, labels: np.ndarray, usable: np.ndarray) -> None:
        usable = usable & self.consumer.scored(start, X.shape[0])
        self.consumer.add(start, X, usable)
        groups = self.units.groups(start, start + X.shape[0])
        for g, twin in enumerate(self.twins):
            if twin is not None:
                twin.add(start, X, usable & (groups != g))
