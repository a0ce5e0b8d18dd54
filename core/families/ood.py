"""The ood family: the ID fit rows' class and total moments and a seeded sample in one pass; the
model of core/metrics/ood.py per layer; one pass over the ID test dump and each OOD dump scoring
every row (core/state/ood_pass.py); AUROC, AUPR-In/Out, FPR95 per score and NC5 per OOD set.

The layer record holds one block of metrics per OOD set (``fields["sets"]``); :func:`per_set`
turns a document of the fit dump into one file entry per OOD set, which the ood command prints.
"""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import numpy as np

from actgeom.core.base.errors import InvalidInputError, OptionError
from actgeom.core.base.options import OodOptions
from actgeom.core.base.outputs import atomic_output, check_output
from actgeom.core.base.registry import evaluate
from actgeom.core.dump import Dump, DumpSpec
from actgeom.core.dump.validate import memory_bytes
from actgeom.core.families.protocol import DumpFacts, Family, LayerContext, LayerRecord
from actgeom.core.metrics.ood import REGISTRY, SCORES, OodSet, fit, nc5, vim_alpha, vim_residual_norms
from actgeom.core.metrics.probesplit import split_unit
from actgeom.core.metrics.uncertainty import collect, finite, jackknife
from actgeom.core.state.accumulators import FitSplitSpec, MomentsSpec, SampleSpec
from actgeom.core.state.grouped_pass import with_twins
from actgeom.core.state.ood_pass import HeldOut, OodPass, OodTwins

NO_CLASSIFIER = "needs the classifier (/classifier weight and bias) of this layer"


def needs(options: OodOptions, facts: DumpFacts) -> list:
    if options.fit_split is not None:  # whole sequences held out on token-level dumps
        return [FitSplitSpec(test_fraction=options.fit_split, seed=options.seed, sample_size=options.knn_sample,
                             split_by=split_unit("auto", facts.token_level))]
    return [MomentsSpec(by_class=True, all_rows=True), SampleSpec(size=options.knn_sample, seed=options.seed)]


def fit_stats(stats, options: OodOptions):
    """(the fit rows' moments, their seeded sample) of a layer's statistics: every row of the dump,
    or with --fit-split the rows not held out."""
    if options.fit_split is not None:
        split = stats.get("fitsplit")
        return split.moments, split.sample
    return stats.get("moments"), stats.get("sample")


