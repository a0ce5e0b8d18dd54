"""The probe family's part of the shared second pass: the test rows (found again by the seeded
split of their unit) scored by every probe fitted on the train rows; with --shrinkage auto, the
validation rows choose the shrinkage; with --null K, the test rows scored again by the probes refitted
on the train rows under each label permutation, against the test rows' permuted labels.

Cost of the nulls: K refits (an LDA and a ridge solve of D×D each, plus the control task's LDA:
O(K·D³) once per layer) and, per test row, K scorings by each probe (O(K·C·D) per probe per row)."""

from __future__ import annotations

import numpy as np

from actgeom.core.metrics.probe import DEFAULT_SHRINKAGE, Confusion, ProbeOptions, lda_probe, ncc_probe, ridge_probe
from actgeom.core.metrics.probesplit import (
    control_classes,
    control_groups,
    control_stats,
    group_uniforms,
    is_test,
    is_validation,
    split_keys,
    unit_values,
)
from actgeom.core.state.accumulators import SplitSpec, SplitStats
from actgeom.core.state.accumulators.permutations import ROW_VECTOR
from actgeom.core.state.engine import RowVectors


class ProbeScores:
    """The probes fitted on a split's train rows and their counts on the test rows fed to :meth:`feed`.

    LDA and the control probe are fitted for each candidate shrinkage (one, unless --shrinkage
    auto); with auto, the validation rows score the candidates fitted on the other train rows,
    and the candidate with the best validation accuracy (ties: the larger s) is reported."""

    def __init__(self, split: SplitStats, options: ProbeOptions):
        self.options = options
        train = split.train
        self.counts = train.counts
        self.shrinkages = options.shrinkages
        self.lda = [lda_probe(train, s) for s in self.shrinkages]
        self.others = {"ridge": ridge_probe(train, options.ridge_lambda), "ncc": ncc_probe(train)}
        self.control = []
        if options.control is not None:
            groups = np.arange(split.groups.counts.size)
            classes = control_classes(group_uniforms(options.control, groups, options.seed), train.counts)
            control = control_stats(train, split.groups, classes)
            self.control = [lda_probe(control, s) for s in self.shrinkages]
        self.validate = split.fit is not None and (split.fit.counts > 0).sum() >= 2
        self.fits = [lda_probe(split.fit, s) for s in self.shrinkages] if self.validate else []
        self.validation_correct = np.zeros(len(self.shrinkages), dtype=np.int64)
        self.n_validation = 0
        self.lda_confusions = [Confusion() for _ in self.shrinkages]
        self.control_confusions = [Confusion() for _ in self.control]
        self.other_confusions = {name: Confusion() for name in self.others}
        kept = np.flatnonzero(train.counts > 0)
        self.pair = kept if kept.size == 2 else None  # AUROC: positive = the larger class index
        self._scores = [[] for _ in self.shrinkages]
        self._positive = []

    def feed(self, X: np.ndarray, labels: np.ndarray, labelled: np.ndarray, test: np.ndarray, units: np.ndarray,
             vectors: dict) -> None:
        """Count a block's rows: ``test`` and ``labelled`` say which rows are labelled test rows
        (``units``: their split units, ``vectors``: the block's row vectors, for the control task)."""
        if self.validate:
            validation = labelled & ~test & is_validation(units, self.options.seed)
            self.n_validation += int(validation.sum())
            for k, fit in enumerate(self.fits):
                self.validation_correct[k] += int((fit.predict(X[validation]) == labels[validation]).sum())
        test = test & labelled
        if not test.any():
            return
        X, y = X[test], labels[test]
        for name, probe in self.others.items():
            self.other_confusions[name].add(y, probe.predict(X))
        both = np.isin(y, self.pair) if self.pair is not None else None
        for k, probe in enumerate(self.lda):
            self.lda_confusions[k].add(y, probe.predict(X))
            if both is not None:
                scores = probe.scores(X[both])
                self._scores[k].append(scores[:, 1] - scores[:, 0])
        if both is not None:
            self._positive.append(y[both] == self.pair[1])
        if self.control:
            tokens = vectors["token_id"][test] if self.options.control == "token" else None
            groups = control_groups(self.options.control, units[test], tokens, self.options.seed)
            control = control_classes(group_uniforms(self.options.control, groups, self.options.seed), self.counts)
            for k, probe in enumerate(self.control):
                self.control_confusions[k].add(control, probe.predict(X))

    def partial(self) -> dict:
        """What the rows seen so far added (plain values): a row range's part, for :meth:`merge`."""
        return {"validation_correct": self.validation_correct, "n_validation": self.n_validation,
                "lda": [c.to_arrays() for c in self.lda_confusions], "control": [c.to_arrays() for c in self.control_confusions],
                "others": {name: c.to_arrays() for name, c in self.other_confusions.items()},
                "scores": self._scores, "positive": self._positive}

    def merge(self, part: dict) -> None:
        """Add the :meth:`partial` of the next row range's consumer (made from the same statistics);
        merged in row order, the test rows' scores stand in the order of one pass."""
        self.validation_correct = self.validation_correct + part["validation_correct"]
        self.n_validation += part["n_validation"]
        for mine, theirs in zip(self.lda_confusions + self.control_confusions, part["lda"] + part["control"]):
            mine.merge(Confusion.from_arrays(theirs))
        for name, confusion in self.other_confusions.items():
            confusion.merge(Confusion.from_arrays(part["others"][name]))
        for mine, theirs in zip(self._scores, part["scores"]):
            mine.extend(theirs)
        self._positive.extend(part["positive"])

    @property
    def chosen(self) -> int:
        """Which candidate shrinkage is reported: the best validation accuracy, ties to the larger s."""
        if not self.validate or self.n_validation == 0:
            return 0 if len(self.shrinkages) == 1 else self.shrinkages.index(DEFAULT_SHRINKAGE)  # nothing to choose with
        best = self.validation_correct.max()
        return int(np.flatnonzero(self.validation_correct == best)[-1])

    @property
    def confusions(self) -> dict:
        chosen = self.chosen
        confusions = {"lda": self.lda_confusions[chosen]} | self.other_confusions
        return confusions | ({"control": self.control_confusions[chosen]} if self.control else {})

    @property
    def binary_scores(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The LDA scores s₊ − s₋ of the two-class test rows and which are positive: O(test rows) memory."""
        if self.pair is None:
            return None
        scores = self._scores[self.chosen]
        return np.concatenate(scores or [np.zeros(0)]), np.concatenate(self._positive or [np.zeros(0, dtype=bool)])

    def fields(self) -> dict:
        """What the layer record says about the choice of s."""
        fields = {"shrinkage": self.shrinkages[self.chosen]}
        if self.options.shrinkage == "auto":
            fields["n_validation"] = self.n_validation
            fields["validation_accuracy"] = {str(s): (int(c) / self.n_validation if self.n_validation else None)
                                             for s, c in zip(self.shrinkages, self.validation_correct)}
        return fields


class ProbePass(ProbeScores):
    """Scores the test rows (found again by the keys of their unit, by the first pass's ``spec``)
    with every probe fitted on the train rows; with ``nulls`` and a split kept under label
    permutations (--null), also with the probes of each permutation k (:meth:`SplitStats.permutation`;
    None where its train rows hold fewer than 2 classes) against the permuted labels, in ``nulls[k]``."""

    def __init__(self, dump, split: SplitStats, options: ProbeOptions, row_offset: int, spec: SplitSpec,
                 nulls: bool = False):
        super().__init__(split, options)
        self.unit, self.row_offset = spec.split_by, row_offset
        permuted = nulls and split.permuted is not None
        names = spec.row_vectors if permuted else tuple(name for name in spec.row_vectors if name != ROW_VECTOR)
        self.vectors = RowVectors(dump, names, row_offset, spec.readers(dump) if permuted else None)
        self.nulls = [_scores(split.permutation(k), options) for k in range(split.permuted.permutations)] if permuted else []

    def update(self, start: int, X: np.ndarray, labels: np.ndarray, usable: np.ndarray) -> None:
        n, stop = X.shape[0], start + X.shape[0]
        vectors = self.vectors.read(start, stop)
        units = unit_values(self.unit, self.row_offset + start + np.arange(n), vectors)
        test = is_test(split_keys(units, self.options.seed), self.options.test_fraction)
        self.feed(X, labels, usable & (labels >= 0), test, units, vectors)
        if self.nulls:
            permuted = vectors[ROW_VECTOR]
            for k, null in enumerate(self.nulls):
                if null is not None:
                    null.feed(X, permuted[:, k], usable & (permuted[:, k] >= 0), test, units, vectors)

    def partial(self) -> dict:
        """What the rows seen so far added (plain values), the permutations' too: for :meth:`merge`."""
        return super().partial() | {"nulls": [None if null is None else null.partial() for null in self.nulls]}

    def merge(self, part: dict) -> None:
        """Add the :meth:`partial` of the next row range's consumer (made from the same statistics)."""
        super().merge(part)
        for null, theirs in zip(self.nulls, part["nulls"]):
            if null is not None:
                null.merge(theirs)


def _scores(split: SplitStats, options: ProbeOptions) -> ProbeScores | None:
    """The probes of a split (None when its train rows hold fewer than 2 classes: no probe to fit)."""
    return ProbeScores(split, options) if (split.train.counts > 0).sum() >= 2 else None
