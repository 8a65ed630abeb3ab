"""SIGTERM (Kubernetes preemption) and Ctrl-C during training: remembered until the run can stop cleanly.

``StopFlag`` records the signal; ``check(detail)`` raises ``Preempted`` (exit 143) or ``Interrupted``
(exit 130) at points where stopping loses nothing (between steps, latent-cache volumes, U-Net window
batches of a validation). Under DDP only rank 0 builds the latent cache and validates, and a rank that
left the collective schedule alone would leave the others waiting in a collective for its timeout
(10 min with NCCL, 30 with gloo). So rank 0 runs such work through ``on_main``: a stop abandons the work
but not the schedule; the other ranks wait without blocking in a collective and pass on a signal they
hear (``Distributed.on_main``); and every rank calls ``stop_together`` at the same point, where they agree
on the signal (SIGTERM's if both arrived), rank 0 saves what it keeps, and all raise the same error
within seconds, shown by rank 0 only (``silent`` on the others).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import TypeVar

import torch

from ctslice.errors import Interrupted, Preempted
from ctslice.training.distributed import Distributed

T = TypeVar("T")


class StopFlag:
    """Remembers SIGTERM or Ctrl-C (once ``listen`` is called) until the run reaches a point where it can stop.

    ``check(detail)`` raises once one has arrived and keeps ``detail`` as ``where``. A second Ctrl-C is the
    user insisting: it raises ``KeyboardInterrupt`` at once. Under DDP a rank ``adopt``s a signal that
    reached another rank.
    """

    def __init__(self):
        self.signal: int | None = None
        self.where: str | None = None
        self._previous: dict = {}

    def listen(self) -> None:
        """Catch SIGTERM and Ctrl-C from now on, until ``restore``."""
        self._previous = {signum: signal.signal(signum, self._handle) for signum in (signal.SIGTERM, signal.SIGINT)}

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.signal == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = self.signal or signum

    def adopt(self, signum: int | None) -> None:
        """Stop for ``signum`` (one the ranks agreed on, or one another rank heard); None changes nothing."""
        if signum:
            self.signal = signum

    def check(self, detail: str) -> None:
        if self.requested:
            self.where = detail
            raise self.error(detail)

    def error(self, detail: str) -> Preempted | Interrupted:
        if self.signal == signal.SIGINT:
            return Interrupted(f"interrupted by Ctrl-C {detail}")
        return Preempted(f"stopped by SIGTERM {detail}")


def on_main(world: Distributed, stop: StopFlag, name: str, work: Callable[[Callable[[str], None]], T]) -> T | None:
    """``work(check)`` on rank 0; None on the other ranks, which wait for it (``Distributed.on_main``), and
    when a stop abandoned it. ``check(detail)``, called by ``work`` where it can stop, raises once SIGTERM or
    Ctrl-C reached this rank or a waiting one; the stop stays recorded (``stop.where``) for ``stop_together``.
    ``name`` must differ between calls in one run."""

    def check(detail: str) -> None:
        if not stop.requested:
            stop.adopt(world.signal_elsewhere())
        stop.check(detail)

    def abandonable() -> T | None:
        try:
            return work(check)
        except (Preempted, Interrupted):
            return None

    return world.on_main(name, abandonable, lambda: stop.signal)


def stop_together(world: Distributed, device: torch.device, stop: StopFlag, keep: Callable[[], str]) -> None:
    """Called by every rank at the same point: when a stop reached any rank, all raise its error. ``keep()``
    (every rank calls it; rank 0 writes) saves what the run keeps and says so, the end of the message; the
    other ranks end only once it has returned, so everything kept is on disk when the first process exits."""
    signum = world.largest(stop.signal or 0, device)
    if not signum:
        return
    stop.adopt(signum)
    detail = keep()
    world.barrier()
    error = stop.error(detail)
    error.silent = not world.is_main
    raise error
