"""One progress bar for the CLI's long work (``mlserve batch``, ``mlserve drift report``,
``mlserve registry copy``): ``with rows_progress(console, "scoring", quiet) as advance: ...;
advance(done, total)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console


@contextmanager
def rows_progress(console: Console, label: str, quiet: bool = False, unit: str = "rows"
                  ) -> Iterator[Callable[[int, int | None], None]]:
    """A transient bar on ``console`` (``unit`` done of total, elapsed, remaining); yields
    ``advance(done, total)`` (a None total: unknown yet). ``quiet``: no bar."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn(label.replace("[", r"\[")), BarColumn(), MofNCompleteColumn(),
                  TextColumn(unit), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=console, disable=quiet, transient=True) as progress:
        task = progress.add_task("rows", total=None)

        def advance(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)

        yield advance
