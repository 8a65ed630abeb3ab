"""Random training patches, drawn deterministically from (seed, sample index).

Patch k of a run is a pure function of the run's seed and k: which case, where, which flips. So the
data position of a run is just its sample counter, resuming continues the exact same stream, and
DataLoader workers or DDP ranks need no shared state. A patch spans ``patch_thick_slices`` thick
slices of thin depth along z and a ``patch_size`` square in-plane, each rounded up to the codec's
compression (``patch_shape``: the one definition, which the memory model uses too), or whole volumes
when configured.

Sources: ``PixelSource`` reads HU from the HDF5 cache and interpolates the thick slices onto the
patch's thin grid (the model's condition); the trainer's latent cache provides the same interface in
latent units, so one dataset serves both.

In-plane pairs (``ctslice.data.inplane``): with ``data.inplane_fraction`` f > 0, patch k is an
in-plane pair with probability f, drawn from any case (self-supervised ones included) whose axial pixels
are no coarser than its thin spacing (coarser pixels resampled finer are no ground truth), else a
through-plane pair drawn from the cases with a thin volume. An in-plane patch has the same (D, H, W)
shape, so that one batch mixes both: D thin pixels along the degraded in-plane axis, H slices along z,
W thin pixels along the other in-plane axis; the patch shape is clipped to fit every case in both
orientations. Only ``PixelSource`` makes them (they are made in pixels, before any encoding). With
f = 0 the draws are exactly those of a run without in-plane pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ctslice.config import DataConfig
from ctslice.data.cache import Cache
from ctslice.data.inplane import AXES, axial_region, inplane_extent, inplane_pair
from ctslice.errors import InputError
from ctslice.io.geometry import interpolate
from ctslice.io.volume import Grid, Volume

CONDITION_INTERPOLATION = "cubic"
THICK_MARGIN = 3  # thick slices read beyond a patch so cubic interpolation has its support
PIXEL_SLACK = 0.05  # mm an axial pixel may exceed the thin spacing and still give in-plane pairs (1.95 mm pixels
# for a 2 mm target; a 3.2 mm pixel for a 1.5 mm target gives none)


def interpolate_thick(thick: Volume, grid: Grid) -> Volume:
    """The model's condition: the thick volume interpolated (cubic) onto a thin grid, float32 HU."""
    return interpolate(thick, method=CONDITION_INTERPOLATION, grid=grid)


def patch_shape(config: DataConfig, ratio: float, compression: tuple[int, int, int] = (1, 1, 1)
                ) -> tuple[int, int, int]:
    """The thin-voxel patch (D, H, W) a config asks for at a thick/thin ``ratio``.

    Depth: ``patch_thick_slices`` thick slices of thin depth, ``ceil(patch_thick_slices x ratio)``;
    in-plane: ``patch_size``. Each axis is rounded up to a whole step of the codec's ``compression``,
    so that an encoded patch lines up with the latent grid. 0 stays 0: the whole axis.
    """
    cz, cy, cx = compression
    depth = round_up(math.ceil(config.patch_thick_slices * ratio), cz)
    return depth, round_up(config.patch_size, cy), round_up(config.patch_size, cx)


def clip_patch(wanted: tuple[int, int, int], smallest: tuple[int, int, int]) -> tuple[int, int, int]:
    """A patch shape that fits the smallest volume: each axis at most its size there, 0 (whole) becomes it."""
    return tuple(int(min(w, s) if w > 0 else s) for w, s in zip(wanted, smallest, strict=True))


def round_up(value: int, multiple: int) -> int:
    """``value`` rounded up to a multiple of ``multiple`` (0 stays 0: a whole axis)."""
    return int(math.ceil(value / multiple)) * multiple if value > 0 else 0


@dataclass(frozen=True)
class Patch:
    """Where a patch lies in its case, in the source's units (thin voxels or latent voxels)."""

    case_id: str
    z: tuple[int, int]
    y: tuple[int, int]
    x: tuple[int, int]
    flips: tuple[int, ...] = ()  # array axes to reverse (-3 = z, -2 = y, -1 = x)
    transpose: bool = False  # swap y and x (square patches only)
    inplane_axis: int | None = None  # an in-plane pair degraded along this axis (-2 = y, -1 = x; y and x then in
    # thin pixels of the resampled axial plane); None: a through-plane pair


class PatchSource(Protocol):
    """Something that knows case shapes and can read (condition, thin) arrays of a patch."""

    case_ids: list[str]
    pair_case_ids: list[str]  # the cases with a thin volume: through-plane pairs come from these only
    inplane_case_ids: list[str]  # the cases fine enough in-plane to give in-plane pairs
    z_multiple: int

    def shape(self, case_id: str) -> tuple[int, int, int]: ...

    def inplane_shape(self, case_id: str) -> tuple[int, int, int]: ...

    def patch_shape(self, config: DataConfig) -> tuple[int, int, int]: ...

    def read(self, patch: Patch) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...


