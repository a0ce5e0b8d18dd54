"""The ood family's second pass: every row of each scored dump (the ID test rows, each OOD set)
scored by the model fitted on the ID fit rows (core/metrics/ood.py), and the OOD rows' sum for NC5.

It reads other dumps than the one its statistics come from (``dumps``: label → path; ``own_dump``
False), one pass over each, the layer of the same name. Scores are kept per row (8 bytes × scores ×
rows scored) because AUROC and its kin are exact functions of every score.
"""

from __future__ import annotations

import numpy as np

from actgeom.core.metrics.ood import OodModel, scores


class OodPass:
    own_dump = False  # the fit dump is not read again

    def __init__(self, model: OodModel, dumps: dict[str, str]):
        self.model, self.dumps = model, dumps
        self._scores: dict[str, dict[str, list[np.ndarray]]] = {label: {} for label in dumps}
        self._sums = {label: np.zeros(model.global_mean.size) for label in dumps}
        self._counts = dict.fromkeys(dumps, 0)
        self._reading: str | None = None

    def reading(self, label: str) -> OodPass:
        """This consumer, fed the rows of the dump ``label`` next."""
        self._reading = label
        return self

    def update(self, start: int, X: np.ndarray, labels: np.ndarray, usable: np.ndarray) -> None:
        rows = X[usable]
        for name, values in scores(self.model, rows).items():
            self._scores[self._reading].setdefault(name, []).append(values)
        self._sums[self._reading] += rows.sum(axis=0)
        self._counts[self._reading] += rows.shape[0]

    def scores(self, label: str) -> dict[str, np.ndarray]:
        """Every score of every row of dump ``label``, in row order."""
        return {name: np.concatenate(parts) for name, parts in self._scores[label].items()}

    def n_rows(self, label: str) -> int:
        return self._counts[label]

    def mean(self, label: str) -> np.ndarray:
        return self._sums[label] / max(self._counts[label], 1)
