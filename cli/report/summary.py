"""The report's terminal summary (table or Markdown), its --results data, and output checks."""

from __future__ import annotations

import json
from pathlib import Path

from actgeom.cli.cells import intervals_line, plus_minus
from actgeom.cli.options import Format
from actgeom.cli.output import Result, render
from actgeom.cli.report.document import checkpoint_label
from actgeom.core.base import outputs
from actgeom.core.base.errors import UsageError

HEADLINE = ("nc1", "cdnv", "nc4_mismatch", "vci", "rankme", "erank", "alpha_req", "dataset_entropy", "dead_fraction",
            "mean_cosine", "lda_accuracy")
RESULT_FORMATS = {".json": Format.json, ".jsonl": Format.jsonl, ".csv": Format.csv}


def check_outputs(dumps: list[Path], output: Path, results: Path | None, figures: Path | None) -> None:
    """Before any pass: every output writable and none of them an input (core.outputs' rules),
    --results with a known suffix, --figures a directory (created with its first figure: Ctrl-C or an
    error before the figures leaves nothing)."""
    if results is not None and results.suffix.lower() not in RESULT_FORMATS:
        raise UsageError(f"--results {results}: the suffix says the format; use one of {', '.join(RESULT_FORMATS)}")
    outputs.check_outputs({"-o": output, "--results": results}, dumps)
    if figures is not None:
        if figures.exists() and not figures.is_dir():
            raise UsageError(f"--figures {figures} is a file; give a directory")
        if not figures.exists() and not figures.resolve().parent.is_dir():
            raise UsageError(f"cannot create --figures {figures}: directory {figures.parent} does not exist")


def records(document: dict) -> list[dict]:
    """Tidy records: one per file × layer × metric (value null, with the reason, when unavailable),
    with the layer's kind, rows and units and the inference fields every command's records have
    (se, ci_low, ci_high, baseline, ...): core/base/result.py layer_records, as Result.records."""
    from actgeom.core.base.result import layer_records  # numpy: not for --help

    return layer_records(document, fields=("kind", "n_rows", "n_units"), families=False)


def results_text(document: dict, path: Path) -> str:
    """--results: the whole document (.json) or its tidy records (.jsonl, .csv)."""
    fmt = RESULT_FORMATS[path.suffix.lower()]
    if fmt is Format.json:
        return json.dumps(document, indent=1, allow_nan=False) + "\n"
    return render(Result(title="actgeom report", document=document, records=records(document)), fmt)


def _short(layer: dict, name: str, reasons: dict[str, int]) -> str:
    """A headline cell: 4 significant digits (value ± half-width of its interval, when it has one), or
    “— (n)” where footnote n says why there is none."""
    value, interval = layer["metrics"].get(name), (layer.get("intervals") or {}).get(name)
    if value is not None and interval and isinstance(value, (int, float)):
        return plus_minus(value, interval)
    if value is not None:
        return f"{value:.4g}" if isinstance(value, float) else str(value)
    reason = layer["unavailable"].get(name) or (f"value is {layer['nonfinite'][name]}" if name in layer["nonfinite"]
                                                else "not computed for this layer")
    return f"— ({reasons.setdefault(reason, len(reasons) + 1)})"


def summary_result(document: dict, output: Path, results: Path | None) -> Result:
    """Checkpoint × layer rows, the headline metrics as columns (4 significant digits), the paths;
    a footnote per reason a cell is “—”."""
    headline = [name for name in HEADLINE if name in document["metrics_info"]]  # of the families run
    rows, reasons = [], {}
    for entry in document["files"]:
        label = checkpoint_label(entry)
        for layer in entry["layers"]:
            if layer["kind"] == "layer":
                rows.append({"checkpoint": label, "layer": layer["layer"]}
                            | {name: _short(layer, name, reasons) for name in headline})
    summary = {"report": str(output)} | ({"results": str(results)} if results else {})
    if "entropy" in document["options"]:
        summary["DSE/DSMI sample"] = f"≤ {document['options']['entropy']['subsample']} rows"
    summary |= intervals_line(document)
    summary["elapsed"] = f"{document['elapsed_s']:.1f} s (figures included)"
    notes = [f"({number}) {reason}" for reason, number in reasons.items()]
    return Result(title="actgeom report", document=document, records=rows, summary=summary, table=rows, notes=notes)
