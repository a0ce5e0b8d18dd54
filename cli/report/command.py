"""`actgeom report`: every family on every layer of every checkpoint → one HTML page, a summary, data."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from actgeom.cli import collapse as cl
from actgeom.cli import entropy as en
from actgeom.cli import neurons as nr
from actgeom.cli import options as o
from actgeom.cli import probe as pr
from actgeom.cli import rank as rk
from actgeom.cli.options import Format
from actgeom.cli.output import emit, jsonable, warn_sample_beyond_layer_rows
from actgeom.cli.progress import row_progress, run_backend
from actgeom.cli.report import FAMILIES, REPORT_SUBSAMPLE
from actgeom.cli.report.summary import RESULT_FORMATS, check_outputs, results_text, summary_result
from actgeom.core.base.options import EntropyOptions
from actgeom.core.base.outputs import write_output

COLLAPSE = "Collapse options (as `actgeom collapse`)"
RANK = "Rank options (as `actgeom rank`)"
ENTROPY = "Entropy options (as `actgeom entropy`)"
ENTROPY_DEFAULTS = EntropyOptions()  # the defaults live in core


class SummaryFormat(str, Enum):
    table = "table"
    md = "md"


# The families' options as their commands declare them (help, shown default, choices), in the
# report's panels; prefixed where two families' names clash (README: `actgeom report`).
CollapsePresetOpt = o.retitled(cl.PresetOpt, COLLAPSE, "--collapse-preset")
MinCountOpt = o.retitled(cl.MinCountOpt, COLLAPSE)
GlobalMeanOpt = o.retitled(cl.GlobalMeanOpt, COLLAPSE)
NC1InverseOpt = o.retitled(cl.NC1InverseOpt, COLLAPSE)
DivideByCOpt = o.retitled(cl.DivideByCOpt, COLLAPSE)
NC4DecisionOpt = o.retitled(cl.NC4DecisionOpt, COLLAPSE)
RankPresetOpt = o.retitled(rk.PresetOpt, RANK, "--rank-preset")
CenterOpt = o.retitled(rk.CenterOpt, RANK)
MaxEigsOpt = o.retitled(rk.MaxEigsOpt, RANK)
RankEpsOpt = o.retitled(rk.EpsOpt, RANK, "--rank-eps")
FitRangeOpt = o.retitled(rk.FitRangeOpt, RANK)
GeOpt = o.retitled(rk.GeOpt, RANK)
RtolOpt = o.retitled(rk.RtolOpt, RANK)
RankSubsampleOpt = o.retitled(rk.SubsampleOpt, RANK, "--rank-subsample")
AlphaOpt = o.retitled(en.AlphaOpt, ENTROPY)
SigmaOpt = o.retitled(en.SigmaOpt, ENTROPY)
DseMethodOpt = o.retitled(en.DseMethodOpt, ENTROPY)
TOpt = o.retitled(en.TOpt, ENTROPY)
SubsampleOpt = o.retitled(en.SubsampleOpt, ENTROPY)
LayerWidthOpt = o.retitled(en.LayerWidthOpt, ENTROPY)
EntropyEpsOpt = o.retitled(en.EpsOpt, ENTROPY, "--entropy-eps")
NormalizedOpt = o.retitled(en.NormalizedOpt, ENTROPY)
# The report's own, and the options one value of which several families share.
DumpsArg = Annotated[list[Path], typer.Argument(help="HDF5 activation dumps, one per checkpoint (ordered by their "
                                                "`step` attribute, else by natural file-name order).", show_default=False)]
PageOpt = Annotated[Path, typer.Option("--output", "-o", rich_help_panel=o.OUTPUT, show_default=False,
                                       help="The HTML page (one self-contained file, written atomically).")]
FamiliesOpt = Annotated[str, typer.Option("--families", rich_help_panel=o.DATA,
                                          help="The families to compute, a comma list (the page draws only theirs).")]
SeedOpt = Annotated[int, typer.Option(
    "--seed", rich_help_panel=ENTROPY,
    help="Seed of every sample and of the probe's split (rank's, entropy's and probe's --seed).")]
ThresholdOpt = Annotated[Optional[float], typer.Option(
    "--threshold", rich_help_panel=ENTROPY, show_default="0 for layers marked ReLU; required otherwise",
    help="A unit is active (fires) when its value > threshold (entropy's and neurons' --threshold).")]
TauOpt = Annotated[float, typer.Option("--tau", rich_help_panel=ENTROPY,
                                       help="Dormant threshold (ReDo; entropy's and neurons' --tau).")]
ResultsOpt = Annotated[Optional[Path], typer.Option(
    "--results", rich_help_panel=o.OUTPUT, show_default=False,
    help=f"Also write every number of the page to this file; format by suffix: {', '.join(RESULT_FORMATS)}.")]
FiguresOpt = Annotated[Optional[Path], typer.Option(
    "--figures", rich_help_panel=o.OUTPUT, show_default=False,
    help="Also write each figure to this directory as SVG and PDF (for papers).")]
SummaryFormatOpt = Annotated[SummaryFormat, typer.Option("--format", "-f", rich_help_panel=o.OUTPUT,
                                                         help="The summary printed on stdout: table or md (Markdown).")]
OOD = "OOD section (as `actgeom ood`; docs/metrics.md)"
OodOpt = Annotated[Optional[list[Path]], typer.Option(
    "--ood", rich_help_panel=OOD, show_default=False,
    help="Add the OOD section: each dump is the in-distribution fit dump, scored against its OOD dump (the OOD rows "
         "through that checkpoint): one per dump, paired in the order the dumps are given (repeat the option).")]
OodTestOpt = Annotated[Optional[list[Path]], typer.Option(
    "--ood-test", rich_help_panel=OOD, show_default=False,
    help="With --ood: the held-out ID rows of each dump, one per dump paired in order (else --fit-split).")]
FitSplitOpt = Annotated[Optional[float], typer.Option(
    "--fit-split", rich_help_panel=OOD, show_default="0.3 without --ood-test",
    help="With --ood: hold out this share of each dump's rows (a seeded hash, --seed) as its ID test rows.")]
CacheOpt = Annotated[Optional[Path], typer.Option(
    "--cache", rich_help_panel=o.OUTPUT, show_default=False,
    help="Keep each dump's results in this directory, keyed by the file's identity (path, size, mtime, "
         "attributes) and every option: a re-run after adding a checkpoint reads only the new dump.")]


def report(
    dumps: DumpsArg, output: PageOpt, layers: o.LayersOpt = None, labels: o.LabelsOpt = None,
    weight: o.WeightOpt = None, bias: o.BiasOpt = None, predictions: o.PredictionsOpt = None,
    offsets: o.OffsetsOpt = None, attention: en.AttentionOpt = None, allow_incomplete: o.AllowIncompleteOpt = False,
    nonfinite: o.NonfiniteOpt = "error", tokens: o.TokensOpt = "all", products: o.ProductsOpt = "float64",
    families: FamiliesOpt = ",".join(FAMILIES),
    collapse_preset: CollapsePresetOpt = None, min_count: MinCountOpt = None, global_mean: GlobalMeanOpt = None,
    nc1_inverse: NC1InverseOpt = None, divide_by_c: DivideByCOpt = None, nc4_decision: NC4DecisionOpt = None,
    rank_preset: RankPresetOpt = None, center: CenterOpt = None, max_eigs: MaxEigsOpt = None,
    rank_eps: RankEpsOpt = None, fit_range: FitRangeOpt = None, ge: GeOpt = None, rtol: RtolOpt = None,
    rank_subsample: RankSubsampleOpt = None,
    alpha: AlphaOpt = ENTROPY_DEFAULTS.alpha, sigma: SigmaOpt = ENTROPY_DEFAULTS.sigma, t: TOpt = ENTROPY_DEFAULTS.t,
    dse_method: DseMethodOpt = ENTROPY_DEFAULTS.dse_method,
    subsample: SubsampleOpt = REPORT_SUBSAMPLE, seed: SeedOpt = ENTROPY_DEFAULTS.seed, threshold: ThresholdOpt = None,
    tau: TauOpt = ENTROPY_DEFAULTS.tau, layer_width: LayerWidthOpt = None,
    entropy_eps: EntropyEpsOpt = ENTROPY_DEFAULTS.eps, normalized: NormalizedOpt = False,
    top: nr.TopOpt = nr.DEFAULTS.top, score: nr.ScoreOpt = nr.DEFAULTS.score, min_support: nr.MinSupportOpt = None,
    cutoff: nr.CutoffOpt = nr.DEFAULTS.cutoff,
    max_position: nr.MaxPositionOpt = nr.DEFAULTS.max_position, mu: nr.MuOpt = None, logvar: nr.LogvarOpt = None,
    delta: nr.DeltaOpt = nr.DEFAULTS.delta, collapsed_kl: nr.CollapsedKlOpt = nr.DEFAULTS.collapsed_kl,
    test_fraction: pr.TestFractionOpt = None, split_by: pr.SplitByOpt = None, shrinkage: pr.ShrinkageOpt = None,
    ridge_lambda: pr.RidgeLambdaOpt = None, control: pr.ControlOpt = None, positive: pr.PositiveOpt = None,
    negative: pr.NegativeOpt = None, ci: o.CiOpt = False, ci_groups: o.CiGroupsOpt = None, ci_seed: o.CiSeedOpt = None,
    null: o.NullOpt = None, null_seed: o.NullSeedOpt = None, baseline: o.BaselineOpt = None,
    ood: OodOpt = None, ood_test: OodTestOpt = None, fit_split: FitSplitOpt = None, results: ResultsOpt = None,
    figures: FiguresOpt = None,
    backend: o.BackendOpt = "local", scheduler: o.SchedulerOpt = None, workers: o.WorkersOpt = None,
    save_stats: o.TaskStatsOpt = None, fmt: SummaryFormatOpt = SummaryFormat.table, cache: CacheOpt = None,
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

    \b    actgeom report sample_data/*.h5 --ci -o report.html   # 95 % error bars

    \b    actgeom extract sample_data/digits_mlp_epoch1500.h5 -o unseen.h5 \\
            --classes 8,9      # digits 8 and 9: out of distribution
    \b    actgeom extract sample_data/digits_mlp_epoch1500.h5 -o id.h5 \\
            --classes 0,1,2,3,4,5,6,7
    \b    actgeom report id.h5 --ood unseen.h5 -o ood.html   # the OOD section
    """
    started = time.perf_counter()  # the page's "elapsed": from here to the assembled page
    given = _family_values(locals())  # the command's parameters, by name (none assigned yet)
    inference = o.inference(ci, ci_groups, ci_seed, null, null_seed, baseline=baseline)
    check_outputs([*dumps, *(baseline or []), *(ood or []), *(ood_test or [])], output, results, figures)
    with row_progress(quiet) as progress:
        # numpy, scipy, h5py: loaded while the progress display says "starting"
        from actgeom.cli.report.data import gather

        options = _options(given, families, _passes(nonfinite, tokens, products, inference),
                           (dumps, ood, ood_test, fit_split, seed))
        if layers and "neurons" in options.families:  # the VAE layers are read too, as `neurons` does
            layers = list(layers) + [name for name in (mu, logvar) if name is not None and name not in layers]
        spec = o.dump_spec(layers, labels, weight, bias, predictions, offsets, allow_incomplete, attention=attention)
        with run_backend(backend, scheduler, workers, save_stats, quiet) as executor:
            document = jsonable(gather(dumps, spec, options, progress, cache, backend=executor,
                                       baseline=inference["baseline"]))
        warn_sample_beyond_layer_rows(document["files"])  # DSE/DSMI's --subsample, as entropy says it
        page = _page(document, figures, dumps, started, progress)
    if results is not None:
        write_output(results, results_text(document, results), dumps, option="--results")
    write_output(output, page, dumps)
    emit(summary_result(document, output, results), Format.md if fmt is SummaryFormat.md else Format.table, None)


