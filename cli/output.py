"""Rendering results: table (rich), strict JSON, JSON lines, CSV, Markdown; atomic -o files."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sys
import unicodedata
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from actgeom.cli.cells import flat as _flat
from actgeom.cli.cells import inference_shown, intervals_line, jsonable, layer_cells
from actgeom.cli.cells import plus_minus as plus_minus  # noqa: F401 (cli/compare.py's)
from actgeom.cli.options import Format
from actgeom.core.base.errors import DataWarning, InvalidInputError, OutputError
from actgeom.core.base.labels import file_labels
from actgeom.core.base.outputs import write_output

SUFFIX_FORMATS = {".json": Format.json, ".jsonl": Format.jsonl, ".csv": Format.csv, ".md": Format.md,
                  ".txt": Format.table}


@dataclass
class Result:
    """What a command found: the full JSON document, and tidy records (one per row of the table)."""

    title: str
    document: dict
    records: list[dict]
    summary: dict = field(default_factory=dict)  # key → value lines shown above the table
    table: list[dict] | None = None  # rows of the table/md view, when not the records
    notes: list[str] = field(default_factory=list)  # footnotes under the table: "(1) why a metric is —"


def metrics_result(analysis, summary: dict | None = None, *, why_none=None) -> Result:
    """The view of an analysis (actgeom.core.base.result.Result) over files × layers.

    JSON: the whole document; jsonl/csv: its tidy records (one per file × layer × metric, null
    value + note when unavailable or not finite); table/md: a row per metric, a column per layer
    (per file when each has one layer); an unavailable metric shows "— (n)" and footnote n under
    the table says why. With intervals a value shows "value ± half-width" (a footnote says why a
    metric has none), with permutation nulls a "LAYER p" column follows each layer's, with a
    baseline a "LAYER Δ baseline" column (cli/cells.py); the records gain the matching columns.

    When no requested metric could be computed for any layer there is nothing to report:
    InvalidInputError naming why (``why_none()``, when given and not None, knows the root cause,
    e.g. "no labels in FILE: give --labels"; else the reasons the metrics gave).
    """
    document = analysis.to_dict()
    files = document["files"]
    _require_some_metric(files, why_none)
    warn_sample_beyond_layer_rows(files)
    options = [f"{k}={v}" for family in document["options"].values() for k, v in family.items()]
    summary = {"options": ", ".join(options)} | intervals_line(document) | (summary or {})
    columns, reasons = {}, {}
    one_layer = all(len(file["layers"]) == 1 for file in files)
    short = file_labels([file["file"] for file in files])
    shown = inference_shown(document)
    for file, stem in zip(files, short):
        for layer in file["layers"]:
            column = layer["layer"] if len(files) == 1 else stem if one_layer else f"{stem}:{layer['layer']}"
            for name, cells in layer_cells(layer, column, reasons, shown).items():
                columns.setdefault(name, {}).update(cells)
    table = [{"metric": name} | values for name, values in columns.items()]
    notes = [f"({number}) {reason}" for reason, number in reasons.items()]
    return Result(title=f"actgeom {document['command']}", document=document, records=analysis.records(),
                  summary=summary, table=table, notes=notes)


def warn_sample_beyond_rows(n_rows: int) -> None:
    """A --subsample the user gave larger than the rows takes every row (a sample is never padded):
    said on stderr. (A default larger than a small dump is not worth a warning.)"""
    subsample = _given("subsample")
    if subsample and subsample > n_rows:
        warnings.warn(f"--subsample {subsample} is more than the {n_rows} rows: every row is used", DataWarning, stacklevel=2)


def warn_sample_beyond_layer_rows(files: list[dict]) -> None:
    """:func:`warn_sample_beyond_rows` against the most rows of any layer of the document's files."""
    most_rows = max((layer["n_rows"] for file in files for layer in file["layers"] if layer.get("n_rows") is not None),
                    default=None)
    if most_rows is not None:
        warn_sample_beyond_rows(most_rows)


def _given(option: str):
    """The value of the running command's ``option`` when the user gave it (command line or
    environment), else None."""
    try:  # recent Typer vendors click; older Typer uses click itself
        from typer._click.globals import get_current_context
    except ImportError:
        from click import get_current_context
    ctx = get_current_context(silent=True)
    if ctx is None or option not in ctx.params:
        return None
    source = ctx.get_parameter_source(option)
    return ctx.params[option] if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT") else None


def _require_some_metric(files: list[dict], why_none) -> None:
    if any(layer.get("metrics") for file in files for layer in file["layers"]):
        return
    reasons = list(dict.fromkeys(reason for file in files for layer in file["layers"]
                                 for reason in layer.get("unavailable", {}).values()))
    why = (why_none() if why_none else None) or "; ".join(reasons[:3]) or "the layers gave none"
    raise InvalidInputError(f"no requested metric can be computed for any layer: {why}")


_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def escape(text: str) -> str:
    """Text safe to show on a terminal: control characters (and bidi overrides) as \\xNN / \\uNNNN.

    >>> print(escape("fc1\\x1b[2J"))
    fc1\\x1b[2J
    """
    return "".join(_escaped(c) if unicodedata.category(c) == "Cc" or c in _BIDI_CONTROLS else c for c in str(text))


def _escaped(c: str) -> str:
    return f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"


