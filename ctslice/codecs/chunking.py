"""Running an encoder or decoder along z in chunks, stitched to match the whole-volume result.

Each chunk owns ``chunk`` consecutive slices and runs on a slab that adds ``halo`` slices on each
side (clipped at the volume's ends, where the whole-volume network sees the same zero padding). The
owned part of each output is kept; the halo is thrown away. When the halo covers the network's
receptive field along z, the owned slices see exactly the inputs they see in a whole-volume pass,
and :class:`VolumeGroupNorm` gives every GroupNorm the whole volume's statistics, so the stitched
result equals the whole-volume one up to float rounding. For the MAISI VAE the receptive field
reaches 36 image slices beyond a latent slice's own 4 for the encoder, and 10 latent slices (40
image slices) for the decoder.

Peak memory is that of one slab (``chunk + 2 * halo`` slices), whatever the depth: the whole volume
and the stitched output stay on the input's device, and only one slab is on the network's at a time.
A volume no deeper than one slab is run whole: the same memory, exact, and none of the extra passes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ctslice.codecs.group_norm import StatisticsGathered, VolumeGroupNorm, owned_slice


@dataclass(frozen=True)
class Chunk:
    """Owned slices [start, stop) run on the slab [slab_start, slab_stop), in input slices."""

    start: int
    stop: int
    slab_start: int
    slab_stop: int


def plan_chunks(depth: int, chunk: int, halo: int) -> list[Chunk]:
    """Consecutive chunks of at most ``chunk`` slices, each with ``halo`` slices of context per side.

    A volume no deeper than ``chunk + 2 * halo`` is one chunk: run whole, it needs no more memory
    than one slab, and no gathering passes.
    """
    if chunk < 1 or halo < 0:
        raise ValueError(f"chunk must be >= 1 and halo >= 0, got {chunk} and {halo}")
    if depth <= chunk + 2 * halo:
        return [Chunk(0, depth, 0, depth)]
    return [
        Chunk(start, min(start + chunk, depth), max(0, start - halo), min(depth, start + chunk + halo))
        for start in range(0, depth, chunk)
    ]


def run_in_chunks(
    fn: Callable[[Tensor], Tensor], network: nn.Module, x: Tensor, chunks: list[Chunk], device: torch.device
) -> Tensor:
    """``fn`` applied to ``x`` (B, C, D, H, W) chunk by chunk along D, as if to the whole volume.

    ``network`` is the module whose GroupNorm layers ``fn`` runs (the encoder or the decoder). Slabs
    are moved to ``device`` one at a time; the result is assembled on ``x``'s device.
    """
    norms = VolumeGroupNorm(network)
    with norms.installed():
        if len(chunks) > 1:  # one chunk is the whole volume, whose own statistics are exact
            _gather(fn, norms, x, chunks, device)
        return _stitch(fn, norms, x, chunks, device)


def _gather(
    fn: Callable[[Tensor], Tensor], norms: VolumeGroupNorm, x: Tensor, chunks: list[Chunk], device: torch.device
) -> None:
    """One pass over the chunks per GroupNorm layer, in execution order, each fixing that layer's statistics."""
    norms.gathering = True
    for _ in range(len(norms)):
        for chunk in chunks:
            _enter(norms, chunk)
            try:
                fn(x[:, :, chunk.slab_start : chunk.slab_stop].to(device))
            except StatisticsGathered:
                continue
            raise RuntimeError("a forward pass ran through without meeting an unfrozen GroupNorm layer")
        norms.freeze()
    norms.gathering = False


def _enter(norms: VolumeGroupNorm, chunk: Chunk) -> None:
    norms.enter_chunk(chunk.slab_stop - chunk.slab_start, chunk.start - chunk.slab_start, chunk.stop - chunk.slab_start)


def _stitch(
    fn: Callable[[Tensor], Tensor], norms: VolumeGroupNorm, x: Tensor, chunks: list[Chunk], device: torch.device
) -> Tensor:
    """The final pass: every chunk with frozen statistics, owned outputs written into one tensor."""
    out: Tensor | None = None
    for chunk in chunks:
        _enter(norms, chunk)
        slab_depth = chunk.slab_stop - chunk.slab_start
        y = fn(x[:, :, chunk.slab_start : chunk.slab_stop].to(device))
        # The output is y.shape[2] / slab_depth times as deep as the input (1/4 encoding, 4 decoding).
        keep = owned_slice(chunk.start - chunk.slab_start, chunk.stop - chunk.slab_start, slab_depth, y.shape[2])
        at = owned_slice(chunk.start, chunk.stop, slab_depth, y.shape[2])
        if out is None:
            depth = x.shape[2] * y.shape[2] // slab_depth
            out = torch.empty((*y.shape[:2], depth, *y.shape[3:]), dtype=y.dtype, device=x.device)
        out[:, :, at] = y[:, :, keep]
    return out
