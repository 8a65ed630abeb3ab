"""Classical slice interpolation onto exactly the thin grid a model would produce.

SimpleITK's interpolators (linear, cubic B-spline, Lanczos windowed sinc), not hand-written kernels,
on the grid of ``ctslice.io.geometry.thin_grid``: a baseline and a model output can be compared voxel
by voxel and overlay the input identically. ``nearest`` exists for displaying the thick input on the
thin grid (each thin slice shows the slab it lies in).
"""

from __future__ import annotations

from ctslice.io.geometry import resample, thin_grid
from ctslice.io.volume import Grid, Volume

METHODS = ("linear", "cubic", "lanczos")


def interpolate(thick: Volume, thin_spacing: float | None = None, method: str = "cubic",
                grid: Grid | None = None) -> Volume:
    """``thick`` on the thin grid for ``thin_spacing`` (or on ``grid``), float32 HU."""
    target = grid if grid is not None else thin_grid(thick.grid, thin_spacing)
    return resample(thick, target, method)
