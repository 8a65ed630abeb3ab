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
import os
import time
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

from ctslice.errors import one_line
from ctslice.reporting import OnProgress

console = Console(stderr=True, highlight=False, markup=False)
stdout = Console(highlight=False)


def warn(message: str) -> None:
    console.print(Text.assemble(("warning: ", "yellow"), one_line(message)))


def note(message: str) -> None:
    console.print(Text.assemble(("note: ", "yellow"), one_line(message)))


def error(message: str) -> None:
    console.print(Text.assemble(("error: ", "bold red"), one_line(message)), soft_wrap=True)


def progress(*extra_columns, transient: bool = True) -> Progress | PlainProgress:
    """A progress bar with count, elapsed and remaining time; extra columns show live fields. ``--quiet``
    (the ``ctslice`` logger above INFO) hides it. When stderr is not a terminal (``kubectl logs``, Slurm,
    ``nohup``), where a bar would be a blank line, timestamped plain lines (``PlainProgress``) stand in."""
    quiet = logging.getLogger("ctslice").getEffectiveLevel() > logging.INFO
    if not console.is_terminal and not quiet:
        return PlainProgress()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        *extra_columns,
        console=console,
        transient=transient,
        disable=quiet,
    )


class PlainProgress:
    """Progress as plain lines for logs: ``HH:MM:SS description done/total (percent) field=value``.

    A line at most every ``interval`` seconds per task (``$CTSLICE_PROGRESS_INTERVAL``, default 10), and a
    last one when a task that ran that long finishes, so a short task prints nothing and a long one shows
    it is alive. The same calls as Rich's ``Progress`` that the commands use.
    """

    def __init__(self, interval: float | None = None) -> None:
        self.interval = float(os.environ.get("CTSLICE_PROGRESS_INTERVAL", 10)) if interval is None else interval
        self.tasks: dict[int, dict] = {}

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        """Nothing to draw until a task reports."""

    def stop(self) -> None:
        for task in self.tasks.values():
            self._finish(task)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields) -> int:
        key = len(self.tasks)
        now = time.monotonic()
        self.tasks[key] = {"description": description, "total": total, "completed": completed, "fields": fields,
                           "start": now, "last": now, "printed": False, "done": False, "shown": None}
        return key

    def advance(self, key: int, advance: float = 1) -> None:
        self.update(key, advance=advance)

    def update(self, key: int, *, description: str | None = None, completed: float | None = None,
               total: float | None = None, advance: float | None = None, **fields) -> None:
        task = self.tasks[key]
        if description is not None:
            task["description"] = description
        if total is not None:
            task["total"] = total
        if completed is not None:
            task["completed"] = completed
        if advance is not None:
            task["completed"] += advance
        task["fields"].update({k: v for k, v in fields.items() if k not in ("refresh", "visible")})
        now = time.monotonic()
        if task["total"] and task["completed"] >= task["total"]:
            self._finish(task, now)
        elif now - task["last"] >= self.interval:
            self._line(task, now)

    def line(self, key: int) -> None:
        """A line now, whatever the interval (for example at every training ``log_interval``)."""
        self._line(self.tasks[key], time.monotonic())

    def _finish(self, task: dict, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        long = task["printed"] or now - task["start"] >= self.interval
        if long and not task["done"] and task["shown"] != (task["description"], task["completed"]):
            self._line(task, now)
        task["done"] = True

    def _line(self, task: dict, now: float) -> None:
        done, total = task["completed"], task["total"]
        count = f"{done:g}/{total:g} ({100 * done / total:.0f}%)" if total else f"{done:g}"
        fields = " ".join(str(v) for v in task["fields"].values() if v not in (None, ""))
        console.print(f"{time.strftime('%H:%M:%S')} {task['description']} {count}{' ' + fields if fields else ''}",
                      soft_wrap=True)
        task["last"], task["printed"], task["shown"] = now, True, (task["description"], done)


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
