"""How the library reports without printing: the conventions every module below the command layer shares.

- A line the user should see: ``log.info(...)`` on ``logging.getLogger(__name__)``; a note (something
  corrected or skipped on the user's behalf): ``log.info(..., extra=NOTE)``; a warning: ``log.warning``.
  The command layer (``ctslice.console.show_logs``) prints them on stderr as plain lines, ``note: ...``
  and ``warning: ...``; a library user sees them through ordinary ``logging`` configuration.
- Progress: an ``OnProgress`` callback, ``on_progress(description, completed, total)``.
- ``quieted()``: the library's info lines silenced for a block that runs library code on the side (the
  memory model tracing the codec), whatever level the command chose.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

NOTE = {"note": True}
OnProgress = Callable[[str, int, "int | None"], None]


def no_progress(description: str, completed: int, total: int | None) -> None:
    """The ``on_progress`` of a caller that shows none."""


@contextmanager
def quieted() -> Iterator[None]:
    """Only warnings and errors from the ``ctslice`` loggers inside the block."""
    logger = logging.getLogger("ctslice")
    previous = logger.level
    logger.setLevel(max(logging.WARNING, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        logger.setLevel(previous)
