"""`actgeom capture`: a model checkpoint and its inputs in, an actgeom dump out (extra actgeom[torch])."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from actgeom.cli import options as o
from actgeom.core.base.options import STORAGE_DTYPES

DType = o.choices("CaptureDType", STORAGE_DTYPES)
INPUT, KEEP, HOW = "Inputs", "What to keep", "How"
TextOpt = Annotated[Optional[Path], typer.Option("--text", rich_help_panel=INPUT, show_default=False, help=(
    "Text examples: .txt (one per line), .jsonl or .json (records; see --text-field), or a table: a datasets "
    "directory (save_to_disk), .arrow or .parquet (columns; the arrow extra)."))]
AttentionOpt = Annotated[bool, typer.Option("--attention", rich_help_panel=KEEP, help=(
    "Save every attention module's probabilities as /attention/<module> (sequences, heads, T, T): the query rows "
    "--tokens keeps, padding zeroed; `actgeom entropy` reads them. Hugging Face models then run with eager "
    "attention."))]


def capture(
    model: Annotated[str, typer.Argument(show_default=False, help=(
        "A local Hugging Face model directory (config.json + weights), a TorchScript file (torch.jit.save), or with "
        "--trust-pickle a torch.save'd module. Never downloaded: a hub name is refused."))],
    out: Annotated[Optional[Path], typer.Option("--output", "-o", show_default=False, help=(
        "The dump to write, atomically (parts are saved in OUT.partial/ while it runs)."))] = None,
    text: TextOpt = None,
    text_field: Annotated[str, typer.Option("--text-field", rich_help_panel=INPUT,
                                            help="The records' field holding the text.")] = "text",
    label_field: Annotated[Optional[str], typer.Option("--label-field", rich_help_panel=INPUT, show_default=False, help=(
        "The records' field holding the label (names kept in the dump)."))] = None,
    inputs: Annotated[Optional[Path], typer.Option("--inputs", rich_help_panel=INPUT, show_default=False, help=(
        "Tensor examples for non-text models: .npy or .pt (first axis: examples)."))] = None,
    labels: Annotated[Optional[Path], typer.Option("--labels", rich_help_panel=INPUT, show_default=False, help=(
        "Labels of --inputs: .npy, or a text file with one label per line."))] = None,
    modules: Annotated[Optional[list[str]], typer.Option("--modules", rich_help_panel=KEEP, show_default=False, help=(
        "Modules whose outputs to keep (globs over dotted names: * one part, ** any). Default: every transformer "
        "block (see --list-modules)."))] = None,
    list_modules: Annotated[bool, typer.Option("--list-modules", rich_help_panel=KEEP, help=(
        "Print the modules with their output shapes on the first example, and exit."))] = False,
    tokens: Annotated[str, typer.Option("--tokens", rich_help_panel=KEEP, help=(
        "Token rows kept: 'all' real tokens, the 'first'/'last' real token or the 'mean' of each sequence, or "
        "'from:K' (positions ≥ K). Padding is never a row."))] = "all",
    classifier: Annotated[bool, typer.Option("--classifier", rich_help_panel=KEEP, help=(
        "Save the model's head (LM or classification head) as /classifier, reading the last captured module."))] = False,
    predictions: Annotated[bool, typer.Option("--predictions", rich_help_panel=KEEP, help=(
        "Save the argmax of the head's logits as each row's prediction."))] = False,
    attention: AttentionOpt = False,
    batch_size: Annotated[int, typer.Option("--batch-size", rich_help_panel=HOW, help="Examples per forward.")] = 32,
    max_length: Annotated[Optional[int], typer.Option("--max-length", rich_help_panel=HOW, show_default=False, help=(
        "Truncate texts to this many tokens (counted and reported). Default: the model's limit."))] = None,
    device: Annotated[str, typer.Option("--device", rich_help_panel=HOW, help=(
        "cpu, cuda or mps; auto: cuda, else mps, else cpu."))] = "auto",
    dtype: Annotated[DType, typer.Option("--dtype", rich_help_panel=HOW, help="The dump's dtype.")] = "float32",
    model_dtype: Annotated[str, typer.Option("--model-dtype", rich_help_panel=HOW, help=(
        "The model's dtype while it runs: float32, float16, bfloat16, float64."))] = "float32",
    step: Annotated[Optional[int], typer.Option("--step", rich_help_panel=HOW, show_default=False, help=(
        "The training step recorded. Default: from the model's name (step1000, checkpoint-500)."))] = None,
    checkpoint: Annotated[Optional[str], typer.Option("--checkpoint", rich_help_panel=HOW, show_default=False, help=(
        "The checkpoint name recorded. Default: the model's file or directory name."))] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", rich_help_panel=HOW, help=(
        "Allow a torch.save'd module: unpickling runs any code the file holds. Only for files you trust."))] = False,
    append: Annotated[bool, typer.Option("--append", rich_help_panel=HOW, help=(
        "Resume a killed capture of OUT: the parts it saved (same model, inputs, options) are kept, the rest is "
        "captured. Without saved parts, a fresh capture."))] = False,
    save_every: Annotated[float, typer.Option("--save-every", rich_help_panel=HOW, help=(
        "Seconds between saved parts (what --append resumes from)."))] = 300.0,
    quiet: o.QuietOpt = False,
) -> None:
    """Run a model over its inputs and write the activations of its modules as an actgeom dump.

    Example (a local Hugging Face model directory, one sentence per line; a checkpoint sweep
    with SLURM: README, "From the shell"):

    \b    actgeom capture ckpts/step1000 --text prompts.txt -o step1000.h5 --append
    """
    from actgeom.core.base.errors import UsageError

    if (text is None) == (inputs is None):
        raise UsageError("give the examples with one of --text FILE or --inputs FILE")
    if out is None and not list_modules:
        raise UsageError("--output OUT.h5 is needed (or --list-modules to see the model's modules)")
    from actgeom.core.capture_inputs import read_tensors, read_text
    from actgeom.core.capture_models import checkpoint_step, load_model
    from actgeom.core.capture_run import CaptureOptions, parse_tokens, probe

    parse_tokens(tokens)
    examples = read_text(text, text_field, label_field) if text is not None else read_tensors(inputs, labels)
    loaded = load_model(model, device=device, model_dtype=model_dtype, trust_pickle=trust_pickle, text=text is not None,
                        attention=attention)
    name, found_step = checkpoint_step(Path(model))
    options = CaptureOptions(modules=tuple(modules or ()), tokens=tokens, batch_size=batch_size, max_length=max_length,
                             dtype=o.plain(dtype), model_dtype=model_dtype, classifier=classifier, predictions=predictions,
                             attention=attention, checkpoint=checkpoint if checkpoint is not None else name,
                             step=step if step is not None else found_step, save_every=save_every)
    if list_modules:
        _print_modules(*probe(loaded, examples, options), loaded.blocks)
        return
    _tell(_run(loaded, examples, out, options, append, quiet), out, quiet)


def _tell(summary: dict, out: Path, quiet: bool) -> None:
    if not quiet:
        resumed = f"; resumed after {summary['resumed_after']} examples" if summary["resumed_after"] else ""
        typer.echo(f"wrote {summary['n_rows']} rows × {len(summary['layers'])} layers ({summary['dtype']}, "
                   f"{summary['level']}-level) of {summary['n_examples']} examples to {out} in "
                   f"{summary['seconds']:.1f} s{resumed}", err=True)
    if summary["truncated"]:
        typer.echo(f"warning: {summary['truncated']} examples were truncated to --max-length tokens", err=True)


def _run(loaded, examples, out: Path, options, append: bool, quiet: bool) -> dict:
    from actgeom.cli.progress import row_progress
    from actgeom.core.capture_run import run_capture

    def note(line: str) -> None:
        if not quiet:
            typer.echo(f"actgeom: {line}", err=True)

    with row_progress(quiet) as progress:
        return run_capture(loaded, examples, out, options, append=append, progress=progress, note=note)


def _print_modules(shapes: list[tuple[str, tuple]], attention: list[str], blocks: list[str]) -> None:
    width = max((len(name) for name, _ in shapes), default=0)
    for name, shape in shapes:
        typer.echo(f"{name:<{width}}  {tuple(shape)}")
    typer.echo(f"default --modules: {' '.join(blocks)}")
    if attention:
        typer.echo(f"--attention saves: {' '.join(attention)}")
