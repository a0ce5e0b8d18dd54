"""The probe family: train-row class moments of a seeded split in one pass, the probes fitted in
closed form per layer and scored on the test rows in the shared second pass; concept directions
(difference of class means) per layer and their cosines between consecutive layers per file."""

from __future__ import annotations

import numpy as np

from actgeom.core.base.errors import OptionError
from actgeom.core.base.registry import evaluate
from actgeom.core.families.protocol import DumpFacts, Family, LayerContext, LayerRecord
from actgeom.core.metrics.probe import REGISTRY, ProbeInputs, ProbeOptions, cosine
from actgeom.core.metrics.probesplit import split_unit
from actgeom.core.state.accumulators import SplitSpec, SplitStats
from actgeom.core.state.grouped_pass import with_twins
from actgeom.core.state.probe_pass import ProbePass


def needs(options: ProbeOptions, facts: DumpFacts) -> list:
    """The split by its resolved unit: "auto" is the sequence on token-level dumps, else the row."""
    return [SplitSpec(test_fraction=options.test_fraction, seed=options.seed,
                      split_by=split_unit(options.split_by, facts.token_level), control=options.control,
                      validation=options.shrinkage == "auto")]


def _split(ctx: LayerContext) -> SplitStats:
    return ctx.stats.get("split")


def second_pass(ctx: LayerContext, options: ProbeOptions):
    """The test-row consumer of the shared second pass (None without a dump, test rows or two
    classes); on grouped statistics with the twins that leave each jackknife group out of the
    train and the test rows (core/state/grouped_pass.py). With --null, the consumer (not its twins)
    also scores the probes of every label permutation (core/nulls.py reads them)."""
    def scorer(stats) -> ProbePass | None:
        split = stats.get("split")
        if ctx.dump is None or split.n_test == 0 or (split.train.counts > 0).sum() < 2:
            return None
        return ProbePass(ctx.dump, split, options, ctx.pass_options.row_offset, stats.specs["split"],
                         nulls=stats is ctx.stats)

    return with_twins(ctx.stats, ("split",), scorer, ctx.dump, ctx.pass_options)


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
