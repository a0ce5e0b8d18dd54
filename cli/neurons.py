"""`actgeom neurons`: unit-level scores per layer, the top units by a chosen score."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from actgeom.cli import options as o
from actgeom.cli.cells import value_text
from actgeom.cli.output import Result, emit, metrics_result
from actgeom.cli.progress import row_progress, run_backend
from actgeom.core.base.labels import file_labels
from actgeom.core.base.options import SCORES, NeuronsOptions
from actgeom.core.base.outputs import check_outputs

METRIC = "Neuron scores (docs/metrics.md, Units)"
VAE = "VAE latents"
_SHOWN = ("mean", "std", "max", "firing_rate", "firing_rows", "p_value", "q_value")  # ranked table: besides the score
DEFAULTS = NeuronsOptions()  # the defaults live in core

# The options of the neurons family, declared once: `neurons` and `report` take them.
TopOpt = Annotated[int, typer.Option("--top", rich_help_panel=METRIC, help="Units listed per layer.")]
ScoreOpt = Annotated[str, typer.Option("--score", rich_help_panel=METRIC,
                                       help=f"Score that ranks the units, largest first: {', '.join(SCORES)}.")]
MinSupportOpt = Annotated[Optional[int], typer.Option(
    "--min-support", rich_help_panel=METRIC, show_default=False,
    help="A ranked unit fires (value > threshold) on at least this many rows; the others are counted, not "
         "ranked (one row gives a unit the largest kurtosis, selectivity 1). Default: max(10, 0.1 % of the rows).")]
CutoffOpt = Annotated[float, typer.Option(
    "--cutoff", rich_help_panel=METRIC,
    help="Selective / token detector / positional unit when its selectivity / token concentration / position η² "
         "≥ cutoff.")]
MaxPositionOpt = Annotated[int, typer.Option("--max-position", rich_help_panel=METRIC,
                                             help="Positions ≥ this are pooled into one for position η².")]
MuOpt = Annotated[Optional[str], typer.Option("--mu", rich_help_panel=VAE, show_default=False,
                                              help="The layer of a VAE's posterior means (active units).")]
LogvarOpt = Annotated[Optional[str], typer.Option(
    "--logvar", rich_help_panel=VAE, show_default=False,
    help="The layer of its posterior log-variances (per-latent KL to N(0, 1), collapsed latents).")]
DeltaOpt = Annotated[float, typer.Option("--delta", rich_help_panel=VAE, help="Active latent: Var_x(μ_u) > delta.")]
CollapsedKlOpt = Annotated[float, typer.Option("--collapsed-kl", rich_help_panel=VAE,
                                               help="Collapsed latent: mean KL < this, in nats.")]


def neurons(
    dumps: Annotated[list[Path], typer.Argument(help="One or more HDF5 activation dumps.", show_default=False)],
    layers: o.LayersOpt = None, labels: o.LabelsOpt = None, offsets: o.OffsetsOpt = None,
    allow_incomplete: o.AllowIncompleteOpt = False, nonfinite: o.NonfiniteOpt = "error", tokens: o.TokensOpt = "all",
    products: o.ProductsOpt = "float64",
    stats: o.StatsOpt = None,
    top: TopOpt = DEFAULTS.top, score: ScoreOpt = DEFAULTS.score, min_support: MinSupportOpt = None,
    threshold: Annotated[Optional[float], typer.Option(
        "--threshold", rich_help_panel=METRIC, show_default=False,
        help="A unit fires when its value > threshold. Default: 0 for layers marked ReLU; required otherwise.")] = None,
    tau: Annotated[float,
                   typer.Option("--tau", rich_help_panel=METRIC, help="Dormant when the dormant score ≤ tau.")] = DEFAULTS.tau,
    cutoff: CutoffOpt = DEFAULTS.cutoff, max_position: MaxPositionOpt = DEFAULTS.max_position, mu: MuOpt = None,
    logvar: LogvarOpt = None, delta: DeltaOpt = DEFAULTS.delta, collapsed_kl: CollapsedKlOpt = DEFAULTS.collapsed_kl,
    ci: o.CiOpt = False, ci_groups: o.CiGroupsOpt = None, ci_seed: o.CiSeedOpt = None, null: o.NullOpt = None,
    null_seed: o.NullSeedOpt = None, baseline: o.BaselineOpt = None, fdr: o.FdrOpt = None,
    backend: o.BackendOpt = "local", scheduler: o.SchedulerOpt = None, workers: o.WorkersOpt = None,
    save_stats: o.TaskStatsOpt = None, fmt: o.FormatOpt = None, output: o.OutputOpt = None, quiet: o.QuietOpt = False,
) -> None:
    """Unit-level scores per layer and the top units by a chosen score.

    Every unit's mean, std, min, max, skewness, excess kurtosis (streamed central moments),
    firing rate and dead flag, dormant score, class selectivity and probeless score (labels),
    token concentration and top tokens (/rows/token_id; memory V × D float64: 50 000 × 512 is
    205 MB), position η² (/rows/position or offsets), VAE active units and per-latent KL
    (--mu, --logvar). JSON holds every unit's scores under layer["neurons"]["units"].

    Example:

    \b    actgeom neurons sample_data/digits_mlp_epoch1500.h5 \\
            --score class_selectivity --top 5 --format table

    \b    actgeom neurons sample_data/digits_mlp_epoch0000.h5 \\
            --score dormant_score --format json -o units.json

    With 95 % intervals of the layer summaries (firing, selective fractions, ...):

    \b    actgeom neurons sample_data/digits_mlp_epoch1500.h5 --ci \\
            --score class_selectivity --format table
    """
    chosen = o.inference(ci, ci_groups, ci_seed, null, null_seed, baseline)
    if fdr is not None:
        o.needs("--null", null is not None, fdr=fdr)
        chosen["fdr"] = fdr
    inputs = [*dumps, *([stats] if stats else []), *(baseline or [])]
    check_outputs({"-o": output}, inputs)
    with row_progress(quiet) as progress, run_backend(backend, scheduler, workers, save_stats, quiet) as executor:
        from actgeom.core import api  # numpy, scipy, h5py: loaded while the progress display says "starting"
        analysis = api.neurons(dumps, layers=layers, labels=labels, offsets=offsets, allow_incomplete=allow_incomplete,
                               nonfinite=nonfinite, tokens=tokens, products=o.plain(products), stats=stats, top=top, score=score,
                               min_support=min_support, threshold=threshold, tau=tau, cutoff=cutoff, max_position=max_position,
                               mu=mu,
                               logvar=logvar, delta=delta, collapsed_kl=collapsed_kl, progress=progress, backend=executor,
                               **chosen)
    emit(ranked_view(metrics_result(analysis), score), fmt, output, inputs)


def ranked_view(result: Result, score: str) -> Result:
    """The table view: a row per top unit of each layer; each layer's summary metrics above it."""
    files = result.document["files"]
    stems = file_labels([file["file"] for file in files])
    rows, summary = [], {"options": result.summary["options"]}
    for file, stem in zip(files, stems):
        for layer in file["layers"]:
            where = {"file": stem} if len(files) > 1 else {}
            name = f"{stem}:{layer['layer']}" if len(files) > 1 else layer["layer"]
            summary[name] = ", ".join(f"{k} {value_text(layer, k)}" for k in layer["metrics"])
            found = layer["neurons"]
            if found.get("units_below_support"):
                summary[name] += (f"; not ranked: {found['units_below_support']} units fire on < "
                                  f"{found['min_support']} rows (--min-support)")
            elif found.get("support_unavailable"):
                summary[name] += f"; {found['support_unavailable']}"
            if not found["top_units"]:
                rows.append(where | {"layer": layer["layer"], "rank": "—", "unit": found.get("top_units_unavailable")})
            for entry in found["top_units"]:
                row = where | {"layer": layer["layer"], "rank": entry["rank"], "unit": entry["unit"], score: entry[score]}
                row |= {k: entry[k] for k in _SHOWN if k in entry and k != score}
                if "top_classes" in entry:
                    row["top_classes"] = " ".join(map(str, entry["top_classes"]))
                if "top_tokens" in entry:
                    shares = zip(entry["top_tokens"], entry["top_token_shares"])
                    row["top_tokens"] = " ".join(f"{t}:{s:.2f}" for t, s in shares if t >= 0 and s > 0)  # NaN > 0 is False
                rows.append(row)
    return Result(title=result.title, document=result.document, records=result.records, summary=summary, table=rows)
