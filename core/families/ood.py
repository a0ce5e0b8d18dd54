"""The ood family: the ID fit rows' class and total moments and a seeded sample in one pass; the
model of core/metrics/ood.py per layer; one pass over the ID test dump and each OOD dump scoring
every row (core/state/ood_pass.py); AUROC, AUPR-In/Out, FPR95 per score and NC5 per OOD set.

The layer record holds one block of metrics per OOD set (``fields["sets"]``); :func:`per_set`
turns a document of the fit dump into one file entry per OOD set, which the ood command prints.
"""

from __future__ import annotations

import numpy as np

from actgeom.core.base.options import OodOptions
from actgeom.core.base.registry import evaluate
from actgeom.core.families.protocol import DumpFacts, Family, LayerContext, LayerRecord
from actgeom.core.metrics.ood import REGISTRY, OodSet, fit, nc5, vim_alpha, vim_residual_norms
from actgeom.core.state.accumulators import MomentsSpec, SampleSpec
from actgeom.core.state.ood_pass import OodPass

NO_CLASSIFIER = "needs the classifier (/classifier weight and bias) of this layer"


def needs(options: OodOptions, facts: DumpFacts) -> list:
    return [MomentsSpec(by_class=True, all_rows=True), SampleSpec(size=options.knn_sample, seed=options.seed)]


def _dims(n_units: int, options: OodOptions) -> tuple[int, int]:
    """ViM's and NECO's principal dimensions (ViM's authors' rule when not given), at most D − 1."""
    rule = 1000 if n_units >= 2048 else 512 if n_units >= 768 else max(n_units // 2, 1)
    vim = min(options.vim_dim or rule, n_units - 1)
    return max(vim, 1), min(options.neco_dim or rule, n_units)


def model_of(ctx: LayerContext, options: OodOptions):
    """The layer's OOD model: fitted on the fit dump's statistics; ViM's α from the seeded sample."""
    moments = ctx.stats.get("moments")
    weight, bias = ctx.classifier if ctx.classifier is not None else (None, None)
    _, _, sample = ctx.stats.get("sample").sample(options.knn_sample)
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
    if ctx.dump is None or options.test is None or not options.ood:
        return None
    return OodPass(model_of(ctx, options), {"test": options.test, **{path: path for path in options.ood}})


def layer(ctx: LayerContext, options: OodOptions) -> LayerRecord:
    consumer: OodPass | None = ctx.second.get("ood")
    if consumer is None:
        return LayerRecord(unavailable=dict.fromkeys(REGISTRY, "needs --test and at least one --ood dump"))
    missing = {}
    if ctx.classifier is None:
        missing["weight"] = missing["bias"] = ctx.classifier_problem or NO_CLASSIFIER
    classes = ctx.stats.get("moments").classes
    if int((classes.counts > 0).sum()) < 2:
        missing["labels"] = "needs labels of at least 2 classes among the fit rows (--labels)"
    if ctx.stats.get("sample").n_rows == 0:
        missing["sample"] = "needs --knn-sample ≥ 1 fit rows"
    id_scores = consumer.scores("test")
    sets = {}
    for path in consumer.dumps:
        if path == "test":
            continue
        inputs = OodSet(id_scores=id_scores, ood_scores=consumer.scores(path),
                        nc5=None if "labels" in missing else nc5(consumer.mean(path), consumer.model))
        values, unavailable = evaluate(REGISTRY, inputs, options, missing)
        sets[path] = {"metrics": values, "unavailable": unavailable, "n_rows": consumer.n_rows(path)}
    fields = {"n_fit_rows": ctx.stats.n_rows, "n_test_rows": consumer.n_rows("test"), "sets": sets,
              "vim_dim": _dims(ctx.n_units, options)[0], "neco_dim": _dims(ctx.n_units, options)[1],
              "vim_alpha": consumer.model.vim_alpha}
    return LayerRecord(fields=fields)


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
                layers.append({k: v for k, v in layer.items() if k not in ("ood", "metrics", "unavailable")}
                              | {"metrics": found["metrics"], "unavailable": found["unavailable"], "n_ood_rows": found["n_rows"],
                                 "n_fit_rows": layer["ood"]["n_fit_rows"], "n_test_rows": layer["ood"]["n_test_rows"],
                                 "ood": {k: v for k, v in layer["ood"].items() if k != "sets"}})
            files.append({"file": path, "fit_file": entry["file"], "test_file": options["test"],
                          "checkpoint": entry["checkpoint"], "step": entry["step"], "model": entry["model"], "layers": layers})
    return document | {"files": files}


FAMILY = Family(name="ood", options_class=OodOptions, metrics=REGISTRY, needs=needs, layer=layer, second_pass=second_pass)
