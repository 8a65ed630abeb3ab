"""The Python API: ``ctslice.interpolate(image)`` for a scan already in memory (a notebook, a pipeline).

It makes the same choices as ``ctslice infer`` and runs the same library steps
(``ctslice.inference.thinning``), so its result is, voxel for voxel, what ``infer`` writes for that scan:
int16 HU on the thin grid that overlays the input (``ctslice.io.geometry.thin_grid``). Input is a
``SimpleITK.Image`` (geometry included) or a NumPy array (z, y, x) of HU with its geometry passed as
keywords in SimpleITK's (x, y, z) order. Voxels are rounded to int16 HU first, as ``infer`` does when it
reads a file. Every bad input is an ``InputError`` of one line, raised before any work.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ctslice.errors import InputError, shown
from ctslice.inference.thinning import Choices, check_input, thin_by_method, thin_by_model
from ctslice.io.intensity import cast_rounded
from ctslice.io.volume import Volume

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def interpolate(image, *, thin_spacing: float | None = None, method: str | None = None, mode: str = "mean",
                samples: int = 1, checkpoint: str | Path | None = None, device: str | None = None,
                precision: str | None = None, spacing=None, origin=None, direction=None, seed: int = 0,
                steps: int | None = None) -> sitk.Image:
    """The thin version of ``image`` as a ``SimpleITK.Image`` (int16 HU), on the grid ``ctslice infer`` writes.

    ``image``: a 3D ``SimpleITK.Image``, or a NumPy array (z, y, x) in HU with ``spacing`` (x, y, z) mm and
    optionally ``origin`` (x, y, z) mm and ``direction`` (9 numbers, row-major; default identity).
    ``method`` ("linear", "cubic", "lanczos") runs that classical baseline (default thin spacing 1 mm);
    otherwise the model in ``checkpoint`` (default: the bundled one) runs on ``device`` (auto, cpu,
    cuda, cuda:N) in ``precision`` (auto, bf16, fp32): the ``mode="mean"`` estimate, or the mean of
    ``samples`` DDIM samples of ``steps`` steps from ``seed``.
    """
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise InputError(f"checkpoint={shown(checkpoint)}: expected the path of a checkpoint file")
    choices = Choices(method, None if checkpoint is None else Path(checkpoint), mode, samples, thin_spacing, steps,
                      seed).checked()
    thick = _as_volume(image, spacing, origin, direction)
    check_input(thick, thin_spacing)
    if method:
        result = thin_by_method(thick, method, thin_spacing)
    else:
        from ctslice.hardware import PRECISIONS, configure, resolve_device
        from ctslice.inference.loading import load_model

        if precision is not None and precision not in PRECISIONS:
            raise InputError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
        target = resolve_device(device, source="device")
        configure(target)
        result = thin_by_model(load_model(choices.checkpoint, target, None, precision), thick, choices).volume
    return result.with_array(cast_rounded(result.array)).to_image()


def _as_volume(image, spacing, origin, direction) -> Volume:
    """``image`` as an int16 HU ``Volume``, or one ``InputError`` line saying what is wrong with it."""
    if isinstance(image, sitk.Image):
        if (spacing, origin, direction) != (None, None, None):
            raise InputError("spacing=, origin= and direction= are for a NumPy array; a SimpleITK image carries "
                             "its own geometry")
        if image.GetDimension() != 3:
            raise InputError(f"image: a {image.GetDimension()}D image; expected a 3D CT volume")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise InputError(f"image: {image.GetNumberOfComponentsPerPixel()} components per voxel; expected "
                             "one (HU)")
        volume = Volume.from_image(image)
    elif isinstance(image, np.ma.MaskedArray):  # its mask would be dropped without a word
        raise InputError("image: a masked array; fill the masked voxels first (image.filled(-1024) for air)")
    elif isinstance(image, np.ndarray):
        if spacing is None:
            raise InputError("a NumPy array needs spacing=(x, y, z) in mm (and origin=, direction= unless the "
                             "defaults fit)")
        volume = Volume(image, _numbers("spacing", spacing, 3),
                        _numbers("origin", (0.0, 0.0, 0.0) if origin is None else origin, 3),
                        _numbers("direction", IDENTITY if direction is None else direction, 9))
    else:
        raise InputError(f"image: expected a SimpleITK.Image or a NumPy array (z, y, x), got "
                         f"{type(image).__name__}")
    array = volume.array
    if array.ndim != 3:
        raise InputError(f"image: a {array.ndim}D array; expected a 3D CT volume (z, y, x)")
    if array.dtype.kind not in "iuf":
        raise InputError(f"image: voxels of type {array.dtype}; expected numbers (HU)")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InputError("image: has NaN or infinite voxels; replace them (with -1024 HU for air) first")
    if min(volume.spacing) <= 0 or not all(map(math.isfinite, volume.spacing)):
        raise InputError(f"spacing {volume.spacing}: must be three positive numbers of mm")
    axes = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3)
    if abs(np.linalg.det(axes)) < 1e-6:
        raise InputError("direction: the matrix is singular; give the unit vectors of the x, y and z axes")
    return volume.with_array(cast_rounded(array, np.int16))


def _numbers(name: str, values, count: int) -> tuple[float, ...]:
    """``values`` as ``count`` finite floats, or an ``InputError`` naming the keyword."""
    try:
        numbers = tuple(float(v) for v in np.asarray(values, dtype=np.float64).ravel())
    except (TypeError, ValueError, OverflowError):
        numbers = ()
    if len(numbers) != count or not all(map(math.isfinite, numbers)):
        raise InputError(f"{name}={shown(values)}: expected {count} finite numbers")
    return numbers


