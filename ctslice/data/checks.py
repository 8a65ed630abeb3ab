"""Sanity checks that a volume is a usable CT scan in HU, run on every case before it enters the cache."""

from __future__ import annotations

import math

import numpy as np

from ctslice.errors import InputError
from ctslice.io.volume import Volume


def check_ct_volume(volume: Volume, role: str) -> None:
    """Raise InputError if ``volume`` (the ``role`` series: thick/thin/scan) is not plausible CT in HU.

    CT always images some air or lung (below -200 HU) and some tissue (above -200 HU); a volume
    without both is blank, cropped to nothing, or stored without its rescale to HU.
    """
    values = volume.array
    if values.ndim != 3 or min(values.shape) < 2:
        raise InputError(f"the {role} series is not a 3D volume (shape {values.shape})")
    sample = values[:: max(1, values.shape[0] // 16)].astype(np.float32)
    if float(sample.std()) < 1.0 and float(values.std()) < 1.0:
        raise InputError(f"the {role} series is constant ({float(values.flat[0]):.0f} HU everywhere): a blank "
                         "export or a mask, not a CT scan")
    low, high = np.percentile(sample, [1, 99])
    if low > -200:
        raise InputError(f"the {role} series has no air or lung (1st percentile {low:.0f} HU): values do not "
                         "look like HU (missing rescale slope/intercept?)")
    if high < -200:
        raise InputError(f"the {role} series has no tissue (99th percentile {high:.0f} HU): an empty field of "
                         "view, not a CT scan")


SPACING_RANGE = (1e-3, 100.0)  # mm per voxel: from micro-CT to the thickest clinical slab, with margin
MAX_ORIGIN = 1e6  # mm from the scanner's origin (a kilometre): beyond it the header is damaged
_ORTHONORMAL_TOLERANCE = 1e-3


def check_geometry(volume: Volume, role: str) -> None:
    """Raise InputError if the header geometry of ``volume`` cannot be a CT scan's.

    A header that says 1e-9 mm or 1e9 mm per voxel, a NaN origin or sheared axes makes every grid built on
    it (the thin grid, DICOM positions) meaningless, or empty, or a crash deep in the resampling.
    """
    low, high = SPACING_RANGE
    if not all(math.isfinite(s) and low <= s <= high for s in volume.spacing):
        raise InputError(f"the {role} series has a voxel spacing of {_numbers(volume.spacing)} mm; each must be from "
                         f"{low:g} to {high:g} mm (is the header damaged?)")
    if not all(math.isfinite(o) and abs(o) <= MAX_ORIGIN for o in volume.origin):
        raise InputError(f"the {role} series has its origin at {_numbers(volume.origin)} mm, not finite numbers "
                         f"within {MAX_ORIGIN:g} mm (is the header damaged?)")
    axes = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3)
    if not np.all(np.isfinite(axes)) or not np.allclose(axes.T @ axes, np.eye(3), atol=_ORTHONORMAL_TOLERANCE):
        raise InputError(f"the {role} series has a direction matrix {_numbers(volume.direction)} whose axes are not "
                         "perpendicular unit vectors (is the header damaged?)")


def _numbers(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"
