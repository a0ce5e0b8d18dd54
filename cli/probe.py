"""`actgeom probe`: linear probes and concept directions per layer, from the same moments."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from actgeom.cli import options as o
from actgeom.cli.output import emit, metrics_result
from actgeom.cli.progress import row_progress, run_backend
from actgeom.core.base.errors import OptionError
from actgeom.core.base.options import CONTROLS, SPLIT_BY, ProbeOptions
from actgeom.core.base.outputs import atomic_output, check_outputs

PROBE = "Probes (docs/metrics.md)"
SplitBy = o.choices("SplitBy", SPLIT_BY)
Control = o.choices("Control", CONTROLS)

# The options of the probe family, declared once: `probe` and `report` take them.
TestFractionOpt = Annotated[Optional[float], typer.Option(
    "--test-fraction", rich_help_panel=PROBE, show_default=o.default(ProbeOptions, "test_fraction"),
    help="Share held out for scoring: of the rows, or of the sequences (--split-by), chosen by a seeded hash "
         "(0: directions only).")]
SplitByOpt = Annotated[Optional[SplitBy], typer.Option(
    "--split-by", rich_help_panel=PROBE, show_default=o.default(ProbeOptions, "split_by"),
    help="What the split hashes: row, sequence (a sentence's tokens stay on one side; needs sequence offsets), "
         "sample_id (/rows/sample_id); auto: sequence on token-level dumps, else row (recorded as probe.split_by).")]
ShrinkageOpt = Annotated[Optional[str], typer.Option(
    "--shrinkage", rich_help_panel=PROBE, show_default=o.default(ProbeOptions, "shrinkage"),
    help="LDA's s in Σ_s = (1−s)Σ_W + s·(tr Σ_W/D)·I, in [0, 1], or 'auto': the best of a grid on a "
         "validation split of the train rows.")]
RidgeLambdaOpt = Annotated[Optional[float], typer.Option(
    "--ridge-lambda", rich_help_panel=PROBE, show_default=o.default(ProbeOptions, "ridge_lambda"),
    help="Ridge penalty relative to the mean variance per unit (tr S_T/D).")]
ControlOpt = Annotated[Optional[Control], typer.Option(
    "--control", rich_help_panel=PROBE, show_default="none",
    help="Control task for selectivity: 'token' (Hewitt & Liang: a class per /rows/token_id) or 'row' "
         "(a class per hash bucket of the split's unit: the chance baseline).")]
PositiveOpt = Annotated[Optional[str], typer.Option(
    "--positive", rich_help_panel=PROBE, show_default=False,
    help="The direction's positive class (index or label name); with --negative. Default: the larger of two classes.")]
NegativeOpt = Annotated[Optional[str], typer.Option(
    "--negative", rich_help_panel=PROBE, show_default=False, help="The direction's negative class.")]


def probe(
    dumps: Annotated[list[Path], typer.Argument(help="One or more HDF5 activation dumps (e.g. base and tuned model).",
                                                show_default=False)],
    layers: o.LayersOpt = None, labels: o.LabelsOpt = None, offsets: o.OffsetsOpt = None,
    allow_incomplete: o.AllowIncompleteOpt = False, nonfinite: o.NonfiniteOpt = "error",
    tokens: o.TokensOpt = "all", products: o.ProductsOpt = "float64", stats: o.StatsOpt = None,
    test_fraction: TestFractionOpt = None,
    seed: Annotated[Optional[int], typer.Option("--seed", rich_help_panel=PROBE, show_default=o.default(ProbeOptions, "seed"),
                                                help="Seed of the split (same rows in every layer).")] = None,
    split_by: SplitByOpt = None, shrinkage: ShrinkageOpt = None, ridge_lambda: RidgeLambdaOpt = None,
    control: ControlOpt = None, positive: PositiveOpt = None, negative: NegativeOpt = None,
    save_directions: Annotated[Optional[Path], typer.Option(
        "--save-directions", rich_help_panel=o.OUTPUT, show_default=False,
        help="Also write the directions μ₊ − μ₋ as .npz: one array per file and layer, named 'FILE_INDEX/LAYER'.")] = None,
    ci: o.CiOpt = False, ci_groups: o.CiGroupsOpt = None, ci_seed: o.CiSeedOpt = None, null: o.NullOpt = None,
    null_seed: o.NullSeedOpt = None, baseline: o.BaselineOpt = None,
    backend: o.BackendOpt = "local", scheduler: o.SchedulerOpt = None, workers: o.WorkersOpt = None,
    save_stats: o.TaskStatsOpt = None, fmt: o.FormatOpt = None, output: o.OutputOpt = None, quiet: o.QuietOpt = False,
) -> None:
    """Linear probes and concept directions per layer.

    LDA with shrinkage, ridge least squares on one-hot targets and nearest class mean, fitted in
    closed form from the train rows' class moments and scored on held-out rows (accuracy,
    balanced accuracy, macro-F1, AUROC for two classes); chance, majority baseline and, with
    --control, selectivity. The difference of class means per layer with its Fisher ratio, and
    its cosine between consecutive layers and between the same layer of consecutive dumps.

    Example (is the direction of the base model kept after fine-tuning?):

    \b    actgeom probe sample_data/digits_mlp_epoch0030.h5 \\
            sample_data/digits_mlp_epoch1500.h5 --positive 3 --negative 8 \\
            --format json

    \b    actgeom probe sample_data/digits_mlp_epoch1500.h5 \\
            --control row --format table

    With 95 % intervals (the jackknife leaves each group out of train and test rows):

        actgeom probe sample_data/digits_mlp_epoch1500.h5 --ci --format table
    """
    chosen = o.inference(ci, ci_groups, ci_seed, null, null_seed, baseline)
    inputs = [*dumps, *([stats] if stats else []), *(baseline or [])]
    check_outputs({"-o": output, "--save-directions": save_directions}, inputs)
    with row_progress(quiet) as progress, run_backend(backend, scheduler, workers, save_stats, quiet) as executor:
        from actgeom.core import api  # numpy, scipy, h5py: loaded while the progress display says "starting"
        analysis = api.probe(dumps, layers=layers, labels=labels, offsets=offsets, allow_incomplete=allow_incomplete,
                             nonfinite=o.plain(nonfinite), tokens=tokens, products=o.plain(products), test_fraction=test_fraction,
                             seed=seed,
                             split_by=o.plain(split_by), shrinkage=shrinkage_value(shrinkage), ridge_lambda=ridge_lambda,
                             control=o.plain(control),
                             positive=positive, negative=negative, details=save_directions is not None, stats=stats,
                             progress=progress, backend=executor, **chosen)
    document = analysis.to_dict()
    if save_directions is not None:
        _write_npz(save_directions, {f"{i}/{layer['layer']}": layer.pop("details")["direction"]
                                     for i, file in enumerate(document["files"]) for layer in file["layers"]
                                     if "details" in layer}, inputs)
    units = dict.fromkeys(layer["probe"]["split_by"] for file in document["files"] for layer in file["layers"])
    summary = {"split by": ", ".join(units)} | {
        f"direction cosine {entry['layer']}": f"{entry['cosine']:.4g}" if entry["cosine"] is not None else "—"
        for entry in document["direction_cosines_across_files"]}
    emit(metrics_result(analysis, summary), fmt, output, inputs)


def shrinkage_value(value: str | None) -> float | str | None:
    if value is None or value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise OptionError("shrinkage", value, "must be a number in [0, 1] or auto") from None


def _write_npz(path: Path, arrays: dict, inputs) -> None:
    """--save-directions by the output rules (core/base/outputs.py): atomic, never an input."""
    import numpy as np

    with atomic_output(path, inputs, option="--save-directions") as handle:
        np.savez(handle, **arrays)
