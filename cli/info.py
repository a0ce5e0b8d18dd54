"""`actgeom info`: what is in a dump."""

from __future__ import annotations

from actgeom.cli import options as o
from actgeom.cli.output import Result, emit
from actgeom.core.dump import Dump
from actgeom.core.info import describe


def info(dump: o.DumpArg, layers: o.LayersOpt = None, labels: o.LabelsOpt = None, weight: o.WeightOpt = None,
         bias: o.BiasOpt = None, predictions: o.PredictionsOpt = None, offsets: o.OffsetsOpt = None,
         allow_incomplete: o.AllowIncompleteOpt = False, fmt: o.FormatOpt = None, output: o.OutputOpt = None) -> None:
    """What is in a dump: layers, rows, labels, classifier, sequences.

    Example:

        actgeom info sample_data/digits_mlp_step3000.h5

        actgeom info run.h5 --layers 'feats/*' --labels y --format json | jq '.layers[].n_units'
    """
    spec = o.dump_spec(layers, labels, weight, bias, predictions, offsets, allow_incomplete)
    with Dump(dump, spec) as opened:
        document = describe(opened)
    emit(_result(document), fmt, output)


def _result(document: dict) -> Result:
    summary = {"format": document["format"], "rows": document["n_rows"]}
    summary |= {k: v for k, v in document["attrs"].items() if k in ("model", "checkpoint", "step", "level", "complete")}
    if document["labels"]:
        lab = document["labels"]
        summary["labels"] = (f"{lab['path']}: {lab['n_classes']} classes ({lab['n_classes_present']} present), "
                             f"per class min {lab['count_min']} / median {lab['count_median']} / max {lab['count_max']}, "
                             f"{lab['n_unlabeled']} unlabeled")
    if document["classifier"]:
        clf = document["classifier"]
        summary["classifier"] = f"{clf['weight']} ({clf['n_classes']}×{clf['n_units']}), bias {clf['bias']}, reads {clf['layer']}"
    if document["predictions"]:
        summary["predictions"] = document["predictions"]["path"]
    if document["sequences"]:
        seq = document["sequences"]
        summary["sequences"] = f"{seq['n_sequences']} (length {seq['length_min']}..{seq['length_max']})"
    return Result(title=f"actgeom info: {document['file']}", document=document, records=document["layers"], summary=summary)
