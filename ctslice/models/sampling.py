"""Denoising whole volumes: the mean estimate and DDIM samples, over overlapping latent windows.

Long volumes do not fit the U-Net at once. Every network evaluation runs MONAI's
``SlidingWindowInferer`` over the whole latent volume (as few overlapping windows as
``ctslice.models.window_plan`` finds, Gaussian blending), and
the sampler steps the whole volume at once: one noise field for the whole volume and blending at every
denoising step, so that neighbouring windows agree and leave no seams.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.inferers import SlidingWindowInferer

from ctslice.models.diffusion import SliceDiffusion, make_scheduler
from ctslice.models.window_plan import WindowPlan, plan_windows


class WindowedNetwork:
    """The diffusion U-Net evaluated over a whole latent volume in blended windows.

    ``roi`` is the largest window; each volume gets the fewest windows of at most that size that overlap
    by at least ``overlap`` of it (``ctslice.models.window_plan``), blended with Gaussian weights.
    ``on_windows(n)``, if given, is told after each batch of ``n`` windows has run (for progress);
    ``windows(shape)`` says how many one evaluation over a latent volume of that shape runs.
    """

    def __init__(self, model: SliceDiffusion, roi: Sequence[int], overlap: float = 0.125, batch: int = 1,
                 on_windows: Callable[[int], None] | None = None, blend: str = "gaussian"):
        self.model = model
        self.roi = list(roi)
        self.overlap = overlap
        self.batch = batch
        self.on_windows = on_windows
        self.blend = blend

    def plan(self, shape: Sequence[int]) -> WindowPlan:
        """Where the windows go over a latent volume of spatial ``shape`` (z, y, x)."""
        return plan_windows(shape, self.roi, self.overlap, self.model.multiple)

    def windows(self, shape: Sequence[int]) -> int:
        """The windows one evaluation runs over a latent volume of spatial ``shape`` (z, y, x)."""
        return self.plan(shape).windows

    def __call__(self, noisy: torch.Tensor, condition: torch.Tensor, timestep: int) -> torch.Tensor:
        channels = noisy.shape[1]
        plan = self.plan(noisy.shape[2:])
        inferer = SlidingWindowInferer(roi_size=plan.roi, sw_batch_size=self.batch, overlap=plan.overlap,
                                       mode=self.blend)

        def network(window: torch.Tensor) -> torch.Tensor:
            timesteps = torch.full((window.shape[0],), timestep, device=window.device, dtype=torch.long)
            output = self.model(window[:, :channels], window[:, channels:], timesteps)
            if self.on_windows:
                self.on_windows(window.shape[0])
            return output

        return inferer(torch.cat([noisy, condition], dim=1), network)


@torch.no_grad()
def mean_estimate(model: SliceDiffusion, cond: torch.Tensor, network: WindowedNetwork) -> torch.Tensor:
    """Thin latents of the posterior mean: one pass at the last timestep with an all-zero noisy input."""
    condition = model.condition(cond)
    noisy = torch.zeros_like(condition)
    output = network(noisy, condition, model.last_timestep)
    return model.undiffused(model.clean_estimate(output, noisy, model.last_timestep), cond)


@torch.no_grad()
def ddim_sample(model: SliceDiffusion, cond: torch.Tensor, steps: int, generator: torch.Generator,
                network: WindowedNetwork) -> torch.Tensor:
    """Thin latents of one DDIM sample (deterministic for the generator's seed)."""
    scheduler = make_scheduler(model.diffusion_config)
    scheduler.set_timesteps(steps)
    condition = model.condition(cond)
    sample = torch.randn(condition.shape, generator=generator, device="cpu").to(condition.device, condition.dtype)
    for timestep in scheduler.timesteps:
        output = network(sample, condition, int(timestep))
        sample, _ = scheduler.step(output, int(timestep), sample)
    return model.undiffused(sample, cond)
