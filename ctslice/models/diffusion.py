"""The conditional latent diffusion model: what is diffused, how it is scaled, and the training loss.

Diffused variable. With ``model.residual`` (the default) the model diffuses the thin latents minus
the condition latents (the codec's encoding of the thick volume interpolated onto the thin grid):
the classical interpolation is the starting point and the network learns only what it misses. That
is what lets a small model beat cubic interpolation quickly.

Scaling. The diffused variable is shifted and scaled per channel to zero mean and unit variance
(``LatentStats``: the latent scale factor is 1/std of training latents, computed once at the start of
training and stored with the model), and so is the condition.

Two answers from one network (see DESIGN "Mean or sample"). The network predicts the clean sample
(or v) from a noisy one; a fraction ``diffusion.mean_fraction`` of training examples is shown at the
last timestep with an all-zero noisy input, where the only information is the condition, so the
MSE-optimal output there is the posterior mean E[x0 | condition]. ``mean_estimate`` evaluates exactly
that: one deterministic network pass, the best answer by PSNR. DDIM sampling (``ctslice.models.sampling``)
gives samples with realistic texture instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from ctslice.codecs.base import latent_scale_factor, pad_end
from ctslice.config import Config, DiffusionConfig
from ctslice.models.unet import build_unet, size_multiple, uses_flash_attention


@dataclass
class LatentStats:
    """Per-channel shift and scale (1/std) of the diffused variable and of the condition."""

    target_shift: torch.Tensor
    target_scale: torch.Tensor
    cond_shift: torch.Tensor
    cond_scale: torch.Tensor

    @classmethod
    def identity(cls, channels: int) -> LatentStats:
        zeros, ones = torch.zeros(channels), torch.ones(channels)
        return cls(zeros, ones, zeros.clone(), ones.clone())

    @classmethod
    def fit(cls, targets: list[torch.Tensor], conds: list[torch.Tensor], residual: bool) -> LatentStats:
        """From (B, C, D, H, W) training latents: the diffused variable is thin - cond when ``residual``."""
        diffused = [t - c if residual else t for t, c in zip(targets, conds, strict=True)]
        return cls(*_shift_and_scale(diffused), *_shift_and_scale(conds))


def _shift_and_scale(latents: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel: the mean, and the latent scale factor 1/std (``ctslice.codecs.latent_scale_factor``)."""
    channels = range(latents[0].shape[1])
    shift = torch.tensor([float(torch.cat([x[:, k].double().flatten() for x in latents]).mean()) for k in channels])
    scale = torch.tensor([latent_scale_factor(x[:, k] for x in latents) for k in channels])
    return shift.float(), scale.float()


