"""The denoising U-Net, the conditional diffusion wrapper around it, and sampling over whole volumes."""

from ctslice.models.diffusion import LatentStats, SliceDiffusion, build_model

__all__ = ["LatentStats", "SliceDiffusion", "build_model"]
