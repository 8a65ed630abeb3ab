"""Casting voxel values between types without the two silent corruptions numpy allows.

``astype`` truncates floats toward zero (-0.7 HU becomes 0, a bias) and wraps integers that do not fit
(40000 becomes -25536, bone turned into air). Scans arrive as float32, int32 or uint16; the cache and
every output store int16 HU. So values are rounded to nearest and clipped to the target range.
"""

from __future__ import annotations

import numpy as np


def cast_rounded(array: np.ndarray, dtype=np.int16) -> np.ndarray:
    """``array`` as ``dtype``: rounded to nearest and clipped to the range of an integer ``dtype``."""
    dtype = np.dtype(dtype)
    if array.dtype == dtype:
        return array
    if dtype.kind not in "iu":
        return array.astype(dtype)
    info = np.iinfo(dtype)
    if array.dtype.kind == "f":
        array = np.rint(array)
    return np.clip(array, info.min, info.max).astype(dtype)
