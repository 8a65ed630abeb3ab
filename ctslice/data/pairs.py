"""(thick, thin) training pairs on the geometry convention of ``ctslice.io.geometry``.

Every pair, real or simulated, ends up with the same relation between its two grids: the thin grid is
``thin_grid(thick.grid, thin_spacing)``, so thin slice j and thick slice i sit exactly where inference
will put them. That is what lets one training and evaluation code path serve both kinds.

- Simulated: a thin-only scan, resampled along z to the thin spacing if needed, then thick slices made
  by averaging r = T/t thin slices (a box "slab" profile, or a Gaussian slice profile of FWHM T).
- Real: a thick and a thin series of the same scan; thick slabs not fully covered by the thin series
  are dropped, the thin series is resampled onto the thin grid of what remains (in the thick series'
  in-plane grid), and the two must show the same anatomy.
- Self-supervised: a thick-only scan (``thin`` is None). It has no through-plane truth, but its
  in-plane pixels are finer than the thin target, so in-plane pairs (``ctslice.data.inplane``) made
  with its own slice profile train the model on it.

Every case records the ``SliceProfile`` of its thick side (slice thickness and spacing, hence overlap
or gap): in-plane pairs degrade an axial region with it (``slab_average``, the same simulation that
makes simulated thick slices).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter1d

from ctslice.errors import InputError
from ctslice.io.geometry import checked_depth, resample, slice_ratio, thin_grid
from ctslice.io.intensity import cast_rounded
from ctslice.io.volume import Grid, Volume

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
MIN_PAIR_CORRELATION = 0.6


KINDS = ("real", "simulated", "self-supervised")
SELF_SUPERVISED = "self-supervised"


@dataclass(frozen=True)
class SliceProfile:
    """How a thick series samples z: each slice covers ``thickness`` mm, centres ``spacing`` mm apart.

    Thickness above the spacing is overlap (slices share anatomy), below it a gap. ``source`` says where
    the thickness came from: ``dicom`` (SliceThickness), ``spacing`` (none recorded: taken as the slice
    spacing) or ``simulated`` (slab averaging made it)."""

    thickness: float
    spacing: float
    source: str = "spacing"

    @property
    def overlap(self) -> float:
        """mm shared by neighbouring slices (negative: the gap between them)."""
        return self.thickness - self.spacing


@dataclass(frozen=True)
class Pair:
    """A thick volume and the thin volume on its thin grid, both int16 HU; for a self-supervised case
    ``thin`` is None and ``thin_spacing`` the target it trains for."""

    thick: Volume
    thin: Volume | None
    kind: str  # one of KINDS
    profile: SliceProfile | None = None  # None: slab averaging at the thick spacing (a simulated pair)
    thin_spacing: float | None = None  # only needed without a thin volume
    series: dict | None = field(default=None, compare=False)  # the DICOM series it was made of, if any

    def __post_init__(self) -> None:
        if self.profile is None:
            source = "simulated" if self.kind == "simulated" else "spacing"
            object.__setattr__(self, "profile", SliceProfile(self.thick.spacing[2], self.thick.spacing[2], source))
        if self.thin is not None:
            object.__setattr__(self, "thin_spacing", self.thin.spacing[2])

    @property
    def ratio(self) -> float:
        """The thick/thin ratio the case trains for: thick spacing / thin (target) spacing."""
        return self.thick.spacing[2] / self.thin_spacing


def resample_slices(volume: Volume, spacing: float) -> Volume:
    """``volume`` resampled along z to ``spacing`` over the same extent (linear; in-plane untouched)."""
    if abs(volume.spacing[2] - spacing) < 1e-3:
        return volume
    depth = int(math.floor(checked_depth((volume.depth - 1) * volume.spacing[2], spacing, volume.grid.size[:2]))) + 1
    grid = Grid((volume.grid.size[0], volume.grid.size[1], depth),
                (volume.spacing[0], volume.spacing[1], spacing), volume.origin, volume.direction)
    out = resample(volume, grid, "linear")
    return out.with_array(cast_rounded(out.array))


def simulate_pair(source: Volume, thick_spacing: float, thin_spacing: float, profile: str = "slab") -> Pair:
    """A simulated pair from a thin-only scan (see the module docstring)."""
    ratio = slice_ratio(thick_spacing, thin_spacing)
    if ratio is None or ratio < 2:
        raise InputError(f"thick spacing {thick_spacing} mm must be an integer multiple (>= 2) of the thin "
                         f"spacing {thin_spacing} mm to simulate thick slices")
    if source.spacing[2] > thick_spacing / 2 + 1e-6:
        raise InputError(f"slice spacing {source.spacing[2]:.2f} mm is too thick to serve as thin ground truth "
                         f"for {thick_spacing} mm thick slices")
    thin = resample_slices(source, thin_spacing)
    count = thin.depth // ratio
    if count < 1:
        raise InputError(f"only {thin.depth} thin slices: fewer than one {thick_spacing} mm slab")
    thin = thin.slices(0, count * ratio)
    thick_values = slab_average(thin.array.astype(np.float32), ratio, ratio, profile)
    origin = thin.grid.shifted_along_slices((ratio - 1) / 2.0 * thin_spacing)
    thick = Volume(cast_rounded(thick_values), (thin.spacing[0], thin.spacing[1], float(thick_spacing)),
                   origin, thin.direction)
    return Pair(thick=thick, thin=thin, kind="simulated")


def self_supervised_case(thick: Volume, thin_spacing: float, thickness: float | None = None) -> Pair:
    """A thick-only scan kept for in-plane pairs; ``thickness`` (mm) its recorded slice thickness, if any."""
    spacing = thick.spacing[2]
    if spacing <= thin_spacing + 1e-6:
        raise InputError(f"slice spacing {spacing:.2f} mm is not thicker than the thin spacing {thin_spacing} mm: "
                         "nothing to learn from it")
    profile = SliceProfile(thickness, spacing, "dicom") if thickness else SliceProfile(spacing, spacing)
    return Pair(thick=thick, thin=None, kind=SELF_SUPERVISED, profile=profile, thin_spacing=float(thin_spacing))


def slab_average(values: np.ndarray, thickness: float, spacing: float, profile: str = "slab") -> np.ndarray:
    """Thick slices along axis 0 of ``values`` (thin samples): slab ``thickness`` wide, centres ``spacing``
    apart, both in thin samples; slab i starts where sample ``i x spacing`` starts. One simulation for
    simulated pairs and in-plane pairs. ``slab`` is a box profile, ``gaussian`` a Gaussian of FWHM
    ``thickness``; ``floor(len / spacing)`` slices."""
    count = int(math.floor(values.shape[0] / spacing + 1e-6))
    centres = spacing * np.arange(count) + (spacing - 1) / 2.0
    if profile == "gaussian":
        return _gaussian_profile(values, thickness, centres)
    if profile != "slab":
        raise InputError(f"unknown slice profile {profile!r}: use slab or gaussian")
    whole = slice_ratio(spacing, 1.0)
    if whole is not None and abs(thickness - spacing) < 1e-6:  # slabs of whole samples that tile: exact means
        return values[: count * whole].reshape(count, whole, *values.shape[1:]).mean(axis=1)
    return _box_profile(values, thickness, centres)


def _box_profile(values: np.ndarray, thickness: float, centres: np.ndarray) -> np.ndarray:
    """Means of the piecewise-constant signal over [c - thickness/2, c + thickness/2] (fractional samples
    weighted by their overlap; beyond the ends the end samples are replicated, as slab geometry implies)."""
    pad = int(math.ceil(thickness / 2)) + 1
    padded = np.pad(values.astype(np.float64), [(pad, pad)] + [(0, 0)] * (values.ndim - 1), mode="edge")
    integral = np.concatenate([np.zeros((1, *values.shape[1:])), np.cumsum(padded, axis=0)])
    edges = np.arange(integral.shape[0]) - pad - 0.5  # sample k spans [k - 0.5, k + 0.5]

    def at(points: np.ndarray) -> np.ndarray:
        index = np.clip(np.searchsorted(edges, points, side="right") - 1, 0, len(edges) - 2)
        weight = ((points - edges[index]) / (edges[index + 1] - edges[index])).reshape(-1, *[1] * (values.ndim - 1))
        return (1 - weight) * integral[index] + weight * integral[index + 1]

    return ((at(centres + thickness / 2) - at(centres - thickness / 2)) / thickness).astype(np.float32)


def _gaussian_profile(values: np.ndarray, thickness: float, centres: np.ndarray) -> np.ndarray:
    """Thick slices with a Gaussian slice-sensitivity profile of FWHM ``thickness`` samples, at ``centres``."""
    smoothed = gaussian_filter1d(values, sigma=thickness * FWHM_TO_SIGMA, axis=0, mode="nearest")
    lower = np.clip(np.floor(centres).astype(int), 0, values.shape[0] - 1)
    upper = np.minimum(lower + 1, values.shape[0] - 1)
    weight = (centres - lower).reshape(-1, *[1] * (values.ndim - 1))
    return (1 - weight) * smoothed[lower] + weight * smoothed[upper]


def real_pair(thick_source: Volume, thin_source: Volume, thin_spacing: float, min_slices: int = 1) -> Pair:
    """A real pair from a thick and a thin series of one scan (see the module docstring)."""
    if abs(float(np.dot(thick_source.grid.slice_axis, thin_source.grid.slice_axis))) < 0.999:
        raise InputError("the thick and thin series are not acquired in the same plane (slice axes differ)")
    thick = _crop_to_thin_coverage(thick_source, thin_source)
    if thick.depth < min_slices:
        raise InputError(f"the thick and thin series overlap over {thick.depth} thick slices along z "
                         f"(need {min_slices}): are they from the same scan?")
    thin = resample(thin_source, thin_grid(thick.grid, thin_spacing), "linear")
    pair = Pair(thick=thick, thin=thin.with_array(cast_rounded(thin.array)), kind="real")
    correlation = _slab_correlation(pair)
    if correlation < MIN_PAIR_CORRELATION:
        raise InputError(f"the thick and thin series do not show the same anatomy (correlation "
                         f"{correlation:.2f} between thick slices and slab-averaged thin slices)")
    return pair


def _crop_to_thin_coverage(thick: Volume, thin: Volume) -> Volume:
    """The thick slices whose whole slab lies inside the z extent the thin series covers."""
    axis = thick.grid.slice_axis
    thin_positions = np.dot(thin.origin, axis) + np.dot(thin.grid.slice_axis, axis) * thin.spacing[2] * np.arange(
        thin.depth)
    half_thin = thin.spacing[2] / 2.0
    covered = (thin_positions.min() - half_thin - 1e-3, thin_positions.max() + half_thin + 1e-3)
    centres = thick.grid.slice_positions()
    half_slab = thick.spacing[2] / 2.0
    inside = np.flatnonzero((centres - half_slab >= covered[0]) & (centres + half_slab <= covered[1]))
    if inside.size == 0:
        return thick.slices(0, 0)
    return thick.slices(int(inside[0]), int(inside[-1]) + 1)


def _slab_correlation(pair: Pair) -> float:
    """Pearson correlation of thick slices with the mean of the thin slices inside each slab."""
    ratio = pair.thin.depth / pair.thick.depth
    edges = np.rint(ratio * np.arange(pair.thick.depth + 1)).astype(int)
    thin = pair.thin.array.astype(np.float32)
    averaged = np.stack([thin[a:b].mean(axis=0) for a, b in zip(edges[:-1], edges[1:], strict=True)])
    a, b = averaged.ravel(), pair.thick.array.astype(np.float32).ravel()
    if a.std() < 1e-6 or b.std() < 1e-6:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])
