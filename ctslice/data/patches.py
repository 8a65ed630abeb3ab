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
        return patch_shape(config, max(self._ratio.values()), self.compression)

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
            smallest = np.min([source.shape(c) for c in source.case_ids], axis=0)
            self.patch_shape = clip_patch(source.patch_shape(config), tuple(smallest))

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
