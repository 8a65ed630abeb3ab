"""The Rich consoles, progress bars and the logging handler every command shares (command layer only).

Messages and progress go to stderr so that stdout carries only results (tables, ``--json``
documents) and can be piped. Messages carry user data (paths, case ids) that may contain brackets, so
the message console parses no Rich markup: ``warn``, ``note`` and ``error`` colour only their prefix.

The library below the command layer never prints: it logs to the ``ctslice`` logger and reports progress
through ``on_progress`` callbacks (the conventions: ``ctslice.reporting``). ``show_logs`` installs the one
handler that turns those records into the lines a command prints; ``progress_callback`` is a Rich bar
driven by ``on_progress``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

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

from ctslice.reporting import OnProgress

console = Console(stderr=True, highlight=False, markup=False)
stdout = Console(highlight=False)


def warn(message: str) -> None:
    console.print(Text.assemble(("warning: ", "yellow"), message))


def note(message: str) -> None:
    console.print(Text.assemble(("note: ", "yellow"), message))


def error(message: str) -> None:
    console.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)


def progress(*extra_columns, transient: bool = True) -> Progress:
    """A progress bar with count, elapsed and remaining time; extra columns show live fields. ``--quiet``
    (the ``ctslice`` logger above INFO) hides it."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        *extra_columns,
        console=console,
        transient=transient,
        disable=logging.getLogger("ctslice").getEffectiveLevel() > logging.INFO,
    )


@contextmanager
def progress_callback(transient: bool = True) -> Iterator[OnProgress]:
    """A Rich progress bar driven by the library's ``on_progress(description, completed, total)``: one bar
    per description. The display starts at the first report, so a run refused before any work (a bad
    input) prints its one error line and nothing else."""
    tasks: dict[str, int] = {}
    bar = progress(transient=transient)

    def on_progress(description: str, completed: int, total: int | None) -> None:
        if not tasks:
            bar.start()
        if description not in tasks:
            tasks[description] = bar.add_task(description, total=total)
        bar.update(tasks[description], completed=completed, total=total)

    try:
        yield on_progress
    finally:
        if tasks:
            bar.stop()


class ConsoleHandler(logging.Handler):
    """The ``ctslice`` logger's records as lines on stderr: a warning (or worse) as ``warning: ...``, an info
    record marked ``extra=NOTE`` (``ctslice.reporting``) as ``note: ...``, any other record as it is."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.levelno >= logging.WARNING:
                warn(message)
            elif getattr(record, "note", False):
                note(message)
            else:
                console.print(message, soft_wrap=True)
        except Exception:  # noqa: BLE001  (logging's contract: a handler never raises)
            self.handleError(record)


def show_logs(level: int = logging.INFO) -> None:
    """Print the library's log records at ``level`` and above on stderr (installed once, idempotent)."""
    logger = logging.getLogger("ctslice")
    if not any(isinstance(handler, ConsoleHandler) for handler in logger.handlers):
        logger.addHandler(ConsoleHandler())
    logger.setLevel(level)
    logger.propagate = False  # one line per record, not a second one from a root handler
