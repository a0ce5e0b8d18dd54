"""The probe family: train-row class moments of a seeded split in one pass, the probes fitted in
closed form per layer and scored on the test rows in the shared second pass; concept directions
(difference of class means) per layer and their cosines between consecutive layers per file."""

from __future__ import annotations

import numpy as np

from actgeom.core.accumulators import SplitSpec, SplitStats
from actgeom.core.engine import RowVectors
from actgeom.core.errors import OptionError
from actgeom.core.family import DumpFacts, Family, LayerContext, LayerRecord
from actgeom.core.probe import (
    DEFAULT_SHRINKAGE,
    REGISTRY,
    Confusion,
    ProbeInputs,
    ProbeOptions,
    cosine,
    lda_probe,
    ncc_probe,
    ridge_probe,
)
from actgeom.core.probesplit import (
    control_classes,
    control_groups,
    control_stats,
    group_uniforms,
    is_test,
    is_validation,
    split_keys,
    split_unit,
    unit_values,
)
from actgeom.core.registry import evaluate


def needs(options: ProbeOptions, facts: DumpFacts) -> list:
    """The split by its resolved unit: "auto" is the sequence on token-level dumps, else the row."""
    return [SplitSpec(test_fraction=options.test_fraction, seed=options.seed,
                      split_by=split_unit(options.split_by, facts.token_level), control=options.control,
                      validation=options.shrinkage == "auto")]


def _split(ctx: LayerContext) -> SplitStats:
    return ctx.stats.get("split")


def second_pass(ctx: LayerContext, options: ProbeOptions):
    """The test-row consumer of the shared second pass (None without a dump, test rows or two classes)."""
    split = _split(ctx)
    if ctx.dump is None or split.n_test == 0 or (split.train.counts > 0).sum() < 2:
        return None
    return ProbePass(ctx.dump, split, options, ctx.pass_options.row_offset, ctx.stats.specs["split"])


class ProbePass:
    """Scores the test rows (found again by the keys of their unit, by the first pass's ``spec``)
    with every probe fitted on the train rows.

    LDA and the control probe are fitted for each candidate shrinkage (one, unless --shrinkage
    auto); with auto, the validation rows score the candidates fitted on the other train rows,
    and the candidate with the best validation accuracy (ties: the larger s) is reported."""

    def __init__(self, dump, split: SplitStats, options: ProbeOptions, row_offset: int, spec: SplitSpec):
        self.options, self.unit, self.row_offset = options, spec.split_by, row_offset
        self.vectors = RowVectors(dump, spec.row_vectors, row_offset)
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

    def update(self, start: int, X: np.ndarray, labels: np.ndarray, usable: np.ndarray) -> None:
        n, stop = X.shape[0], start + X.shape[0]
        vectors = self.vectors.read(start, stop)
        units = unit_values(self.unit, self.row_offset + start + np.arange(n), vectors)
        labelled = usable & (labels >= 0)
        test = is_test(split_keys(units, self.options.seed), self.options.test_fraction)
        if self.validate:
            validation = labelled & ~test & is_validation(units, self.options.seed)
            self.n_validation += int(validation.sum())
            for k, fit in enumerate(self.fits):
                self.validation_correct[k] += int((fit.predict(X[validation]) == labels[validation]).sum())
        test &= labelled
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


def _class(value: str, names: list[str] | None, option: str) -> int:
    """A class index from --positive/--negative: an index, or a label name of the dump."""
    if str(value).isdigit():
        return int(value)
    if names and value in names:
        return names.index(value)
    valid = f"; label names: {', '.join(names)}" if names else " (the dump has no label names)"
    raise OptionError(option, value, f"is not a class index or label name{valid}")


