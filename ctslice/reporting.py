"""How the library reports without printing: the conventions every module below the command layer shares.

- A line the user should see: ``log.info(...)`` on ``logging.getLogger(__name__)``; a note (something
  corrected or skipped on the user's behalf): ``log.info(..., extra=NOTE)``; a warning: ``log.warning``.
  The command layer (``ctslice.console.show_logs``) prints them on stderr as plain lines, ``note: ...``
  and ``warning: ...``; a library user sees them through ordinary ``logging`` configuration.
- Progress: an ``OnProgress`` callback, ``on_progress(description, completed, total)``.
"""

from __future__ import annotations

from collections.abc import Callable

NOTE = {"note": True}
OnProgress = Callable[[str, int, "int | None"], None]


def no_progress(description: str, completed: int, total: int | None) -> None:
    """The ``on_progress`` of a caller that shows none."""
