"""The interface every codec offers: an intensity mapping, and encode/decode between volumes and latents.

The diffusion model works on whatever a codec produces, so everything it needs to know about the
latent space (channels, compression per axis, the HU window the intensities were mapped from) is
declared here, and the rest of the project never looks inside a particular codec.

A codec is a plain class, not an ``nn.Module``: it can then never be registered as a submodule of the
diffusion model by accident, so its weights never reach the trainer's optimizer, ``model.train()``
or the diffusion checkpoint. It is always frozen.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ctslice.errors import InputError


class Codec(ABC):
    """Encodes (B, 1, D, H, W) volumes, normalised by :meth:`normalize`, into latents and back.

    Subclasses set ``name``, ``latent_channels``, ``compression`` ((z, y, x) factors) and ``hu_window``
    ((lo, hi) HU mapped onto [0, 1]). ``encode`` and ``decode`` accept any D, H, W and never build an
    autograd graph; results come back on the input's device.
    """

    name: str
    latent_channels: int
    compression: tuple[int, int, int]
    hu_window: tuple[float, float]

    def normalize(self, hu: Tensor) -> Tensor:
        """HU clipped to ``hu_window`` and mapped linearly onto [0, 1], as float32."""
        lo, hi = self.hu_window
        return (hu.float().clamp(lo, hi) - lo) / (hi - lo)

    def denormalize(self, x: Tensor) -> Tensor:
        """The inverse of :meth:`normalize`; values outside [0, 1] are clipped to the window first."""
        lo, hi = self.hu_window
        return x.float().clamp(0.0, 1.0) * (hi - lo) + lo

    @classmethod
    def latent_size(cls, size: tuple[int, int, int]) -> tuple[int, int, int]:
        """Latent (d, h, w) for a volume of (D, H, W): each axis rounded up to a whole compression step.

        A class method: the memory model sizes latents from a config without building a codec.
        """
        return tuple(math.ceil(n / f) for n, f in zip(size, cls.compression, strict=True))

    def description(self) -> dict:
        """What a diffusion checkpoint records of its codec, so that inference can rebuild and check it
        (the weights come from the user, never from the checkpoint)."""
        return {"name": self.name, "latent_channels": self.latent_channels, "compression": list(self.compression)}

    @abstractmethod
    def encode(self, x: Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Latents (B, latent_channels, d, h, w) of a normalised volume: the posterior mean unless ``sample``."""

    @abstractmethod
    def decode(self, latents: Tensor, *, size: tuple[int, int, int] | None = None) -> Tensor:
        """A normalised (B, 1, D, H, W) volume; ``size`` crops it back to the (D, H, W) that was encoded."""

    @abstractmethod
    def to(self, device: str | torch.device) -> Codec:
        """Moves the codec to ``device`` and returns it."""

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where encode and decode run."""

    @abstractmethod
    def parameter_count(self) -> int:
        """Number of (frozen) parameters."""


def pad_end(x: Tensor, multiples: Sequence[int]) -> Tensor:
    """``x`` (B, C, *spatial) with the end of each spatial axis edge-replicated up to a multiple of ``multiples``.

    Padding only at the end keeps voxel 0 at index 0 (latent slice j covers image slices [4j, 4j + 4);
    the U-Net's output is cropped back from the start), and replicating the edge keeps the padding
    looking like its neighbourhood. The codec and the U-Net both pad so. Not MONAI's ``DivisiblePad(k,
    method="end", mode="replicate")``: it gives the same values but pads every axis after the first (so
    batch and channel would have to be merged and split again) and returns a ``MetaTensor``, whose
    ``__torch_function__`` then runs on every later operation, in autograd and in the memory tracer too.
    """
    pad: list[int] = []
    for size, multiple in zip(reversed(x.shape[2:]), reversed(multiples), strict=True):
        pad += [0, -size % multiple]
    return F.pad(x, pad, mode="replicate") if any(pad) else x


def latent_scale_factor(latents: Tensor | Iterable[Tensor]) -> float:
    """1 / std of training latents, so that scaled latents have unit variance for the diffusion model.

    Accepts one tensor or an iterable of them (for example one per training volume), so that the
    statistic can be streamed over a data set without holding it in memory. Sums are kept in float64.
    The trainer computes this once and stores it with the diffusion checkpoint.
    """
    if isinstance(latents, Tensor):
        latents = [latents]
    count, mean, m2 = 0, 0.0, 0.0  # running moments, merged per tensor (Chan et al.) to avoid cancellation
    for z in latents:
        n = z.numel()
        if n == 0:
            continue
        var_z, mean_z = torch.var_mean(z.detach().double(), correction=0)
        delta = mean_z.item() - mean
        total = count + n
        mean += delta * n / total
        m2 += var_z.item() * n + delta * delta * count * n / total
        count = total
    if count < 2:
        raise InputError("cannot compute a latent scale factor from fewer than 2 latent values")
    if m2 <= 0.0:
        raise InputError("cannot compute a latent scale factor: the training latents are constant")
    return 1.0 / math.sqrt(m2 / count)
