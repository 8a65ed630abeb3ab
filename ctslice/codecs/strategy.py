"""Which chunked execution a codec call uses, where its activations live, and how big its chunks are.

Two exact methods (both equal the whole-volume pass up to float rounding):

- ``blocks`` (``blocks.py``): fast (about (1 + GroupNorms per block) x (1 + small halo) of a
  whole-volume pass), but it holds the whole-volume input and output of one block at a time on a
  *storage* device: the network's device when they fit there next to the slab, else host memory.
- ``slabs`` (``chunking.py``, the whole network per slab): many passes, but its peak is bounded by
  the chunk size whatever the depth. Used when the block-wise activations would not fit the budget
  of any storage device (a 250 x 512 x 512 decode holds 2 x 16.8 GB in float32), when a block's
  reach along z is unknown, or when asked for.

Chunk sizes: on CPU (and on the meta device the memory model traces on) the configured ones. On
CUDA the block-wise chunk is the largest the free device memory holds (``torch.cuda.mem_get_info``),
never below the configured one; the slab method keeps the configured chunk, whose peak the configs
were sized for.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch

from ctslice.codecs.blocks import BlockSpec, storage_bytes

STRATEGIES = ("auto", "blocks", "slabs")
HOST_FRACTION = 0.5  # of the available host memory that whole-volume activations may take
DEVICE_FRACTION = 0.8  # of the free CUDA memory that activations and slab work may take
# A block's working memory on a slab, in float32 copies of its input plus output activation: the slab
# itself, the GroupNorm output (float32), SiLU and convolution outputs, the residual sum.
WORK_FACTOR = 3


@dataclass(frozen=True)
class Plan:
    """``blockwise`` with activations on ``storage``, else the slab method; ``chunk`` at the input's depth."""

    blockwise: bool
    storage: torch.device
    chunk: int
    reason: str


def host_available_bytes() -> int:
    """Host memory this process may still use: the kernel's MemAvailable, capped by a cgroup v2 limit."""
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(0, available)


def work_bytes(specs: list[BlockSpec], in_channels: int, shape: tuple[int, ...], chunk: int) -> int:
    """Estimated working memory of the largest block on one slab of ``chunk`` input slices (float32)."""
    batch, depth, plane = shape[0], shape[1], math.prod(shape[2:])
    channels, scale, most = in_channels, Fraction(1), 0
    for spec in specs:
        slab = min(depth * scale, chunk * scale + 2 * spec.halo)
        held = (channels + spec.out_channels * spec.scale**3) * slab * plane * scale**2 * batch
        most = max(most, math.ceil(held))
        channels, scale = spec.out_channels, scale * spec.scale
    return WORK_FACTOR * 4 * most


def plan(
    specs: list[BlockSpec] | None,
    in_channels: int,
    shape: tuple[int, ...],
    chunk: int,
    device: torch.device,
    *,
    strategy: str = "auto",
    budget: int | None = None,
    align: int = 1,
) -> Plan:
    """The execution for an input of ``shape`` (B, D, H, W) with ``in_channels`` channels on ``device``.

    ``budget`` (bytes) caps the memory the codec may take on ``device``: on a CPU, the block-wise
    activations (default: half the available memory); on CUDA, those activations plus the slab work
    (default: 80 % of the free memory; a budget never raises that). ``align`` is what the block-wise
    chunk must be a multiple of (the network's compression along z).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if specs is None or strategy == "slabs":
        why = "asked for" if strategy == "slabs" else "a block's reach along z is unknown"
        return Plan(False, device, chunk, f"whole network per slab ({why})")
    element = 2 if device.type == "cuda" else 4  # fp16 autocast on CUDA, as the codec runs
    need = storage_bytes(specs, in_channels, shape, element)
    if device.type == "cuda":
        room = int(torch.cuda.mem_get_info(device)[0] * DEVICE_FRACTION)
        room = room if budget is None else min(room, budget)
        if room - need >= work_bytes(specs, in_channels, shape, chunk):
            return Plan(True, device, _largest_chunk(specs, in_channels, shape, chunk, room - need, align), "")
        if strategy == "blocks" or need <= int(host_available_bytes() * HOST_FRACTION):  # host memory holds them
            return Plan(True, torch.device("cpu"), _largest_chunk(specs, in_channels, shape, chunk, room, align), "")
    elif device.type == "meta" or strategy == "blocks":
        return Plan(True, device, chunk, "")
    elif need <= (budget if budget is not None else int(host_available_bytes() * HOST_FRACTION)):
        return Plan(True, device, chunk, "")
    return Plan(False, device, chunk, f"whole network per slab (block-wise activations need {need / 2**30:.1f} GiB)")


def _largest_chunk(specs, in_channels, shape, chunk, room: int, align: int) -> int:
    """The deepest aligned chunk, up to the whole depth, whose slab work fits ``room``; at least ``chunk``."""
    best, candidate = chunk, chunk
    depth = shape[1]
    while candidate < depth and work_bytes(specs, in_channels, shape, candidate + align) <= room:
        candidate += align
        best = candidate
    return best
