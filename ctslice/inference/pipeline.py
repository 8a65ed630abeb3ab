"""From a thick volume to a thin one with a trained model, as a short readable loop.

1. The thin grid: ``thin_grid`` (see ``ctslice.io.geometry``), so the output overlays the input.
2. If the model was trained on a fixed in-plane matrix, the scan is resampled to it (and back at the end).
3. The condition: the thick volume interpolated (cubic) onto the thin grid, normalised, encoded (chunked).
4. The model over overlapping latent windows: the mean estimate (default) or DDIM samples; windows that
   hold only air (``AIR_HU``) keep the interpolation.
5. Chunked decoding, back to HU; each volume corrected so that, slab-averaged, it gives back the input
   (``inference.consistency``, ``ctslice.inference.consistency``); for several samples their mean and
   per-voxel standard deviation.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from ctslice.codecs.base import Codec
from ctslice.config import Config
from ctslice.data.patches import interpolate_thick
from ctslice.hardware import autocast
from ctslice.inference.consistency import make_consistent
from ctslice.io.geometry import resample, resample_inplane, square_inplane_grid, thin_grid
from ctslice.io.volume import Grid, Volume
from ctslice.models.diffusion import SliceDiffusion
from ctslice.models.sampling import WindowedNetwork, ddim_sample, mean_estimate
from ctslice.models.unet import latent_window

# HU at or below which a voxel of the interpolated scan is air. A window whose voxels are all air (outside
# the body; a scan's noise and table lie above) is not worth a U-Net pass: the interpolation is the answer.
AIR_HU = -950.0


def tissue_map(tissue: torch.Tensor, latent_shape) -> torch.Tensor:
    """``tissue`` (a boolean map of the thin grid) on the latent grid: true where any voxel it codes is tissue."""
    if tuple(tissue.shape) == tuple(latent_shape):
        return tissue
    pooled = torch.nn.functional.adaptive_max_pool3d(tissue[None, None].float(), tuple(latent_shape))
    return pooled[0, 0] > 0


@dataclass
class Prediction:
    """The thin volume (float32 HU), for several samples the per-voxel standard deviation, and the
    seconds of each stage (encode: resampling and encoding the condition; denoise; decode: decoding,
    the consistency correction and resampling back), for the caller to report."""

    volume: Volume
    std: Volume | None = None
    seconds: dict[str, float] = field(default_factory=dict)


class SliceInterpolator:
    """A trained model and its codec, ready to turn thick volumes into thin ones."""

    def __init__(self, model: SliceDiffusion, codec: Codec, config: Config, device: torch.device,
                 inplane_size: int = 0):
        self.model = model.eval()
        self.codec = codec
        self.config = config
        self.device = device
        self.inplane_size = inplane_size

    def roi(self) -> tuple[int, int, int]:
        """The largest latent window for this model's attention kernel (``ctslice.models.unet.latent_window``)."""
        return latent_window(self.config, self.codec.compression, self.model.flash_attention)

    def windowed_network(self, on_windows: Callable[[int], None] | None = None,
                         tissue: torch.Tensor | None = None) -> WindowedNetwork:
        """The U-Net over blended latent windows of ``roi()``, as every denoising step runs it; windows without
        ``tissue`` (a latent-grid map, see ``tissue_map``) are left to the interpolation."""
        inference = self.config.inference
        return WindowedNetwork(self.model, self.roi(), inference.overlap, inference.window_batch, on_windows,
                               tissue=tissue)

    @torch.no_grad()
    def predict(self, thick: Volume, thin_spacing: float, mode: str = "mean", samples: int = 1, steps: int = 20,
                seed: int = 0, on_step: Callable[[str, int, int], None] | None = None) -> Prediction:
        """Thin volume for ``thick``; ``on_step(stage, done, total)`` reports progress in U-Net windows run, of
        all the windows of every denoising step (one pass for the mean, ``steps`` per sample)."""
        seconds: dict[str, float] = {}
        with self._stage(seconds, "encode"):
            grid = thin_grid(thick.grid, thin_spacing)
            model_thick, model_grid = thick, grid
            if self.inplane_size:
                model_thick = resample_inplane(thick, self.inplane_size)
                model_grid = square_inplane_grid(grid, self.inplane_size)
            hu = interpolate_thick(model_thick, model_grid).array
            tissue = torch.from_numpy(hu > AIR_HU)
            cond = self._encode(hu)
            del hu
            tissue = tissue_map(tissue, cond.shape[2:])
        with self._stage(seconds, "denoise"):
            latents = self._denoise(cond, mode, samples, steps, seed, on_step, tissue)
        with self._stage(seconds, "decode"):
            shape = tuple(model_grid.size[::-1])
            volumes = [self._decode(latent, shape) for latent in latents]
            if self.config.inference.consistency:
                for volume in volumes:
                    make_consistent(volume, model_thick.array, model_grid.spacing[2], model_thick.spacing[2])
            mean = np.mean(volumes, axis=0) if len(volumes) > 1 else volumes[0]
            std = np.std(volumes, axis=0) if len(volumes) > 1 else None
            prediction = Prediction(self._on_grid(mean, model_grid, grid),
                                    None if std is None else self._on_grid(std, model_grid, grid), seconds)
        return prediction

    @contextmanager
    def _stage(self, seconds: dict[str, float], name: str) -> Iterator[None]:
        """Adds the wall-clock seconds of the block to ``seconds[name]``, CUDA work included (synchronised)."""
        started = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started

    def _denoise(self, cond: torch.Tensor, mode: str, samples: int, steps: int, seed: int, on_step,
                 tissue: torch.Tensor | None = None) -> list:
        """Thin latents: one mean estimate, or ``samples`` DDIM samples with seeds seed, seed+1, ..."""
        stage = "denoising" if mode == "mean" else "sampling"
        done = 0

        def on_windows(count: int) -> None:
            nonlocal done
            done += count
            on_step(stage, done, total)

        network = self.windowed_network(on_windows if on_step else None, tissue)
        total = network.windows(cond.shape[2:]) * (1 if mode == "mean" else samples * steps)
        with autocast(self.device, self.config.training.precision):
            if mode == "mean":
                return [mean_estimate(self.model, cond, network).float()]
            return [ddim_sample(self.model, cond, steps, torch.Generator().manual_seed(seed + index), network).float()
                    for index in range(samples)]

    def _encode(self, hu: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))[None, None].to(self.device)
        return self.codec.encode(self.codec.normalize(x)).float()

    def _decode(self, latent: torch.Tensor, shape: tuple[int, int, int]) -> np.ndarray:
        return self.codec.denormalize(self.codec.decode(latent, size=shape)).float()[0, 0].cpu().numpy()

    @staticmethod
    def _on_grid(array: np.ndarray, model_grid: Grid, grid: Grid) -> Volume:
        volume = Volume(array.astype(np.float32), model_grid.spacing, model_grid.origin, model_grid.direction)
        return volume if model_grid == grid else resample(volume, grid, "linear")
