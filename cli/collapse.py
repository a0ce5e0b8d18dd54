"""`actgeom collapse`: neural-collapse metrics per layer, for one or more checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from actgeom.cli import options as o
from actgeom.cli.output import emit, metrics_result
from actgeom.cli.progress import row_progress, run_backend
from actgeom.core.base.options import COLLAPSE_PRESETS as PRESETS
from actgeom.core.base.options import GLOBAL_MEANS, NC1_INVERSES, NC4_DECISIONS, CollapseOptions
from actgeom.core.base.outputs import check_outputs

METRIC = "Metric conventions (docs/metrics.md)"
Preset = o.choices("Preset", PRESETS)
GlobalMean = o.choices("GlobalMean", GLOBAL_MEANS)
NC1Inverse = o.choices("NC1Inverse", NC1_INVERSES)
NC4Decision = o.choices("NC4Decision", NC4_DECISIONS)
DumpsArg = Annotated[list[Path], typer.Argument(help="One or more HDF5 activation dumps (e.g. one per checkpoint).",
                                                show_default=False)]

# The options of the collapse family, declared once: `collapse` and `report` take them.
PresetOpt = Annotated[Optional[Preset], typer.Option(
    "--preset", rich_help_panel=METRIC, show_default="none",
    help="A publication's conventions: papyan (μ_G class, top-k Σ_B⁺, no /C), zhu (μ_G sample, pinv, /C), "
         "linguistic (NC4 = argmax Wx, no bias). Explicit options win.")]
MinCountOpt = Annotated[Optional[int], typer.Option(
    "--min-count", rich_help_panel=METRIC, show_default=o.default(CollapseOptions, "min_count"),
    help="Drop classes with fewer rows from every metric (counted in the output).")]
GlobalMeanOpt = Annotated[Optional[GlobalMean], typer.Option(
    "--global-mean", rich_help_panel=METRIC, show_default=o.default(CollapseOptions, "global_mean"),
    help="μ_G: the mean of class means (class) or of rows (sample).")]
NC1InverseOpt = Annotated[Optional[NC1Inverse], typer.Option(
    "--nc1-inverse", rich_help_panel=METRIC, show_default=o.default(CollapseOptions, "nc1_inverse"),
    help="Σ_B⁺ in NC1: the top min(C−1, D) eigenpairs (topk) or a pseudo-inverse (pinv).")]
DivideByCOpt = Annotated[Optional[bool], typer.Option(
    "--divide-by-c/--no-divide-by-c", rich_help_panel=METRIC, metavar="",
    show_default=o.default(CollapseOptions, "divide_by_c"),
    help="NC1 = Tr(Σ_W Σ_B⁺)/C, or without /C (the Papyan notebook form).")]
NC4DecisionOpt = Annotated[Optional[NC4Decision], typer.Option(
    "--nc4-decision", rich_help_panel=METRIC, show_default=o.default(CollapseOptions, "nc4_decision"),
    help="The network's decision for NC4: predictions, logits (argmax Wx+b), logits-nobias, or auto (the first "
         "the dump has).")]


def collapse(
    dumps: DumpsArg, layers: o.LayersOpt = None, labels: o.LabelsOpt = None, weight: o.WeightOpt = None,
    bias: o.BiasOpt = None, predictions: o.PredictionsOpt = None, allow_incomplete: o.AllowIncompleteOpt = False,
    offsets: o.OffsetsOpt = None, nonfinite: o.NonfiniteOpt = "error", tokens: o.TokensOpt = "all",
    products: o.ProductsOpt = "float64",
    stats: o.StatsOpt = None, partial_ok: o.PartialOkOpt = False,
    preset: PresetOpt = None, min_count: MinCountOpt = None, global_mean: GlobalMeanOpt = None,
    nc1_inverse: NC1InverseOpt = None, divide_by_c: DivideByCOpt = None, nc4_decision: NC4DecisionOpt = None,
    per_class: Annotated[bool, typer.Option("--per-class", rich_help_panel=METRIC, metavar="",
                                            help="Also report n_c, ‖m_c‖, ‖w_c‖, v_c of every class (JSON).")] = False,
    ci: o.CiOpt = False, ci_groups: o.CiGroupsOpt = None, ci_seed: o.CiSeedOpt = None, null: o.NullOpt = None,
    null_seed: o.NullSeedOpt = None, baseline: o.BaselineOpt = None,
    backend: o.BackendOpt = "local", scheduler: o.SchedulerOpt = None, workers: o.WorkersOpt = None,
    save_stats: o.TaskStatsOpt = None, fmt: o.FormatOpt = None, output: o.OutputOpt = None, quiet: o.QuietOpt = False,
) -> None:
    """Neural-collapse metrics per layer and checkpoint.

    NC1–NC4, CDNV, VCI, separation fuzziness (and its law across layers), GNC2/UNC3, bias
    collapse, orthogonal-frame errors. One pass per layer, plus one for NC4 when the dump has
    predictions or a classifier.

    Example (collapse emerging over training, last hidden layer):

        actgeom collapse sample_data/*.h5 --layers hidden3 --format table

    \b    actgeom collapse sample_data/digits_mlp_epoch1500.h5 --preset papyan \\
            --format jsonl \\
            | jq -r 'select(.metric=="nc1") | [.layer, .value] | @tsv'

    \b    actgeom collapse sample_data/*.h5 --backend dask --workers 2 \\
            --format table   # tasks on a LocalCluster

    With 95 % intervals (value ± half-width; jackknife over 20 groups of rows):

        actgeom collapse sample_data/*.h5 --ci --format table
    """
    chosen = o.inference(ci, ci_groups, ci_seed, null, null_seed, baseline)
    inputs = [*dumps, *([stats] if stats else []), *(baseline or [])]
    check_outputs({"-o": output}, inputs)
    with row_progress(quiet) as progress, run_backend(backend, scheduler, workers, save_stats, quiet) as executor:
        from actgeom.core import api  # numpy, scipy, h5py: loaded while the progress display says "starting"
        analysis = api.collapse(
            dumps, layers=layers, labels=labels, weight=weight, bias=bias, predictions=predictions, offsets=offsets,
            allow_incomplete=allow_incomplete, nonfinite=o.plain(nonfinite), tokens=tokens, products=o.plain(products),
                                stats=stats,
            partial_ok=partial_ok,
            preset=o.plain(preset), min_count=min_count, global_mean=o.plain(global_mean),
            nc1_inverse=o.plain(nc1_inverse), divide_by_c=divide_by_c, nc4_decision=o.plain(nc4_decision),
            per_class=per_class or None, progress=progress, backend=executor, **chosen)
    laws = {f"separation law {Path(file['file']).name}": f"ρ = {file['separation_law']['rho']:.4g}, "
            f"R² = {file['separation_law']['r2']:.4g}" for file in analysis.to_dict()["files"] if file["separation_law"]}
    spec = o.dump_spec(layers, labels, weight, bias, predictions, offsets, allow_incomplete)
    emit(metrics_result(analysis, laws, why_none=lambda: _no_labels(dumps, spec)), fmt, output, inputs)


def _no_labels(dumps: list[Path], spec) -> str | None:
    """The root cause when collapse computed nothing: dumps without labels (re-opened only then)."""
    from actgeom.core.dump import Dump

    unlabeled = []
    for path in dumps:
        with Dump(path, spec) as opened:
            unlabeled += [] if opened.labels_path else [str(path)]
    return f"no labels in {', '.join(unlabeled)}: give --labels (class index per row)" if unlabeled else None
