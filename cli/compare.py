"""`actgeom compare`: similarity matrices between layers of two files, or one layer across checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from actgeom.cli import options as o
from actgeom.cli.cells import intervals_line, plus_minus
from actgeom.cli.output import Result, emit, warn_sample_beyond_rows
from actgeom.cli.progress import row_progress, run_backend
from actgeom.core.base.labels import file_labels
from actgeom.core.base.options import CompareOptions
from actgeom.core.base.outputs import check_outputs

METRIC = "Metric conventions (docs/metrics.md)"


def _default(field: str) -> str:
    return o.default(CompareOptions, field)


# compare's null shuffles B's sampled rows (no labels): its own help text beside the shared --ci options
NullOpt = Annotated[Optional[int], typer.Option(
    "--null", rich_help_panel=o.INFERENCE, metavar="K", show_default="off",
    help="K seeded shuffles of B's sampled rows (--subsample): cka_linear and cka_debiased (tested on the sample), "
         "rsa_spearman, rsa_pearson and mutual_knn get null_mean, null_sd, z and a permutation p-value "
         "(1 + #{null ≥ observed}) / (K + 1); the table shows them in a 'METRIC p' row. K ≥ 1.")]
NullSeedOpt = Annotated[Optional[int], typer.Option(
    "--null-seed", rich_help_panel=o.INFERENCE, metavar="S", show_default="0",
    help="With --null: the seed (0 to 2⁶⁴ − 1) of the shuffles.")]


def compare(
    dumps: Annotated[list[Path], typer.Argument(help="Two dumps (A, B), or several checkpoints.", show_default=False)],
    layers: o.LayersOpt = None,
    layers_b: Annotated[Optional[list[str]], typer.Option(
        "--layers-b", rich_help_panel=o.DATA, show_default=False,
        help="Layers of B (the columns) when comparing two files. Default: the --layers selection.")] = None,
    reference: Annotated[Optional[Path], typer.Option(
        "--reference", rich_help_panel=o.DATA, show_default=False,
        help="Compare every dump with this one, layer by layer (rows = layers, columns = dumps).")] = None,
    ids: Annotated[Optional[str], typer.Option(
        "--ids", rich_help_panel=o.DATA, show_default=False,
        help="Row ids (N,) in every file, which must match row by row. Default: /rows/sample_id; without ids "
             "in every file, equal row counts are required and alignment is assumed.")] = None,
    allow_incomplete: o.AllowIncompleteOpt = False, nonfinite: o.NonfiniteOpt = "error",
    max_memory: Annotated[str, typer.Option(
        "--max-memory", rich_help_panel=o.DATA,
        help="Refuse a comparison whose moments (8 bytes × (Σ D_a·D_b + Σ D²)) and buffers exceed this.")] = "4GiB",
    alpha: Annotated[Optional[float], typer.Option("--alpha", rich_help_panel=METRIC, show_default=_default("alpha"),
                                                   help="shape_distance's partial whitening: 1 Procrustes, 0 CCA.")] = None,
    svcca_keep: Annotated[Optional[float], typer.Option(
        "--svcca-keep", rich_help_panel=METRIC, show_default=_default("svcca_keep"),
        help="SVCCA keeps the top PCs explaining this much variance.")] = None,
    subsample: Annotated[Optional[int], typer.Option(
        "--subsample", rich_help_panel=METRIC, show_default=_default("subsample"),
        help="Rows (the same in every file) for RSA and mutual k-NN; 0: none.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", rich_help_panel=METRIC, show_default=_default("seed"),
                                                help="Seed of the row sample.")] = None,
    knn_k: Annotated[Optional[int], typer.Option("--knn-k", rich_help_panel=METRIC, show_default=_default("knn_k"),
                                                 help="mutual_knn's k.")] = None,
    unit_threshold: Annotated[Optional[float], typer.Option(
        "--unit-threshold", rich_help_panel=METRIC, show_default=_default("unit_threshold"),
        help="unit_best_corr: fraction of A's units whose best correlation with a unit of B exceeds this.")] = None,
    units: Annotated[Optional[bool], typer.Option(
        "--units", rich_help_panel=METRIC, metavar="", show_default=_default("units"),
        help="List each unit of A with its best-correlated unit of B (JSON).")] = None,
    ci: o.CiOpt = False, ci_groups: o.CiGroupsOpt = None, ci_seed: o.CiSeedOpt = None, null: NullOpt = None,
    null_seed: NullSeedOpt = None,
    backend: o.BackendOpt = "local", scheduler: o.SchedulerOpt = None, workers: o.WorkersOpt = None,
    save_stats: o.TaskStatsOpt = None, fmt: o.FormatOpt = None, output: o.OutputOpt = None, quiet: o.QuietOpt = False,
) -> None:
    """Similarity between layers, checkpoints and models, in one pass over aligned rows.

    Per measure a matrix: rows = A's layers, columns = B's (or checkpoint × checkpoint for one
    layer of several files; layers × files with --reference). CKA (linear, debiased), shape and
    Procrustes distances, CCA, SVCCA, PWCCA, RSA, mutual k-NN, unit best correlation.

    Example:

    \b    actgeom compare sample_data/digits_mlp_epoch0030.h5 \\
            sample_data/digits_mlp_epoch1500.h5 --format table

        actgeom compare sample_data/*.h5 -l hidden3 --format json -o drift.json

    \b    actgeom compare sample_data/*.h5 -l hidden3 \\
            --reference sample_data/digits_mlp_epoch1500.h5 --format jsonl

    \b    actgeom compare sample_data/*.h5 -l hidden3 --backend dask --workers 2 \\
            --format table   # tasks on a LocalCluster

    With 95 % intervals and permutation p-values (CKA, RSA, mutual k-NN):

    \b    actgeom compare sample_data/digits_mlp_epoch0000.h5 \\
            sample_data/digits_mlp_epoch1500.h5 -l hidden3 \\
            --ci --null 99 --format table
    """
    inference = {key: value for key, value in o.inference(ci, ci_groups, ci_seed, null, null_seed).items()
                 if key != "baseline"}  # (a baseline is not a comparison's: compare the files themselves)
    inputs = [*dumps, *([reference] if reference else [])]
    check_outputs({"-o": output}, inputs)
    with row_progress(quiet) as progress, run_backend(backend, scheduler, workers, save_stats, quiet) as executor:
        from actgeom.core import api  # numpy, scipy, h5py: loaded while the progress display says "starting"
        analysis = api.compare(dumps, layers=layers, layers_b=layers_b, reference=reference, ids=ids,
                               allow_incomplete=allow_incomplete, nonfinite=o.plain(nonfinite), max_memory=max_memory,
                               alpha=alpha, svcca_keep=svcca_keep, subsample=subsample, seed=seed, knn_k=knn_k,
                               unit_threshold=unit_threshold, units=units, progress=progress, backend=executor,
                               **inference)
    view = matrix_view(analysis)
    warn_sample_beyond_rows(view.document["pass"]["rows_used"])
    emit(view, fmt, output, inputs)


def matrix_view(analysis) -> Result:
    """Table/md: one row per measure × row of the matrix, one column per column (B), a value ± the
    half-width of its interval with --ci, and with --null a 'METRIC p' row of p-values under each
    measure that has them; JSON: the document; jsonl/csv: tidy records (file_a, layer_a, file_b,
    layer_b, metric, value, note, and the inference fields)."""
    document = analysis.to_dict()
    rows, columns = (_labels(document[key]) for key in ("rows", "columns"))
    cells = {(cell["row"], cell["column"]): cell for cell in document["pairs"]}
    table = []
    for name, matrix in document["matrices"].items():
        for r in range(len(rows)):
            shown = [_shown(value, cells.get((r, c), {}).get("intervals", {}).get(name)) for c, value in enumerate(matrix[r])]
            table.append({"metric": name, "A \\ B": rows[r]} | dict(zip(columns, shown)))
        if any(name in cell.get("nulls", {}) for cell in cells.values()):
            for r in range(len(rows)):
                p_values = [cells.get((r, c), {}).get("nulls", {}).get(name, {}).get("p_value") for c in range(len(columns))]
                table.append({"metric": f"{name} p", "A \\ B": rows[r]}
                             | {column: "" if p is None else f"{p:.3g}" for column, p in zip(columns, p_values)})
    summary = {"orientation": document["orientation"], "alignment": document["alignment"]["note"],
               "rows used": document["pass"]["rows_used"],
               "memory": f"{document['pass']['memory_bytes'] / 2**20:.1f} MiB of moments and buffers",
               "options": ", ".join(f"{k}={v}" for k, v in document["options"]["compare"].items())} | _inference_lines(document)
    return Result(title="actgeom compare", document=document, records=analysis.records(), summary=summary, table=table)


def _shown(value, interval: dict | None):
    return value if interval is None or value is None else plus_minus(value, interval)


def _inference_lines(document: dict) -> dict:
    """What ± and the p rows mean, when the comparison has them."""
    null = document["inference"]["null"]
    lines = intervals_line(document)
    if null:
        lines["p-values"] = (f"{null['permutations']} shuffles of B's sampled rows (seed {null['seed']}); CKA tested on "
                             "the sample (its value there: nulls.sample_value, JSON)")
    return lines


def _labels(entries: list[dict]) -> list[str]:
    """Layer names, or file stems without their shared prefix."""
    if all("layer" in e and e["label"] == e["layer"] for e in entries):
        return [e["label"] for e in entries]
    return file_labels([e["label"] for e in entries])
