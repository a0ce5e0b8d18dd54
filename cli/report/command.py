"""`actgeom report`: every family on every layer of every checkpoint → one HTML page, a summary, data."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from actgeom.cli import neurons as nr
from actgeom.cli import options as o
from actgeom.cli import probe as pr
from actgeom.cli.collapse import GlobalMean, NC1Inverse, NC4Decision
from actgeom.cli.collapse import Preset as CollapsePreset
from actgeom.cli.options import Format
from actgeom.cli.output import emit, jsonable
from actgeom.cli.progress import row_progress, run_backend
from actgeom.cli.rank import Preset as RankPreset
from actgeom.cli.report import FAMILIES, REPORT_SUBSAMPLE
from actgeom.cli.report.summary import RESULT_FORMATS, check_outputs, results_text, summary_result
from actgeom.cli.stats import parse_rows
from actgeom.core.options import CollapseOptions, EntropyOptions, RankOptions
from actgeom.core.outputs import write_output

COLLAPSE = "Collapse options (as `actgeom collapse`)"
RANK = "Rank options (as `actgeom rank`)"
ENTROPY = "Entropy options (as `actgeom entropy`)"
ENTROPY_DEFAULTS = EntropyOptions()  # the defaults live in core


class SummaryFormat(str, Enum):
    table = "table"
    md = "md"


def report(
    dumps: Annotated[list[Path], typer.Argument(help="HDF5 activation dumps, one per checkpoint (ordered by their "
                                                "`step` attribute, else by natural file-name order).", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", rich_help_panel=o.OUTPUT, show_default=False,
                                         help="The HTML page (one self-contained file, written atomically).")],
    layers: o.LayersOpt = None, labels: o.LabelsOpt = None, weight: o.WeightOpt = None, bias: o.BiasOpt = None,
    predictions: o.PredictionsOpt = None, offsets: o.OffsetsOpt = None,
    attention: Annotated[Optional[str], typer.Option(
        "--attention", rich_help_panel=o.DATA, show_default=False,
        help="Attention probabilities (S, H, T, T). Default: every dataset under /attention.")] = None,
    allow_incomplete: o.AllowIncompleteOpt = False, nonfinite: o.NonfiniteOpt = "error", tokens: o.TokensOpt = "all",
    products: o.ProductsOpt = "float64",
    families: Annotated[str, typer.Option(
        "--families", rich_help_panel=o.DATA,
        help="The families to compute, a comma list (the page draws only theirs).")] = ",".join(FAMILIES),
    collapse_preset: Annotated[Optional[CollapsePreset], typer.Option(
        "--collapse-preset", rich_help_panel=COLLAPSE, show_default=False,
        help="collapse --preset: papyan, zhu or linguistic.")] = None,
    min_count: Annotated[Optional[int], typer.Option("--min-count", rich_help_panel=COLLAPSE, show_default=o.default(CollapseOptions, "min_count"),
                                                     help="Drop classes with fewer rows.")] = None,
    global_mean: Annotated[Optional[GlobalMean], typer.Option("--global-mean", rich_help_panel=COLLAPSE, show_default=o.default(CollapseOptions, "global_mean"),
                                                       help="μ_G: class or sample.")] = None,
    nc1_inverse: Annotated[Optional[NC1Inverse], typer.Option("--nc1-inverse", rich_help_panel=COLLAPSE, show_default=o.default(CollapseOptions, "nc1_inverse"),
                                                       help="Σ_B⁺ in NC1: topk or pinv.")] = None,
    divide_by_c: Annotated[Optional[bool], typer.Option(
        "--divide-by-c/--no-divide-by-c", rich_help_panel=COLLAPSE, show_default=o.default(CollapseOptions, "divide_by_c"),
        help="NC1 with or without /C.")] = None,
    nc4_decision: Annotated[Optional[NC4Decision], typer.Option(
        "--nc4-decision", rich_help_panel=COLLAPSE, show_default=o.default(CollapseOptions, "nc4_decision"),
        help="NC4's network decision: auto, predictions, logits, logits-nobias.")] = None,
    rank_preset: Annotated[Optional[RankPreset], typer.Option("--rank-preset", rich_help_panel=RANK, show_default=False,
                                                       help="rank --preset: garrido or tracing.")] = None,
    center: Annotated[Optional[bool], typer.Option("--center/--no-center", rich_help_panel=RANK, show_default=o.default(RankOptions, "center"),
                                                   help="Centred covariance or raw second moment.")] = None,
    max_eigs: Annotated[Optional[int], typer.Option("--max-eigs", rich_help_panel=RANK, show_default=False,
                                                    help="Keep only the largest eigenvalues.")] = None,
    rank_eps: Annotated[Optional[float], typer.Option("--rank-eps", rich_help_panel=RANK, show_default=o.default(RankOptions, "eps"),
                                                      help="rank --eps: RankMe's ε.")] = None,
    fit_range: Annotated[Optional[str], typer.Option("--fit-range", rich_help_panel=RANK, show_default=o.default(RankOptions, "fit_range"),
                                                     help="α-ReQ ranks START:STOP, 1-based, inclusive.")] = None,
    ge: Annotated[Optional[bool], typer.Option("--ge", rich_help_panel=RANK, show_default=False,
                                               help="k90/k95/k99 with ≥ p instead of > p.")] = None,
    rtol: Annotated[Optional[float], typer.Option("--rtol", rich_help_panel=RANK, show_default="by dtype",
                                                  help="Numerical-rank tolerance relative to λ_1.")] = None,
    rank_subsample: Annotated[Optional[int], typer.Option(
        "--rank-subsample", rich_help_panel=RANK, show_default=o.default(RankOptions, "subsample"),
        help="rank --subsample: rows sampled for TwoNN and MLE.")] = None,
    alpha: Annotated[float, typer.Option("--alpha", rich_help_panel=ENTROPY, help="Rényi order of the dataset entropy.")] = ENTROPY_DEFAULTS.alpha,
    sigma: Annotated[float, typer.Option("--sigma", rich_help_panel=ENTROPY, help="DSE kernel width (absolute).")] = ENTROPY_DEFAULTS.sigma,
    t: Annotated[float, typer.Option("--t", rich_help_panel=ENTROPY, help="DSE diffusion time.")] = ENTROPY_DEFAULTS.t,
    subsample: Annotated[int, typer.Option(
        "--subsample", rich_help_panel=ENTROPY,
        help="Rows for DSE / DSMI (cost N³; the entropy command's default is 10 000).")] = REPORT_SUBSAMPLE,
    seed: Annotated[int, typer.Option("--seed", rich_help_panel=ENTROPY,
                                      help="Seed of every sample and of the probe's split (rank's, entropy's and probe's --seed).")] = ENTROPY_DEFAULTS.seed,
    threshold: Annotated[Optional[float], typer.Option(
        "--threshold", rich_help_panel=ENTROPY, show_default="0 for layers marked ReLU; required otherwise",
        help="A unit is active (fires) when its value > threshold (entropy's and neurons' --threshold).")] = None,
    tau: Annotated[float, typer.Option("--tau", rich_help_panel=ENTROPY,
                                       help="Dormant threshold (ReDo; entropy's and neurons' --tau).")] = ENTROPY_DEFAULTS.tau,
    layer_width: Annotated[Optional[int], typer.Option(
        "--layer-width", rich_help_panel=ENTROPY, show_default=False,
        help="For SAE latents: the width of the layer the SAE encodes.")] = None,
    entropy_eps: Annotated[float, typer.Option("--entropy-eps", rich_help_panel=ENTROPY,
                                               help="entropy --eps: attention entropy with log(A + eps).")] = ENTROPY_DEFAULTS.eps,
    normalized: Annotated[bool, typer.Option("--normalized", rich_help_panel=ENTROPY,
                                             help="Attention entropy divided by log(#valid keys).")] = False,
    top: nr.TopOpt = nr.DEFAULTS.top, score: nr.ScoreOpt = nr.DEFAULTS.score, min_support: nr.MinSupportOpt = None,
    cutoff: nr.CutoffOpt = nr.DEFAULTS.cutoff,
    max_position: nr.MaxPositionOpt = nr.DEFAULTS.max_position, mu: nr.MuOpt = None, logvar: nr.LogvarOpt = None,
    delta: nr.DeltaOpt = nr.DEFAULTS.delta, collapsed_kl: nr.CollapsedKlOpt = nr.DEFAULTS.collapsed_kl,
    test_fraction: pr.TestFractionOpt = None, split_by: pr.SplitByOpt = None, shrinkage: pr.ShrinkageOpt = None,
    ridge_lambda: pr.RidgeLambdaOpt = None, control: pr.ControlOpt = None, positive: pr.PositiveOpt = None,
    negative: pr.NegativeOpt = None,
    results: Annotated[Optional[Path], typer.Option(
        "--results", rich_help_panel=o.OUTPUT, show_default=False,
        help=f"Also write every number of the page to this file; format by suffix: {', '.join(RESULT_FORMATS)}.")] = None,
    figures: Annotated[Optional[Path], typer.Option(
        "--figures", rich_help_panel=o.OUTPUT, show_default=False,
        help="Also write each figure to this directory as SVG and PDF (for papers).")] = None,
    backend: o.BackendOpt = "local", scheduler: o.SchedulerOpt = None, workers: o.WorkersOpt = None,
    save_stats: o.TaskStatsOpt = None,
    fmt: Annotated[SummaryFormat, typer.Option("--format", "-f", rich_help_panel=o.OUTPUT,
                                               help="The summary printed on stdout: table or md (Markdown).")]
    = SummaryFormat.table,
    cache: Annotated[Optional[Path], typer.Option(
        "--cache", rich_help_panel=o.OUTPUT, show_default=False,
        help="Keep each dump's results in this directory, keyed by the file's identity (path, size, mtime, "
             "attributes) and every option: a re-run after adding a checkpoint reads only the new dump.")] = None,
    quiet: o.QuietOpt = False,
) -> None:
    """The story of a training run: collapse, rank, entropy, neurons and linear probes of
    every layer over every checkpoint, as one self-contained HTML page with figures.

    Prints a summary (checkpoint × layer, headline metrics) and writes the page;
    --results holds every number of the page. DSE/DSMI use a 2 000-row sample
    unless --subsample says otherwise; every other option has its own command's
    default, so the numbers match.

    Example (the bundled training run of an MLP on digits, five checkpoints):

        actgeom report sample_data/*.h5 -o report.html --results report.json

    \b    actgeom report sample_data/*.h5 --layers hidden3 -o hidden3.html \\
            --figures figures/ --format md

    \b    actgeom report sample_data/*.h5 --families collapse,probe \\
            --positive 3 --negative 8 -o probe.html
    """
    started = time.perf_counter()  # the page's "elapsed": from here to the assembled page
    check_outputs(dumps, output, results, figures)
    with row_progress(quiet) as progress:
        # numpy, scipy, h5py: loaded while the progress display says "starting"
        from actgeom.cli.report.data import ReportOptions, gather, parse_families
        from actgeom.core import api
        from actgeom.core.collapse import resolve_options as collapse_options
        from actgeom.core.dump import DumpSpec
        from actgeom.core.engine import PassOptions
        from actgeom.core.spectrum import resolve_options as rank_options

        options = ReportOptions(
            collapse=collapse_options(o.plain(collapse_preset), min_count=min_count, global_mean=o.plain(global_mean),
                                      nc1_inverse=o.plain(nc1_inverse), divide_by_c=divide_by_c,
                                      nc4_decision=o.plain(nc4_decision)),
            rank=rank_options(o.plain(rank_preset), center=center, max_eigs=max_eigs, eps=rank_eps, ge=ge, rtol=rtol,
                              subsample=rank_subsample, seed=seed,
                              fit_range=None if fit_range is None else parse_rows(fit_range, "--fit-range")),
            entropy=EntropyOptions(alpha=alpha, sigma=sigma, t=t, subsample=subsample, seed=seed, threshold=threshold,
                                   tau=tau, layer_width=layer_width, eps=entropy_eps, normalized=normalized),
            neurons=api.family_options("neurons", dict(top=top, score=score, min_support=min_support, threshold=threshold,
                                                       tau=tau, cutoff=cutoff,
                                                       max_position=max_position, mu=mu, logvar=logvar, delta=delta,
                                                       collapsed_kl=collapsed_kl)),
            probe=api.family_options("probe", dict(test_fraction=test_fraction, seed=seed, split_by=o.plain(split_by),
                                                   shrinkage=pr.shrinkage_value(shrinkage), ridge_lambda=ridge_lambda,
                                                   control=o.plain(control), positive=positive, negative=negative)),
            passes=PassOptions(nonfinite=o.plain(nonfinite), tokens=tokens, products=o.plain(products)),
            families=parse_families(families))
        if layers and "neurons" in options.families:  # the VAE layers are read too, as `neurons` does
            layers = list(layers) + [name for name in (mu, logvar) if name is not None and name not in layers]
        spec = DumpSpec(layers=tuple(layers or ()), labels=labels, weight=weight, bias=bias, predictions=predictions,
                        offsets=offsets, attention=attention, allow_incomplete=allow_incomplete)
        with run_backend(backend, scheduler, workers, save_stats, quiet) as executor:
            document = jsonable(gather(dumps, spec, options, progress, cache, backend=executor))
        if progress is not None:
            progress.step("drawing the figures")
        from actgeom.cli.report.render import render_page  # matplotlib: imported by `report` only

        page = render_page(document, figures, inputs=dumps, started=started)
    if results is not None:
        write_output(results, results_text(document, results), dumps, option="--results")
    write_output(output, page, dumps)
    emit(summary_result(document, output, results), Format.md if fmt is SummaryFormat.md else Format.table, None)
