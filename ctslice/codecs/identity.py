"""The pixel-space codec: latents are the normalised volume itself.

It lets every command (training, validation, inference) run at small scale without pretrained
weights, and gives a baseline in which the diffusion model sees the voxels directly. Its HU window
is the metric protocol's, [-1024, 2048], so no intensity that PSNR/SSIM measure is clipped away.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ctslice.codecs.base import Codec


class IdentityCodec(Codec):
    """Latents = normalised volume: 1 channel, no compression, exact round trip."""

    name = "identity"
    latent_channels = 1
    compression = (1, 1, 1)
    hu_window = (-1024.0, 2048.0)

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self._device = torch.device(device)

    def encode(self, x: Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """A copy of ``x`` (a copy, so that scaling latents in place never changes the caller's volume)."""
        return x.detach().clone()

    def decode(self, latents: Tensor, *, size: tuple[int, int, int] | None = None) -> Tensor:
        out = latents.detach().clone()
        if size is not None:
            out = out[..., : size[0], : size[1], : size[2]]
        return out

    def to(self, device: str | torch.device) -> IdentityCodec:
        self._device = torch.device(device)
        return self

    @property
    def device(self) -> torch.device:
        return self._device

    def parameter_count(self) -> int:
        return 0
