"""Figures of a thin output made from a real thick scan, which has no thin truth to score against.

Three measurements on the thin grid of ``ctslice.io.geometry.thin_grid`` (thin slice k lies in thick
slab k // r for the integer ratio r; slab i's centre is thin slice i r + (r - 1) / 2), each over the
same voxels: HU clipped to [-1024, 2048], the central 60 % of the axial plane, body voxels (either
slice of a pair above -500 HU, so that the body's and the lungs' borders count, where slab steps show
most), between the first and last thick slice centres.

- ``slab_periodicity``: mean |thin[k+1] - thin[k]| over pairs that straddle a border between two slabs,
  divided by the same over pairs inside a slab. Real anatomy does not know where the scanner's slabs
  lie, so a faithful thin volume gives about 1 (a real 1 mm chest slab-averaged: 1.003); interpolation
  remembers the slab grid (cubic on a real 5 mm chest: about 1.09).
- ``slab_consistency``: HU MAE between the output re-thickened by the scan's slice profile (slab
  averaging, ``ctslice.data.pairs.slab_average``) and the thick input: how well the output explains
  what the scanner measured.
- ``through_plane_change``: mean |thin[k+1] - thin[k]| over all pairs: the output's through-plane detail,
  compared between methods as a sharpness figure (a blurrier output changes less from slice to slice).
"""

from __future__ import annotations

import numpy as np

from ctslice.data.pairs import slab_average
from ctslice.errors import InputError
from ctslice.evaluation.metrics import HU_MAX, HU_MIN

CLIP_HU = (HU_MIN, HU_MAX)  # the metric protocol's range
BODY_HU = -500.0
CENTRAL = 0.6  # fraction of each in-plane axis measured


def _pairs(thin_hu: np.ndarray, ratio: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(|change| per pair, body mask per pair, straddles-a-border per pair index k) over the measured region."""
    if thin_hu.ndim != 3 or ratio < 2 or thin_hu.shape[0] < 2 * ratio:
        raise InputError(f"need a (z, y, x) volume of at least two slabs of {ratio} thin slices, got {thin_hu.shape}")
    values = np.clip(thin_hu.astype(np.float32), *CLIP_HU)
    rows, columns = values.shape[1:]
    y0, x0 = int(rows * (1 - CENTRAL) / 2), int(columns * (1 - CENTRAL) / 2)
    values = values[:, y0: rows - y0, x0: columns - x0]
    first, last = (ratio - 1) / 2.0, (values.shape[0] // ratio - 1) * ratio + (ratio - 1) / 2.0
    k = np.arange(values.shape[0] - 1)
    inside = (k >= first) & (k + 1 <= last)
    change = np.abs(np.diff(values, axis=0))[inside]
    body = ((values[:-1] > BODY_HU) | (values[1:] > BODY_HU))[inside]
    return change, body, ((k + 1) % ratio == 0)[inside]


def slab_periodicity(thin_hu: np.ndarray, ratio: int) -> float:
    """Border pairs' mean slice-to-slice change over inside pairs' (see the module docstring)."""
    change, body, border = _pairs(thin_hu, ratio)
    at_border, inside = change[border][body[border]], change[~border][body[~border]]
    if at_border.size == 0 or inside.size == 0:
        raise InputError("no body voxels (above -500 HU) in the measured region")
    return float(at_border.mean() / inside.mean())


def through_plane_change(thin_hu: np.ndarray, ratio: int) -> float:
    """Mean |thin[k+1] - thin[k]| in HU over the body voxels of every measured pair."""
    change, body, _ = _pairs(thin_hu, ratio)
    return float(change[body].mean())


def slab_consistency(thin_hu: np.ndarray, thick_hu: np.ndarray, ratio: int, thickness: float | None = None) -> float:
    """HU MAE (clipped HU) between ``thin_hu`` slab-averaged back to the thick grid and ``thick_hu``;
    ``thickness`` in thin slices (default: ``ratio``, slabs as thick as their spacing)."""
    slabs = thick_hu.shape[0]
    if thin_hu.shape[0] != slabs * ratio or thin_hu.shape[1:] != thick_hu.shape[1:]:
        raise InputError(f"thin {thin_hu.shape} is not {ratio} slices per thick slice of {thick_hu.shape}")
    rethickened = slab_average(np.clip(thin_hu.astype(np.float32), *CLIP_HU), thickness or ratio, ratio)
    measured = np.clip(thick_hu.astype(np.float32), *CLIP_HU)
    return float(np.abs(rethickened[:slabs] - measured).mean())
