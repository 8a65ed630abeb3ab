"""In-plane training pairs: the SR4ZCT / SMORE idea, for cases with and without thin ground truth.

A CT scan's in-plane pixels are finer than the thin target, so an axial region resampled in-plane to
the thin spacing t, then degraded along y or x by the case's own slice profile (``SliceProfile``:
slabs of its thickness, centres its spacing apart, with the ``slab`` or ``gaussian`` shape of
``ctslice.data.pairs.slab_average``, the simulation that makes simulated thick slices), is a
(thick, thin) pair along that axis. Turned so that the degraded axis is axis 0, the model's slice
axis, it has the shape of a through-plane patch: (degraded axis, z, the other in-plane axis). That is
how a thick-only (self-supervised) case trains the model at all; pair cases give in-plane pairs too,
from their thin volume (finer along z than the thick one). In-plane anatomy is not through-plane
anatomy, so ``data.inplane_fraction`` mixes them with through-plane pairs rather than replacing them.

Geometry along the turned axis follows the convention of ``ctslice.io.geometry``: slab i covers thin
samples [i s, i s + s) (s = spacing / t) when thickness equals spacing, its centre at ``i s + (s - 1)/2``;
so the condition is the thick samples interpolated onto the thin samples exactly as for a real pair.
"""

from __future__ import annotations

import math

import numpy as np

from ctslice.data.cache import Cache
from ctslice.data.pairs import SliceProfile, slab_average
from ctslice.io.geometry import resample
from ctslice.io.volume import Grid, Volume

AXES = (-2, -1)  # the in-plane array axes a pair can be degraded along: y, x


def inplane_extent(grid: Grid, thin_spacing: float) -> tuple[int, int]:
    """(rows, columns) of the grid's axial field of view resampled to ``thin_spacing`` pixels: the
    samples that lie between its first and last pixel centres, so none is extrapolated."""
    return tuple(int(math.floor((grid.size[k] - 1) * grid.spacing[k] / thin_spacing + 1e-6)) + 1 for k in (1, 0))


def axial_region(cache: Cache, case_id: str, which: str, z: tuple[int, int], y: tuple[int, int],
                 x: tuple[int, int], thin_spacing: float) -> Volume:
    """Slices ``z`` of a cached volume over the window ``y`` x ``x`` of its ``inplane_extent`` grid,
    resampled (SimpleITK, linear) to ``thin_spacing`` in-plane; reads only the voxels the window needs."""
    grid = cache.grid(case_id, which)
    scale = (thin_spacing / grid.spacing[0], thin_spacing / grid.spacing[1])  # source pixels per thin pixel (x, y)
    reads = [(max(0, int(math.floor(w[0] * f)) - 1), min(n, int(math.ceil((w[1] - 1) * f)) + 2))
             for w, f, n in ((x, scale[0], grid.size[0]), (y, scale[1], grid.size[1]))]
    source = cache.region(case_id, which, z, reads[1], reads[0])
    corner = grid.index_to_physical((x[0] * scale[0], y[0] * scale[1], z[0]))
    target = Grid((x[1] - x[0], y[1] - y[0], z[1] - z[0]), (thin_spacing, thin_spacing, grid.spacing[2]), corner,
                  grid.direction)
    return resample(source, target, "linear")


def inplane_pair(region: np.ndarray, axis: int, profile: SliceProfile, thin_spacing: float,
                 shape: str = "slab") -> tuple[Volume, Volume]:
    """(thick, thin) on the turned axes (``axis`` of the (z, y, x) ``region`` first, then z, then the other
    in-plane axis): thin is the region itself, thick its ``slab_average`` along the turned axis by
    ``profile``. Both are placed on one z line (spacing t and the profile's spacing; x/y spacings and
    origin nominal) so that ``ctslice.io.geometry.interpolate`` puts the thick samples onto the thin ones."""
    thin = np.moveaxis(np.asarray(region, dtype=np.float32), axis, 0)
    spacing = profile.spacing / thin_spacing
    thick = slab_average(thin, profile.thickness / thin_spacing, spacing, shape)
    first_centre = (spacing - 1) / 2.0 * thin_spacing
    return (Volume(thick, (thin_spacing, thin_spacing, profile.spacing), (0.0, 0.0, first_centre)),
            Volume(thin, (thin_spacing, thin_spacing, thin_spacing), (0.0, 0.0, 0.0)))
