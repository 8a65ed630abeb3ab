"""GroupNorm with the statistics of the whole volume, gathered chunk by chunk.

GroupNorm normalises each (sample, group) by a mean and variance taken over *all voxels* of the
volume. A chunk normalised with its own statistics comes out brighter or darker than its
neighbours (seams), and on CT the statistics differ a lot along z (air above the head, lungs,
abdomen). MONAI's MAISI network avoids this by never splitting its GroupNorm (its ``num_splits``
only splits convolutions, so it still holds whole-volume activations in memory).

Here each GroupNorm layer's statistics are accumulated over the chunks instead, before the layer is
used: layer k's input depends on the normalisation of layers < k, so the layers are gathered in
order, one pass over the chunks per layer, each pass running the network only up to that layer
(:class:`StatisticsGathered` stops it there). Each chunk contributes only the slices it owns (its
halo belongs to its neighbours), so every voxel counts exactly once; per-chunk moments are merged
in float64 with Chan's formula. Memory stays bounded by one chunk; the price is the extra passes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import torch
from torch import Tensor, nn


def owned_slice(start: int, stop: int, slab_depth: int, depth: int) -> slice:
    """Slices [start, stop) of a ``slab_depth``-slice input, at a layer or output ``depth`` slices deep.

    The networks change depth by whole factors (1/4 ... 4), and chunks are aligned to the
    compression, so the owned range always falls on whole slices; anything else is a planning bug.
    """
    if (start * depth) % slab_depth or (stop * depth) % slab_depth:
        raise RuntimeError(
            f"chunk bounds [{start}, {stop}) of a {slab_depth}-slice slab do not fall on whole slices "
            f"at depth {depth}; chunks must be aligned to the network's compression"
        )
    return slice(start * depth // slab_depth, stop * depth // slab_depth)


class StatisticsGathered(Exception):
    """Raised by the layer being gathered to end a forward pass that has nothing more to compute."""


class VolumeGroupNorm:
    """Runs every ``nn.GroupNorm`` inside ``network`` with statistics gathered over a whole volume.

    Use: ``with norms.installed():`` then, with ``gathering`` set, one pass per layer: every chunk is
    run after :meth:`enter_chunk` and stops with :class:`StatisticsGathered` at the first layer (in
    execution order) whose statistics are not known yet, and :meth:`freeze` fixes them. Then, with
    ``gathering`` unset, the chunks run to the end; a layer never gathered normalises with the
    statistics of its own input, which is exact when one chunk is the whole volume. This replaces
    MONAI's MAISI GroupNorm in every run, which also avoids its device-to-host round trip for
    tensors with a side of 500 or more. Outside ``installed()`` the network is untouched.
    """

    def __init__(self, network: nn.Module) -> None:
        self.norms = [m for m in network.modules() if isinstance(m, nn.GroupNorm)]
        self.gathering = False
        self._frozen: dict[int, tuple[Tensor, Tensor]] = {}
        self._gathered_layer: int | None = None
        self._moments: tuple[int, Tensor, Tensor] | None = None
        self._slab_depth = 0
        self._owned = (0, 0)

    def __len__(self) -> int:
        return len(self.norms)

    @contextmanager
    def installed(self) -> Iterator[VolumeGroupNorm]:
        """Swaps each GroupNorm's ``forward`` for the whole-volume one, and restores it on exit."""
        for index, norm in enumerate(self.norms):
            norm.forward = partial(self._forward, index)
        try:
            yield self
        finally:
            for norm in self.norms:
                del norm.forward

    def enter_chunk(self, slab_depth: int, owned_start: int, owned_stop: int) -> None:
        """The next forward runs on a slab of ``slab_depth`` slices, of which [start, stop) are its own."""
        self._slab_depth = slab_depth
        self._owned = (owned_start, owned_stop)

    def freeze(self) -> None:
        """Ends a gathering pass: its layer now normalises with the whole-volume mean and variance."""
        if self._moments is None:
            raise RuntimeError("no chunk reached a GroupNorm layer in this gathering pass")
        count, mean, m2 = self._moments
        self._frozen[self._gathered_layer] = (mean.float(), (m2 / count).float())
        self._gathered_layer = None
        self._moments = None

    def _accumulate(self, index: int, grouped: Tensor) -> None:
        if self._gathered_layer not in (None, index):
            raise RuntimeError(f"chunks reached different GroupNorm layers first ({self._gathered_layer}, {index})")
        self._gathered_layer = index
        owned = grouped[:, :, :, owned_slice(*self._owned, self._slab_depth, grouped.shape[3])].float()
        var, mean = torch.var_mean(owned, dim=(2, 3, 4, 5), correction=0)
        count = owned[0, 0].numel()
        mean, m2 = mean.double(), var.double() * count
        if self._moments is None:
            self._moments = (count, mean, m2)
            return
        total_count, total_mean, total_m2 = self._moments
        merged = total_count + count
        delta = mean - total_mean
        self._moments = (
            merged,
            total_mean + delta * (count / merged),
            total_m2 + m2 + delta.square() * (total_count * count / merged),
        )

    def _forward(self, index: int, x: Tensor) -> Tensor:
        norm = self.norms[index]
        n, c = x.shape[:2]
        grouped = x.reshape(n, norm.num_groups, c // norm.num_groups, *x.shape[2:])
        per_group = (n, norm.num_groups, 1, 1, 1, 1)
        if index in self._frozen:
            mean, var = self._frozen[index]
        elif self.gathering:
            self._accumulate(index, grouped)
            raise StatisticsGathered
        else:
            var, mean = torch.var_mean(grouped.float(), dim=(2, 3, 4, 5), correction=0)
        out = grouped.float() - mean.view(per_group)  # a new tensor: x itself is still needed by the residual
        out.mul_(torch.rsqrt(var + norm.eps).view(per_group))
        out = out.view(x.shape)
        if norm.affine:
            out.mul_(norm.weight.view(1, c, 1, 1, 1)).add_(norm.bias.view(1, c, 1, 1, 1))
        if getattr(norm, "norm_float16", False):  # MAISI's CUDA option: GroupNorm output in fp16
            out = out.half()
        return out