def direction_pair(ctx: LayerContext, options: ProbeOptions, counts: np.ndarray) -> tuple[tuple[int, int] | None, str]:
    """(positive, negative) class indices of the concept direction, or (None, why there is none)."""
    if options.positive is None:
        kept = np.flatnonzero(counts > 0)
        if kept.size != 2:
            return None, f"the direction needs two classes or --positive/--negative; the train rows have {kept.size}"
        return (int(kept[1]), int(kept[0])), ""
    names = ctx.dump.label_names() if ctx.dump is not None else None
    pair = (_class(options.positive, names, "positive"), _class(options.negative, names, "negative"))
    empty = [c for c in pair if c >= counts.size or counts[c] == 0]
    if empty:
        return None, f"class {empty[0]} has no train rows"
    return pair, ""


def layer(ctx: LayerContext, options: ProbeOptions) -> LayerRecord:
    split = _split(ctx)
    train = split.train
    counts = train.counts
    n_classes = int((counts > 0).sum())
    unit = ctx.stats.specs["split"].split_by
    fields = {"split_by": unit, "n_train": train.n, "n_test": split.n_test, "n_classes_train": n_classes}
    details = {"direction_layer": ctx.name}
    notes = []
    if options.split_by == "auto" and unit == "row" and ctx.dump is not None and ctx.dump.attrs.get("level") == "token":
        notes.append("a token-level dump without sequence offsets is split by row: tokens of one sequence may be "
                     "on both sides of the split (give --offsets, or --split-by sample_id)")
    if n_classes < 2:
        reason = f"{n_classes} class(es) with train rows; probes need 2" + \
            ("" if ctx.dump is None or ctx.dump.labels_path else ": no labels (give --labels)")  # unlabelled rows: one class
        return LayerRecord(unavailable=dict.fromkeys(REGISTRY, reason), notes=notes, fields=fields, details=details)
    consumer = ctx.second.get("probe")
    if consumer is not None:
        fields |= consumer.fields()
    missing = {}
    if consumer is None:
        missing["dump"] = ("scoring needs the test rows of a dump (a second pass); statistics from memory have none"
                           if ctx.dump is None else f"no test rows (--test-fraction {options.test_fraction})")
    pair, problem = direction_pair(ctx, options, counts)
    direction = None if pair is None else train.means[pair[0]] - train.means[pair[1]]
    if pair is not None:
        fields |= {"positive": pair[0], "negative": pair[1]}
        details["direction"] = direction
    inputs = ProbeInputs(counts=counts, confusions=None if consumer is None else consumer.confusions,
                         binary_scores=None if consumer is None else consumer.binary_scores, direction=direction,
                         direction_problem=problem, sigma_w_trace=float(np.trace(train.within_scatter)) / train.n)
    values, unavailable = evaluate(REGISTRY, inputs, options, missing)
    return LayerRecord(metrics=values, unavailable=unavailable, notes=notes, fields=fields, details=details)


def file_record(records: list[LayerRecord], options: ProbeOptions) -> dict:
    """Cosines of the concept directions of consecutive layers (None where widths differ or a
    layer has no direction)."""
    pairs = zip(records, records[1:])
    return {"direction_cosines": [{"layers": [a.details["direction_layer"], b.details["direction_layer"]],
                                   "cosine": cosine(a.details.get("direction"), b.details.get("direction"))}
                                  for a, b in pairs]}


def across_files(files: list[dict]) -> list[dict]:
    """Per layer, the cosine between the concept directions of consecutive files (checkpoints,
    base vs tuned) of a document whose layers keep ``details["direction"]`` (None where absent)."""
    directions = [{layer["layer"]: _vector(layer.get("details", {}).get("direction")) for layer in file["layers"]}
                  for file in files]
    return [{"layer": name, "files": [a["file"], b["file"]], "cosine": cosine(first[name], second.get(name))}
            for a, b, first, second in zip(files, files[1:], directions, directions[1:]) for name in first if name in second]


def _vector(direction) -> np.ndarray | None:
    """A direction as an array (a cached document holds it as a list)."""
    return None if direction is None else np.asarray(direction, dtype=np.float64)


FAMILY = Family(name="probe", options_class=ProbeOptions, metrics=REGISTRY, needs=needs, layer=layer,
                second_pass=second_pass, file_record=file_record)
