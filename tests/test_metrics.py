"""The metric protocol: numbers match a plain recomputation of the referee's formulas, edge cases are defined."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

from ctslice.evaluation.metrics import evaluate, hu_mae, normalize_hu, psnr, soft_tissue_bias, ssim


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray]:
    """A ground truth with structure and HU outside the clip range, and a noisy, biased prediction."""
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[0:24, 0:40, 0:36]
    truth = 800.0 * np.sin(x / 5.0) * np.cos(y / 7.0) + 60.0 * z - 400.0
    truth[:, :5] = -1200.0  # below the clip floor
    truth[:, -5:] = 2500.0  # above the clip ceiling
    pred = truth + rng.normal(0.0, 80.0, truth.shape) + 10.0
    return pred.astype(np.float32), truth.astype(np.int16)


def _referee_like(pred, truth, trim):
    """The referee's formulas written out independently: clip, map to [0, 1], trim, compare."""
    a = (np.clip(pred.astype(np.float64), -1024, 2048) + 1024) / 3072
    b = (np.clip(truth.astype(np.float64), -1024, 2048) + 1024) / 3072
    a, b = a[trim:-trim], b[trim:-trim]
    return {
        "psnr": 10 * np.log10(1.0 / np.mean((a - b) ** 2)),
        "ssim": np.mean([structural_similarity(a[k], b[k], data_range=1.0) for k in range(a.shape[0])]),
        "hu_mae": np.mean(np.abs(a - b)) * 3072,
    }


@pytest.mark.parametrize("trim", [5, 2])
def test_matches_straightforward_recomputation(pair, trim):
    pred, truth = pair
    expected = _referee_like(pred, truth, trim)
    assert psnr(pred, truth, trim=trim) == pytest.approx(expected["psnr"], abs=1e-6)
    assert ssim(pred, truth, trim=trim) == pytest.approx(expected["ssim"], abs=1e-6)
    assert hu_mae(pred, truth, trim=trim) == pytest.approx(expected["hu_mae"], abs=1e-6)
    assert evaluate(pred, truth, trim=trim) == pytest.approx(expected, abs=1e-6)


def test_normalize_hu_clips_and_maps_to_unit_range():
    out = normalize_hu(np.array([-3000, -1024, 512, 2048, 5000], dtype=np.int16))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0])


def test_identical_volumes_give_infinite_psnr_and_perfect_scores(pair):
    _, truth = pair
    assert psnr(truth, truth) == math.inf
    assert ssim(truth, truth) == pytest.approx(1.0)
    assert hu_mae(truth, truth) == 0.0


def test_known_mse_gives_known_psnr():
    truth = np.zeros((12, 16, 16))
    pred = truth + 0.01 * 3072  # a constant error of 0.01 after normalisation: MSE 1e-4, PSNR 40 dB
    assert psnr(pred, truth) == pytest.approx(40.0, abs=1e-9)
    assert hu_mae(pred, truth) == pytest.approx(30.72, abs=1e-9)


def test_clipping_hides_differences_outside_the_hu_window():
    truth = np.full((12, 16, 16), 2048.0)
    pred = np.full((12, 16, 16), 3000.0)
    pred[:, :, :2] = -2000.0
    truth[:, :, :2] = -1024.0
    assert psnr(pred, truth) == math.inf
    assert hu_mae(pred, truth) == 0.0


def test_trim_drops_end_slices_only():
    truth = np.zeros((14, 16, 16))
    pred = truth.copy()
    pred[:5] = 500.0
    pred[-5:] = -500.0
    assert psnr(pred, truth, trim=5) == math.inf
    assert hu_mae(pred, truth, trim=5) == 0.0
    assert hu_mae(pred, truth, trim=4) == pytest.approx(500.0 * 2 / 6)
    assert hu_mae(pred, truth, trim=0) == pytest.approx(500.0 * 10 / 14)


def test_ssim_planes_differ_on_an_anisotropic_error():
    """Stripes along z (the error of a poor slice interpolator) hurt coronal SSIM more than axial SSIM."""
    rng = np.random.default_rng(1)
    truth = gaussian_filter(rng.normal(0, 300, (30, 32, 32)), 2.0) * 5.0  # blobs, so SSIM has structure
    pred = truth.copy()
    pred[::3] += 150.0  # every third slice offset: each axial slice is self-consistent, z profiles are not
    axial, coronal = ssim(pred, truth), ssim(pred, truth, plane="coronal")
    sagittal = ssim(pred, truth, plane="sagittal")
    assert coronal < axial - 0.05
    assert sagittal < axial - 0.05
    result = evaluate(pred, truth, planes=("axial", "coronal", "sagittal"))
    assert result["ssim"] == pytest.approx(axial)
    assert result["ssim_coronal"] == pytest.approx(coronal)
    assert result["ssim_sagittal"] == pytest.approx(sagittal)
    assert set(evaluate(pred, truth)) == {"psnr", "ssim", "hu_mae"}



def test_soft_tissue_bias_is_signed_and_restricted_to_soft_tissue():
    truth = np.zeros((12, 8, 8))
    truth[:, :4] = 50.0   # soft tissue
    truth[:, 4:] = -800.0  # lung: its error must not count
    pred = truth.copy()
    pred[:, :4] -= 7.0
    pred[:, 4:] += 300.0
    assert soft_tissue_bias(pred, truth) == pytest.approx(-7.0)
    assert math.isnan(soft_tissue_bias(pred, np.full_like(truth, -800.0)))


@pytest.mark.parametrize("call", [psnr, ssim, hu_mae, evaluate, soft_tissue_bias])
def test_bad_inputs_raise_value_error(call):
    with pytest.raises(ValueError, match="shape"):
        call(np.zeros((12, 8, 8)), np.zeros((12, 8, 9)))
    with pytest.raises(ValueError, match="too short"):
        call(np.zeros((10, 8, 8)), np.zeros((10, 8, 8)))


def test_unknown_plane_is_rejected():
    with pytest.raises(ValueError, match="plane"):
        ssim(np.zeros((12, 8, 8)), np.zeros((12, 8, 8)), plane="oblique")
    with pytest.raises(ValueError, match="plane"):
        evaluate(np.zeros((12, 8, 8)), np.zeros((12, 8, 8)), planes=("axial", "oblique"))
