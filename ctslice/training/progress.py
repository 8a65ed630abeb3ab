"""The training progress bar (loss, LR, step time, memory) and the latent-encoding bar, on rank 0."""

from __future__ import annotations

import contextlib

from rich.progress import TextColumn

from ctslice.console import progress


class TrainingProgress:
    def __init__(self, total_steps: int, start_step: int, enabled: bool = True):
        self.enabled = enabled
        self.bar = progress(TextColumn("{task.fields[status]}"), transient=False) if enabled else None
        self.total, self.start = total_steps, start_step

    def __enter__(self) -> TrainingProgress:
        if self.bar:
            self.bar.start()
            self.task = self.bar.add_task("Training", total=self.total, completed=self.start, status="")
        return self

    def __exit__(self, *exc) -> None:
        if self.bar:
            self.bar.stop()

    def update(self, step: int, loss: float, lr: float, step_time: float, memory_bytes: int) -> None:
        if self.bar:
            status = f"loss {loss:.4f} lr {lr:.2e} {step_time:.2f}s/step {memory_bytes / 2**30:.2f} GiB"
            self.bar.update(self.task, completed=step, status=status)

    @staticmethod
    @contextlib.contextmanager
    def encoding(cases: int):
        """A bar over cases while the latent cache is built; yields ``advance()``."""
        with progress() as bar:
            task = bar.add_task("Encoding training volumes", total=cases)
            yield lambda: bar.advance(task)
