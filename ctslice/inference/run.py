"""``ctslice infer``: read a thick scan, make it thin (model or classical baseline), write it.

Everything the user can get wrong is checked before the expensive part starts (the output format,
the options, the input scan), and the output is written atomically, so a failure never leaves a
half-written volume.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from ctslice.console import console, note, progress
from ctslice.data.checks import check_ct_volume
from ctslice.errors import CtsliceError, InputError, first_line
from ctslice.hardware import configure, is_out_of_memory, memory_line, reset_peak_memory, resolve_device
from ctslice.io import WRITABLE_SUFFIXES, ReadOptions, read_scan, write_volume
from ctslice.io.geometry import METHODS, interpolate, thin_grid
from ctslice.io.intensity import cast_rounded
from ctslice.io.paths import check_output, ensure_space
from ctslice.io.volume import Volume
from ctslice.io.writer import output_bytes

DEFAULT_THIN_SPACING = 1.0


def run_infer(input: Path, output: Path, *, checkpoint: Path | None = None, method: str | None = None,
              mode: str = "mean", samples: int = 1, std_out: Path | None = None, thin_spacing: float | None = None,
              steps: int | None = None, seed: int = 0, device_name: str | None = None,
              vae_checkpoint: Path | None = None, precision: str | None = None, threads: int | None = None,
              read_options: ReadOptions | None = None) -> Volume:
    """Write the thin volume for ``input`` to ``output`` (and the std map to ``std_out``); returns it.

    ``precision``: auto (default), bf16 or fp32 for the model; ``threads``: intra-op CPU threads."""
    for path in (output, std_out):
        if path is not None and not str(path).lower().endswith(WRITABLE_SUFFIXES):
            raise InputError(f"{path}: unknown output format; use one of {', '.join(WRITABLE_SUFFIXES)}")
    if method and checkpoint:
        raise InputError("give either --checkpoint (a model) or --method (a classical baseline), not both")
    if method and method not in METHODS:
        raise InputError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if mode not in ("mean", "sample"):
        raise InputError(f"--mode {mode!r}: choose mean or sample")
    if samples < 1 or (thin_spacing is not None and thin_spacing <= 0):
        raise InputError("--samples must be at least 1 and --thin-spacing positive")
    if samples > 1:
        mode = "sample"
    if std_out and samples < 2:
        raise InputError("--std-out needs --samples 2 or more (the spread between samples)")
    outputs = [check_output(p, inputs=(input, checkpoint, vae_checkpoint)) for p in (output, std_out) if p]
    device = resolve_device("cpu" if method else device_name)
    configure(device, threads=threads)
    started = time.time()
    scan = read_scan(input, read_options)
    thick = scan.volume
    seconds = {"read": time.time() - started}
    if scan.skipped:
        note(f"skipped {scan.skipped} file(s) that are not images (DICOMDIR, index files, OS litter, DICOM "
             "objects without pixels)")
    for line in scan.report.lines():
        note(line)
    try:
        check_ct_volume(thick, "input")
    except InputError as error:  # the checks judge an array; the user needs to know which file
        raise InputError(f"{input}: {error}") from None
    if thin_spacing is not None:
        thin_grid(thick.grid, thin_spacing)  # refuses an output grid beyond the limits before any work
    if method:
        spacing = thin_spacing or DEFAULT_THIN_SPACING
        _check_space(thick, spacing, outputs)
        console.print(f"{method} interpolation to {spacing:g} mm")
        result, std = interpolate(thick, spacing, method), None
        seconds["interpolate"] = time.time() - started - seconds["read"]
    else:
        try:
            result, std, spacing, stages = _run_model(thick, checkpoint, mode, samples, thin_spacing, steps, seed,
                                                      device, vae_checkpoint, precision, outputs)
            seconds.update(stages)
        except (RuntimeError, MemoryError) as error:
            if not is_out_of_memory(error):
                raise
            raise CtsliceError(f"out of memory while inferring ({first_line(error, 200)}); nothing was written. "
                               "Try --device cpu (slower, uses system memory) or a device with more memory") from None
    writing = time.time()
    write_volume(result.with_array(cast_rounded(result.array)), output)
    if std_out is not None:
        write_volume(std.with_array(cast_rounded(std.array)), std_out)
    seconds["write"] = time.time() - writing
    console.print(f"Wrote {output}: {result.depth} slices at {spacing:g} mm (input {thick.depth} slices at "
                  f"{thick.spacing[2]:g} mm) in {time.time() - started:.1f} s, {memory_line(device)}")
    console.print(_stages_line(seconds, device), soft_wrap=True)  # one line, whatever the width: grepped
    return result


def _check_space(thick: Volume, spacing: float, outputs: list[Path]) -> None:
    """Refuse before the work when an output cannot fit on its disk (int16 on the thin grid)."""
    slices = thick.depth * thick.spacing[2] / spacing
    if not math.isfinite(slices):
        return  # not a spacing: the option checks refuse it
    voxels = thick.array[0].size * (int(slices) + 1)
    for path in outputs:
        ensure_space(path, output_bytes(path, voxels))


def _stages_line(seconds: dict[str, float], device) -> str:
    """``Stages: read 0.2 s, encode 1.3 s, ...; <peak memory>``: one line that scripts can grep."""
    return "Stages: " + ", ".join(f"{name} {s:.1f} s" for name, s in seconds.items()) + f"; {memory_line(device)}"


def _run_model(thick: Volume, checkpoint, mode, samples, thin_spacing, steps, seed, device, vae_checkpoint, precision,
               outputs):
    from ctslice.inference.loading import load_model

    reset_peak_memory(device)
    loaded = load_model(checkpoint, device, vae_checkpoint, precision)
    source = f"checkpoint {loaded.path}" if checkpoint else f"the bundled default model ({loaded.path.name})"
    spacing = thin_spacing or loaded.default_thin_spacing(thick.spacing[2])
    steps = steps or loaded.interpolator.config.inference.steps
    _check_space(thick, spacing, outputs)
    what = "mean estimate" if mode == "mean" else f"{samples} DDIM sample(s) of {steps} steps"
    console.print(f"Using {source}: {what}, {thick.spacing[2]:g} mm -> {spacing:g} mm on {device}")
    console.print(loaded.precision.line)
    if abs(thick.spacing[2] / spacing - loaded.ratio) > 0.5:
        note(f"the model was trained to divide slices by {loaded.ratio:g}; this scan "
             f"asks for {thick.spacing[2]:g} -> {spacing:g} mm (x{thick.spacing[2] / spacing:.2g})")
    with progress() as bar:
        task = bar.add_task("Inferring", total=None)

        def on_step(stage: str, done: int, total: int) -> None:
            bar.update(task, description=stage.capitalize(), completed=done, total=total)

        prediction = loaded.interpolator.predict(thick, spacing, mode=mode, samples=samples, steps=steps,
                                                 seed=seed, on_step=on_step)
    if not np.all(np.isfinite(prediction.volume.array)):
        raise CtsliceError("the model produced non-finite values for this scan")
    return prediction.volume, prediction.std, spacing, prediction.seconds
