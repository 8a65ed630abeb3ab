"""The latent cache: each training volume encoded once, since the codec is frozen.

Encoding with the MAISI VAE costs far more than a U-Net step on a patch, and it always gives the same
latents, so the trainer encodes every training case once (chunked, whole volume: the interpolated
thick condition and the thin truth) into ``<run>/latents.h5`` and draws patches from there. An entry
is reused while its case's content hash and the codec's fingerprint are unchanged, so resuming a run
re-encodes nothing. ``LatentSource`` offers the same interface as ``ctslice.data.patches.PixelSource``
in latent units.

In-plane pairs (``data.inplane_fraction`` > 0) are made from pixels at every draw (a random axial
region, degraded along a random axis), so no whole-volume encoding can hold them: a run with in-plane
pairs does not use the latent cache (``uses_latent_cache``) and encodes each batch instead, like
``data.cache_latents: false``. Cases without a thin volume (self-supervised) are never cached here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import h5py
import numpy as np
import torch

from ctslice.codecs.base import Codec
from ctslice.config import DataConfig
from ctslice.data.cache import Cache
from ctslice.data.patches import Patch, interpolate_thick, patch_shape
from ctslice.errors import first_line

log = logging.getLogger(__name__)


def uses_latent_cache(config: DataConfig) -> bool:
    """Whether a run draws cached latents: ``cache_latents``, unless in-plane pairs (made in pixels) are mixed in."""
    return config.cache_latents and config.inplane_fraction == 0


def encode_volume(codec: Codec, hu: np.ndarray, device: torch.device) -> np.ndarray:
    """(D, H, W) HU -> (C, d, h, w) latents, float32 on the CPU."""
    x = torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))[None, None].to(device)
    return codec.encode(codec.normalize(x))[0].float().cpu().numpy()


def encode_batch(batch: dict, codec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel patches (HU) -> (thin, condition) latents with the frozen codec."""
    thin = codec.encode(codec.normalize(batch["thin"].to(device)))
    cond = codec.encode(codec.normalize(batch["cond"].to(device)))
    return thin.float(), cond.float()


def build_latent_cache(cache_path: Path, case_ids: list[str], codec: Codec, fingerprint: str, out_path: Path,
                       device: torch.device, on_case=None) -> Path:
    """Encode every case of ``case_ids`` not already in ``out_path`` with this codec fingerprint.

    A file there that HDF5 cannot open (a run killed with -9 while writing it) is derived data: it is
    rebuilt, with a warning, rather than stopping the run."""
    try:
        h5py.File(out_path, "a").close()
    except OSError as error:
        log.warning(f"{out_path} is damaged ({first_line(error, 120)}); the latent cache is rebuilt")
        out_path.unlink()
    with Cache(cache_path) as cache, h5py.File(out_path, "a") as store:
        for case_id in case_ids:
            info = cache.info(case_id)
            group = store.get(case_id)
            if group is not None and group.attrs.get("key") == f"{info.content_hash}:{fingerprint}":
                if on_case:
                    on_case(case_id)
                continue
            if group is not None:
                del store[case_id]
            thin = cache.volume(case_id, "thin")
            cond = interpolate_thick(cache.volume(case_id, "thick"), thin.grid)
            group = store.create_group(case_id)
            group.create_dataset("cond", data=encode_volume(codec, cond.array, device))
            group.create_dataset("thin", data=encode_volume(codec, thin.array, device))
            group.attrs.update({"key": f"{info.content_hash}:{fingerprint}", "ratio": info.ratio})
            store.flush()
            if on_case:
                on_case(case_id)
    return out_path


class LatentSource:
    """Patches of cached latents; shapes and patch sizes in latent voxels."""

    z_multiple = 1

    def __init__(self, path: Path, case_ids: list[str], codec_class: type[Codec]):
        self.path = Path(path)
        self.case_ids = list(case_ids)
        self.codec_class = codec_class  # the class, not the codec: sources are pickled into DataLoader workers
        self._file: h5py.File | None = None
        with h5py.File(self.path, "r") as store:
            self._shapes = {c: tuple(store[c]["thin"].shape[1:]) for c in self.case_ids}
            self._ratio = {c: float(store[c].attrs["ratio"]) for c in self.case_ids}

    def __getstate__(self):
        return {**self.__dict__, "_file": None}

    @property
    def file(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():  # h5py handles must not cross a fork
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._file

    def shape(self, case_id: str) -> tuple[int, int, int]:
        return self._shapes[case_id]

    @property
    def pair_case_ids(self) -> list[str]:
        """Every case: the latent cache holds only cases with a thin volume."""
        return self.case_ids

    @property
    def inplane_case_ids(self) -> list[str]:
        """None: in-plane pairs are made in pixels, never from cached latents."""
        return []

    def inplane_shape(self, case_id: str) -> tuple[int, int, int]:
        raise NotImplementedError("in-plane pairs are made in pixels (PixelSource), never from cached latents")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def patch_shape(self, config: DataConfig) -> tuple[int, int, int]:
        """The latents of the pixel patch ``PixelSource`` would draw (``ctslice.data.patches.patch_shape``)."""
        ratio = max(self._ratio.values())
        return self.codec_class.latent_size(patch_shape(config, ratio, self.codec_class.compression))

    def read(self, patch: Patch) -> tuple[np.ndarray, np.ndarray]:
        group = self.file[patch.case_id]
        region = (slice(None), slice(*patch.z), slice(*patch.y), slice(*patch.x))
        return group["cond"][region], group["thin"][region]
