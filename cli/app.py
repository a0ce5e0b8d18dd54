"""The `actgeom` command: one Typer app; user errors surface here, and only here.

Exit codes: 0 ok; 1 runtime failure (a bug: traceback shown); 2 usage (a bad option or value);
3 invalid input (a file, dataset or value that actgeom cannot use).
"""

from __future__ import annotations

import sys

import typer
from typer._click.exceptions import NoArgsIsHelpError, UsageError  # Typer vendors click
from typer.core import TyperGroup

from actgeom.cli import collapse, compare, entropy, extract, info, neurons, probe, rank, stats
from actgeom.core import __version__
from actgeom.core.errors import ActgeomError, OptionError


class _Group(TyperGroup):
    """Turns every ActgeomError into one line on stderr and its exit code; no traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OptionError as exc:  # core names options as Python keywords; here they are flags
            sys.stderr.write(f"Error: {exc.for_cli()}\n")
            raise typer.Exit(exc.exit_code) from None
        except ActgeomError as exc:
            sys.stderr.write(f"Error: {exc}\n")
            raise typer.Exit(exc.exit_code) from None
        except UsageError as exc:  # the parser's: one line too, not a box
            if isinstance(exc, NoArgsIsHelpError):
                raise
            command = f" {ctx.invoked_subcommand}" if ctx.invoked_subcommand else ""
            sys.stderr.write(f"Error: {exc.format_message()} (see actgeom{command} --help)\n")
            raise typer.Exit(2) from None
        except BrokenPipeError:  # `actgeom ... | head`: the reader left; nothing is wrong
            sys.stderr.close()
            raise typer.Exit(0) from None


app = typer.Typer(
    cls=_Group,
    name="actgeom",
    help="Geometry of neural-network representations from HDF5 activation dumps.\n\n"
         "Exit codes: 0 ok, 1 runtime failure, 2 usage error, 3 invalid input.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # arrays are huge
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command(name="info")(info.info)
app.command(name="collapse")(collapse.collapse)
app.command(name="rank")(rank.rank)
app.command(name="entropy")(entropy.entropy)
app.command(name="neurons")(neurons.neurons)
app.command(name="compare")(compare.compare)
app.command(name="probe")(probe.probe)
app.command(name="stats")(stats.stats)
app.command(name="merge")(stats.merge)
app.command(name="extract")(extract.extract)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"actgeom {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Geometry of neural-network representations from HDF5 activation dumps."""


def main() -> None:
    app()
