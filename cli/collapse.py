"""`actgeom collapse`: neural-collapse metrics per layer, for one or more checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from actgeom.cli import options as o
from actgeom.cli.output import Result, emit, metrics_result
from actgeom.cli.progress import row_progress
from actgeom.core.collapse import resolve_options
from actgeom.core.collapse_api import collapse_dump
from actgeom.core.dump import Dump
from actgeom.core.engine import PassOptions

METRIC = "Metric conventions (METRICS.md §1)"
DumpsArg = Annotated[list[Path], typer.Argument(help="One or more HDF5 activation dumps (e.g. one per checkpoint).",
                                                show_default=False)]


def collapse(
    dumps: DumpsArg, layers: o.LayersOpt = None, labels: o.LabelsOpt = None, weight: o.WeightOpt = None,
    bias: o.BiasOpt = None, predictions: o.PredictionsOpt = None, allow_incomplete: o.AllowIncompleteOpt = False,
    offsets: o.OffsetsOpt = None, nonfinite: o.NonfiniteOpt = "error", tokens: o.TokensOpt = "all",
    stats: o.StatsOpt = None,
    preset: Annotated[Optional[str], typer.Option(
        "--preset", rich_help_panel=METRIC, show_default=False,
        help="A publication's conventions: papyan (μ_G class, top-k Σ_B⁺, no /C), zhu (μ_G sample, pinv, /C), "
             "linguistic (NC4 = argmax Wx, no bias). Explicit options win.")] = None,
    min_count: Annotated[Optional[int], typer.Option(
        "--min-count", rich_help_panel=METRIC, show_default=False,
        help="Drop classes with fewer rows from every metric (counted in the output). [default: 1]")] = None,
    global_mean: Annotated[Optional[str], typer.Option(
        "--global-mean", rich_help_panel=METRIC, show_default=False,
        help="μ_G: 'class' (mean of class means) or 'sample' (mean of rows). [default: class]")] = None,
    nc1_inverse: Annotated[Optional[str], typer.Option(
        "--nc1-inverse", rich_help_panel=METRIC, show_default=False,
        help="Σ_B⁺ in NC1: 'topk' (top min(C−1, D) eigenpairs) or 'pinv'. [default: topk]")] = None,
    divide_by_c: Annotated[Optional[bool], typer.Option(
        "--divide-by-c/--no-divide-by-c", rich_help_panel=METRIC, show_default=False,
        help="NC1 = Tr(Σ_W Σ_B⁺)/C, or without /C (the Papyan notebook form). [default: divide]")] = None,
    nc4_decision: Annotated[Optional[str], typer.Option(
        "--nc4-decision", rich_help_panel=METRIC, show_default=False,
        help="The network's decision for NC4: auto, predictions, logits (argmax Wx+b), logits-nobias. [default: auto]")] = None,
    per_class: Annotated[bool, typer.Option("--per-class", rich_help_panel=METRIC,
                                            help="Also report n_c, ‖m_c‖, ‖w_c‖, v_c of every class (JSON).")] = False,
    fmt: o.FormatOpt = None, output: o.OutputOpt = None,
) -> None:
    """Neural-collapse metrics per layer and checkpoint.

    NC1–NC4, CDNV, VCI, separation fuzziness (and its law across layers), GNC2/UNC3, bias
    collapse, orthogonal-frame errors. One pass per layer, plus one for NC4 when the dump has
    predictions or a classifier.

    Example (collapse emerging over training, last hidden layer):

        actgeom collapse sample_data/*.h5 --layers hidden3 --format table

        actgeom collapse run.h5 --preset papyan --format jsonl | jq -r 'select(.metric=="nc1") | [.layer, .value] | @tsv'
    """
    options = resolve_options(preset, min_count=min_count, global_mean=global_mean, nc1_inverse=nc1_inverse,
                              divide_by_c=divide_by_c, nc4_decision=nc4_decision, per_class=per_class or None)
    pass_options = PassOptions(nonfinite=nonfinite, tokens=tokens)
    spec = o.dump_spec(layers, labels, weight, bias, predictions, offsets, allow_incomplete)
    precomputed = o.load_statistics(stats, dumps)
    reports = []
    with row_progress() as progress:
        for path in dumps:
            with Dump(path, spec) as opened:
                reports.append(collapse_dump(opened, options=options, pass_options=pass_options, progress=progress,
                                             precomputed=precomputed) | {"statistics_file": stats})
    emit(_result(reports), fmt, output)


def _result(reports: list[dict]) -> Result:
    summary = {}
    for report in reports:
        law = report["separation_law"]
        if law:
            summary[f"separation law {Path(report['file']).name}"] = f"ρ = {law['rho']:.4g}, R² = {law['r2']:.4g}"
    return metrics_result("collapse", reports, ("n_rows_used", "n_units", "n_classes_kept"), summary)
