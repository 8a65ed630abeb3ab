"""Slice stacks that are not a uniform orthogonal grid: gantry tilt and uneven spacing, resampled exactly.

A DICOM slice is placed by its own ImagePositionPatient, with rows and columns along the shared
ImageOrientationPatient. In the slice-plane frame (row r, column c, normal n = r x c, origin at the
first slice) slice k lies in the plane at height z_k and is shifted in-plane by s_k. A tilted gantry
makes s_k grow with z_k (a shear); uneven spacing makes the steps of z_k differ. Both are exact
geometry, so the stack is resampled with SimpleITK into the axis-aligned box of that frame that holds
every slice, at uniform spacing: between two slices, values are interpolated linearly along the line
through both (the in-plane shift follows z linearly), and in-plane linearly as well. Beyond a
sheared slice's edge the box holds air.

Gaps wider than ``MAX_GAP_RATIO`` typical steps are not interpolated (that would invent anatomy);
the caller refuses them before reading pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ctslice.io.volume import Volume

MAX_TILT_DEGREES = 0.1
"""Largest shear read as is, without resampling: over a 300 mm scan it moves the last slice by 0.5 mm,
under one voxel."""

SPACING_TOLERANCE = 0.1
"""Largest distance of any slice from the uniform grid through the first and last, as a fraction of
the typical step, read as is; beyond it the series is resampled to uniform spacing."""

MAX_GAP_RATIO = 2.5
"""Widest step between neighbouring slices that is interpolated, in typical (median) steps. One missing
slice doubles a step; a wider gap hides anatomy no interpolation can recover, so it is refused."""

MAX_SLICE_GROWTH = 16
"""Most the regular grid may exceed the stack it is resampled from in slices (uneven spacing, resampled to
the smallest step). Real series mixing steps stay well below (one mixing 1 mm and 5 mm steps grows about
5x); a stray position a hundredth of a millimetre off asks for 100x and more, and would make a small
series a memory bomb."""
MAX_AREA_GROWTH = 4
"""Most the untilted grid may exceed the slices in in-plane area (tilt): a 30 degree tilt over a head grows
it by about 1.4; more means the slice positions are wrong."""

AIR_HU = -1024.0
"""Value of the resampled box outside every slice (the corners a sheared stack does not reach)."""


@dataclass(frozen=True)
class SliceLayout:
    """Where each slice of a stack lies in the slice-plane frame of the first one (mm)."""

    z: np.ndarray  # (N,) height along the normal, ascending
    shift: np.ndarray  # (N, 2) in-plane offset along row and column

    @classmethod
    def from_positions(cls, positions, orientation) -> SliceLayout:
        """Layout of slices at ``positions`` (N x 3, sorted along the normal) with six IOP cosines."""
        frame = frame_axes(orientation)
        relative = np.asarray(positions, dtype=np.float64) - np.asarray(positions[0], dtype=np.float64)
        local = relative @ frame  # columns: along row, along column, along normal
        return cls(z=local[:, 2], shift=local[:, :2])

    @property
    def steps(self) -> np.ndarray:
        return np.diff(self.z)

    @property
    def typical_step(self) -> float:
        return float(np.median(self.steps))

    @property
    def tilt_degrees(self) -> float:
        """Angle between the line through the first and last slice and the slice normal."""
        return math.degrees(math.atan2(float(np.linalg.norm(self.shift[-1])), abs(float(self.z[-1]))))

    @property
    def tilted(self) -> bool:
        return self.tilt_degrees > MAX_TILT_DEGREES

    @property
    def uneven(self) -> bool:
        uniform = self.z[-1] / (len(self.z) - 1) * np.arange(len(self.z))
        return bool(np.max(np.abs(self.z - uniform)) > SPACING_TOLERANCE * self.typical_step)

    def uniform_step(self, requested: float | None = None) -> float:
        """``requested``, or the largest step not above the smallest one that spans the stack exactly."""
        if requested:
            return float(requested)
        count = math.ceil(self.z[-1] / float(self.steps.min()) - 1e-3)  # positions carry rounding
        return float(self.z[-1] / count)


def frame_axes(orientation) -> np.ndarray:
    """3 x 3 matrix whose columns are the row direction, column direction and slice normal."""
    row, column = np.asarray(orientation[:3], dtype=np.float64), np.asarray(orientation[3:], dtype=np.float64)
    row, column = row / np.linalg.norm(row), column / np.linalg.norm(column)
    normal = np.cross(row, column)
    return np.stack([row, column, normal / np.linalg.norm(normal)], axis=1)


def regularise(stack: np.ndarray, pixel_spacing: tuple[float, float], first_position, orientation,
               layout: SliceLayout, z_spacing: float | None = None) -> Volume:
    """``stack`` (z, y, x; one array slice per layout slice) on a uniform, untilted grid (float32).

    ``pixel_spacing`` is (along row, along column) in mm. The result's direction is the slice-plane
    frame, its spacing ``(row, column, layout.uniform_step(z_spacing))``; it spans the first to the
    last slice along the normal and, in-plane, the union of every slice's footprint.
    """
    dx, dy = (float(s) for s in pixel_spacing)
    dz = layout.uniform_step(z_spacing)
    size = list(regular_size(stack.shape, pixel_spacing, layout, z_spacing))
    heights = dz * np.arange(size[2])
    low = layout.shift.min(axis=0)

    source = sitk.GetImageFromArray(np.ascontiguousarray(stack, dtype=np.float32))
    source.SetSpacing((dx, dy, 1.0))  # x, y in mm of the first slice's frame; z is the slice index
    reference = sitk.Image(size, sitk.sitkFloat32)
    reference.SetSpacing((dx, dy, dz))
    reference.SetOrigin((float(low[0]), float(low[1]), 0.0))
    transform = _frame_to_stack(layout, heights, low, size, (dx, dy, dz))
    out = sitk.Resample(source, reference, transform, sitk.sitkLinear, AIR_HU, sitk.sitkFloat32)

    axes = frame_axes(orientation)
    origin = np.asarray(first_position, dtype=np.float64) + axes[:, :2] @ low
    return Volume(sitk.GetArrayFromImage(out), (dx, dy, dz), tuple(float(v) for v in origin),
                  tuple(float(v) for v in axes.ravel()))


def regular_size(shape: tuple[int, int, int], pixel_spacing: tuple[float, float], layout: SliceLayout,
                 z_spacing: float | None = None) -> tuple[int, int, int]:
    """(x, y, z) voxel counts of the grid ``regularise`` puts a (z, y, x) ``shape`` stack on; known before
    any pixel is resampled, so a caller can refuse a grid far larger than the stack."""
    _, rows, columns = shape
    dx, dy = (float(s) for s in pixel_spacing)
    extent = layout.shift.max(axis=0) - layout.shift.min(axis=0) + ((columns - 1) * dx, (rows - 1) * dy)
    slices = int(math.floor(layout.z[-1] / layout.uniform_step(z_spacing) + 1e-6)) + 1
    return int(round(extent[0] / dx)) + 1, int(round(extent[1] / dy)) + 1, slices


def _frame_to_stack(layout: SliceLayout, heights: np.ndarray, low: np.ndarray, size: list[int],
                    spacing: tuple[float, float, float]) -> sitk.Transform:
    """Frame point (a, b, z) -> stack point (a - s_a(z), b - s_b(z), k(z)), as a displacement field.

    The map depends on z only, so the field is sampled at every output height and at the two in-plane
    ends of the box (its values are the same across the plane), which makes it exact at every voxel.
    """
    index = np.interp(heights, layout.z, np.arange(len(layout.z)))
    shift = np.stack([np.interp(heights, layout.z, layout.shift[:, k]) for k in (0, 1)], axis=1)
    displacement = np.concatenate([-shift, (index - heights)[:, None]], axis=1)
    field = np.broadcast_to(displacement[:, None, None, :], (len(heights), 2, 2, 3)).astype(np.float64)
    image = sitk.GetImageFromArray(np.ascontiguousarray(field), isVector=True)
    image.SetOrigin((float(low[0]), float(low[1]), 0.0))
    image.SetSpacing((max(size[0] - 1, 1) * spacing[0], max(size[1] - 1, 1) * spacing[1], spacing[2]))
    return sitk.DisplacementFieldTransform(image)
