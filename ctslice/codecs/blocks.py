"""Block-wise chunked execution: each top-level block of the network over all chunks before the next.

The slab method (``chunking.run_in_chunks`` on the whole network) is exact but costs many passes:
one per GroupNorm layer, each recomputing the network from its input up to that layer, on slabs
whose halo is the receptive field of the *whole* network (10 latent slices for the MAISI decoder).
Here the network runs block by block instead (MAISI's encoder and decoder are ``nn.ModuleList``s
of blocks applied in sequence). The whole-volume activation at each block boundary is kept on a
*storage* device, and each block runs chunk by chunk on slabs whose halo is only that block's own
receptive field along z (2 slices for a residual block of two 3x3x3 convolutions); its GroupNorm
layers take whole-volume statistics from :class:`VolumeGroupNorm`, whose gathering passes now re-run
one block, not the network. The arithmetic drops from about (1 + GroupNorm layers) x (slab / owned)
of a whole-volume pass to about (1 + GroupNorm layers in a block) x (1 + small halo).

The price is memory on the storage device: the whole-volume input and output of the largest block
(:func:`storage_bytes`). When that does not fit, the codec falls back to the slab method, whose
peak is bounded by the chunk size (see ``strategy.py``).

Halos are derived from each block's layers (:func:`describe`), never assumed; a block whose reach
along z is unbounded or unknown (attention, transposed convolutions) makes :func:`describe_all`
return ``None``, and the codec uses the slab method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch
from monai.apps.generation.maisi.networks.autoencoderkl_maisi import (
    MaisiConvolution,
    MaisiDownsample,
    MaisiResBlock,
    MaisiUpsample,
)
from torch import Tensor, nn

from ctslice.codecs.chunking import plan_chunks, run_in_chunks


@dataclass(frozen=True)
class BlockSpec:
    """A block's reach along z and what it does to the shape.

    ``halo``: input slices of context needed on each side of a chunk (a multiple of ``stride``, so
    that slabs start on the input slices the whole-volume pass samples); ``scale``: output depth /
    input depth (and likewise in-plane); ``out_channels``.
    """

    halo: int
    scale: Fraction
    stride: int
    out_channels: int


def _conv3d(module: nn.Module) -> nn.Conv3d:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv3d)]
    if len(convs) != 1:
        raise ValueError(f"expected one Conv3d in {type(module).__name__}, found {len(convs)}")
    return convs[0]


def _same_conv_reach(conv: nn.Conv3d) -> int:
    """Slices each side a stride-1 convolution with symmetric ("same") padding reads along z."""
    k, d, p, s = conv.kernel_size[0], conv.dilation[0], conv.padding[0], conv.stride[0]
    reach = d * (k - 1) // 2
    if s != 1 or p != reach or isinstance(conv.padding, str):
        raise ValueError(f"not a stride-1 'same' convolution: kernel {k}, stride {s}, padding {p}, dilation {d}")
    return reach


def describe(block: nn.Module) -> BlockSpec:
    """The reach and shape change of one MAISI block, from its layers; ``ValueError`` if not supported.

    - a convolution (kernel k, stride 1, same padding): (k - 1) / 2 slices;
    - a residual block: the sum of its two convolutions' reaches (its GroupNorm and SiLU act per voxel
      once the statistics are fixed; the shortcut is 1x1x1);
    - a GroupNorm: 0;
    - a downsampling (zero-pad one slice at the end, kernel 3, stride 2): output slice j reads input
      slices 2j .. 2j + 2, so one slice beyond the chunk, rounded up to the stride: 2;
    - an upsampling (trilinear x2, align_corners=False, then a same convolution of reach r in the
      upsampled grid): upsampled slice 2i + r reads input slices i + floor((r - 1) / 2) + 1 at most,
      which makes r // 2 + 1 input slices each side.
    """
    if isinstance(block, nn.GroupNorm):
        return BlockSpec(0, Fraction(1), 1, block.num_channels)
    if isinstance(block, MaisiResBlock):
        reach = _same_conv_reach(_conv3d(block.conv1)) + _same_conv_reach(_conv3d(block.conv2))
        return BlockSpec(reach, Fraction(1), 1, block.out_channels)
    if isinstance(block, MaisiDownsample):
        conv = _conv3d(block.conv)
        k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        if (k, s, p, conv.dilation[0]) != (3, 2, 0, 1) or tuple(block.pad[-2:]) != (0, 1):
            raise ValueError("unsupported downsampling layout")
        return BlockSpec(s * math.ceil((k - s) / s), Fraction(1, s), s, conv.out_channels)
    if isinstance(block, MaisiUpsample):
        if block.use_convtranspose:
            raise ValueError("transposed-convolution upsampling is not supported block-wise")
        conv = _conv3d(block.conv)
        return BlockSpec(_same_conv_reach(conv) // 2 + 1, Fraction(2), 1, conv.out_channels)
    if isinstance(block, MaisiConvolution):
        conv = _conv3d(block)
        return BlockSpec(_same_conv_reach(conv), Fraction(1), 1, conv.out_channels)
    raise ValueError(f"{type(block).__name__} has no known reach along z")


def describe_all(blocks: nn.ModuleList) -> list[BlockSpec] | None:
    """Every block's spec, or ``None`` when one of them cannot be run block-wise."""
    try:
        return [describe(block) for block in blocks]
    except ValueError:
        return None


def storage_bytes(specs: list[BlockSpec], in_channels: int, shape: tuple[int, ...], element_size: int) -> int:
    """The most bytes of whole-volume activations held at once: one block's input plus its output.

    ``shape`` is (B, D, H, W) of the network's input; activations are stored in ``element_size`` bytes.
    """
    voxels = math.prod(shape)
    channels, scale, most = in_channels, Fraction(1), 0
    for spec in specs:
        out_scale = scale * spec.scale
        held = channels * voxels * scale**3 + spec.out_channels * voxels * out_scale**3
        most = max(most, math.ceil(held))
        channels, scale = spec.out_channels, out_scale
    return most * element_size


def run_blockwise(
    blocks: nn.ModuleList, specs: list[BlockSpec], x: Tensor, chunk: int, device: torch.device, storage: torch.device
) -> Tensor:
    """``blocks`` applied in sequence to ``x``, each one chunk by chunk along z, with exact results.

    ``chunk`` is in slices of ``x``; it scales with the depth from block to block, so every block
    runs the same number of chunks. Block outputs are kept on ``storage``; slabs run on ``device``.
    """
    h = x.to(storage)
    chunk_at = Fraction(chunk)
    for block, spec in zip(blocks, specs, strict=True):
        if chunk_at.denominator != 1 or chunk_at % spec.stride:
            raise ValueError(f"a chunk of {chunk_at} slices does not fall on the stride of {type(block).__name__}")
        chunks = plan_chunks(h.shape[2], int(chunk_at), spec.halo)
        h = run_in_chunks(block, block, h, chunks, device)
        chunk_at *= spec.scale
    return h
