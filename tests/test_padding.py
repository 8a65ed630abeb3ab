"""``pad_end``: the one padding the codec and the U-Net share (the end of each axis, edge-replicated)."""

from __future__ import annotations

import torch

from ctslice.codecs.base import pad_end


def test_pad_end_replicates_the_last_voxel_of_each_axis_at_its_end_only():
    x = torch.arange(2 * 3 * 5 * 6 * 7, dtype=torch.float32).reshape(2, 3, 5, 6, 7)
    y = pad_end(x, (4, 3, 8))
    assert y.shape == (2, 3, 8, 6, 8)
    assert torch.equal(y[:, :, :5, :, :7], x)  # voxel 0 stays at index 0
    assert torch.equal(y[:, :, 5:, :, :7], x[:, :, -1:].expand(-1, -1, 3, -1, -1))
    assert torch.equal(y[..., 7], y[..., 6])


def test_pad_end_leaves_a_whole_multiple_as_it_is():
    x = torch.randn(1, 1, 8, 4, 4)
    assert pad_end(x, (4, 4, 4)) is x