def _dims(n_units: int, options: OodOptions) -> tuple[int, int]:
    """ViM's and NECO's principal dimensions (ViM's authors' rule when not given), at most D − 1."""
    rule = 1000 if n_units >= 2048 else 512 if n_units >= 768 else max(n_units // 2, 1)
    vim = min(options.vim_dim or rule, n_units - 1)
    return max(vim, 1), min(options.neco_dim or rule, n_units)


def model_of(ctx: LayerContext, stats, options: OodOptions):
    """The layer's OOD model fitted on ``stats`` (the fit dump's, or those without a jackknife
    group); ViM's α from their seeded sample."""
    moments, reservoir = fit_stats(stats, options)
    weight, bias = ctx.classifier if ctx.classifier is not None else (None, None)
    _, _, sample = reservoir.sample(options.knn_sample)
    sample = sample.astype(np.float64)
    vim_dim, neco_dim = _dims(ctx.n_units, options)
    model = fit(moments.classes, moments.total, weight=weight, bias=bias, vim_dim=vim_dim, neco_dim=neco_dim,
                knn_sample=sample if sample.shape[0] else None, knn_k=options.knn_k, temperature=options.temperature)
    if model.vim_residual is not None and sample.shape[0]:
        logits = sample @ weight.T + bias
        alpha = vim_alpha(logits.max(axis=1).mean(), vim_residual_norms(model, sample).mean())
        model = type(model)(**{**model.__dict__, "vim_alpha": alpha})
    return model


def _fit_facts(stats, options: OodOptions) -> dict:
    """What the metrics' needs read of the fit rows: their number, classes with rows, sampled rows."""
    moments, sample = fit_stats(stats, options)
    return {"n_fit_rows": int(moments.total.counts.sum()), "n_classes": int((moments.classes.counts > 0).sum()),
            "n_sampled": sample.n_rows}


def second_pass(ctx: LayerContext, options: OodOptions):
    """The consumer scoring the ID test rows (the --test dump, or the held-out rows of this one in
    its own second pass) and each OOD dump; on grouped statistics (--ci) with its G twins, each
    the model fitted without one jackknife group, scoring the rows outside it (:class:`OodTwins`)."""
    if ctx.dump is None or not options.ood or (options.test is None and options.fit_split is None):
        return None
    sets = {path: path for path in options.ood}
    held, dumps = None, {"test": options.test} | sets
    if options.fit_split is not None:
        spec = ctx.stats.specs["fitsplit"]
        held, dumps = HeldOut(ctx.dump, spec.split_by, spec.seed, spec.test_fraction, ctx.pass_options.row_offset), sets

    def make(stats) -> OodPass:
        consumer = OodPass(model_of(ctx, stats, options), dumps, held_out=held, keep_rows=stats is ctx.stats)
        consumer.fit_facts = _fit_facts(stats, options)
        return consumer

    slots = ("fitsplit",) if options.fit_split is not None else ("moments", "sample")
    wrap = functools.partial(OodTwins, layer=ctx.name, pass_options=ctx.pass_options)
    return with_twins(ctx.stats, slots, make, ctx.dump, ctx.pass_options, wrap=wrap)


def layer(ctx: LayerContext, options: OodOptions) -> LayerRecord:
    """The layer's fields, one block of metrics per OOD set (``sets``) and, with --ci, each block's
    intervals from the consumer's twins (:func:`_intervals`). A replicate of core/inference.py
    gets an empty record: the family's metrics are in ``sets``, their intervals made here."""
    consumer: OodPass | None = ctx.second.get("ood")
    if ctx.replicate:
        return LayerRecord()
    if consumer is None:
        return LayerRecord(unavailable=dict.fromkeys(REGISTRY, "needs --test and at least one --ood dump"))
    _check_rows(consumer, ctx, options)
    sets = set_metrics(consumer, ctx, options)
    if isinstance(consumer, OodTwins):
        _intervals(sets, consumer, ctx, options)
    facts = consumer.fit_facts
    fields = {"n_fit_rows": facts["n_fit_rows"], "n_test_rows": consumer.n_rows("test"), "sets": sets,
              "vim_dim": _dims(ctx.n_units, options)[0], "neco_dim": _dims(ctx.n_units, options)[1],
              "vim_alpha": consumer.model.vim_alpha}
    details = {}
    if ctx.details:  # --scores: every scored row's scores, by scored dump
        test = options.test or str(ctx.dump.path)
        details = {"ood_scores": [{"dump": test if label == "test" else label, "role": "id_test" if label == "test" else "ood",
                                   "rows": consumer.rows(label), "scores": consumer.scores(label)}
                                  for label in ["test", *options.ood]]}
    return LayerRecord(fields=fields, details=details)


def set_metrics(consumer: OodPass, ctx: LayerContext, options: OodOptions) -> dict:
    """{OOD set: {"metrics", "unavailable", "n_rows"}} of a consumer (or of one of its twins)."""
    missing = {}
    if ctx.classifier is None:
        missing["weight"] = missing["bias"] = ctx.classifier_problem or NO_CLASSIFIER
    if consumer.fit_facts["n_classes"] < 2:
        missing["labels"] = "needs labels of at least 2 classes among the fit rows (--labels)"
    if consumer.fit_facts["n_sampled"] == 0:
        missing["sample"] = "needs --knn-sample ≥ 1 fit rows"
    id_scores = consumer.scores("test")
    sets = {}
    for path in consumer.dumps:
        if path == "test":
            continue
        n_rows = consumer.n_rows(path)
        if n_rows == 0 or consumer.n_rows("test") == 0:  # only a twin: the command refuses empty sets
            empty = "OOD" if n_rows == 0 else "ID test"
            sets[path] = {"metrics": {}, "unavailable": dict.fromkeys(REGISTRY, f"no {empty} rows"), "n_rows": n_rows}
            continue
        inputs = OodSet(id_scores=id_scores, ood_scores=consumer.scores(path),
                        nc5=None if "labels" in missing else nc5(consumer.mean(path), consumer.model))
        values, unavailable = evaluate(REGISTRY, inputs, options, missing)
        sets[path] = {"metrics": values, "unavailable": unavailable, "n_rows": n_rows}
    return sets


def _intervals(sets: dict, consumer: OodTwins, ctx: LayerContext, options: OodOptions) -> None:
    """Each set's ``intervals`` {metric: se, ci_low, ci_high, bias} and ``intervals_unavailable``
    {metric: why}: the delete-a-group jackknife (core/metrics/uncertainty.py) of each metric from its
    values on twin g (the model fitted without group g, scoring the rows outside it) for g = 0 … G−1."""
    values, reasons = {}, {}
    for path, found in sets.items():
        reasons[path] = {metric: "not a finite number" for metric, value in found["metrics"].items() if not finite(value)}
        values[path] = {metric: [] for metric in found["metrics"] if metric not in reasons[path]}
    for g, twin in enumerate(consumer.twins):
        twin_sets = {} if twin is None else set_metrics(twin, ctx, options)
        for path in sets:
            got = twin_sets.get(path, {"metrics": {}, "unavailable": {}})
            collect(values[path], reasons[path], got["metrics"], got["unavailable"], f"without jackknife group {g}",
                    "its value is not finite without one group")
    for path, found in sets.items():
        found["intervals"] = {metric: jackknife(float(found["metrics"][metric]), kept) for metric, kept in values[path].items()}
        found["intervals_unavailable"] = reasons[path]


def _check_rows(consumer: OodPass, ctx: LayerContext, options: OodOptions) -> None:
    """Every scored set has rows (AUROC and its kin compare two non-empty sets), else one line naming it."""
    for label in ["test", *consumer.dumps]:
        if consumer.n_rows(label) == 0:
            what = (f"--ood {label}" if label != "test" else f"--test {options.test}" if options.test is not None
                    else f"--fit-split {options.fit_split} (it held out none of the fit rows: raise it)")
            raise InvalidInputError(f"{what}: no rows to score in layer '{ctx.name}' (selected by --tokens, finite)")


def check_memory(fit_paths: list, options: OodOptions, groups: int) -> None:
    """Refuse before any pass a --ci whose scores would not fit: while a layer is scored, every
    scored row's scores are kept G + 1 times (the model and its G twins), 8 bytes × (scores + 1)
    per row and copy (the first pass's statistics in groups: core/state/groups.py check_groups)."""
    scored = [*([] if options.test is None else [options.test]), *options.ood, *(fit_paths if options.fit_split else [])]
    n_rows = 0
    for path in scored:
        with Dump(path, DumpSpec(describe_only=True)) as dump:
            n_rows += dump.n_rows
    each = n_rows * (len(SCORES) + 1) * 8
    need, have = (groups + 1) * each, memory_bytes()
    if need > have:
        fits = have // max(each, 1) - 1
        hint = f"--ci-groups {fits} would fit" if fits >= 2 else "no number of groups fits; score fewer rows or --layers"
        raise OptionError("ci_groups", groups, f"keeps every scored row's scores {groups} + 1 times: about "
                          f"{need / 2**20:.1f} MiB for {n_rows} rows, more than this machine's {have / 2**20:.1f} MiB; {hint}")


SET_KEYS = ("ood", "metrics", "unavailable", "details", "intervals", "intervals_unavailable")  # per OOD set in ``sets``


def per_set(document: dict) -> dict:
    """A document of the fit dump(s) → one file entry per (fit dump, OOD set), each layer's metrics
    those of the set; the fit and test dumps named in each."""
    files = []
    for entry in document["files"]:
        options = document["options"]["ood"]
        for path in options["ood"]:
            layers = []
            for layer in entry["layers"]:
                found = layer["ood"]["sets"][path]
                layers.append({k: v for k, v in layer.items() if k not in SET_KEYS}
                              | {"metrics": found["metrics"], "unavailable": found["unavailable"], "n_ood_rows": found["n_rows"],
                                 "n_fit_rows": layer["ood"]["n_fit_rows"], "n_test_rows": layer["ood"]["n_test_rows"],
                                 "ood": {k: v for k, v in layer["ood"].items() if k != "sets"}}
                              | {k: found[k] for k in ("intervals", "intervals_unavailable") if k in found})
            files.append({"file": path, "fit_file": entry["file"], "test_file": options["test"] or entry["file"],
                          "checkpoint": entry["checkpoint"], "step": entry["step"], "model": entry["model"], "layers": layers}
                         | {k: entry[k] for k in ("sampling_unit",) if k in entry})
    return document | {"files": files}


SCORE_FORMATS = (".jsonl", ".csv", ".npz")
TEXT_COLUMNS = ("fit_dump", "dump", "role", "layer")


def check_scores_path(path, inputs) -> None:
    """--scores: a new file (never an input) whose suffix names its format."""
    if Path(path).suffix.lower() not in SCORE_FORMATS:
        raise OptionError("scores", str(path), f"must end in {', '.join(SCORE_FORMATS)} (the format of the file)")
    check_output(path, inputs, option="--scores")


def score_columns(document: dict) -> dict[str, np.ndarray]:
    """Every scored row of a document made with details (one row per scored row × layer × fit dump):
    fit_dump, dump, role ("id_test" | "ood"), layer, row (its number in its dump file) and one column
    per score (NaN where a layer has no such score)."""
    blocks = [(entry["file"], layer["layer"], part) for entry in document["files"] for layer in entry["layers"]
              for part in layer.get("details", {}).get("ood_scores", [])]
    names = list(dict.fromkeys(name for _, _, part in blocks for name in part["scores"]))
    named = [{"fit_dump": fit, "dump": part["dump"], "role": part["role"], "layer": layer} for fit, layer, part in blocks]
    sizes = [part["rows"].size for _, _, part in blocks]
    text = {key: np.repeat(np.array([block[key] for block in named], dtype=str), sizes) for key in TEXT_COLUMNS}
    numbers = {"row": np.concatenate([part["rows"] for _, _, part in blocks] or [np.zeros(0, dtype=np.int64)])}
    for name in names:
        numbers[name] = np.concatenate([part["scores"].get(name, np.full(part["rows"].size, np.nan))
                                        for _, _, part in blocks] or [np.zeros(0)])
    return text | numbers


def write_scores(path, document: dict, inputs) -> None:
    """--scores PATH: :func:`score_columns` as .jsonl (one object per row, NaN scores left out), .csv
    (empty cells for NaN) or .npz (one array per column), written atomically."""
    columns = score_columns(document)
    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        with atomic_output(path, inputs, option="--scores") as handle:
            np.savez(handle, **columns)
        return
    keys, n = list(columns), columns["row"].size
    values = [columns[key].tolist() for key in keys]
    with atomic_output(path, inputs, text=True, option="--scores") as handle:
        if suffix == ".csv":
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(keys)
            writer.writerows([["" if v != v else v for v in row] for row in zip(*values)])
            return
        for i in range(n):
            handle.write(json.dumps({key: column[i] for key, column in zip(keys, values) if column[i] == column[i]}) + "\n")


FAMILY = Family(name="ood", options_class=OodOptions, metrics=REGISTRY, needs=needs, layer=layer, second_pass=second_pass)
