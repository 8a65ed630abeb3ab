"""``progress.png``: a run's curves in one picture, redrawn at every validation (as nnU-Net draws it).

TensorBoard needs a server and a port forward; a PNG in the run folder can be opened from a cluster's
file browser or copied with ``kubectl cp``. Four panels from ``log.jsonl``: the training loss per
logged step (with the validation loss on fixed patches), validation PSNR of the model and of cubic
interpolation on the same cases (the line the model has to beat), seconds per step, learning rate.

``progress_series`` (the numbers) is separate from ``draw_progress`` (the picture) so each can be
checked on its own; ``ProgressFigure`` is the trainer's hook, which never lets a drawing failure stop
a run.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ctslice.evaluation.figures import save_png
from ctslice.training.run_log import read_log

log = logging.getLogger(__name__)

FIGURE_INCHES = (12.0, 8.0)
DPI = 100  # progress.png is FIGURE_INCHES * DPI pixels: 1200 x 800
VALIDATION_KINDS = ("validation", "final_validation")
SMOOTHING = 10  # logged points per moving mean of the training loss


@dataclass
class Series:
    """One curve: steps and values, points without a finite number left out."""

    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def add(self, step, value) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            self.steps.append(int(step))
            self.values.append(float(value))


@dataclass
class ProgressSeries:
    """The curves of ``progress.png``, one (steps, values) series each."""

    loss: Series = field(default_factory=Series)  # training loss per logged step
    val_loss: Series = field(default_factory=Series)  # validation loss
    psnr: Series = field(default_factory=Series)  # validation PSNR of the model
    cubic_psnr: Series = field(default_factory=Series)  # ... and of cubic interpolation on the same cases
    step_time: Series = field(default_factory=Series)  # seconds per step
    lr: Series = field(default_factory=Series)  # learning rate


def progress_series(records: list[dict]) -> ProgressSeries:
    """The curves in ``log.jsonl`` records: ``train`` records give loss, step time and learning rate;
    ``validation`` and ``final_validation`` records give validation loss, PSNR and cubic PSNR."""
    series = ProgressSeries()
    for record in records:
        step, kind = record.get("step"), record.get("kind", "train")
        if not isinstance(step, int):
            continue
        if kind == "train":
            series.loss.add(step, record.get("loss"))
            series.step_time.add(step, record.get("step_time"))
            series.lr.add(step, record.get("lr"))
        elif kind in VALIDATION_KINDS:
            series.val_loss.add(step, record.get("val_loss"))
            series.psnr.add(step, record.get("psnr"))
            series.cubic_psnr.add(step, record.get("cubic_psnr"))
    return series


def moving_mean(series: Series, points: int) -> Series:
    """The mean of each run of ``points`` consecutive values, at the step of the run's last value."""
    means = np.convolve(series.values, np.ones(points) / points, mode="valid")
    return Series(series.steps[points - 1:], [float(m) for m in means])


def draw_progress(run_dir: Path, path: Path | None = None) -> Path:
    """Draw ``<run_dir>/log.jsonl`` into ``path`` (default ``<run_dir>/progress.png``), atomically."""
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    series = progress_series(read_log(run_dir))
    figure = Figure(figsize=FIGURE_INCHES, layout="constrained")
    (loss, psnr), (step_time, lr) = figure.subplots(2, 2, sharex=True)
    curves = [(series.loss, "training", "#8fb8de", ""), (series.val_loss, "validation (fixed patches)", "C1", "o")]
    if len(series.loss.values) >= 2 * SMOOTHING:  # a diffusion loss is noisy from step to step: show the trend
        curves.insert(1, (moving_mean(series.loss, SMOOTHING), f"training, mean of {SMOOTHING}", "navy", ""))
    _plot(loss, "loss", curves)
    if series.loss.values and min(series.loss.values + series.val_loss.values) > 0:
        loss.set_yscale("log")
    _plot(psnr, "validation PSNR (dB)", [(series.psnr, "model", "C2", "o"), (series.cubic_psnr, "cubic", "0.4", "s")])
    _plot(step_time, "seconds per step", [(series.step_time, "", "C3", "")])
    _plot(lr, "learning rate", [(series.lr, "", "C4", "")])
    for axis in (step_time, lr):
        axis.set_xlabel("optimizer step")
    last = max(series.loss.steps + series.psnr.steps, default=0)
    figure.suptitle(f"{run_dir.name}: step {last}")
    return save_png(figure, path or run_dir / "progress.png", dpi=DPI)


def _plot(axis, title: str, curves: list[tuple[Series, str, str, str]]) -> None:
    for series, label, colour, marker in curves:
        axis.plot(series.steps, series.values, color=colour, marker=marker or None, markersize=4, label=label or None)
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3)
    if any(label for _, label, _, _ in curves):
        axis.legend(fontsize=8)


class ProgressFigure:
    """The trainer's hook: redraw ``progress.png`` on rank 0; a failure warns once and training goes on
    (a picture is never worth a run)."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.run_dir, self.enabled, self.warned = Path(run_dir), enabled, False

    def redraw(self) -> None:
        if not self.enabled:
            return
        try:
            draw_progress(self.run_dir)
        except Exception as error:  # noqa: BLE001 - any failure of a picture must leave training running
            if not self.warned:
                self.warned = True
                log.warning(f"could not draw {self.run_dir / 'progress.png'} ({type(error).__name__}: {error}); "
                     "training goes on, the curves are in log.jsonl")
