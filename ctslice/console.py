"""The Rich consoles and progress bars every command shares.

Messages and progress go to stderr so that stdout carries only results (tables, ``--json``
documents) and can be piped.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, highlight=False)
stdout = Console(highlight=False)


def progress(*extra_columns, transient: bool = True) -> Progress:
    """A progress bar with count, elapsed and remaining time; extra columns show live fields."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        *extra_columns,
        console=console,
        transient=transient,
    )
