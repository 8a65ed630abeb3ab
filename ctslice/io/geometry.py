"""Where a thin output lies relative to its thick input, and resampling between grids.

The convention (documented for users in the README): thick slice i is the centre of a slab of
thickness T (its spacing) along the slice axis. The thin grid of spacing t covers exactly the union of
the slabs: its first slice centre sits t/2 after the first slab's start, i.e. at
``thick_origin - (T - t)/2`` along the slice axis, and it has ``floor(N T / t)`` slices. With an
integer ratio r = T/t, thin slices r*i .. r*i+r-1 are the ones inside thick slab i, so slab averaging
them gives back thick slice i at exactly its own centre. In-plane spacing, the x/y origin and the
direction are those of the input: the output overlays the input with no shift.
"""

from __future__ import annotations

import math

import SimpleITK as sitk

from ctslice.io.volume import Grid, Volume

INTERPOLATORS = {
    "nearest": sitk.sitkNearestNeighbor,
    "linear": sitk.sitkLinear,
    "cubic": sitk.sitkBSpline,
    "lanczos": sitk.sitkLanczosWindowedSinc,
}


def thin_grid(thick: Grid, thin_spacing: float) -> Grid:
    """The thin grid that covers the thick slabs of ``thick`` (see the module docstring)."""
    thick_spacing = thick.spacing[2]
    depth = int(math.floor(thick.size[2] * thick_spacing / thin_spacing + 1e-6))
    origin = thick.shifted_along_slices(-(thick_spacing - thin_spacing) / 2.0)
    return Grid(
        size=(thick.size[0], thick.size[1], depth),
        spacing=(thick.spacing[0], thick.spacing[1], float(thin_spacing)),
        origin=origin,
        direction=thick.direction,
    )


def slice_ratio(thick_spacing: float, thin_spacing: float) -> int | None:
    """The integer ratio T/t when there is one (within 1e-3), else None."""
    ratio = thick_spacing / thin_spacing
    return int(round(ratio)) if abs(ratio - round(ratio)) < 1e-3 and round(ratio) >= 1 else None


def resample(volume: Volume, grid: Grid, method: str = "linear", fill_hu: float = -1024.0) -> Volume:
    """``volume`` resampled onto ``grid`` with SimpleITK (float32); outside the input is ``fill_hu``.

    Samples a hair outside the first or last slice centre (the thin grid's end slices) take the
    nearest slice's value instead of the fill: SimpleITK treats them as outside, which would paint
    air into the first and last half slab.
    """
    image = sitk.Cast(volume.to_image(), sitk.sitkFloat32)
    image = _pad_slices(image, grid)
    out = sitk.Resample(image, grid.reference_image(), sitk.Transform(), INTERPOLATORS[method],
                        float(fill_hu), sitk.sitkFloat32)
    return Volume.from_image(out)


def _pad_slices(image: sitk.Image, grid: Grid, margin: int = 4) -> sitk.Image:
    """Replicate the end slices of ``image`` as far as ``grid`` reaches beyond them, plus a margin.

    Interpolation needs support there; replicating (rather than extrapolating) keeps the half-slab
    at each end of a thin output at the edge slice's intensity, as slab geometry implies, and the
    margin gives cubic and Lanczos kernels their full support at the ends.
    """
    reference = grid.reference_image()
    corners = [reference.TransformIndexToPhysicalPoint((i, j, k))
               for i in (0, grid.size[0] - 1) for j in (0, grid.size[1] - 1) for k in (0, grid.size[2] - 1)]
    z = [image.TransformPhysicalPointToContinuousIndex(c)[2] for c in corners]
    before = max(0, int(math.ceil(-min(z)))) + margin
    after = max(0, int(math.ceil(max(z) - (image.GetSize()[2] - 1)))) + margin
    padded = sitk.ZeroFluxNeumannPad(image, [0, 0, before], [0, 0, after])
    return padded