class PixelSource:
    """Thin HU and interpolated-thick HU patches straight from the cache.

    ``compression`` (the codec's) keeps patch sizes, and depths' starts, on whole compression steps so
    that an encoded patch lines up with the latent grid.
    """

    def __init__(self, cache_path, case_ids: list[str], compression: tuple[int, int, int] = (1, 1, 1)):
        self.cache_path = cache_path
        self.case_ids = list(case_ids)
        self.compression = tuple(compression)
        self.z_multiple = self.compression[0]
        self._cache: Cache | None = None
        with Cache(cache_path) as cache:
            infos = {c: cache.info(c) for c in self.case_ids}
            self._shapes = {c: info.thin_shape for c, info in infos.items()}
            self._ratio = {c: info.ratio for c, info in infos.items()}
            self._profile = {c: info.profile for c, info in infos.items()}
            self._thin_spacing = {c: info.thin_spacing for c, info in infos.items()}
            self._slab_shape = {c: cache.options(c).get("profile", "slab") for c in self.case_ids}
            self._axial = {c: "thin" if info.has_truth else "thick" for c, info in infos.items()}
            pixels = {c: cache.grid(c, self._axial[c]).spacing[:2] for c in self.case_ids}
        self._inplane: dict[str, tuple[int, int, int]] = {}  # read when first asked: only runs with in-plane pairs
        self.pair_case_ids = [c for c in self.case_ids if self._shapes[c] is not None]
        self.inplane_case_ids = [c for c in self.case_ids if max(pixels[c]) <= self._thin_spacing[c] + PIXEL_SLACK]

    @property
    def cache(self) -> Cache:
        if self._cache is None:  # opened lazily, once per DataLoader worker process
            self._cache = Cache(self.cache_path)
        return self._cache

    def __getstate__(self):
        return {**self.__dict__, "_cache": None}

    def shape(self, case_id: str) -> tuple[int, int, int]:
        return self._shapes[case_id]

    def inplane_shape(self, case_id: str) -> tuple[int, int, int]:
        """(z slices, rows, columns) of the case's axial plane at the thin spacing, where in-plane pairs lie:
        its thin volume's, or for a self-supervised case its thick volume's."""
        if case_id not in self._inplane:
            grid = self.cache.grid(case_id, self._axial[case_id])
            self._inplane[case_id] = (grid.size[2], *inplane_extent(grid, self._thin_spacing[case_id]))
        return self._inplane[case_id]

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    def patch_shape(self, config: DataConfig) -> tuple[int, int, int]:
        return patch_shape(config, max(self._ratio.values()), self.compression)

    def read(self, patch: Patch) -> tuple[np.ndarray, np.ndarray]:
        if patch.inplane_axis is not None:
            return self._read_inplane(patch)
        thin = self.cache.region(patch.case_id, "thin", patch.z, patch.y, patch.x)
        first, last = thin.grid.slice_positions()[[0, -1]]
        thick_grid = self.cache.grid(patch.case_id, "thick")
        spacing, start = thick_grid.spacing[2], thick_grid.slice_positions()[0]
        low = max(0, int(math.floor((first - start) / spacing)) - THICK_MARGIN)
        high = min(thick_grid.size[2], int(math.ceil((last - start) / spacing)) + THICK_MARGIN + 1)
        thick = self.cache.region(patch.case_id, "thick", (low, high), patch.y, patch.x)
        return interpolate_thick(thick, thin.grid).array, thin.array.astype(np.float32)

    def _read_inplane(self, patch: Patch) -> tuple[np.ndarray, np.ndarray]:
        """An in-plane pair (``ctslice.data.inplane``), its degraded axis first: the axial region widened
        along that axis by whole thick samples (the condition's interpolation support, as for
        through-plane patches), degraded, then the condition interpolated onto the patch's samples."""
        case_id, axis = patch.case_id, patch.inplane_axis
        profile, spacing = self._profile[case_id], self._thin_spacing[case_id]
        window = list(patch.y if axis == -2 else patch.x)
        end = self.inplane_shape(case_id)[1 if axis == -2 else 2]
        margin = int(math.ceil(THICK_MARGIN * profile.spacing / spacing + profile.thickness / spacing / 2))
        start, stop = max(0, window[0] - margin), min(end, window[1] + margin)
        y, x = ((start, stop), patch.x) if axis == -2 else (patch.y, (start, stop))
        region = axial_region(self.cache, case_id, self._axial[case_id], patch.z, y, x, spacing)
        thick, thin = inplane_pair(region.array, axis, profile, spacing, self._slab_shape[case_id])
        target = thin.slices(window[0] - start, window[1] - start)
        return interpolate_thick(thick, target.grid).array, target.array


