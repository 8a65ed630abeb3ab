"""Pair building: simulated thick slices sit at their slab centres; real pairs match by physical z."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from ctslice.data.pairs import real_pair, simulate_pair
from ctslice.errors import InputError
from ctslice.io.geometry import resample, resample_inplane, thin_grid
from ctslice.io.volume import Volume

OBLIQUE = tuple(sitk.VersorTransform((0.2, 0.1, 1.0), 0.4).GetMatrix())


def ramp_volume(depth=40, spacing_z=1.0, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), origin=(-20.0, -30.0, 100.0)):
    """HU that encode the slice index (so averaging and positions can be checked exactly) plus air/tissue."""
    z = np.arange(depth, dtype=np.float32)[:, None, None]
    array = np.broadcast_to(10.0 * z, (depth, 12, 16)).copy()
    array[:, :2, :] = -1000.0
    return Volume(array.astype(np.int16), (0.8, 0.8, spacing_z), origin, tuple(float(d) for d in direction))


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), OBLIQUE])
def test_simulated_thick_slices_average_their_slab_at_its_centre(direction):
    thin = ramp_volume(direction=direction)
    pair = simulate_pair(thin, thick_spacing=5.0, thin_spacing=1.0)
    assert pair.kind == "simulated" and pair.ratio == 5
    assert pair.thick.depth == 8 and pair.thin.depth == 40
    # thick slice i averages thin slices 5i..5i+4 -> value 10 * (5i + 2)
    np.testing.assert_array_equal(pair.thick.array[:, 5, 5], 10 * (5 * np.arange(8) + 2))
    # its centre is the mean position of those thin slices
    thin_positions = pair.thin.grid.slice_positions()
    np.testing.assert_allclose(pair.thick.grid.slice_positions(), thin_positions.reshape(8, 5).mean(1), atol=1e-9)
    # and its slab [c - T/2, c + T/2] is exactly the extent of the 5 thin slices
    np.testing.assert_allclose(pair.thick.grid.slice_positions() - 2.5, thin_positions[::5] - 0.5, atol=1e-9)
    # the thin volume lies on the grid that inference will produce from the thick one
    expected = thin_grid(pair.thick.grid, 1.0)
    assert pair.thin.grid.size == expected.size
    np.testing.assert_allclose(pair.thin.origin, expected.origin, atol=1e-9)
    assert pair.thick.direction == pair.thin.direction == thin.direction


def test_simulated_pair_matches_the_independent_reference(shared_ct, tmp_path):
    """The shared reference simulator (not our code) produces the same thick volume and origin."""
    source = shared_ct / "head_ct8800_1p5mm.nii.gz"
    reference = tmp_path / "thick.nii.gz"
    tool = shared_ct.parents[1] / "tools" / "make_thick.py"
    subprocess.run([sys.executable, str(tool), str(source), str(reference), "5"], check=True)
    expected = Volume.from_image(sitk.ReadImage(str(reference)))
    thin = Volume.from_image(sitk.ReadImage(str(source)))
    pair = simulate_pair(thin.with_array(thin.array.astype(np.int16)), thick_spacing=7.5, thin_spacing=1.5)
    np.testing.assert_allclose(pair.thick.origin, expected.origin, atol=1e-4)
    assert np.abs(pair.thick.array.astype(int) - expected.array.astype(int)).max() <= 1  # rounding only


def test_simulation_resamples_thin_scans_to_the_thin_spacing():
    thin = ramp_volume(depth=31, spacing_z=2.0)
    pair = simulate_pair(thin, thick_spacing=5.0, thin_spacing=1.0)
    assert pair.thin.spacing[2] == 1.0
    assert pair.thin.depth == 60  # 61 samples over 60 mm, cropped to whole slabs
    np.testing.assert_allclose(pair.thin.array[:7, 5, 5], 5 * np.arange(7), atol=1)  # linear in between


def test_gaussian_profile_is_centred():
    pair = simulate_pair(ramp_volume(depth=50), thick_spacing=5.0, thin_spacing=1.0, profile="gaussian")
    # on a linear ramp a symmetric profile returns the value at the centre (away from the ends)
    np.testing.assert_allclose(pair.thick.array[2:-2, 5, 5], 10 * (5 * np.arange(2, 8) + 2), atol=1)


@pytest.mark.parametrize("thick, thin, message", [(5.0, 2.0, "integer multiple"), (5.0, 1.0, "too thick")])
def test_simulation_rejects(thick, thin, message):
    with pytest.raises(InputError, match=message):
        simulate_pair(ramp_volume(spacing_z=3.0), thick_spacing=thick, thin_spacing=thin)


def test_real_pair_is_matched_by_physical_z_and_cropped_to_the_common_extent():
    truth = ramp_volume(depth=60, direction=OBLIQUE)
    simulated = simulate_pair(truth, 5.0, 1.0)
    # a thin series that covers only thin slices 7..49 and a thick series covering everything
    thin_series = truth.slices(7, 50)
    pair = real_pair(simulated.thick, thin_series, thin_spacing=1.0)
    assert pair.kind == "real"
    # thick slabs 2..9 (thin 10..49) are fully covered by thin slices 7..49; slab 1 (thin 5..9) is not
    np.testing.assert_allclose(pair.thick.grid.slice_positions(), simulated.thick.grid.slice_positions()[2:10])
    np.testing.assert_array_equal(pair.thin.array, truth.array[10:50])
    np.testing.assert_allclose(pair.thin.origin, truth.slices(10, 11).origin, atol=1e-6)


def test_real_pair_from_different_scans_is_rejected():
    truth = ramp_volume(depth=60)
    thick = simulate_pair(truth, 5.0, 1.0).thick
    shifted = truth.with_array(truth.array, origin=(truth.origin[0], truth.origin[1], truth.origin[2] + 500.0))
    with pytest.raises(InputError, match="overlap"):
        real_pair(thick, shifted, thin_spacing=1.0, min_slices=2)
    rng = np.random.default_rng(0)
    other = truth.with_array(rng.integers(-1000, 1000, truth.array.shape).astype(np.int16))
    with pytest.raises(InputError, match="same anatomy"):
        real_pair(thick, other, thin_spacing=1.0)


def test_inplane_resampling_keeps_the_field_of_view_centred():
    volume = ramp_volume(depth=4)
    square = resample_inplane(volume, 20)
    assert square.array.shape == (4, 20, 20)
    assert square.spacing[0] == pytest.approx(16 * 0.8 / 20)
    centre = lambda v: v.to_image().TransformContinuousIndexToPhysicalPoint(  # noqa: E731
        [(s - 1) / 2 for s in v.to_image().GetSize()])
    np.testing.assert_allclose(centre(square), centre(volume), atol=1e-6)
    back = resample(square, volume.grid, "linear")
    np.testing.assert_allclose(back.array[:, 4:-4, 3:-3], volume.array[:, 4:-4, 3:-3], atol=40)