class SliceDiffusion(torch.nn.Module):
    """The U-Net plus everything needed to train it and to turn its outputs back into thin latents."""

    def __init__(self, config: Config, latent_channels: int, flash_attention: bool = False):
        super().__init__()
        self.residual = config.model.residual
        self.multiple = size_multiple(config.model)
        self.diffusion_config = config.diffusion
        self.unet = build_unet(config.model, latent_channels, flash_attention)
        self.flash_attention = flash_attention  # fused attention: how large an inference window may be
        stats = LatentStats.identity(latent_channels)
        for name in ("target_shift", "target_scale", "cond_shift", "cond_scale"):
            self.register_buffer(name, getattr(stats, name).clone())
        self.scheduler = make_scheduler(config.diffusion, DDPMScheduler)

    @property
    def last_timestep(self) -> int:
        return self.diffusion_config.num_train_timesteps - 1

    def set_stats(self, stats: LatentStats) -> None:
        for name in ("target_shift", "target_scale", "cond_shift", "cond_scale"):
            getattr(self, name).copy_(getattr(stats, name))

    def _view(self, name: str) -> torch.Tensor:
        return getattr(self, name).view(1, -1, 1, 1, 1)

    def diffused(self, thin: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Thin latents -> the scaled variable the model diffuses."""
        base = cond if self.residual else 0.0
        return (thin - base - self._view("target_shift")) * self._view("target_scale")

    def undiffused(self, x0: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The inverse of ``diffused``: the model's clean estimate -> thin latents."""
        base = cond if self.residual else 0.0
        return x0 / self._view("target_scale") + self._view("target_shift") + base

    def condition(self, cond: torch.Tensor) -> torch.Tensor:
        return (cond - self._view("cond_shift")) * self._view("cond_scale")

    def forward(self, noisy: torch.Tensor, condition: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """U-Net output for a noisy sample and a scaled condition, padded to the sizes it needs."""
        x = torch.cat([noisy, condition], dim=1)
        size = x.shape[2:]
        out = self.unet(pad_end(x, [self.multiple] * len(size)), timesteps)
        return out[..., : size[0], : size[1], : size[2]]

    def loss(self, thin: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The denoising loss for a batch of thin/condition latents (global RNG, so resumable)."""
        x0, condition = self.diffused(thin, cond), self.condition(cond)
        batch = x0.shape[0]
        timesteps = torch.randint(0, self.last_timestep + 1, (batch,), device=x0.device)
        mean_rows = torch.rand(batch, device=x0.device) < self.diffusion_config.mean_fraction
        timesteps = torch.where(mean_rows, torch.full_like(timesteps, self.last_timestep), timesteps)
        noise = torch.randn_like(x0)
        noisy = self.scheduler.add_noise(x0, noise, timesteps)
        noisy = torch.where(mean_rows.view(-1, 1, 1, 1, 1), torch.zeros_like(noisy), noisy)
        output = self(noisy, condition, timesteps)
        loss = F.l1_loss if self.diffusion_config.loss == "l1" else F.mse_loss
        return loss(output.float(), self._training_target(x0, noise, noisy, timesteps, mean_rows).float())

    def _training_target(self, x0, noise, noisy, timesteps, mean_rows) -> torch.Tensor:
        kind = self.diffusion_config.prediction_type
        if kind == "sample":
            return x0
        if kind == "epsilon":
            return noise
        velocity = self.scheduler.get_velocity(x0, noise, timesteps)
        # mean rows: the v whose conversion back (x0 = sqrt(a) x_t - sqrt(1-a) v, with x_t = 0) gives x0
        beta = (1 - self.scheduler.alphas_cumprod.to(x0.device)[self.last_timestep]) ** 0.5
        return torch.where(mean_rows.view(-1, 1, 1, 1, 1), -x0 / beta, velocity)

    def interpolation_output(self, noisy: torch.Tensor, condition: torch.Tensor, timestep: int) -> torch.Tensor:
        """The raw output whose clean estimate is the condition itself (thin latents = the interpolated thick
        ones): what a window holding only air gets instead of a U-Net pass (``WindowedNetwork``)."""
        cond = condition / self._view("cond_scale") + self._view("cond_shift")
        x0 = self.diffused(cond, cond)
        alpha = self.scheduler.alphas_cumprod.to(noisy.device)[timestep]
        kind = self.diffusion_config.prediction_type
        if kind == "sample":
            return x0
        if kind == "epsilon":
            return (noisy - alpha**0.5 * x0) / (1 - alpha) ** 0.5
        return (alpha**0.5 * noisy - x0) / (1 - alpha) ** 0.5

    def clean_estimate(self, output: torch.Tensor, noisy: torch.Tensor, timestep: int) -> torch.Tensor:
        """The model's clean-sample estimate x0 from its raw output at ``timestep``."""
        alpha = self.scheduler.alphas_cumprod.to(output.device)[timestep]
        kind = self.diffusion_config.prediction_type
        if kind == "sample":
            return output
        if kind == "epsilon":
            return (noisy - (1 - alpha) ** 0.5 * output) / alpha**0.5
        return alpha**0.5 * noisy - (1 - alpha) ** 0.5 * output


def make_scheduler(config: DiffusionConfig, kind=DDIMScheduler):
    """A MONAI scheduler for this config (DDPM for training noise, DDIM for sampling)."""
    return kind(num_train_timesteps=config.num_train_timesteps, schedule=config.schedule, clip_sample=False,
                prediction_type=config.prediction_type)


def build_model(config: Config, latent_channels: int, device: torch.device | str = "cpu") -> SliceDiffusion:
    """The diffusion model for ``config``; fused (flash) attention where it exists (CUDA, CPU)."""
    flash = uses_flash_attention(config.hardware, torch.device(device).type)
    model = SliceDiffusion(config, latent_channels, flash_attention=flash)
    return model.to(device)
