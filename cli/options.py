"""Options shared by the analysis commands, declared once."""

from __future__ import annotations

from copy import copy
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from actgeom.core.backends import BACKENDS
from actgeom.core.base.errors import OptionError, UsageError
from actgeom.core.base.options import CI_GROUPS, NONFINITE_POLICIES, PRODUCTS, check_seed

DATA = "Where the data is (foreign files)"
OUTPUT = "Output"
SCALE = "Scale-out (README: Running on a cluster)"
INFERENCE = "Inference (docs/metrics.md: Uncertainty and nulls)"


def choices(name: str, values) -> type[Enum]:
    """A str Enum of the valid values of an option (defined in core), so that --help lists them
    and the parser refuses anything else."""
    return Enum(name, {value.replace("-", "_"): value for value in values}, type=str)


def default(options_class, field: str) -> str:
    """A default as --help shows it, read from the options dataclass (defaults live in core only)."""
    value = options_class.__dataclass_fields__[field].default
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ":".join(map(str, value))
    return "none" if value is None else str(value)


def retitled(option, panel: str, *names: str):
    """A family's option (its ``Annotated`` alias) in another command's help panel, under ``names``
    where its own would clash there (`report`'s --rank-eps for rank's --eps): its help text, shown
    default and choices stay those of the one declaration."""
    info = copy(option.__metadata__[0])
    info.rich_help_panel = panel
    if names:  # in an Annotated alias, Typer reads the first name from `default` (typer/utils.py)
        info.default, info.param_decls = names[0], names[1:]
    return Annotated[option.__origin__, info]


def given(**values) -> dict:
    """Command-line values as a family's keywords (``core.api.family_options``): choices as their values."""
    return {name: plain(value) for name, value in values.items()}


def plain(value):
    """An Enum member (from a choice option) as its value; anything else as it is."""
    return value.value if isinstance(value, Enum) else value


