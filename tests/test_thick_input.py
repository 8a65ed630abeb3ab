"""Figures of thin outputs made from thick scans without a thin truth (``ctslice.evaluation.thick_input``)."""

from __future__ import annotations

import numpy as np
import pytest

from ctslice.errors import InputError
from ctslice.evaluation.thick_input import slab_consistency, slab_periodicity, through_plane_change

RATIO = 5


def ramp(depth: int = 40, slope: float = 3.0) -> np.ndarray:
    """Soft tissue rising ``slope`` HU per thin slice: anatomy that knows nothing of the slab grid."""
    return np.broadcast_to((np.arange(depth) * slope)[:, None, None], (depth, 20, 20)).astype(np.float32).copy()


def test_a_volume_that_ignores_the_slab_grid_scores_one_and_its_slope_as_change():
    volume = ramp()
    assert slab_periodicity(volume, RATIO) == pytest.approx(1.0)
    assert through_plane_change(volume, RATIO) == pytest.approx(3.0)


def test_steps_at_slab_borders_raise_the_ratio_by_their_size():
    """A ramp plus a step of 6 HU at every slab border: border pairs change 3 + 6, inside pairs 3."""
    volume = ramp() + 6.0 * (np.arange(40) // RATIO)[:, None, None]
    assert slab_periodicity(volume, RATIO) == pytest.approx(3.0)
    # in the measured range (thick centres 2 to 37: 35 pairs) 7 pairs straddle a border
    assert through_plane_change(volume, RATIO) == pytest.approx((7 * 9 + 28 * 3) / 35)


def test_only_body_pairs_in_the_central_region_count():
    volume = ramp() + 6.0 * (np.arange(40) // RATIO)[:, None, None]
    volume[:, :, :4] = (-1000 + 500 * (np.arange(40) % 2))[:, None, None]  # air columns outside the central 60 %
    air = volume.copy()
    air[:, 4:16, 4:16] = -1000.0  # ... and air everywhere measured but one column
    air[:, 10, 10] = volume[:, 10, 10]
    assert slab_periodicity(volume, RATIO) == pytest.approx(3.0)
    assert slab_periodicity(air, RATIO) == pytest.approx(3.0)
    with pytest.raises(InputError, match="no body voxels"):
        slab_periodicity(np.full((40, 20, 20), -1000.0), RATIO)


def test_an_output_whose_slab_means_are_the_input_is_consistent_and_an_offset_shows():
    thick = np.random.default_rng(0).uniform(-900, 1500, (8, 6, 6)).astype(np.float32)
    thin = np.repeat(thick, RATIO, axis=0) + np.tile([-2.0, -1.0, 0.0, 1.0, 2.0], 8)[:, None, None]
    assert slab_consistency(thin, thick, RATIO) == pytest.approx(0.0, abs=1e-4)
    assert slab_consistency(thin + 7.0, thick, RATIO) == pytest.approx(7.0, abs=1e-4)
    with pytest.raises(InputError, match="is not 5 slices per thick slice"):
        slab_consistency(thin[:-1], thick, RATIO)


def test_fewer_than_two_slabs_are_refused():
    with pytest.raises(InputError, match="at least two slabs"):
        slab_periodicity(ramp(depth=7), RATIO)
