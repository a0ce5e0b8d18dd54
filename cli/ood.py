"""`actgeom ood`: post-hoc out-of-distribution scores of other dumps' rows, fitted on one dump."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from actgeom.cli import options as o
from actgeom.cli.output import emit, metrics_result
from actgeom.cli.progress import row_progress, run_backend
from actgeom.core.base.options import OodOptions
from actgeom.core.base.outputs import check_outputs

OOD = "OOD scores (docs/metrics.md)"


def ood(
    fit: Annotated[Path, typer.Argument(help="The dump of the in-distribution (ID) fit rows, e.g. the training set.",
                                        show_default=False)],
    ood_sets: Annotated[list[Path], typer.Option("--ood", rich_help_panel=OOD, show_default=False,
                                                 help="A dump of OOD rows (repeat for several OOD sets).")],
    test: Annotated[Optional[Path], typer.Option(
        "--test", rich_help_panel=OOD, show_default=False,
        help="The dump of held-out ID rows, scored as in-distribution (or --fit-split).")] = None,
    fit_split: Annotated[Optional[float], typer.Option(
        "--fit-split", rich_help_panel=OOD, show_default=False,
        help="Without --test: hold out this share of the fit dump's rows (whole sequences on token-level dumps; "
             "a seeded hash, --seed) as the ID test rows; the model is fitted on the others.")] = None,
    scores: Annotated[Optional[Path], typer.Option(
        "--scores", rich_help_panel=OOD, show_default=False,
        help="Also write every scored row's scores (dump, row, layer, each score) to this .jsonl, .csv or .npz file.")] = None,
    layers: o.LayersOpt = None, labels: o.LabelsOpt = None, weight: o.WeightOpt = None, bias: o.BiasOpt = None,
    offsets: o.OffsetsOpt = None, allow_incomplete: o.AllowIncompleteOpt = False, nonfinite: o.NonfiniteOpt = "error",
    tokens: o.TokensOpt = "all", products: o.ProductsOpt = "float64",
    temperature: Annotated[Optional[float], typer.Option(
        "--temperature", rich_help_panel=OOD, show_default=o.default(OodOptions, "temperature"), help="Energy's T.")] = None,
    vim_dim: Annotated[Optional[int], typer.Option(
        "--vim-dim", rich_help_panel=OOD, show_default="D ≥ 2048: 1000, ≥ 768: 512, else D/2",
        help="ViM's principal dimension.")] = None,
    neco_dim: Annotated[Optional[int], typer.Option(
        "--neco-dim", rich_help_panel=OOD, show_default="as --vim-dim", help="NECO's principal dimension.")] = None,
    knn_k: Annotated[Optional[int], typer.Option(
        "--knn-k", rich_help_panel=OOD, show_default=o.default(OodOptions, "knn_k"), help="kNN's k.")] = None,
    knn_sample: Annotated[Optional[int], typer.Option(
        "--knn-sample", rich_help_panel=OOD, show_default=o.default(OodOptions, "knn_sample"),
        help="ID fit rows kept by a seeded sample for kNN and ViM's α.")] = None,
    seed: Annotated[Optional[int], typer.Option(
        "--seed", rich_help_panel=OOD, show_default=o.default(OodOptions, "seed"), help="Seed of the sample.")] = None,
    ci: o.CiOpt = False, ci_groups: o.CiGroupsOpt = None, ci_seed: o.CiSeedOpt = None,
    backend: o.BackendOpt = "local", scheduler: o.SchedulerOpt = None, workers: o.WorkersOpt = None,
    save_stats: o.TaskStatsOpt = None, fmt: o.FormatOpt = None, output: o.OutputOpt = None, quiet: o.QuietOpt = False,
) -> None:
    """Out-of-distribution scores per layer: fit on one dump, score others.

    Per layer: class means, shared and total covariance, a seeded sample and the classifier of the
    fit rows (one pass), then one pass over the --test dump and each --ood dump scoring every row:
    MSP, MaxLogit, energy, Mahalanobis, relative Mahalanobis, ViM, NECO, kNN. Per OOD set: AUROC,
    AUPR-In, AUPR-Out and FPR at 95 % TPR of every score (ID positive), and NC5. With --fit-split q
    instead of --test, a seeded share q of the fit dump's rows are the ID test rows.

    Example (digits 0–7 in distribution, 30 % of them held out; 8 and 9 out):

    \b    actgeom extract sample_data/digits_mlp_epoch1500.h5 -o id.h5 \\
            --classes 0,1,2,3,4,5,6,7
    \b    actgeom extract sample_data/digits_mlp_epoch1500.h5 -o unseen.h5 \\
            --classes 8,9
    \b    actgeom ood id.h5 --fit-split 0.3 --ood unseen.h5 --layers hidden3 \\
            --format table --scores scores.csv

    With a separate dump of held-out ID rows, give it as --test instead of --fit-split. With --ci,
    each group of sampling units is left out of the fit rows and of every scored dump at once (the
    model refitted without it). No --null: the permutation null of AUROC (ID vs OOD labels
    exchanged) is the Mann–Whitney test, not built here.
    """
    inference = o.inference(ci, ci_groups, ci_seed)
    chosen = {key: inference[key] for key in ("ci", "ci_groups", "ci_seed")}  # (ood has no --null, no --baseline)
    inputs = [fit, *([] if test is None else [test]), *ood_sets]
    check_outputs({"-o": output, "--scores": scores}, inputs)
    with row_progress(quiet) as progress, run_backend(backend, scheduler, workers, save_stats, quiet) as executor:
        from actgeom.core import api  # numpy, scipy, h5py: loaded while the progress display says "starting"
        result = api.ood(fit, test=test, ood=ood_sets, layers=layers, labels=labels, weight=weight, bias=bias,
                         offsets=offsets, allow_incomplete=allow_incomplete, nonfinite=o.plain(nonfinite), tokens=tokens,
                         products=o.plain(products), temperature=temperature, vim_dim=vim_dim, neco_dim=neco_dim,
                         knn_k=knn_k, knn_sample=knn_sample, seed=seed, fit_split=fit_split, scores=scores, progress=progress,
                         backend=executor, **chosen)
    emit(metrics_result(result), fmt, output, inputs)