def _passes(nonfinite, tokens: str, products, inference: dict):
    """The pass options (``inference``: the Inference panel's values, cli/options.py)."""
    from actgeom.core.state.engine import PassOptions

    return PassOptions(nonfinite=o.plain(nonfinite), tokens=tokens, products=o.plain(products),
                       ci_groups=inference["ci_groups"] if inference["ci"] else 0, ci_seed=inference["ci_seed"],
                       null=inference["null"], null_seed=inference["null_seed"])


def _options(given: dict, families: str, passes, ood: tuple):
    """The report's options: each family's (``given``), which families run, the passes', the OOD
    section's plan (``ood``: the dumps, --ood, --ood-test, --fit-split, --seed)."""
    from actgeom.cli.report.data import ReportOptions, parse_families
    from actgeom.cli.report.ood import plan
    from actgeom.core import api

    return ReportOptions(**{name: api.family_options(name, chosen) for name, chosen in given.items()},
                         passes=passes, families=parse_families(families), ood=plan(*ood))


def _family_values(values: dict) -> dict[str, dict]:
    """{family: its keywords for core.api.family_options} from the report's parameters (``values``,
    by name); the options one value of which several families share go to each of them."""
    v = values
    return {"collapse": o.given(preset=v["collapse_preset"], min_count=v["min_count"], global_mean=v["global_mean"],
                                nc1_inverse=v["nc1_inverse"], divide_by_c=v["divide_by_c"], nc4_decision=v["nc4_decision"]),
            "rank": o.given(preset=v["rank_preset"], center=v["center"], max_eigs=v["max_eigs"], eps=v["rank_eps"],
                            ge=v["ge"], rtol=v["rtol"], subsample=v["rank_subsample"], seed=v["seed"],
                            fit_range=rk.fit_range_value(v["fit_range"])),
            "entropy": o.given(alpha=v["alpha"], sigma=v["sigma"], t=v["t"], subsample=v["subsample"], seed=v["seed"],
                               threshold=v["threshold"], tau=v["tau"], layer_width=v["layer_width"], eps=v["entropy_eps"],
                               normalized=v["normalized"], dse_method=o.plain(v["dse_method"])),
            "neurons": o.given(top=v["top"], score=v["score"], min_support=v["min_support"], threshold=v["threshold"],
                               tau=v["tau"], cutoff=v["cutoff"], max_position=v["max_position"], mu=v["mu"],
                               logvar=v["logvar"], delta=v["delta"], collapsed_kl=v["collapsed_kl"]),
            "probe": o.given(test_fraction=v["test_fraction"], seed=v["seed"], split_by=v["split_by"],
                             shrinkage=pr.shrinkage_value(v["shrinkage"]), ridge_lambda=v["ridge_lambda"],
                             control=v["control"], positive=v["positive"], negative=v["negative"])}


def _page(document: dict, figures: Path | None, dumps: list[Path], started: float, progress) -> str:
    """The HTML page of the report's document (its figures also in ``figures``)."""
    if progress is not None:
        progress.step("drawing the figures")
    from actgeom.cli.report.render import render_page  # matplotlib: imported by `report` only

    return render_page(document, figures, inputs=dumps, started=started)
