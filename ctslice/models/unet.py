"""MONAI's ``DiffusionModelUNet`` (3D) configured for conditional slice interpolation.

The thick-slice condition enters by channel concatenation: the U-Net sees the noisy thin latents and
the condition latents side by side, so its input has twice the latent channels. MONAI's U-Net has no
gradient checkpointing of its own; ``enable_gradient_checkpointing`` wraps each down, middle and up
block's forward in ``torch.utils.checkpoint`` without renaming any parameter, so checkpoints load
whether it was on or off.
"""

from __future__ import annotations

import functools
import math

import torch
from monai.networks.nets import DiffusionModelUNet
from torch.utils.checkpoint import checkpoint

from ctslice.config import Config, HardwareConfig, ModelConfig

# Tokens MONAI's middle-block self-attention may see in one inference window: without flash attention
# its memory grows with the square of the count (a 64 x 128 x 128 latent window needed 8 GB); with it
# (CUDA and CPU), its arithmetic still does, so the cap bounds the share of the window spent there.
MAX_ATTENTION_TOKENS = {False: 4096, True: 65536}  # without / with flash attention


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


def uses_flash_attention(hardware: HardwareConfig, device_type: str) -> bool:
    """Fused attention (``scaled_dot_product_attention``) where the config asks for it, on CUDA and on the CPU.

    PyTorch's CPU kernel is a flash attention too: memory linear in the tokens and the same answer as
    MONAI's einsum path to float rounding (2e-6 on the bundled model), in about half the time; without it
    the middle block's token x token matrices were 44% of a CPU window and capped windows at 4,096 tokens.
    """
    return hardware.flash_attention and device_type in ("cuda", "cpu")


def padded_size(config: ModelConfig, size: tuple[int, ...]) -> tuple[int, ...]:
    """A latent size as the U-Net runs it: each axis padded up to ``size_multiple``."""
    multiple = size_multiple(config)
    return tuple(math.ceil(n / multiple) * multiple for n in size)


def attention_tokens(size: tuple[int, ...], level: int) -> int:
    """Voxels (attention tokens) of a padded latent ``size`` at U-Net ``level`` (one halving per level)."""
    return math.prod(size) // 8**level


def latent_window(config: Config, compression: tuple[int, int, int], flash_attention: bool) -> tuple[int, int, int]:
    """The inference window in latent voxels: configured pixels / codec compression, rounded to what the
    U-Net accepts, then shrunk (largest side first) until the middle block's attention sees at most
    ``MAX_ATTENTION_TOKENS`` (MONAI's U-Net always has self-attention there, over the whole window)."""
    multiple, levels = size_multiple(config.model), len(config.model.channels)
    window = config.inference
    sizes = (window.window_slices / compression[0], window.window_size / compression[1],
             window.window_size / compression[2])
    roi = [max(multiple, int(math.ceil(s / multiple)) * multiple) for s in sizes]
    while attention_tokens(roi, levels - 1) > MAX_ATTENTION_TOKENS[flash_attention]:
        largest = max(range(3), key=lambda k: roi[k])
        roi[largest] -= multiple
    return tuple(roi)
