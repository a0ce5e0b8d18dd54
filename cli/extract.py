"""`actgeom extract`: any activation source in, a clean actgeom dump out."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Optional

import typer

from actgeom.cli import options as o
from actgeom.core.base.options import COMPRESSION, STORAGE_DTYPES

DType = o.choices("DType", STORAGE_DTYPES)
Compression = o.choices("Compression", [c for c in COMPRESSION if c])
SELECT = "Which rows"
STORE = "How to store them"
SourcesArg = Annotated[list[Path], typer.Argument(
    help="Activation files, concatenated along rows: HDF5 (any layout; NeuroX), .npy, .npz, .safetensors, "
         ".pt/.pth (tensors only), Arrow (.arrow or a datasets/SAELens cache directory).", show_default=False)]


def extract(
    sources: SourcesArg,
    out: Annotated[Path, typer.Option("--output", "-o", show_default=False, help=(
        "The dump to write, atomically; an existing file is replaced (--append adds rows to it instead)."))],
    layers: o.LayersOpt = None, labels: o.LabelsOpt = None, offsets: o.OffsetsOpt = None,
    allow_incomplete: o.AllowIncompleteOpt = False,
    tokens: Annotated[str, typer.Option("--tokens", rich_help_panel=SELECT, help=(
        "Token-level sources: 'all' rows, the 'first'/'last' row or the 'mean' of each sequence, or 'from:K' "
        "(positions ≥ K). Needs sequence offsets (or positions for from:K) unless 'all'."))] = "all",
    rows: Annotated[Optional[str], typer.Option("--rows", rich_help_panel=SELECT, show_default=False, help=(
        "Keep rows A:B (after --tokens), e.g. 0:100000."))] = None,
    classes: Annotated[Optional[str], typer.Option("--classes", rich_help_panel=SELECT, show_default=False, help=(
        "Keep rows with these labels, e.g. 0,3,7."))] = None,
    sample: Annotated[Optional[int], typer.Option("--sample", rich_help_panel=SELECT, show_default=False, help=(
        "Keep a seeded uniform sample of N of the rows left, in their order."))] = None,
    seed: Annotated[int, typer.Option("--seed", rich_help_panel=SELECT, help="Seed of --sample.")] = 0,
    stratify: Annotated[bool, typer.Option("--stratify", rich_help_panel=SELECT, metavar="", help=(
        "--sample keeps each class's share of the rows (needs labels)."))] = False,
    dtype: Annotated[Optional[DType], typer.Option("--dtype", rich_help_panel=STORE, show_default=False, help=(
        "The stored dtype; values overflowing to inf are counted. Default: the sources' dtype (float32 when "
        "they differ)."))] = None,
    compression: Annotated[Optional[Compression], typer.Option("--compression", rich_help_panel=STORE, show_default=False,
                                                               help="Compress the datasets. Default: none.")] = None,
    append: Annotated[bool, typer.Option("--append", rich_help_panel=STORE, metavar="", help=(
        "Add the rows to the existing dump OUT (same layers, widths, dtype); resumes after the rows an earlier "
        "extract with the same options and sources already wrote."))] = False,
    quiet: o.QuietOpt = False,
) -> None:
    """Derive an actgeom dump from activations in any format: select, subsample, pool, convert.

    Example (the last token of each sequence of a torch-saved cache as bfloat16; a stratified sample):

        actgeom extract cache.pt -o last.h5 --tokens last --dtype bfloat16

    \b    actgeom extract sample_data/digits_mlp_epoch1500.h5 -o small.h5 \\
            --layers 'hidden*' --sample 1000 --stratify --seed 1
    """
    from actgeom.core.dump.sources import open_source  # numpy, h5py: imported when the command runs
    from actgeom.core.extract import Selection, extract_dump, parse_classes, parse_rows

    selection = Selection(rows=parse_rows(rows), classes=parse_classes(classes), sample=sample, seed=seed,
                          stratify=stratify, tokens=tokens, dtype=o.plain(dtype), compression=o.plain(compression))
    spec = o.dump_spec(layers, labels, None, None, None, offsets, allow_incomplete)
    with ExitStack() as stack:
        opened = [stack.enter_context(open_source(path, spec)) for path in sources]
        summary = extract_dump(opened, out, selection, append=append)
    if not quiet:
        typer.echo(f"wrote {summary['n_rows_written']} rows × {len(summary['layers'])} layers ({summary['dtype']}, "
                   f"{summary['level']}-level) to {out}; it has {summary['n_rows']} rows", err=True)
    for layer, count in summary["overflow_to_inf"].items():
        if count:
            typer.echo(f"warning: {count} values of layer '{layer}' overflowed to inf in {summary['dtype']}", err=True)
