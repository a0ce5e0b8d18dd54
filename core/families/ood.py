"""The ood family: the ID fit rows' class and total moments and a seeded sample in one pass; the
model of core/metrics/ood.py per layer; one pass over the ID test dump and each OOD dump scoring
every row (core/state/ood_pass.py); AUROC, AUPR-In/Out, FPR95 per score and NC5 per OOD set.

The layer record holds one block of metrics per OOD set (``fields["sets"]``); :func:`per_set`
turns a document of the fit dump into one file entry per OOD set, which the ood command prints.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from actgeom.core.base.errors import InvalidInputError, OptionError
from actgeom.core.base.options import OodOptions
from actgeom.core.base.outputs import atomic_output, check_output
from actgeom.core.base.registry import evaluate
from actgeom.core.families.protocol import DumpFacts, Family, LayerContext, LayerRecord
from actgeom.core.metrics.ood import REGISTRY, OodSet, fit, nc5, vim_alpha, vim_residual_norms
from actgeom.core.metrics.probesplit import split_unit
from actgeom.core.state.accumulators import FitSplitSpec, MomentsSpec, SampleSpec
from actgeom.core.state.ood_pass import HeldOut, OodPass

NO_CLASSIFIER = "needs the classifier (/classifier weight and bias) of this layer"


def needs(options: OodOptions, facts: DumpFacts) -> list:
    if options.fit_split is not None:  # whole sequences held out on token-level dumps
        return [FitSplitSpec(test_fraction=options.fit_split, seed=options.seed, sample_size=options.knn_sample,
                             split_by=split_unit("auto", facts.token_level))]
    return [MomentsSpec(by_class=True, all_rows=True), SampleSpec(size=options.knn_sample, seed=options.seed)]


def fit_stats(ctx: LayerContext, options: OodOptions):
    """(the fit rows' moments, their seeded sample): every row of the dump, or with --fit-split
    the rows not held out."""
    if options.fit_split is not None:
        split = ctx.stats.get("fitsplit")
        return split.moments, split.sample
    return ctx.stats.get("moments"), ctx.stats.get("sample")


def _dims(n_units: int, options: OodOptions) -> tuple[int, int]:
    """ViM's and NECO's principal dimensions (ViM's authors' rule when not given), at most D − 1."""
    rule = 1000 if n_units >= 2048 else 512 if n_units >= 768 else max(n_units // 2, 1)
    vim = min(options.vim_dim or rule, n_units - 1)
    return max(vim, 1), min(options.neco_dim or rule, n_units)


def model_of(ctx: LayerContext, options: OodOptions):
    """The layer's OOD model: fitted on the fit dump's statistics; ViM's α from the seeded sample."""
    moments, reservoir = fit_stats(ctx, options)
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


def second_pass(ctx: LayerContext, options: OodOptions):
    """The consumer scoring the ID test rows (the --test dump, or the held-out rows of this one in
    its own second pass) and each OOD dump."""
    if ctx.dump is None or not options.ood or (options.test is None and options.fit_split is None):
        return None
    sets = {path: path for path in options.ood}
    if options.fit_split is None:
        return OodPass(model_of(ctx, options), {"test": options.test} | sets, keep_rows=ctx.details)
    spec = ctx.stats.specs["fitsplit"]
    held = HeldOut(ctx.dump, spec.split_by, spec.seed, spec.test_fraction, ctx.pass_options.row_offset)
    return OodPass(model_of(ctx, options), sets, held_out=held, keep_rows=ctx.details)


def layer(ctx: LayerContext, options: OodOptions) -> LayerRecord:
    consumer: OodPass | None = ctx.second.get("ood")
    if consumer is None:
        return LayerRecord(unavailable=dict.fromkeys(REGISTRY, "needs --test and at least one --ood dump"))
    missing = {}
    if ctx.classifier is None:
        missing["weight"] = missing["bias"] = ctx.classifier_problem or NO_CLASSIFIER
    moments, sample = fit_stats(ctx, options)
    if int((moments.classes.counts > 0).sum()) < 2:
        missing["labels"] = "needs labels of at least 2 classes among the fit rows (--labels)"
    if sample.n_rows == 0:
        missing["sample"] = "needs --knn-sample ≥ 1 fit rows"
    _check_rows(consumer, ctx, options)
    id_scores = consumer.scores("test")
    sets = {}
    for path in consumer.dumps:
        if path == "test":
            continue
        inputs = OodSet(id_scores=id_scores, ood_scores=consumer.scores(path),
                        nc5=None if "labels" in missing else nc5(consumer.mean(path), consumer.model))
        values, unavailable = evaluate(REGISTRY, inputs, options, missing)
        sets[path] = {"metrics": values, "unavailable": unavailable, "n_rows": consumer.n_rows(path)}
    fields = {"n_fit_rows": int(moments.total.counts.sum()), "n_test_rows": consumer.n_rows("test"), "sets": sets,
              "vim_dim": _dims(ctx.n_units, options)[0], "neco_dim": _dims(ctx.n_units, options)[1],
              "vim_alpha": consumer.model.vim_alpha}
    details = {}
    if ctx.details:  # --scores: every scored row's scores, by scored dump
        test = options.test or str(ctx.dump.path)
        details = {"ood_scores": [{"dump": test if label == "test" else label, "role": "id_test" if label == "test" else "ood",
                                   "rows": consumer.rows(label), "scores": consumer.scores(label)}
                                  for label in ["test", *options.ood]]}
    return LayerRecord(fields=fields, details=details)


def _check_rows(consumer: OodPass, ctx: LayerContext, options: OodOptions) -> None:
    """Every scored set has rows (AUROC and its kin compare two non-empty sets), else one line naming it."""
    for label in ["test", *consumer.dumps]:
        if consumer.n_rows(label) == 0:
            what = (f"--ood {label}" if label != "test" else f"--test {options.test}" if options.test is not None
                    else f"--fit-split {options.fit_split} (it held out none of the fit rows: raise it)")
            raise InvalidInputError(f"{what}: no rows to score in layer '{ctx.name}' (selected by --tokens, finite)")


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
                layers.append({k: v for k, v in layer.items() if k not in ("ood", "metrics", "unavailable", "details")}
                              | {"metrics": found["metrics"], "unavailable": found["unavailable"], "n_ood_rows": found["n_rows"],
                                 "n_fit_rows": layer["ood"]["n_fit_rows"], "n_test_rows": layer["ood"]["n_test_rows"],
                                 "ood": {k: v for k, v in layer["ood"].items() if k != "sets"}})
            files.append({"file": path, "fit_file": entry["file"], "test_file": options["test"] or entry["file"],
                          "checkpoint": entry["checkpoint"], "step": entry["step"], "model": entry["model"], "layers": layers})
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
