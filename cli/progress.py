"""A rich progress bar on stderr for passes over the rows (only on a terminal; NO_COLOR respected)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from actgeom.core.engine import Progress as ProgressCallback


@contextlib.contextmanager
def row_progress() -> Iterator[ProgressCallback | None]:
    """Yield a callback(layer, rows_done, rows_total), or None when stderr is not a terminal."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        tasks: dict[str, int] = {}

        def update(layer: str, done: int, total: int) -> None:
            if layer not in tasks:
                tasks[layer] = bar.add_task(f"rows of {layer}", total=total)
            bar.update(tasks[layer], completed=done)

        yield update