def resolve_format(fmt: Format | None, output: Path | None) -> Format:
    if fmt is not None:
        return fmt
    if output is not None:
        return SUFFIX_FORMATS.get(output.suffix.lower(), Format.json)
    return Format.table if sys.stdout.isatty() else Format.json


def render(result: Result, fmt: Format, *, width: int | None = None, color: bool = False) -> str:
    if fmt is Format.json:
        return json.dumps(jsonable(result.document), indent=2, allow_nan=False) + "\n"
    if fmt is Format.jsonl:
        return "".join(json.dumps(jsonable(r), allow_nan=False) + "\n" for r in result.records)
    if fmt is Format.csv:
        return _csv(result.records)
    if fmt is Format.md:
        return _markdown(result)
    return _table(result, width=width, color=color)


def escape_lines(text: str) -> str:
    """Every line of ``text`` escaped (CSV cells shown on a terminal)."""
    return "".join(escape(line) + "\n" for line in text.splitlines())


def _columns(records: list[dict]) -> list[str]:
    columns: list[str] = []
    for record in records:
        columns += [key for key in record if key not in columns]
    return columns


def _csv(records: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = _columns(records)
    writer.writerow(columns)
    for record in records:
        writer.writerow([json.dumps(jsonable(record[c])) if isinstance(record.get(c), (dict, list))
                         else ("" if jsonable(record.get(c)) is None else jsonable(record.get(c))) for c in columns])
    return buffer.getvalue()


def _table_columns(records: list[dict]) -> list[str]:
    """Columns worth a table cell: nested values (attribute dicts, lists) stay in JSON only."""
    return [c for c in _columns(records) if not any(isinstance(r.get(c), (dict, list)) for r in records)]


def _markdown(result: Result) -> str:
    lines = [f"## {escape(result.title)}", ""]
    lines += [f"- **{escape(key)}**: {_cell(value)}" for key, value in result.summary.items()]
    rows = result.records if result.table is None else result.table
    columns = _table_columns(rows)
    if columns:
        lines += ["", "| " + " | ".join(escape(c) for c in columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_cell(r.get(c)).replace("|", "\\|") for c in columns) + " |" for r in rows]
    if result.notes:
        lines += [""] + [escape(note) + "  " for note in result.notes]
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    """A value as table text, escaped for the terminal (names may hold control characters)."""
    return escape(_flat(value))


NATURAL_WIDTH = 10_000  # off a terminal, columns take their natural width: no line is wrapped mid-word


def _table(result: Result, *, width: int | None, color: bool) -> str:
    from rich.console import Console  # rich's table: imported when one is shown (fast --help)
    from rich.table import Table
    from rich.text import Text

    buffer = io.StringIO()
    console = Console(file=buffer, width=width or NATURAL_WIDTH, force_terminal=color, no_color=not color,
                      highlight=False)
    console.print(Text(escape(result.title), style="bold"))
    for key, value in result.summary.items():
        console.print(f"  {escape(key)}: {_cell(value)}", markup=False)
    rows = result.records if result.table is None else result.table
    columns = _table_columns(rows)
    if columns:
        table = Table(show_edge=False, pad_edge=False)
        for i, column in enumerate(columns):
            table.add_column(Text(escape(column)), overflow="fold", no_wrap=i == 0)  # the first column names the row
        for record in rows:
            table.add_row(*(Text(_cell(record.get(c))) for c in columns))
        console.print(table)
    for note in result.notes:
        console.print(f"  {escape(note)}", markup=False)
    return buffer.getvalue()


def _terminal_width() -> int:
    from rich.console import Console

    return Console().width


def emit(result: Result, fmt: Format | None, output: Path | None, inputs: Iterable[Path] = ()) -> None:
    """Print the result to stdout, or write it to ``output`` by the rules of core/base/outputs.py
    (never an input, never a partial file)."""
    fmt = resolve_format(fmt, output)
    if output is None:
        terminal = sys.stdout.isatty()
        width = _terminal_width() if terminal else None
        text = render(result, fmt, width=width, color=terminal and "NO_COLOR" not in os.environ)
        sys.stdout.write(escape_lines(text) if terminal and fmt is Format.csv else text)
        sys.stdout.flush()
        return
    write_output(output, render(result, fmt), inputs)


class _StandardOutput:
    """sys.stdout while a command runs: a write that fails (``> /dev/full``, a disk that fills up) is
    one OutputError. A reader that left (``| head``: BrokenPipeError) is the caller's."""

    def __init__(self, stream):
        self._stream = stream
        self.failed = False

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def write(self, text):
        with self._failing():
            return self._stream.write(text)

    def flush(self) -> None:
        with self._failing():
            self._stream.flush()

    @contextlib.contextmanager
    def _failing(self):
        try:
            yield
        except BrokenPipeError:
            raise
        except OSError as exc:
            self.failed = True
            raise OutputError(f"cannot write to standard output: {exc.strerror or exc}") from None


@contextlib.contextmanager
def guarded_stdout():
    """Run a command with :class:`_StandardOutput` as sys.stdout. After a failed write, what is still
    buffered goes nowhere: it would fail again, with a traceback, when Python flushes it at exit."""
    stream = sys.stdout
    sys.stdout = guarded = _StandardOutput(stream)
    try:
        yield
    finally:
        sys.stdout = stream
        if guarded.failed:
            with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
                nowhere = os.open(os.devnull, os.O_WRONLY)
                os.dup2(nowhere, stream.fileno())
                os.close(nowhere)
