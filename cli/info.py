"""`actgeom info`: what is in one or more dumps (or, in a foreign file, which datasets could be layers)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from actgeom.cli import options as o
from actgeom.cli.output import Result, emit
from actgeom.core.base.outputs import check_outputs


def info(dumps: Annotated[list[Path], typer.Argument(help="One or more HDF5 files.", show_default=False)],
         layers: o.LayersOpt = None, labels: o.LabelsOpt = None, weight: o.WeightOpt = None,
         bias: o.BiasOpt = None, predictions: o.PredictionsOpt = None, offsets: o.OffsetsOpt = None,
         allow_incomplete: o.AllowIncompleteOpt = False, fmt: o.FormatOpt = None, output: o.OutputOpt = None,
         quiet: o.QuietOpt = False) -> None:  # --quiet: accepted as by every command; info has no progress
    """What is in a dump: layers, rows, labels, classifier, sequences.

    A foreign file whose layers cannot be told without --layers is listed dataset by dataset,
    marking which could be layers.

    Example:

    \b    actgeom info sample_data/digits_mlp_epoch0000.h5 \\
            sample_data/digits_mlp_epoch1500.h5

    \b    actgeom info sample_data/digits_mlp_epoch1500.h5 --layers 'hidden*' \\
            --format json | jq '.layers[].n_units'
    """
    check_outputs({"-o": output}, dumps)
    spec = o.dump_spec(layers, labels, weight, bias, predictions, offsets, allow_incomplete, describe_only=True)
    results = [_describe(path, spec, listing_ok=not layers) for path in dumps]
    if len(results) == 1:
        emit(results[0], fmt, output, dumps)
        return
    records = [{"file": result.document["file"]} | record for result in results for record in result.records]
    summary = {result.document["file"]: ", ".join(f"{k} {v}" for k, v in result.summary.items()) for result in results}
    from actgeom.core.base.result import document_header  # numpy: when the command runs, not for --help

    document = document_header() | {"files": [result.document for result in results]}
    emit(Result(title=f"actgeom info: {len(results)} files", document=document, records=records, summary=summary),
         fmt, output, dumps)


def _describe(path: Path, spec, *, listing_ok: bool) -> Result:
    from actgeom.core.info import info_document  # h5py: imported when the command runs, not for --help

    document = info_document(path, spec, listing_ok=listing_ok)
    if "datasets" not in document:  # layers told apart: the dump described
        return _result(document)
    candidates = [d["path"] for d in document["datasets"] if d["could_be_layer"]]
    summary = {"format": "foreign", "layers": f"not told apart: {document['layers_unclear']}",
               "could be layers": ", ".join(candidates) or "none (a layer is a 2-D float dataset)"}
    return Result(title=f"actgeom info: {path}", document=document, records=document["datasets"], summary=summary)


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
    if document["attention"]:
        summary["attention"] = ", ".join(f"{a['path']} ({'×'.join(map(str, a['shape']))}, {a['dtype']})"
                                         for a in document["attention"])
    return Result(title=f"actgeom info: {document['file']}", document=document, records=document["layers"], summary=summary)
