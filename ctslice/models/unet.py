"""MONAI's ``DiffusionModelUNet`` (3D) configured for conditional slice interpolation.

The thick-slice condition enters by channel concatenation: the U-Net sees the noisy thin latents and
the condition latents side by side, so its input has twice the latent channels. MONAI's U-Net has no
gradient checkpointing of its own; ``enable_gradient_checkpointing`` wraps each down, middle and up
block's forward in ``torch.utils.checkpoint`` without renaming any parameter, so checkpoints load
whether it was on or off.
"""

from __future__ import annotations

import functools

import torch
from monai.networks.nets import DiffusionModelUNet
from torch.utils.checkpoint import checkpoint

from ctslice.config import ModelConfig


def build_unet(config: ModelConfig, latent_channels: int, flash_attention: bool = False) -> DiffusionModelUNet:
    unet = DiffusionModelUNet(
        spatial_dims=3,
        in_channels=2 * latent_channels,
        out_channels=latent_channels,
        num_res_blocks=config.num_res_blocks,
        channels=list(config.channels),
        attention_levels=list(config.attention_levels),
        norm_num_groups=config.norm_num_groups,
        num_head_channels=[c // config.attention_heads for c in config.channels],
        use_flash_attention=flash_attention,
    )
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(unet)
    return unet


def enable_gradient_checkpointing(unet: DiffusionModelUNet) -> None:
    """Recompute each block's activations in the backward pass instead of storing them."""
    for block in [*unet.down_blocks, unet.middle_block, *unet.up_blocks]:
        block.forward = functools.partial(_checkpointed, block, block.forward)


def _checkpointed(block: torch.nn.Module, forward, *args, **kwargs):
    if block.training and torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def size_multiple(config: ModelConfig) -> int:
    """Spatial sizes the U-Net accepts are multiples of this (one halving per level but the last)."""
    return 2 ** (len(config.channels) - 1)