def _window(rng: np.random.Generator, length: int, size: int) -> tuple[int, int]:
    """A random window of ``size`` samples within ``length``."""
    start = int(rng.integers(0, length - size + 1))
    return start, start + size


class PatchDataset(torch.utils.data.Dataset):
    """Item k is the patch drawn from (seed, k); returns float32 tensors ``cond`` and ``thin`` (C, D, H, W)."""

    def __init__(self, source: PatchSource, config: DataConfig, seed: int):
        self.source, self.config, self.seed = source, config, seed
        self.inplane_fraction = config.inplane_fraction
        self.pair_cases = list(source.pair_case_ids)
        self.inplane_cases = list(source.inplane_case_ids) if self.inplane_fraction > 0 else []
        if self.inplane_fraction < 1 and not self.pair_cases:
            raise InputError("no training case has a thin volume (all are self-supervised), so there are no "
                             "through-plane pairs: set data.inplane_fraction to 1, or add scans with thin slices")
        if self.inplane_fraction > 0 and not self.inplane_cases:
            raise InputError("no training case has axial pixels as fine as its thin spacing, so there are no "
                             "in-plane pairs: set data.inplane_fraction to 0, or add scans with finer pixels")
        if config.whole_volumes:
            self.patch_shape = None
        else:
            shapes = [source.shape(c) for c in self.pair_cases] if self.inplane_fraction < 1 else []
            if self.inplane_fraction > 0:  # (degraded axis, z, other axis): either in-plane axis may be degraded
                shapes += [(min(rows, columns), depth, min(rows, columns))
                           for depth, rows, columns in map(source.inplane_shape, self.inplane_cases)]
            self.patch_shape = clip_patch(source.patch_shape(config), tuple(np.min(shapes, axis=0)))

    def __len__(self) -> int:
        return 2**62

    def plan(self, index: int) -> Patch:
        rng = np.random.default_rng([self.seed, index])
        if self.inplane_fraction and rng.random() < self.inplane_fraction:
            return self._plan_inplane(rng)
        case_id = self.pair_cases[int(rng.integers(len(self.pair_cases)))]
        shape = self.source.shape(case_id)
        size = shape if self.patch_shape is None else self.patch_shape
        starts = [int(rng.integers(0, s - p + 1)) for s, p in zip(shape, size, strict=True)]
        starts[0] -= starts[0] % self.source.z_multiple
        coins = rng.integers(0, 2, 4).astype(bool) & self.config.flips
        z, y, x = ((a, a + p) for a, p in zip(starts, size, strict=True))
        flips = tuple(axis for axis, coin in zip((-3, -2, -1), coins[:3], strict=True) if coin)
        return Patch(case_id, z, y, x, flips, bool(coins[3]) and size[1] == size[2])

    def _plan_inplane(self, rng: np.random.Generator) -> Patch:
        """An in-plane pair from any case: which axis is degraded, where, which flips (model axes)."""
        case_id = self.inplane_cases[int(rng.integers(len(self.inplane_cases)))]
        axis = AXES[int(rng.integers(len(AXES)))]
        depth, rows, columns = self.source.inplane_shape(case_id)
        size_degraded, size_z, size_other = self.patch_shape
        degraded, other = (rows, columns) if axis == -2 else (columns, rows)
        z, d, o = (_window(rng, n, p) for n, p in ((depth, size_z), (degraded, size_degraded), (other, size_other)))
        coins = rng.integers(0, 2, 4).astype(bool) & self.config.flips
        flips = tuple(a for a, coin in zip((-3, -2, -1), coins[:3], strict=True) if coin)
        y, x = (d, o) if axis == -2 else (o, d)
        return Patch(case_id, z, y, x, flips, bool(coins[3]) and size_z == size_other, inplane_axis=axis)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        patch = self.plan(index)
        cond, thin = self.source.read(patch)
        if patch.flips:
            cond, thin = np.flip(cond, patch.flips), np.flip(thin, patch.flips)
        if patch.transpose:
            cond, thin = np.swapaxes(cond, -1, -2), np.swapaxes(thin, -1, -2)
        cond, thin = (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in (cond, thin))
        if cond.ndim == 3:  # pixel sources have no channel axis
            cond, thin = cond[None], thin[None]
        return {"cond": cond, "thin": thin}
