"""Where the inference windows go: as few windows as cover a volume with a given overlap.

Every voxel a window computes twice is paid for in convolutions: MONAI's own rule (a fixed window and
a scan interval of ``window * (1 - overlap)``, the last window pushed back to the volume's end) ran
each output voxel of a 512 x 512 x 320 scan about 6.6 times at an overlap of 0.5, and even at a small
overlap a fixed window leaves a last window that mostly repeats its neighbour (512 pixels in windows
of 128 with 8 of overlap take 5 windows, not 4). Instead, per axis: the fewest windows of at most the
largest size that still overlap by at least ``overlap`` of it, then the smallest window (a multiple of
what the U-Net accepts) that lets that many cover the axis. The result is handed to MONAI's
``SlidingWindowInferer`` as a window size and a per-axis overlap fraction that its rule turns back
into exactly these windows.

Why any overlap at all: GroupNorm statistics and the middle block's self-attention are taken over the
whole window, and a window's border sees zero padding, so two windows disagree slightly where they
meet; blending them over the overlap hides the step (``benchmarks/infer_floor.py`` measures the
slice-to-slice profile across window borders).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class WindowPlan:
    """Windows for one volume: their size and the overlap fraction to give MONAI, per axis, and their count."""

    roi: tuple[int, ...]
    overlap: tuple[float, ...]
    counts: tuple[int, ...]

    @property
    def windows(self) -> int:
        return math.prod(self.counts)


def plan_axis(size: int, largest: int, overlap: float, multiple: int) -> tuple[int, float, int]:
    """(window, MONAI overlap fraction, count) along one axis of ``size`` voxels.

    ``largest`` is the biggest window allowed (a multiple of ``multiple``), ``overlap`` the least overlap
    between neighbours as a fraction of ``largest``.
    """
    if size <= largest:
        return size, 0.0, 1
    least = math.ceil(overlap * largest)
    count = math.ceil((size - least) / (largest - least)) if least < largest else size
    window = min(largest, _round_up(math.ceil((size + (count - 1) * least) / count), multiple))
    interval = math.ceil((size - window) / (count - 1))
    # MONAI's interval is int(window * (1 - fraction)); half a voxel above the wanted one survives the int()
    return window, max(0.0, 1.0 - (interval + 0.5) / window), count


def plan_windows(shape: Sequence[int], largest: Sequence[int], overlap: float, multiple: int) -> WindowPlan:
    """The windows over a volume of spatial ``shape`` (z, y, x), each axis planned by :func:`plan_axis`."""
    axes = [plan_axis(s, w, overlap, multiple) for s, w in zip(shape, largest, strict=True)]
    return WindowPlan(tuple(a[0] for a in axes), tuple(a[1] for a in axes), tuple(a[2] for a in axes))


def covered_by(count: int, window: int, overlap: float) -> int:
    """The axis length that :func:`plan_axis` tiles with exactly ``count`` windows of the largest size
    ``window`` (neighbours overlapping by the least overlap): for tracing a run's largest windows."""
    return count * window - (count - 1) * math.ceil(overlap * window)


def _round_up(value: int, multiple: int) -> int:
    return math.ceil(value / multiple) * multiple
