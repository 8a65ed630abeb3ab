"""SIGTERM and Ctrl-C turned into a clean end: the block's cleanup runs, then one line and exit 143/130.

By default SIGTERM kills the process on the spot and leaves staging files behind; inside
``stopped_cleanly`` it raises instead, as Ctrl-C does, so ``finally`` blocks run before the exit.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from ctslice.errors import Interrupted, Preempted

RETRY_SECONDS = 0.01


class _Terminated(BaseException):
    """SIGTERM turned into an exception."""


@contextmanager
def stopped_cleanly(cleaned: str) -> Iterator[None]:
    """Make SIGTERM and Ctrl-C unwind the block and end with ``Preempted`` (exit 143) or ``Interrupted``
    (exit 130) saying ``cleaned``.

    A signal's exception is raised wherever the interpreter happens to be, and when that is inside a
    finalizer (a weakref callback, ``__del__``) Python cannot propagate it: it prints it as "Exception
    ignored" and carries on, so the stop would be lost. Such a lost stop is raised again
    ``RETRY_SECONDS`` later (by a SIGALRM timer), at an ordinary line.
    """
    lost: list[type[BaseException]] = []

    def terminate(signum, frame):
        raise _Terminated

    def raise_lost(signum, frame):
        if lost:
            raise lost.pop()

    def retry_lost_stop(unraisable) -> None:
        if isinstance(unraisable.exc_value, (_Terminated, KeyboardInterrupt)):
            lost.append(type(unraisable.exc_value))
            signal.setitimer(signal.ITIMER_REAL, RETRY_SECONDS)
        else:
            previous_hook(unraisable)

    previous_term = signal.signal(signal.SIGTERM, terminate)
    previous_alarm = signal.signal(signal.SIGALRM, raise_lost)
    previous_hook, sys.unraisablehook = sys.unraisablehook, retry_lost_stop
    try:
        yield
    except _Terminated:
        raise Preempted(f"stopped by SIGTERM; {cleaned}") from None
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; {cleaned}") from None
    finally:
        sys.unraisablehook = previous_hook
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_alarm)
        signal.signal(signal.SIGTERM, previous_term)
