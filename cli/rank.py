"""`actgeom rank`: spectra and effective dimensionality per layer."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Annotated, Optional

import typer

from actgeom.cli import options as o
from actgeom.cli.output import emit, metrics_result
from actgeom.cli.progress import row_progress, run_backend
from actgeom.cli.stats import parse_rows
from actgeom.core.base.options import RANK_PRESETS as PRESETS
from actgeom.core.base.options import STORAGE_RTOL, RankOptions
from actgeom.core.base.outputs import check_outputs, write_output

METRIC = "Metric conventions (docs/metrics.md)"
Preset = o.choices("Preset", PRESETS)

# The options of the rank family, declared once: `rank` and `report` take them.
PresetOpt = Annotated[Optional[Preset], typer.Option(
    "--preset", rich_help_panel=METRIC, show_default="none",
    help="garrido (raw, uncentred spectrum) or tracing (centred λ, top 2048). Explicit options win.")]
CenterOpt = Annotated[Optional[bool], typer.Option(
    "--center/--no-center", rich_help_panel=METRIC, metavar="", show_default=o.default(RankOptions, "center"),
    help="Spectrum of the covariance, or of the raw second moment.")]
MaxEigsOpt = Annotated[Optional[int], typer.Option("--max-eigs", rich_help_panel=METRIC, show_default="all",
                                                   help="Keep only the largest eigenvalues.")]
EpsOpt = Annotated[Optional[float], typer.Option("--eps", rich_help_panel=METRIC, show_default=o.default(RankOptions, "eps"),
                                                 help="RankMe's ε.")]
FitRangeOpt = Annotated[Optional[str], typer.Option(
    "--fit-range", rich_help_panel=METRIC, show_default=o.default(RankOptions, "fit_range"),
    help="α-ReQ ranks START:STOP, 1-based, inclusive.")]
GeOpt = Annotated[Optional[bool], typer.Option("--ge", rich_help_panel=METRIC, metavar="",
                                               show_default=o.default(RankOptions, "ge"),
                                               help="k90/k95/k99 with ≥ p instead of > p.")]
RtolOpt = Annotated[Optional[float], typer.Option(
    "--rtol", rich_help_panel=METRIC,
    show_default="by dtype: " + ", ".join(f"{k} {v:g}" for k, v in STORAGE_RTOL.items()),
    help="Numerical-rank tolerance relative to λ_1.")]
SubsampleOpt = Annotated[Optional[int], typer.Option("--subsample", rich_help_panel=METRIC,
                                                     show_default=o.default(RankOptions, "subsample"),
                                                     help="Rows sampled for TwoNN and MLE.")]


def fit_range_value(text: str | None) -> tuple[int, int] | None:
    """--fit-range 'START:STOP' → (start, stop)."""
    return None if text is None else parse_rows(text, "--fit-range")


def rank(
    dumps: Annotated[list[Path], typer.Argument(help="One or more HDF5 activation dumps.", show_default=False)],
    layers: o.LayersOpt = None, offsets: o.OffsetsOpt = None, allow_incomplete: o.AllowIncompleteOpt = False,
    nonfinite: o.NonfiniteOpt = "error", tokens: o.TokensOpt = "all",
    products: o.ProductsOpt = "float64", stats: o.StatsOpt = None,
    partial_ok: o.PartialOkOpt = False,
    preset: PresetOpt = None, center: CenterOpt = None, max_eigs: MaxEigsOpt = None, eps: EpsOpt = None,
    fit_range: FitRangeOpt = None, ge: GeOpt = None, rtol: RtolOpt = None, subsample: SubsampleOpt = None,
    seed: Annotated[Optional[int], typer.Option("--seed", rich_help_panel=METRIC, show_default=o.default(RankOptions, "seed"),
                                                help="Seed of the sample (same rows in every layer).")] = None,
    spectrum_out: Annotated[Optional[Path], typer.Option(
        "--spectrum-out", rich_help_panel=o.OUTPUT, show_default=False,
        help="Also write every layer's eigenvalues as CSV (file, layer, spectrum, rank, eigenvalue).")] = None,
    ci: o.CiOpt = False, ci_groups: o.CiGroupsOpt = None, ci_seed: o.CiSeedOpt = None, null: o.NullOpt = None,
    null_seed: o.NullSeedOpt = None, baseline: o.BaselineOpt = None,
    backend: o.BackendOpt = "local", scheduler: o.SchedulerOpt = None, workers: o.WorkersOpt = None,
    save_stats: o.TaskStatsOpt = None, fmt: o.FormatOpt = None, output: o.OutputOpt = None, quiet: o.QuietOpt = False,
) -> None:
    """Spectrum and effective dimension per layer.

    RankMe (raw, centred, λ), effective rank, α-ReQ, stable rank, participation ratio, numerical
    rank, k90/k95/k99, mean cosine, IsoScore, TwoNN and MLE intrinsic dimension. Eigenvalues are
    computed once per layer.

    Example:

        actgeom rank sample_data/digits_mlp_epoch1500.h5 --format table

    \b    actgeom rank sample_data/digits_mlp_epoch1500.h5 --preset tracing \\
            --spectrum-out spectra.csv --format jsonl

    With 95 % intervals (se, ci_low, ci_high in every record):

        actgeom rank sample_data/digits_mlp_epoch1500.h5 --ci --format csv
    """
    chosen = o.inference(ci, ci_groups, ci_seed, null, null_seed, baseline)
    inputs = [*dumps, *([stats] if stats else []), *(baseline or [])]
    check_outputs({"-o": output, "--spectrum-out": spectrum_out}, inputs)
    with row_progress(quiet) as progress, run_backend(backend, scheduler, workers, save_stats, quiet) as executor:
        from actgeom.core import api  # numpy, scipy, h5py: loaded while the progress display says "starting"
        analysis = api.rank(dumps, layers=layers, offsets=offsets, allow_incomplete=allow_incomplete,
                            nonfinite=o.plain(nonfinite), tokens=tokens, products=o.plain(products), stats=stats,
                            partial_ok=partial_ok,
                            preset=o.plain(preset), center=center, max_eigs=max_eigs, eps=eps,
                            fit_range=fit_range_value(fit_range), ge=ge,
                            rtol=rtol, subsample=subsample, seed=seed, details=spectrum_out is not None,
                            progress=progress, backend=executor, **chosen)
    if spectrum_out is not None:
        write_output(spectrum_out, _spectra_csv(analysis.to_dict()), inputs, option="--spectrum-out")
        for file in analysis.to_dict()["files"]:  # the spectra went to the CSV, not into the result
            for layer in file["layers"]:
                layer.pop("details", None)
    emit(metrics_result(analysis), fmt, output, inputs)


def _spectra_csv(document: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "layer", "spectrum", "rank", "eigenvalue"])
    for file in document["files"]:
        for layer in file["layers"]:
            for kind, key in (("centred", "spectrum"), ("raw", "spectrum_raw")):
                for i, value in enumerate(layer["details"][key], start=1):
                    writer.writerow([file["file"], layer["layer"], kind, i, repr(float(value))])
    return buffer.getvalue()
