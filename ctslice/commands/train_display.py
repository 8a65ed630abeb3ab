"""What ``ctslice train`` shows while it runs: the trainer's callbacks as Rich progress bars, the
library's log records as lines, and what to change when training runs out of memory.

The trainer reports through ``on_progress(description, completed, total)`` and ``on_step(StepReport)``
(see ``ctslice.training.trainer``) and ``logging``; this module is their command-layer side.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import Progress, TaskID, TextColumn

from ctslice.config import Config
from ctslice.console import PlainProgress, progress
from ctslice.training.trainer import OutOfMemory, StepReport

TRAINING = "Training"


class TrainingDisplay:
    """One bar per progress description: the encoding bar goes when done, the training bar stays."""

    def __init__(self, log_interval: int | None = None) -> None:
        self.bars: dict[str, tuple[Progress | PlainProgress, TaskID]] = {}
        self.log_interval = log_interval  # off a terminal, a line at every log interval too

    def progress(self, description: str, completed: int, total: int | None) -> None:
        if description not in self.bars:
            bar = (progress(TextColumn("{task.fields[status]}"), transient=False) if description == TRAINING
                   else progress())
            bar.start()
            self.bars[description] = bar, bar.add_task(description, total=total, completed=completed, status="")
        bar, task = self.bars[description]
        bar.update(task, completed=completed)
        if description != TRAINING and total is not None and completed >= total:
            bar.stop()

    def step(self, report: StepReport) -> None:
        bar, task = self.bars[TRAINING]
        status = (f"loss {report.loss:.4f} lr {report.lr:.2e} {report.seconds:.2f}s/step "
                  f"{report.memory_bytes / 2**30:.2f} GiB")
        bar.update(task, completed=report.step, status=status)
        if isinstance(bar, PlainProgress) and self.log_interval and report.step % self.log_interval == 0:
            bar.line(task)

    def close(self) -> None:
        for bar, _ in self.bars.values():
            bar.stop()


@contextmanager
def training_display(log_interval: int | None = None) -> Iterator[TrainingDisplay]:
    """The display; the library's log records are shown by the command layer's handler (``show_logs``)."""
    display = TrainingDisplay(log_interval)
    try:
        yield display
    finally:
        display.close()


def with_memory_advice(error: OutOfMemory, config: Config) -> str:
    """The out-of-memory line with the changes that lower training memory on the run's device."""
    from ctslice.memory.advice import set_options

    savings = set_options(config, error.device_type)
    inspect = f"`ctslice inspect-memory --config {error.config_path}`"
    advice = (f"Try any of {', '.join(f'`--set {change}`' for change in savings)}; {inspect} predicts the effect of "
              "each." if savings else f"Every memory saving is already on; {inspect} shows where the memory goes.")
    return f"{error.what}. {advice} {error.resume}"
