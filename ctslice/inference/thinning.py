"""One thick volume made thin, by a model or a classical baseline: what every front end shares.

``ctslice infer`` (one file or a folder) and the Python API (``ctslice.interpolate``) make the same
choices, check them the same way before any work, and run the same steps; they differ only in where
the volume comes from and goes to, and in how they report. Messages name the choice, not a flag, so
that each front end can word them its own way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ctslice.data.checks import check_ct_volume, check_geometry
from ctslice.errors import CtsliceError, InputError, first_line
from ctslice.io.geometry import METHODS, interpolate, thin_grid
from ctslice.io.volume import Volume

DEFAULT_THIN_SPACING = 1.0  # mm, for a baseline; a model knows the ratio it was trained for
MODES = ("mean", "sample")
MAX_SAMPLES = 100  # each sample is a whole diffusion run: more is a typo, not a request (as --samples says)
MAX_STEPS = 10_000
MAX_SEED = 2**32 - 1  # what NumPy and torch generators take
MAX_ADAPT_MINUTES = 24 * 60.0  # a day of fine-tuning on one scan is a typo, not a request


@dataclass(frozen=True)
class Choices:
    """How to make a volume thin: a baseline ``method`` or a model (``checkpoint``, None: the bundled one)."""

    method: str | None = None
    checkpoint: Path | None = None
    mode: str = "mean"
    samples: int = 1
    thin_spacing: float | None = None
    steps: int | None = None
    seed: int = 0
    adapt: float = 0.0  # minutes of fine-tuning on the scan's own in-plane pairs first (0: none)

    def checked(self) -> Choices:
        """These choices, refused with one ``InputError`` line if inconsistent; several samples mean sampling."""
        if self.method and self.checkpoint:
            raise InputError("give either a checkpoint (a model) or a method (a classical baseline), not both")
        if self.method is not None and self.method not in METHODS:
            raise InputError(f"method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.mode not in MODES:
            raise InputError(f"mode {self.mode!r}: choose mean or sample")
        if not _is_int(self.samples) or not 1 <= self.samples <= MAX_SAMPLES:
            raise InputError(f"samples {self.samples!r}: must be a whole number, at least 1 and at most {MAX_SAMPLES}")
        if self.steps is not None and (not _is_int(self.steps) or not 1 <= self.steps <= MAX_STEPS):
            raise InputError(f"steps {self.steps!r}: must be a whole number, at least 1 and at most {MAX_STEPS:,}")
        if not _is_int(self.seed) or not 0 <= self.seed <= MAX_SEED:
            raise InputError(f"seed {self.seed!r}: must be a whole number from 0 to {MAX_SEED:,}")
        adapt = self.adapt
        if isinstance(adapt, bool) or not isinstance(adapt, (int, float, np.floating)) or not (
                math.isfinite(adapt) and 0 <= adapt <= MAX_ADAPT_MINUTES):
            raise InputError(f"adapt {adapt!r}: must be a number of minutes from 0 to {MAX_ADAPT_MINUTES:g}")
        if self.method is not None and adapt > 0:
            raise InputError(f"adapt {adapt!r}: fine-tunes a model; the method {self.method} (a classical baseline) "
                             "has nothing to fine-tune")
        if self.method is not None:  # silently ignoring them would hand back a baseline the user did not ask for
            given = (("samples", self.samples, 1), ("steps", self.steps, None), ("mode", self.mode, "mean"))
            unused = [(name, value) for name, value, default in given if value != default]
            if unused:
                name, value = unused[0]
                raise InputError(f"{name} {value!r}: for a model; the method {self.method} (a classical baseline) is "
                                 "deterministic")
        spacing = self.thin_spacing
        if spacing is not None and (isinstance(spacing, bool) or not isinstance(spacing, (int, float, np.floating))
                                    or not math.isfinite(spacing) or spacing <= 0):
            raise InputError(f"thin spacing {spacing!r}: must be a positive number of mm")
        return self if self.samples == 1 else replace(self, mode="sample")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_input(thick: Volume, thin_spacing: float | None) -> None:
    """``InputError`` unless ``thick`` is plausible CT and its thin grid (if the spacing is known) within limits."""
    check_ct_volume(thick, "input")
    check_geometry(thick, "input")
    if thin_spacing is not None:
        thin_grid(thick.grid, thin_spacing)


def thin_by_method(thick: Volume, method: str, thin_spacing: float | None) -> Volume:
    """``thick`` interpolated by a classical ``method`` onto its thin grid (default spacing 1 mm), float32 HU."""
    return interpolate(thick, thin_spacing or DEFAULT_THIN_SPACING, method)


@dataclass(frozen=True)
class Thinned:
    """A model's thin volume (float32 HU), its spread over samples (None for one), the spacing and steps used,
    and the seconds of each stage (encode, denoise, decode)."""

    volume: Volume
    std: Volume | None
    thin_spacing: float
    steps: int
    seconds: dict[str, float]


class OutOfMemory(CtsliceError):
    """The device ran out of memory while a model made a volume thin; ``reason`` is the first line of why."""

    def __init__(self, reason: str):
        super().__init__(f"out of memory while inferring ({reason}); nothing was written. Try the CPU (slower, uses "
                         "system memory) or a device with more memory")
        self.reason = reason


def checked_steps(loaded, choices: Choices) -> int:
    """The DDIM steps ``choices`` ask of ``loaded`` (default: its config), refused beyond its training timesteps."""
    config = loaded.interpolator.config
    steps = choices.steps or config.inference.steps
    timesteps = config.diffusion.num_train_timesteps
    if choices.mode == "sample" and steps > timesteps:
        raise InputError(f"steps {steps}: this model was trained with {timesteps} diffusion timesteps; ask for at "
                         f"most {timesteps}")
    return steps


def thin_by_model(loaded, thick: Volume, choices: Choices,
                  on_step: Callable[[str, int, int], None] | None = None) -> Thinned:
    """``thick`` made thin by ``loaded`` (a ``LoadedModel``); ``on_step(stage, done, total)`` reports progress.

    The thin spacing defaults to the model's (``LoadedModel.default_thin_spacing``), the steps to its
    config. Running out of memory is ``OutOfMemory``; a model that produces non-finite values, a ``CtsliceError``.
    """
    from ctslice.hardware import is_out_of_memory  # torch: only where a model runs

    spacing = choices.thin_spacing or loaded.default_thin_spacing(thick.spacing[2])
    steps = checked_steps(loaded, choices)
    thin_grid(thick.grid, spacing)  # within limits: the model's default spacing is known only now
    try:
        prediction = loaded.interpolator.predict(thick, spacing, mode=choices.mode, samples=choices.samples,
                                                 steps=steps, seed=choices.seed, on_step=on_step)
    except (RuntimeError, MemoryError) as error:
        if not is_out_of_memory(error):
            raise
        raise OutOfMemory(first_line(error, 200)) from None
    if not np.all(np.isfinite(prediction.volume.array)):
        raise CtsliceError("the model produced non-finite values for this scan")
    return Thinned(prediction.volume, prediction.std, spacing, steps, prediction.seconds)
