"""Progress of passes over the rows, on stderr: a rich bar on a terminal, plain lines in a batch job.

On a terminal: a pulsing "starting" bar at once (before numpy and the files are loaded), then a
transient bar per layer (NO_COLOR respected). When stderr is a file or a pipe
(a SLURM log): once the command has run PLAIN_START seconds, one plain line every
PLAIN_INTERVAL seconds and one at the end of each layer's pass, with the rate in rows/s (a
quick command writes nothing). ``--quiet``: nothing.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, TextIO

from actgeom.cli.options import plain
from actgeom.cli.output import escape

if TYPE_CHECKING:  # core.engine imports numpy, rich takes time: neither is needed to start
    from rich.progress import Progress

    from actgeom.core.state.engine import Progress as ProgressCallback

PLAIN_INTERVAL = 10.0  # seconds between plain lines: readable in a log, cheap to write
PLAIN_START = 2.0  # seconds before the first line: a quick command leaves no progress in a log
STAGE_SHOWN_FROM = 2.0  # seconds: a shorter step after the pass (core/base/stages.py) is not announced


@contextlib.contextmanager
def row_progress(quiet: bool = False) -> Iterator[ProgressCallback | None]:
    """Yield a callback(layer, rows_done, rows_total), or None when quiet."""
    if quiet:
        yield None
        return
    from rich.console import Console  # imported when a command runs: a fast --help
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        yield PlainLines(sys.stderr)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        bars = Bars(bar)
        bars.step("starting")  # shown at once; the first pass replaces it
        yield bars


def _stage_line(layer: str, text: str, seconds: float | None) -> str | None:
    """`layer L: DSE: eigenvalues of a 10000×10000 kernel, about 1 min 20 s`; None for a short step."""
    if seconds is None or seconds < STAGE_SHOWN_FROM:
        return None
    minutes, rest = divmod(round(seconds), 60)
    about = f"{minutes} min {rest} s" if minutes else f"{rest} s"
    return f"layer {escape(layer)}: {escape(text)}, about {about}"


def per_second(rate: float) -> str:
    """A rate for a log line: `950`, `9999`, `31.2 k`, `1.98 M` (three significant digits from 10 000 on).

    >>> [per_second(r) for r in (0.5, 950.4, 9999, 31_234, 999_950, 1_980_000)]
    ['0.5', '950', '9999', '31.2 k', '1 M', '1.98 M']
    """
    if rate < 10:
        return f"{rate:.3g}"
    if rate < 10_000:
        return f"{round(rate)}"
    rounded = float(f"{rate:.3g}")
    prefix, scale = next((p, s) for p, s in (("G", 1e9), ("M", 1e6), ("k", 1e3)) if rounded >= s)
    return f"{rounded / scale:.3g} {prefix}"


class Bars:
    """callback(layer, done, total) on a terminal: a bar per layer's pass, a pulsing one for a long stage."""

    def __init__(self, bar: Progress):
        self.bar = bar
        self.tasks: dict[str, int] = {}
        self.stage_task: int | None = None

    def __call__(self, layer: str, done: int, total: int) -> None:
        self._end_stage()
        if layer not in self.tasks:
            self.tasks[layer] = self.bar.add_task(f"rows of {escape(layer)}", total=total)
        self.bar.update(self.tasks[layer], completed=done)

    def stage(self, layer: str, text: str, seconds: float | None) -> None:
        self._end_stage()
        line = _stage_line(layer, text, seconds)
        if line is not None:
            self.stage_task = self.bar.add_task(line, total=None)

    def step(self, text: str) -> None:
        """A step of unknown length after the passes (e.g. the report's figures): a pulsing bar."""
        self._end_stage()
        self.stage_task = self.bar.add_task(escape(text), total=None)

    def _end_stage(self) -> None:
        if self.stage_task is not None:
            self.bar.remove_task(self.stage_task)
            self.stage_task = None


class PlainLines:
    """callback(label, done, total) writing `actgeom: rows of L: 1200/5000 (24%), 31.2 k rows/s`; the label
    is a layer's name or what the pass reads ("the compared layers", "hidden3 (second pass)")."""

    def __init__(self, stream: TextIO, interval: float = PLAIN_INTERVAL, start: float = PLAIN_START,
                 clock=time.monotonic):
        self.stream, self.interval, self.clock = stream, interval, clock
        self.quiet_until = clock() + start
        self.layer: str | None = None
        self.started = self.last = 0.0
        self.done = 0

    def __call__(self, layer: str, done: int, total: int) -> None:
        now = self.clock()
        if layer != self.layer or done < self.done:  # a new layer, or a second pass over it
            self.layer, self.started, self.last = layer, now, now
        self.done = done
        if now >= self.quiet_until and (done >= total or now - self.last >= self.interval):
            self.last = now
            rate = f", {per_second(done / (now - self.started))} rows/s" if now > self.started else ""  # none yet
            share = f" ({100 * done / total:.0f}%)" if total else ""
            self.stream.write(f"actgeom: rows of {escape(layer)}: {done}/{total}{share}{rate}\n")
            self.stream.flush()

    def stage(self, layer: str, text: str, seconds: float | None) -> None:
        line = _stage_line(layer, text, seconds)
        if line is not None:
            self.stream.write(f"actgeom: {line}\n")
            self.stream.flush()

    def step(self, text: str) -> None:
        """A step of unknown length after the passes: a line, once the command has run PLAIN_START."""
        if self.clock() >= self.quiet_until:
            self.stream.write(f"actgeom: {escape(text)}\n")
            self.stream.flush()


@contextlib.contextmanager
def run_backend(name, scheduler: str | None, workers: int | None, save_stats, quiet: bool = False) -> Iterator[object | None]:
    """The backend of --backend/--scheduler/--workers/--save-stats (None: local), with the Dask
    dashboard's address on stderr."""
    from actgeom.core.backends import BackendOptions, open_backend

    with open_backend(BackendOptions(plain(name), scheduler=scheduler, workers=workers, save_stats=save_stats)) as opened:
        link = getattr(opened, "dashboard_link", None)
        if link and not quiet:
            sys.stderr.write(f"actgeom: Dask dashboard: {link}\n")
            sys.stderr.flush()
        yield opened
