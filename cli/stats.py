"""`actgeom stats` and `actgeom merge`: partial statistics for cluster scale-out."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

from actgeom.cli import options as o
from actgeom.cli.output import Result, emit
from actgeom.cli.progress import row_progress
from actgeom.core.base.errors import DataWarning, UsageError
from actgeom.core.base.options import SEEDS
from actgeom.core.base.outputs import check_outputs

SaveOpt = Annotated[Optional[Path], typer.Option(
    "--save-stats", rich_help_panel=o.OUTPUT, show_default=False,
    help="Write the partial statistics (.npz) here, to merge later with `actgeom merge`.")]
RowsOpt = Annotated[Optional[str], typer.Option(
    "--rows", show_default=False, help="Only rows START:STOP of the dump (one shard of a job array).")]
FamiliesOpt = Annotated[Optional[str], typer.Option(
    "--families", show_default="collapse,rank (rank without its sample unless --subsample)",
    help="The families whose `--stats` runs the file serves, a comma list of collapse, rank, entropy, neurons, probe: "
         "it keeps the union of what they need with the options below (as their commands' defaults otherwise).")]
SubsampleOpt = Annotated[Optional[int], typer.Option(
    "--subsample", show_default="each family's own: rank 2 000, entropy 10 000",
    help="Rows kept in the seeded sample of rank (TwoNN/MLE) and entropy (DSE/DSMI): at least what those commands use.")]
SeedOpt = Annotated[int,
                    typer.Option("--seed", min=0, max=SEEDS - 1,
                                 help="Seed of the sample (same seed, same rows in every layer and run) and of the "
                                      "probe's split (rank's, entropy's and probe's --seed).")]
ThresholdOpt = Annotated[float, typer.Option(
    "--threshold", help="A unit is active on a row when its value > threshold (entropy's and neurons' --threshold).")]
GroupsOpt = Annotated[Optional[int], typer.Option(
    "--ci-groups", rich_help_panel=o.INFERENCE, metavar="G", show_default="none",
    help="Keep the statistics in G jackknife groups of sampling units, so that --stats serves --ci (give the "
         "analysis the same G; every shard of a merge too).")]
GroupSeedOpt = Annotated[Optional[int], typer.Option(
    "--ci-seed", rich_help_panel=o.INFERENCE, metavar="S", show_default="0",
    help="With --ci-groups: the seed of the groups' hash (the analysis gives the same --ci-seed).")]


def parse_rows(text: str | None, option: str = "--rows") -> tuple[int, int] | None:
    """'START:STOP' → (start, stop)."""
    if text is None:
        return None
    try:
        start, stop = (int(part) for part in text.split(":"))
    except ValueError:
        raise UsageError(f"{option} '{text}' is not START:STOP (two whole numbers, e.g. 0:100000)") from None
    return start, stop


def stats(dump: o.DumpArg, layers: o.LayersOpt = None, labels: o.LabelsOpt = None, weight: o.WeightOpt = None,
          bias: o.BiasOpt = None, predictions: o.PredictionsOpt = None, offsets: o.OffsetsOpt = None,
          allow_incomplete: o.AllowIncompleteOpt = False, nonfinite: o.NonfiniteOpt = "error", tokens: o.TokensOpt = "all",
          products: o.ProductsOpt = "float64",
          rows: RowsOpt = None, row_offset: Annotated[int, typer.Option(
              "--row-offset", help="Row number of this file's first row when it is one shard file of a larger "
                                   "dump (the seeded sample is keyed by global row numbers).")] = 0,
          families: FamiliesOpt = None, subsample: SubsampleOpt = None, seed: SeedOpt = 0, threshold: ThresholdOpt = 0.0,
          entropy_alpha: Annotated[Optional[float], typer.Option(
              "--entropy-alpha", show_default=False,
              help="Entropy's --alpha (adds entropy to --families): with sequence offsets the per-sequence entropies "
                   "are kept for this Rényi order (without, Σuuᵀ of the normalised rows serves every order).")] = None,
          neurons: Annotated[bool, typer.Option(
              "--neurons", hidden=True, help="Deprecated: add neurons to --families (it also keeps Σ exp(x) of every "
                                             "layer for any `neurons --logvar`).")] = False,
          ci_groups: GroupsOpt = None, ci_seed: GroupSeedOpt = None,
          save_stats: SaveOpt = None, fmt: o.FormatOpt = None, output: o.OutputOpt = None,
          quiet: o.QuietOpt = False) -> None:
    """One pass per layer: the statistics every metric is computed from (for shards).

    Prints what was read per layer; --save-stats keeps the statistics so that shards computed by
    separate jobs can be combined with `actgeom merge`. They hold what the --families need, so that
    their commands' --stats runs (with the same options) find it.

    Example (a job array of 3 shards of the 1 797 rows, i = 0, 1, 2, then one merge):

    \b    actgeom stats sample_data/digits_mlp_epoch1500.h5 \\
            --rows $((i*599)):$(((i+1)*599)) --save-stats part$i.npz

        actgeom merge part0.npz part1.npz part2.npz --save-stats all.npz

    For `entropy --stats all.npz` and `probe --stats all.npz` too:

    \b    actgeom stats sample_data/digits_mlp_epoch1500.h5 \\
            --families collapse,rank,entropy,probe --save-stats all.npz

    With jackknife groups, for `collapse --ci --stats all.npz` (the same G in every shard):

    \b    actgeom stats sample_data/digits_mlp_epoch1500.h5 --ci-groups 20 \\
            --save-stats all.npz
    """
    from actgeom.core.api_files import partial_statistics, stats_families  # numpy, scipy, h5py: not for --help
    from actgeom.core.state.engine import PassOptions

    if neurons:
        warnings.warn("--neurons is deprecated: give --families collapse,rank,neurons", DataWarning, stacklevel=1)
    chosen = stats_families(families, also=("neurons",) if neurons else (), subsample=subsample, seed=seed,
                            threshold=threshold, entropy_alpha=entropy_alpha)
    o.needs("--ci-groups", ci_groups is not None, ci_seed=ci_seed)
    o.check_groups(ci_groups, ci_seed)
    spec = o.dump_spec(layers, labels, weight, bias, predictions, offsets, allow_incomplete)
    check_outputs({"-o": output, "--save-stats": save_stats}, [dump])
    options = PassOptions(nonfinite=o.plain(nonfinite), tokens=tokens, products=o.plain(products), row_range=parse_rows(rows),
                          row_offset=row_offset, ci_groups=ci_groups or 0, ci_seed=ci_seed or 0)
    with row_progress(quiet) as progress:
        found = partial_statistics(dump, spec, options, chosen, threshold=threshold, every_logvar=neurons,
                                   progress=progress)
    _save(save_stats, found.layers, found.meta, [dump])
    emit(_result(f"actgeom stats: {dump}", found), fmt, output, [dump])


def merge(parts: Annotated[list[Path], typer.Argument(help="Partial-statistics files from `actgeom stats --save-stats`.")],
          save_stats: SaveOpt = None, fmt: o.FormatOpt = None, output: o.OutputOpt = None,
          quiet: o.QuietOpt = False) -> None:  # --quiet: accepted as by every command; merge has no progress
    """Merge partial statistics of disjoint rows (shards, row ranges) of the same layers.

    Example:

        actgeom merge part*.npz --save-stats all.npz --format json
    """
    from actgeom.core.api_files import merge as merge_parts  # numpy: when the command runs

    check_outputs({"-o": output, "--save-stats": save_stats}, parts)
    merged = merge_parts(parts)
    _save(save_stats, merged.layers, merged.meta, parts)
    emit(_result(f"actgeom merge: {len(parts)} parts", merged), fmt, output, parts)


def _save(path: Path | None, result: dict, meta: dict, inputs: list[Path]) -> None:
    """--save-stats by the output rules (core/base/outputs.py)."""
    if path is not None:
        from actgeom.core.state.partial import save_partial

        save_partial(path, result, meta, inputs=inputs)


def _result(title: str, found) -> Result:
    """The table/JSON of a PartialStatistics: per layer what was read."""
    document = found.to_dict()
    return Result(title=title, document=document, records=document["layers"],
                  summary={"dumps": ", ".join(found.meta["dumps"]), "rows": ", ".join(f"{a}:{b}" for a, b in found.meta["rows"])})
