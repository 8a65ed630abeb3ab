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
    by at least ``overlap`` of it (``ctslice.models.window_plan``), blended with MONAI's ``blend`` weights
    (Gaussian; ``benchmarks/infer_floor.py`` compares constant ones).
    ``tissue``, if given, is a boolean (z, y, x) map on the latent grid: a window with no tissue in it (only
    air) gets ``SliceDiffusion.interpolation_output`` instead of a U-Net pass, so its voxels are the
    interpolation itself (a fifth of the windows of a 512 x 512 chest scan are air around the body).
    ``on_windows(n)``, if given, is told after each batch of ``n`` windows has run (for progress);
    ``windows(shape)`` says how many one evaluation over a latent volume of that shape runs.
    """

    def __init__(self, model: SliceDiffusion, roi: Sequence[int], overlap: float = 0.0625, batch: int = 2,
                 on_windows: Callable[[int], None] | None = None, blend: str = "gaussian",
                 tissue: torch.Tensor | None = None):
        self.model = model
        self.roi = list(roi)
        self.overlap = overlap
        self.batch = batch
        self.on_windows = on_windows
        self.blend = blend
        self.tissue = tissue

    def plan(self, shape: Sequence[int]) -> WindowPlan:
        """Where the windows go over a latent volume of spatial ``shape`` (z, y, x)."""
        return plan_windows(shape, self.roi, self.overlap, self.model.multiple)

    def windows(self, shape: Sequence[int]) -> int:
        """The windows one evaluation runs over a latent volume of spatial ``shape`` (z, y, x)."""
        return self.plan(shape).windows

    def __call__(self, noisy: torch.Tensor, condition: torch.Tensor, timestep: int) -> torch.Tensor:
        plan = self.plan(noisy.shape[2:])
        inferer = SlidingWindowInferer(roi_size=plan.roi, sw_batch_size=self.batch, overlap=plan.overlap,
                                       mode=self.blend, with_coord=True)

        def network(window: torch.Tensor, where: list, condition: torch.Tensor) -> torch.Tensor:
            output = self._evaluate(window, condition, timestep, self._has_tissue(where))
            if self.on_windows:
                self.on_windows(window.shape[0])
            return output

        return inferer(noisy, network, condition=condition)  # MONAI cuts the condition's windows too

    def _has_tissue(self, where: list) -> list[bool]:
        """For each window of a batch (MONAI's slices: batch, channels, z, y, x), whether it holds tissue."""
        if self.tissue is None:
            return [True] * len(where)
        return [bool(self.tissue[tuple(cut[2:])].any()) for cut in where]

    def _evaluate(self, noisy: torch.Tensor, condition: torch.Tensor, timestep: int, tissue: list[bool]):
        rows = [k for k, has in enumerate(tissue) if has]
        if len(rows) == len(tissue):
            return self._unet(noisy, condition, timestep)
        output = self.model.interpolation_output(noisy, condition, timestep)
        if rows:
            output[rows] = self._unet(noisy[rows], condition[rows], timestep)
        return output

    def _unet(self, noisy: torch.Tensor, condition: torch.Tensor, timestep: int) -> torch.Tensor:
        timesteps = torch.full((noisy.shape[0],), timestep, device=noisy.device, dtype=torch.long)
        return self.model(noisy, condition, timesteps)


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
