"""The consistency correction: the corrected thin volume, slab-averaged, gives back the thick input, and the
correction is smooth (no step at slab borders, unlike adding each slab's residual as a constant)."""

from __future__ import annotations

import numpy as np
import pytest

from ctslice.data.pairs import slab_average
from ctslice.inference.consistency import make_consistent, slab_of_thin_slices


def random_pair(ratio=5, slabs=6, size=(7, 9), seed=0):
    generator = np.random.default_rng(seed)
    thin = generator.normal(0, 300, (ratio * slabs, *size)).astype(np.float32)
    thick = generator.normal(0, 300, (slabs, *size)).astype(np.float32)
    return thin, thick


def test_the_corrected_volume_slab_averages_back_to_the_input():
    thin, thick = random_pair()
    before = np.abs(slab_average(thin, 5, 5) - thick).mean()
    corrected = make_consistent(thin.copy(), thick, 1.0, 5.0)
    assert before > 100
    np.testing.assert_allclose(slab_average(corrected, 5, 5), thick, atol=1e-2)


def test_it_corrects_in_place_and_refuses_arrays_it_could_not():
    thin, thick = random_pair()
    assert make_consistent(thin, thick, 1.0, 5.0) is thin
    np.testing.assert_allclose(slab_average(thin, 5, 5), thick, atol=1e-2)
    for wrong in (thin.astype(np.float64), thin[:, :, ::2], thin[:, :4]):
        with pytest.raises(ValueError, match="C-contiguous float32"):
            make_consistent(wrong, thick[:, :, ::2] if wrong.shape[2] != thick.shape[2] else thick, 1.0, 5.0)


def test_a_volume_that_already_explains_the_input_is_left_alone():
    thin, _ = random_pair()
    thick = slab_average(thin, 5, 5)
    np.testing.assert_allclose(make_consistent(thin.copy(), thick, 1.0, 5.0), thin, atol=1e-2)


def test_the_correction_is_linear_between_slab_centres_not_a_staircase():
    """A residual that grows along z is corrected by a ramp: equal slice-to-slice steps from one slab centre to
    the next, across the slab border midway between them (a per-slab constant would jump at that border)."""
    ratio, slabs = 5, 6
    thin = np.zeros((ratio * slabs, 2, 2), np.float32)
    thick = np.broadcast_to((10.0 * np.arange(slabs))[:, None, None], (slabs, 2, 2)).astype(np.float32)
    corrected = make_consistent(thin, thick, 1.0, 5.0)[:, 0, 0]
    centres = ratio * np.arange(slabs) + (ratio - 1) // 2
    for first, last in zip(centres[:-1], centres[1:], strict=True):
        steps = np.diff(corrected[first: last + 1])
        assert steps.min() > 1.5
        np.testing.assert_allclose(steps, steps[0], atol=1e-3)
    np.testing.assert_allclose(slab_average(corrected[:, None, None], 5, 5)[:, 0, 0], thick[:, 0, 0], atol=1e-3)


def test_a_ratio_that_is_not_whole_uses_the_slices_inside_each_slab():
    """5 mm slabs on a 1.5 mm grid: each slab's own thin slices (by centre position) average to its value."""
    thin_spacing, thick_spacing, slabs = 1.5, 5.0, 6
    depth = int(np.floor(slabs * thick_spacing / thin_spacing))
    generator = np.random.default_rng(3)
    thin = generator.normal(0, 100, (depth, 3, 3)).astype(np.float32)
    thick = generator.normal(0, 100, (slabs, 3, 3)).astype(np.float32)
    slab = slab_of_thin_slices(depth, slabs, thin_spacing, thick_spacing)
    assert list(np.bincount(slab)) == [3, 4, 3, 3, 4, 3]  # centres (k + 1/2) 1.5 mm in [5 i, 5 i + 5)
    make_consistent(thin, thick, thin_spacing, thick_spacing)
    for index in range(slabs):
        np.testing.assert_allclose(thin[slab == index].mean(axis=0), thick[index], atol=1e-2)
