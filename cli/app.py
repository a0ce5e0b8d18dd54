"""The `actgeom` command: one Typer app; user errors surface here, and only here.

Exit codes: 0 ok; 1 runtime failure (an output that could not be written: one line; else a bug:
traceback shown); 2 usage (a bad option or value); 3 invalid input (a file, dataset or value
that actgeom cannot use); 130 interrupted (Ctrl-C).

Ctrl-C always ends the command with "interrupted" and exit 130, leaving no output: while the
`actgeom` program starts (Python imports typer, rich, ...) nothing is written yet, so it stops at
once; once a command runs, it is a KeyboardInterrupt, so every output being written is removed on
the way out (see :func:`_interruptible`).
"""

from __future__ import annotations

import _thread
import contextlib
import signal
import sys
import threading
import warnings

import typer
from typer.core import TyperCommand, TyperGroup

from actgeom import _stop_at_once  # installed when the `actgeom` program starts

try:  # recent Typer vendors click; older Typer uses click itself
    from typer._click import exceptions as parser_errors
except ImportError:
    from click import exceptions as parser_errors

from actgeom.cli import capture, collapse, compare, entropy, extract, info, neurons, ood, probe, rank, stats  # noqa: E402
from actgeom.cli.options import threads_option  # noqa: E402
from actgeom.cli.output import escape, guarded_stdout  # noqa: E402
from actgeom.cli.report.command import report  # noqa: E402
from actgeom.core import __version__  # noqa: E402
from actgeom.core.base.errors import ActgeomError, DataWarning, OptionError  # noqa: E402


class _PlainHelp:
    """--help that reads plainly: a flag shows no `<bool>` type, and a default described in words
    (presets or the data decide the value) reads "Default: X." in the option's help text, not
    Typer's "[default: (X)]", which looks like a value in parentheses."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for param in self.params:
            _plain_help(param)

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            _plain_help(option)
        return option


class _Command(_PlainHelp, TyperCommand):
    """A command with plain --help."""


def _plain_help(param) -> None:
    if getattr(param, "is_flag", False):
        param.metavar = ""
    elif param.metavar is None and getattr(param, "multiple", False):
        param.metavar = "TEXT"  # a repeatable option: not Typer's <list[str]>
    if isinstance(getattr(param, "show_default", None), str):
        param.help = f"{(param.help or '').rstrip()} Default: {param.show_default}.".lstrip()
        param.show_default = False


class _Group(_PlainHelp, TyperGroup):
    """Turns every ActgeomError into one line on stderr and its exit code; no traceback.

    Data set aside (a DataWarning) is a `Warning: ...` line after a success, or is named at the
    end of the error line after a failure (it is often the cause: labels that did not fit).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        threads = threads_option()  # one shared option, decided before any command runs
        for command in self.commands.values():
            command.params.append(threads)

    def invoke(self, ctx):
        with warnings.catch_warnings(record=True) as caught, _interruptible(), guarded_stdout():
            warnings.simplefilter("always", DataWarning)
            try:
                result = super().invoke(ctx)
            except ActgeomError as exc:
                message = exc.for_cli() if isinstance(exc, OptionError) else str(exc)  # flags, not keywords
                aside = _set_aside(caught)
                message += f" ({'; '.join(aside)})" if aside else ""
                _show_others(caught)
                sys.stderr.write(f"Error: {escape(message)}\n")  # names from files may hold control characters
                raise typer.Exit(exc.exit_code) from None
            except parser_errors.UsageError as exc:  # the parser's: one line too, not a box
                if isinstance(exc, getattr(parser_errors, "NoArgsIsHelpError", ())):  # (click ≥ 8.2) the help
                    raise
                command = f" {ctx.invoked_subcommand}" if ctx.invoked_subcommand else ""
                message = exc.format_message().replace(": Value error, ", ": ")  # recent Typer's pydantic prefix
                sys.stderr.write(f"Error: {message} (see actgeom{command} --help)\n")
                raise typer.Exit(2) from None
            except KeyboardInterrupt:  # Ctrl-C: outputs are atomic, so nothing partial was left
                _interrupted()
            except BrokenPipeError:  # `actgeom ... | head`: the reader left; nothing is wrong
                sys.stderr.close()
                raise typer.Exit(0) from None
            except Exception as exc:
                if _caused_by_ctrl_c(exc):  # e.g. a class made while Ctrl-C came: "Error calling __set_name__"
                    _interrupted()
                raise
        _show_others(caught)
        for text in _set_aside(caught):
            sys.stderr.write(f"Warning: {escape(text)}\n")
        return result


@contextlib.contextmanager
def _interruptible():
    """While a command runs, Ctrl-C is a KeyboardInterrupt (outputs being written are removed on the
    way out), and one that a finalizer swallowed (an exception in ``__del__`` or a weakref callback
    is only printed by Python) is raised again, so the command cannot run on to the end."""
    if signal.getsignal(signal.SIGINT) is not _stop_at_once:
        yield  # SIGINT ignored (nohup), or a Python that imported us: its own handler
        return
    hook = sys.unraisablehook

    def raise_again(unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):  # (raised from here, it would be swallowed again)
            threading.Timer(0.01, _thread.interrupt_main).start()
        else:
            hook(unraisable)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.unraisablehook = raise_again
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, _stop_at_once)
        sys.unraisablehook = hook


def _caused_by_ctrl_c(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _interrupted() -> None:
    sys.stderr.write("interrupted\n")
    raise typer.Exit(130) from None


def _set_aside(caught: list) -> list[str]:
    return list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, DataWarning)))


def _show_others(caught: list) -> None:
    """Warnings other than DataWarning, shown as Python would have shown them. Written, not given to
    warnings.showwarning: inside catch_warnings(record=True) that appends to ``caught`` (a loop for ever)."""
    for w in caught:
        if not issubclass(w.category, DataWarning):
            sys.stderr.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno))


app = typer.Typer(
    cls=_Group,
    name="actgeom",
    help="Geometry of neural-network representations from HDF5 activation dumps.\n\n"
         "Exit codes: 0 ok, 1 runtime failure (e.g. disk full), 2 usage error, 3 invalid input, 130 interrupted.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # arrays are huge
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command(name="info", cls=_Command)(info.info)
app.command(name="collapse", cls=_Command)(collapse.collapse)
app.command(name="rank", cls=_Command)(rank.rank)
app.command(name="entropy", cls=_Command)(entropy.entropy)
app.command(name="neurons", cls=_Command)(neurons.neurons)
app.command(name="compare", cls=_Command)(compare.compare)
app.command(name="probe", cls=_Command)(probe.probe)
app.command(name="ood", cls=_Command)(ood.ood)
app.command(name="stats", cls=_Command)(stats.stats)
app.command(name="merge", cls=_Command)(stats.merge)
app.command(name="extract", cls=_Command)(extract.extract)
app.command(name="capture", cls=_Command)(capture.capture)
app.command(name="report", cls=_Command)(report)


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
