"""The synthetic chest phantom: CT-like tissues, seeded patients, anatomy in mm, detail along z."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from ctslice.data.phantom import ct_noise, make_phantom
from ctslice.io.geometry import resample

SHAPE = (40, 128, 128)
SPACING = (3.0, 3.0, 1.0)  # 384 mm in-plane: the whole body fits


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(SHAPE, SPACING, seed=0)


@pytest.fixture(scope="module")
def clean():
    return make_phantom(SHAPE, SPACING, seed=0, noise_hu=0)


def _mode(values: np.ndarray, lo: float, hi: float, width: float = 10.0) -> float:
    """Centre of the most populated histogram bin of the values within [lo, hi)."""
    counts, edges = np.histogram(values, bins=np.arange(lo, hi + width, width))
    return float(edges[counts.argmax()] + width / 2)


def test_shape_dtype_and_geometry(phantom):
    assert phantom.array.shape == SHAPE
    assert phantom.array.dtype == np.int16
    assert phantom.spacing == SPACING
    assert phantom.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    # centred field of view: voxel (0, 0, 0) sits half the extent before the patient axis and z = 0
    assert phantom.origin == pytest.approx((-190.5, -190.5, -19.5))
    image = phantom.to_image()
    assert image.TransformIndexToPhysicalPoint((127, 127, 39)) == pytest.approx((190.5, 190.5, 19.5))


def test_same_seed_is_identical_and_seeds_differ(phantom):
    again = make_phantom(SHAPE, SPACING, seed=0)
    other = make_phantom(SHAPE, SPACING, seed=1)
    np.testing.assert_array_equal(phantom.array, again.array)
    body, other_body = phantom.array > -500, other.array > -500
    assert np.mean(body != other_body) > 0.02  # a different patient, not just different noise


def test_tissue_hu_ranges(phantom):
    hu = phantom.array.astype(np.float64)
    corners = np.concatenate([hu[:, :8, :8].ravel(), hu[:, -8:, -8:].ravel()])
    assert -1010 < np.median(corners) < -990  # air
    assert -870 <= _mode(hu, -950, -700) <= -830  # lung
    assert -120 <= _mode(hu, -250, -50) <= -80  # subcutaneous fat
    assert 0 <= _mode(hu, -300, 300) <= 100  # soft tissue dominates the body, as in real CT
    assert np.mean(hu > 300) > 0.002 and hu.max() > 600  # bone, with a dense cortex


def test_noise_level_and_seeding(phantom, clean):
    noise = phantom.array.astype(np.float64) - clean.array
    inside = clean.array > -990  # away from the clip at -1024
    assert np.std(noise[inside]) == pytest.approx(15.0, rel=0.1)
    assert abs(np.mean(noise[inside])) < 1.0
    rng = np.random.default_rng(0)
    correlated = ct_noise((20, 64, 64), 10.0, rng, correlation_px=0.8)
    assert np.std(correlated) == pytest.approx(10.0, rel=0.05)
    neighbours = np.corrcoef(correlated[:, :, :-1].ravel(), correlated[:, :, 1:].ravel())[0, 1]
    across_slices = np.corrcoef(correlated[:-1].ravel(), correlated[1:].ravel())[0, 1]
    assert neighbours > 0.3 and abs(across_slices) < 0.05  # correlated in-plane only


def test_thin_slices_hold_detail_that_slab_averages_blur_in_the_lungs(clean):
    """Oblique vessels: the gap between thin slices and their 5-slice slab average is large in the lungs,
    small in soft tissue; and the vessel cross-sections move between slices 2 mm apart."""
    hu = clean.array.astype(np.float32)
    slab = np.repeat(hu.reshape(-1, 5, *hu.shape[1:]).mean(axis=1), 5, axis=0)
    body = np.stack([ndimage.binary_fill_holes(s > -500) for s in hu])
    lung, soft = body & (slab < -400), body & (np.abs(slab) < 150)
    gap = np.abs(hu - slab)
    assert gap[lung].mean() > 4 * gap[soft].mean()
    vessels = lung & (hu > -400)
    assert vessels.mean() > 0.002

    def dice(a, b):
        return 2 * np.sum(a & b) / max(np.sum(a) + np.sum(b), 1)

    assert np.mean([dice(vessels[k], vessels[k + 2]) for k in range(len(hu) - 2)]) < 0.5
    assert np.mean([dice(body[k], body[k + 2]) for k in range(len(hu) - 2)]) > 0.98


def test_same_anatomy_at_two_spacings():
    """Anatomy lives in mm: a 1 mm phantom resampled onto the 2 mm grid of the same seed matches it, up to
    the sampling of edges, far better than another patient does."""
    coarse = make_phantom((20, 96, 96), (4.0, 4.0, 2.0), seed=3, noise_hu=0)
    fine = make_phantom((40, 192, 192), (2.0, 2.0, 1.0), seed=3, noise_hu=0)
    other = make_phantom((20, 96, 96), (4.0, 4.0, 2.0), seed=4, noise_hu=0)
    assert coarse.origin == pytest.approx((-190.0, -190.0, -19.0))
    assert fine.origin == pytest.approx((-191.0, -191.0, -19.5))  # same field of view, other voxel centres
    matched = resample(fine, coarse.grid, "linear").array
    same = np.abs(matched - coarse.array).mean()
    different = np.abs(other.array.astype(np.float64) - coarse.array).mean()
    assert same < 25.0 and same < 0.2 * different
    assert np.corrcoef(matched.ravel(), coarse.array.ravel())[0, 1] > 0.98


def test_contrast_enhances_blood():
    plain = make_phantom((10, 96, 96), (4.0, 4.0, 1.0), seed=2, noise_hu=0).array
    enhanced = make_phantom((10, 96, 96), (4.0, 4.0, 1.0), seed=2, noise_hu=0, contrast=True).array
    changed = enhanced != plain
    assert np.sum(enhanced[changed] > 200) > 100
    assert plain[changed].max() < 150  # only blood changed: soft tissue (or its partial volume) without contrast


@pytest.mark.parametrize("shape, spacing", [((10, 10), (1.0, 1.0, 1.0)), ((4, 4, 4), (1.0, 0.0, 1.0))])
def test_bad_grid_is_rejected(shape, spacing):
    with pytest.raises(ValueError):
        make_phantom(shape, spacing)