class Format(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"
    md = "md"


DumpArg = Annotated[Path, typer.Argument(help="An HDF5 activation dump.", show_default=False)]
LayersOpt = Annotated[Optional[list[str]], typer.Option(
    "--layers", "-l", rich_help_panel=DATA, show_default=False,
    help="Layer datasets: a glob over dataset paths (repeatable). Default: every dataset under "
         "/activations, or every 2-D float dataset of a foreign file.")]
LabelsOpt = Annotated[Optional[str], typer.Option(
    "--labels", rich_help_panel=DATA, show_default=False,
    help="Integer class labels (N,), -1 = none. Default: /rows/label, or a dataset named label(s), y, targets.")]
WeightOpt = Annotated[Optional[str], typer.Option(
    "--weight", rich_help_panel=DATA, show_default=False, help="Classifier weight (C, D). Default: /classifier/weight.")]
BiasOpt = Annotated[Optional[str], typer.Option(
    "--bias", rich_help_panel=DATA, show_default=False, help="Classifier bias (C,). Default: /classifier/bias.")]
PredictionsOpt = Annotated[Optional[str], typer.Option(
    "--predictions", rich_help_panel=DATA, show_default=False,
    help="The network's predicted class per row (N,). Default: /rows/prediction.")]
OffsetsOpt = Annotated[Optional[str], typer.Option(
    "--offsets", rich_help_panel=DATA, show_default=False,
    help="Sequence boundaries (S+1,) into the rows, token-level dumps. Default: /sequences/offsets.")]
AllowIncompleteOpt = Annotated[bool, typer.Option(
    "--allow-incomplete", rich_help_panel=DATA, metavar="",
    help="Read a dump whose writer did not finish (attribute complete=false).")]
Nonfinite = choices("Nonfinite", NONFINITE_POLICIES)
NonfiniteOpt = Annotated[Nonfinite, typer.Option(
    "--nonfinite", rich_help_panel=DATA,
    help="Rows with NaN or inf: 'error' refuses the layer (naming how many rows), 'drop' skips and counts them.")]
TokensOpt = Annotated[str, typer.Option(
    "--tokens", rich_help_panel=DATA,
    help="Token-level dumps: 'all' rows, the 'last' of each sequence, or 'from:K' (positions ≥ K, e.g. from:1 "
         "leaves out BOS/attention-sink rows). Needs /rows/position or sequence offsets unless 'all'.")]
Products = choices("Products", PRODUCTS)
ProductsOpt = Annotated[Products, typer.Option(
    "--products", rich_help_panel=DATA,
    help="How each block's D×D product is computed: 'float64' (exact), or 'float32' for float16/bfloat16 "
         "layers: about half the time of a pass, within 1e-6 relative of float64 in our measurements "
         "(README: Speed), far below 16-bit storage noise.")]
StatsOpt = Annotated[Optional[Path], typer.Option(
    "--stats", rich_help_panel=DATA, show_default=False,
    help="Take the statistics from this file (actgeom stats/merge --save-stats, e.g. merged shards) instead "
         "of a pass over the dump; the dump still gives layers, labels and classifier. One dump only.")]
PartialOkOpt = Annotated[bool, typer.Option(
    "--partial-ok", rich_help_panel=DATA, metavar="",
    help="With --stats: accept statistics of only part of the dump's rows (the output records the rows used).")]
FormatOpt = Annotated[Optional[Format], typer.Option(
    "--format", "-f", rich_help_panel=OUTPUT, show_default=False,
    help="Output format. Default: table on a terminal; json when piped or with -o (unless the "
         "file's suffix names another format).")]
QuietOpt = Annotated[bool, typer.Option(
    "--quiet", "-q", rich_help_panel=OUTPUT,
    help="No progress on stderr (by default: a bar on a terminal, a plain line every 10 s and per layer otherwise).")]
OutputOpt = Annotated[Optional[Path], typer.Option(
    "--output", "-o", rich_help_panel=OUTPUT, show_default=False,
    help="Write the result to this file (atomically) instead of stdout.")]

# Inference: intervals (and, with the nulls and baselines, p-values and differences) beside every value.
CiOpt = Annotated[bool, typer.Option(
    "--ci", rich_help_panel=INFERENCE,
    help="A 95 % interval for every scalar metric from the same pass (delete-a-group jackknife over --ci-groups "
         "groups of rows, or of whole sequences on token-level dumps): the table shows value ± half-width, the "
         "records se, ci_low, ci_high. A metric without one says why under intervals_unavailable (JSON).")]
CiGroupsOpt = Annotated[Optional[int], typer.Option(
    "--ci-groups", rich_help_panel=INFERENCE, metavar="G", show_default=str(CI_GROUPS),
    help="With --ci: jackknife groups, 2 ≤ G ≤ the sampling units read; memory about G × the layer's statistics "
         "(refused before the pass when it would not fit, naming a G that does).")]
CiSeedOpt = Annotated[Optional[int], typer.Option(
    "--ci-seed", rich_help_panel=INFERENCE, metavar="S", show_default="0",
    help="With --ci: the seed (0 to 2⁶⁴ − 1) of the hash that puts each sampling unit in its group (same seed, same "
         "groups for any chunking, --rows shard, merge and backend).")]


NullOpt = Annotated[Optional[int], typer.Option(
    "--null", rich_help_panel=INFERENCE, metavar="K", show_default="off",
    help="K label permutations (seeded; whole sequences together on token-level dumps) in the same pass: every "
         "label-dependent metric gets null_mean, null_sd, z and a permutation p-value (1 + #{null at least as "
         "extreme}) / (K + 1); the table shows it in a 'LAYER p' column. K ≥ 1.")]
NullSeedOpt = Annotated[Optional[int], typer.Option(
    "--null-seed", rich_help_panel=INFERENCE, metavar="S", show_default="0",
    help="With --null: the seed (0 to 2⁶⁴ − 1) of the label permutations.")]
BaselineOpt = Annotated[Optional[list[Path]], typer.Option(
    "--baseline", rich_help_panel=INFERENCE, metavar="DUMP", show_default=False,
    help="A control run's dump (a random initialisation, shuffled inputs, another seed), repeatable: one for every "
         "dump, or one per dump in order. The same metrics on it, matched by layer name: baseline, difference (and "
         "with --ci its interval, excludes_zero); the table shows the difference in a 'LAYER Δ baseline' column.")]
FdrOpt = Annotated[Optional[float], typer.Option(
    "--fdr", rich_help_panel=INFERENCE, metavar="q", show_default="0.05",
    help="With --null: selective_unit_fraction_fdr counts the units whose Benjamini–Hochberg q-value of the "
         "class-selectivity permutation p-value is ≤ q (per-unit p_value, q_value in the unit table).")]


def inference(ci: bool, ci_groups: int | None, ci_seed: int | None, null: int | None = None,
              null_seed: int | None = None, baseline: list[Path] | None = None) -> dict:
    """The Inference panel's values as the API's keywords (core/api.py). An option that shapes
    --ci's intervals or --null's permutations without that option is refused: it would silently
    do nothing."""
    needs("--ci", ci, ci_groups=ci_groups, ci_seed=ci_seed)
    needs("--null", null is not None, null_seed=null_seed)
    check_groups(ci_groups, ci_seed)
    check_seed(null_seed or 0, "null_seed")
    if null is not None and null < 1:
        raise OptionError("null", null, "must be ≥ 1 permutation (leave --null out for none)")
    return {"ci": ci, "ci_groups": CI_GROUPS if ci_groups is None else ci_groups, "ci_seed": ci_seed or 0,
            "null": null or 0, "null_seed": null_seed or 0, "baseline": list(baseline) if baseline else None}


def check_groups(ci_groups: int | None, ci_seed: int | None) -> None:
    """--ci-groups G ≥ 2 (0 would be no groups at all: no interval, silently) and a 64-bit --ci-seed."""
    if ci_groups is not None and ci_groups < 2:
        raise OptionError("ci_groups", ci_groups, "must be ≥ 2 (the jackknife leaves out one group of several)")
    check_seed(ci_seed or 0, "ci_seed")


def needs(switch: str, on: bool, **given) -> None:
    """Refuse an option of ``given`` (not None) when ``switch`` is off (UsageError naming both)."""
    for name, value in given.items():
        if value is not None and not on:
            raise UsageError(f"--{name.replace('_', '-')} is an option of {switch}: give {switch} too")


Backend = choices("Backend", BACKENDS)
BackendOpt = Annotated[Backend, typer.Option(
    "--backend", rich_help_panel=SCALE,
    help="Who runs the passes: 'local' (this process) or 'dask' (tasks over row ranges on a dask.distributed "
         "cluster; needs actgeom's 'dask' extra). Same numbers either way.")]
SchedulerOpt = Annotated[Optional[str], typer.Option(
    "--scheduler", rich_help_panel=SCALE, show_default=False,
    help="With --backend dask: the address of a running scheduler (e.g. tcp://node01:8786, or the one of a "
         "dask-jobqueue SLURMCluster). Default: a LocalCluster on this machine.")]
WorkersOpt = Annotated[Optional[int], typer.Option(
    "--workers", rich_help_panel=SCALE, show_default="one per core",
    help="With --backend dask and no --scheduler: worker processes of the LocalCluster.")]
TaskStatsOpt = Annotated[Optional[Path], typer.Option(
    "--save-stats", rich_help_panel=SCALE, show_default=False,
    help="With --backend dask: a directory keeping each task's result (one .npz per file, or compared files, and row range; "
         "and per range of a second pass); a re-run after a crash computes only the missing ones (each reused file's "
         "provenance checked).")]


def dump_spec(layers, labels, weight, bias, predictions, offsets, allow_incomplete, **more):
    """The DumpSpec of the shared data options (``more``: e.g. describe_only)."""
    from actgeom.core.dump import DumpSpec  # h5py: when a command runs, not for --help

    return DumpSpec(layers=tuple(layers or ()), labels=labels, weight=weight, bias=bias,
                    predictions=predictions, offsets=offsets, allow_incomplete=allow_incomplete, **more)



def _configure_threads(value: Optional[int]) -> None:
    from actgeom.core.base.threads import configure

    configure(value)


ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads", metavar="N", show_default=False, expose_value=False, callback=_configure_threads,
    help="CPUs to compute on (BLAS threads), at most. Default: $ACTGEOM_THREADS, else every CPU this process may "
         "use (its affinity, cgroup quota, SLURM_CPUS_PER_TASK, OMP_NUM_THREADS); small eigensolves, and large "
         "ones while other processes keep the CPUs busy, get one thread.")]


def threads_option():
    """``--threads N`` as the running Typer builds it, which cli/app.py adds to every command: decided
    at start-up, before the command runs (core/base/threads.py)."""
    probe = typer.Typer()

    @probe.command()
    def command(threads: ThreadsOpt = None) -> None:
        """Only its option is used."""

    return typer.main.get_command(probe).params[0]
