"""`actgeom entropy`: matrix and diffusion entropies, attention entropy, neuron activity."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from actgeom.cli import options as o
from actgeom.cli.output import emit, metrics_result
from actgeom.cli.progress import row_progress, run_backend
from actgeom.core.base.options import DSE_METHODS, EntropyOptions
from actgeom.core.base.outputs import check_outputs

METRIC = "Metric conventions (docs/metrics.md)"
DEFAULTS = EntropyOptions()  # the defaults live in core

# The options of the entropy family, declared once: `entropy` and `report` take them (the report's
# --seed, --threshold and --tau are shared with other families: it declares its own).
AttentionOpt = Annotated[Optional[str], typer.Option(
    "--attention", rich_help_panel=o.DATA, show_default=False,
    help="Attention probabilities (S, H, T, T). Default: every dataset under /attention.")]
AlphaOpt = Annotated[float, typer.Option("--alpha", rich_help_panel=METRIC, help="Rényi order of the dataset entropy.")]
SigmaOpt = Annotated[float, typer.Option("--sigma", rich_help_panel=METRIC, help="DSE kernel width (absolute).")]
TOpt = Annotated[float, typer.Option("--t", rich_help_panel=METRIC, help="DSE diffusion time.")]
SubsampleOpt = Annotated[int, typer.Option("--subsample", rich_help_panel=METRIC, help="Rows for DSE / DSMI (cost N³).")]
LayerWidthOpt = Annotated[Optional[int], typer.Option(
    "--layer-width", rich_help_panel=METRIC, show_default=False,
    help="For SAE latents: the width of the layer the SAE encodes (superposition ratio F/width).")]
EpsOpt = Annotated[float, typer.Option(
    "--eps", rich_help_panel=METRIC, help="Attention entropy with log(A + eps) (1e-6 reproduces Zhai et al.'s code).")]
DseMethod = o.choices("DseMethod", DSE_METHODS)
DseMethodOpt = Annotated[DseMethod, typer.Option(
    "--dse-method", rich_help_panel=METRIC,
    help="DSE from every eigenvalue of the kernel (exact, N³) or by stochastic Lanczos quadrature (slq: seconds at "
         "N = 10 000, seeded by --seed, with its error in dse_error).")]
NormalizedOpt = Annotated[bool, typer.Option("--normalized", rich_help_panel=METRIC, metavar="",
                                             help="Attention entropy divided by log(#valid keys).")]


def entropy(
    dumps: Annotated[list[Path], typer.Argument(help="One or more HDF5 activation dumps.", show_default=False)],
    layers: o.LayersOpt = None, labels: o.LabelsOpt = None, offsets: o.OffsetsOpt = None,
    attention: AttentionOpt = None,
    allow_incomplete: o.AllowIncompleteOpt = False, nonfinite: o.NonfiniteOpt = "error", tokens: o.TokensOpt = "all",
    products: o.ProductsOpt = "float64",
    stats: o.StatsOpt = None, partial_ok: o.PartialOkOpt = False,
    alpha: AlphaOpt = DEFAULTS.alpha, sigma: SigmaOpt = DEFAULTS.sigma, t: TOpt = DEFAULTS.t,
    subsample: SubsampleOpt = DEFAULTS.subsample,
    seed: Annotated[int,
                    typer.Option("--seed", rich_help_panel=METRIC,
                                 help="Seed of the sample and of DSMI's subsets.")] = DEFAULTS.seed,
    threshold: Annotated[Optional[float], typer.Option(
        "--threshold", rich_help_panel=METRIC, show_default="0 for layers marked ReLU; required otherwise",
        help="A unit is active when its value > threshold.")] = None,
    tau: Annotated[float, typer.Option("--tau", rich_help_panel=METRIC, help="Dormant threshold (ReDo).")] = DEFAULTS.tau,
    layer_width: LayerWidthOpt = None, eps: EpsOpt = DEFAULTS.eps, normalized: NormalizedOpt = False,
    dse_method: DseMethodOpt = DEFAULTS.dse_method,
    ci: o.CiOpt = False, ci_groups: o.CiGroupsOpt = None, ci_seed: o.CiSeedOpt = None, null: o.NullOpt = None,
    null_seed: o.NullSeedOpt = None, baseline: o.BaselineOpt = None,
    backend: o.BackendOpt = "local", scheduler: o.SchedulerOpt = None, workers: o.WorkersOpt = None,
    save_stats: o.TaskStatsOpt = None, fmt: o.FormatOpt = None, output: o.OutputOpt = None, quiet: o.QuietOpt = False,
) -> None:
    """Entropies and neuron activity per layer; attention entropy per head.

    Dataset (matrix Rényi) and prompt entropy, diffusion spectral entropy and DSMI on a seeded
    sample, SAE effective features, dead / dormant fractions, firing entropy, effective units;
    attention entropy per head and per layer.

    Example:

        actgeom entropy sample_data/digits_mlp_epoch1500.h5 --format table

    \b    actgeom entropy sample_data/digits_mlp_epoch1500.h5 --layers hidden1 \\
            --threshold 0 --format json

    With 95 % intervals (value ± half-width):

        actgeom entropy sample_data/digits_mlp_epoch1500.h5 --ci --format table
    """
    chosen = o.inference(ci, ci_groups, ci_seed, null, null_seed, baseline)
    inputs = [*dumps, *([stats] if stats else []), *(baseline or [])]
    check_outputs({"-o": output}, inputs)
    with row_progress(quiet) as progress, run_backend(backend, scheduler, workers, save_stats, quiet) as executor:
        from actgeom.core import api  # numpy, scipy, h5py: loaded while the progress display says "starting"
        analysis = api.entropy(dumps, layers=layers, labels=labels, offsets=offsets, attention=attention,
                               allow_incomplete=allow_incomplete, nonfinite=o.plain(nonfinite), tokens=tokens,
                               products=o.plain(products), stats=stats,
                               partial_ok=partial_ok,
                               alpha=alpha, sigma=sigma, t=t, subsample=subsample, seed=seed, threshold=threshold,
                               tau=tau, layer_width=layer_width, eps=eps, normalized=normalized,
                               dse_method=o.plain(dse_method), progress=progress,
                               backend=executor, **chosen)
    summary = {}
    for file in analysis.to_dict()["files"]:
        for layer in file["layers"]:
            for i, note in enumerate(layer.get("notes", [])):
                summary[f"warning {Path(file['file']).name}:{layer['layer']}" + (f" ({i + 1})" if i else "")] = note
    emit(metrics_result(analysis, summary), fmt, output, inputs)
