"""The Rich consoles and progress bars every command shares.

Messages and progress go to stderr so that stdout carries only results (tables, ``--json``
documents) and can be piped. Messages carry user data (paths, case ids) that may contain brackets, so
the message console parses no Rich markup: ``warn``, ``note`` and ``error`` colour only their prefix.
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
from rich.text import Text

console = Console(stderr=True, highlight=False, markup=False)
stdout = Console(highlight=False)


def warn(message: str) -> None:
    console.print(Text.assemble(("warning: ", "yellow"), message))


def note(message: str) -> None:
    console.print(Text.assemble(("note: ", "yellow"), message))


def error(message: str) -> None:
    console.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)


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
