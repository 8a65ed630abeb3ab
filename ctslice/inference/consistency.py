"""Make a thin output agree with the scanner's measurement: re-thickened, it gives back the thick input.

A thick slice is the average of the anatomy over its slab (``ctslice.io.geometry``'s convention: slab i
spans [i T, (i + 1) T) along the slice axis, thickness = spacing, so thin slice k, centred at
(k + 1/2) t, lies in slab floor((k + 1/2) t / T)). A model's thin volume ``x`` seldom averages back to
the thick input ``b`` exactly; ``make_consistent`` adds the smooth correction that makes it so:

    x' = x + L c,   with   A L c = b - A x,

where A averages thin slices over their slab (D thin slices -> N thick) and L interpolates N per-slab
values linearly between slab centres (constant beyond the end centres). A L is an N x N matrix whose
diagonal dominates (a slab's own centre carries about 3/4 of its slices' weight), solved once for every
(y, x) column. Why linear and not the orthogonal projection (adding each slab's residual to its slices
as a constant): that is the least-squares choice, but its corrections are steps at every slab border, the
slab-periodic texture this package measures (``ctslice.evaluation.thick_input``); the linear correction
adds no border that the input does not have (benchmarks/RESULTS.md, "Slab consistency").
"""

from __future__ import annotations

import numpy as np

WORK_BYTES = 64 * 2**20  # float64 work arrays per block of (y, x) columns: bounded whatever the depth


def slab_of_thin_slices(depth: int, slabs: int, thin_spacing: float, thick_spacing: float) -> np.ndarray:
    """The thick slab (0 .. slabs - 1) each of ``depth`` thin slices lies in (``ctslice.io.geometry``'s grids)."""
    centres = (np.arange(depth) + 0.5) * thin_spacing / thick_spacing
    return np.minimum(np.floor(centres + 1e-6).astype(np.int64), slabs - 1)


def _operators(depth: int, slabs: int, thin_spacing: float, thick_spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """(A, L): slab averaging (slabs x depth) and linear interpolation between slab centres (depth x slabs)."""
    slab = slab_of_thin_slices(depth, slabs, thin_spacing, thick_spacing)
    average = np.zeros((slabs, depth))
    average[slab, np.arange(depth)] = 1.0
    average /= np.maximum(average.sum(axis=1, keepdims=True), 1.0)
    position = np.clip((np.arange(depth) + 0.5) * thin_spacing / thick_spacing - 0.5, 0.0, slabs - 1.0)
    below = np.minimum(np.floor(position).astype(np.int64), max(slabs - 2, 0))
    weight = position - below
    interpolate = np.zeros((depth, slabs))
    interpolate[np.arange(depth), below] += 1.0 - weight
    interpolate[np.arange(depth), np.minimum(below + 1, slabs - 1)] += weight
    return average, interpolate


def make_consistent(thin: np.ndarray, thick: np.ndarray, thin_spacing: float, thick_spacing: float) -> np.ndarray:
    """Adds to ``thin`` (D, H, W, float32, changed in place: a full-size volume is not copied) the smooth
    correction after which its slab averages equal ``thick`` (N, H, W) wherever a slab holds thin slices;
    returns ``thin`` (see the module docstring)."""
    depth, slabs = thin.shape[0], thick.shape[0]
    if thin.dtype != np.float32 or not thin.flags.c_contiguous or thin.shape[1:] != thick.shape[1:]:
        raise ValueError(f"thin {thin.dtype} {thin.shape}: expected a C-contiguous float32 array with the in-plane "
                         f"size of thick {thick.shape}")
    average, interpolate = _operators(depth, slabs, thin_spacing, thick_spacing)
    held = average.sum(axis=1) > 0
    coupled = average @ interpolate
    coupled[~held] = np.eye(slabs)[~held]  # a slab without thin slices: no constraint, no correction
    correction = interpolate @ np.linalg.inv(coupled)  # (D, N): thick residuals -> thin corrections
    correction[:, ~held] = 0.0
    columns = thin.reshape(depth, -1)  # a view: thin is corrected through it
    measured = thick.reshape(slabs, -1)
    width = max(1, WORK_BYTES // (8 * depth))
    for start in range(0, columns.shape[1], width):
        block = slice(start, start + width)
        residual = measured[:, block].astype(np.float64) - average @ columns[:, block]
        columns[:, block] += (correction @ residual).astype(np.float32)
    return thin
