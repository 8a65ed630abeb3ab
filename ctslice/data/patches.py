"""Random training patches, drawn deterministically from (seed, sample index).

Patch k of a run is a pure function of the run's seed and k: which case, where, which flips. So the
data position of a run is just its sample counter, resuming continues the exact same stream, and
DataLoader workers or DDP ranks need no shared state. A patch spans ``patch_thick_slices`` thick
slices of thin depth along z (rounded up to the codec's z compression) and a ``patch_size`` square
in-plane, or whole volumes when configured.

Sources: ``PixelSource`` reads HU from the HDF5 cache and interpolates the thick slices onto the
patch's thin grid (the model's condition); the trainer's latent cache provides the same interface in
latent units, so one dataset serves both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ctslice.config import DataConfig
from ctslice.data.cache import Cache
from ctslice.io.geometry import interpolate
from ctslice.io.volume import Grid, Volume

CONDITION_INTERPOLATION = "cubic"
THICK_MARGIN = 3  # thick slices read beyond a patch so cubic interpolation has its support


def interpolate_thick(thick: Volume, grid: Grid) -> Volume:
    """The model's condition: the thick volume interpolated (cubic) onto a thin grid, float32 HU."""
    return interpolate(thick, method=CONDITION_INTERPOLATION, grid=grid)


@dataclass(frozen=True)
class Patch:
    """Where a patch lies in its case, in the source's units (thin voxels or latent voxels)."""

    case_id: str
    z: tuple[int, int]
    y: tuple[int, int]
    x: tuple[int, int]
    flips: tuple[int, ...] = ()  # array axes to reverse (-3 = z, -2 = y, -1 = x)
    transpose: bool = False  # swap y and x (square patches only)


class PatchSource(Protocol):
    """Something that knows case shapes and can read (condition, thin) arrays of a patch."""

    case_ids: list[str]
    z_multiple: int

    def shape(self, case_id: str) -> tuple[int, int, int]: ...

    def patch_shape(self, config: DataConfig) -> tuple[int, int, int]: ...

    def read(self, patch: Patch) -> tuple[np.ndarray, np.ndarray]: ...

    def close(self) -> None: ...


class PixelSource:
    """Thin HU and interpolated-thick HU patches straight from the cache.

    ``z_multiple`` keeps patch depths and starts on multiples of the codec's z compression so that
    an encoded patch lines up with the latent grid.
    """

    def __init__(self, cache_path, case_ids: list[str], z_multiple: int = 1, inplane_multiple: int = 1):
        self.cache_path = cache_path
        self.case_ids = list(case_ids)
        self.z_multiple, self.inplane_multiple = z_multiple, inplane_multiple
        self._cache: Cache | None = None
        with Cache(cache_path) as cache:
            self._shapes = {c: cache.info(c).thin_shape for c in self.case_ids}
            self._ratio = {c: cache.info(c).ratio for c in self.case_ids}

    @property
    def cache(self) -> Cache:
        if self._cache is None:  # opened lazily, once per DataLoader worker process
            self._cache = Cache(self.cache_path)
        return self._cache

    def __getstate__(self):
        return {**self.__dict__, "_cache": None}

    def shape(self, case_id: str) -> tuple[int, int, int]:
        return self._shapes[case_id]

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    def patch_shape(self, config: DataConfig) -> tuple[int, int, int]:
        ratio = max(self._ratio.values())
        depth = _round_up(int(math.ceil(config.patch_thick_slices * ratio)), self.z_multiple)
        side = _round_up(config.patch_size, self.inplane_multiple)
        return depth, side, side

    def read(self, patch: Patch) -> tuple[np.ndarray, np.ndarray]:
        thin = self.cache.region(patch.case_id, "thin", patch.z, patch.y, patch.x)
        first, last = thin.grid.slice_positions()[[0, -1]]
        thick_grid = self.cache.grid(patch.case_id, "thick")
        spacing, start = thick_grid.spacing[2], thick_grid.slice_positions()[0]
        low = max(0, int(math.floor((first - start) / spacing)) - THICK_MARGIN)
        high = min(thick_grid.size[2], int(math.ceil((last - start) / spacing)) + THICK_MARGIN + 1)
        thick = self.cache.region(patch.case_id, "thick", (low, high), patch.y, patch.x)
        return interpolate_thick(thick, thin.grid).array, thin.array.astype(np.float32)


class PatchDataset(torch.utils.data.Dataset):
    """Item k is the patch drawn from (seed, k); returns float32 tensors ``cond`` and ``thin`` (C, D, H, W)."""

    def __init__(self, source: PatchSource, config: DataConfig, seed: int):
        self.source, self.config, self.seed = source, config, seed
        if config.whole_volumes:
            self.patch_shape = None
        else:
            wanted = source.patch_shape(config)
            smallest = np.min([source.shape(c) for c in source.case_ids], axis=0)
            self.patch_shape = tuple(int(min(w, s) if w > 0 else s) for w, s in zip(wanted, smallest, strict=True))

    def __len__(self) -> int:
        return 2**62

    def plan(self, index: int) -> Patch:
        rng = np.random.default_rng([self.seed, index])
        case_id = self.source.case_ids[int(rng.integers(len(self.source.case_ids)))]
        shape = self.source.shape(case_id)
        size = shape if self.patch_shape is None else self.patch_shape
        starts = [int(rng.integers(0, s - p + 1)) for s, p in zip(shape, size, strict=True)]
        starts[0] -= starts[0] % self.source.z_multiple
        coins = rng.integers(0, 2, 4).astype(bool) & self.config.flips
        z, y, x = ((a, a + p) for a, p in zip(starts, size, strict=True))
        flips = tuple(axis for axis, coin in zip((-3, -2, -1), coins[:3], strict=True) if coin)
        return Patch(case_id, z, y, x, flips, bool(coins[3]) and size[1] == size[2])

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


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple)) * multiple if value > 0 else 0
