"""The image-quality protocol every ctslice report uses: PSNR, SSIM and HU MAE of a thin volume.

Published slice-interpolation numbers are only comparable when the protocol is identical, so there is
exactly one, and this is it (the RPLHR-CT convention):

1. Both volumes are (z, y, x) arrays on the same grid, in Hounsfield units (HU).
2. ``trim`` thin slices (default 5) are dropped at each end of z: end slices have half a thick slab of
   support and would measure boundary handling rather than interpolation.
3. HU are clipped to [-1024, 2048] and mapped linearly to [0, 1] (``normalize_hu``), in float64.
4. PSNR = 10 log10(1 / MSE) over the whole trimmed volume (peak 1). Identical volumes (MSE = 0) give
   ``math.inf``, as ``skimage.metrics.peak_signal_noise_ratio`` does; a JSON writer must encode that
   explicitly (``json.dumps`` would emit the non-standard ``Infinity``).
5. SSIM = mean over slices of ``skimage.metrics.structural_similarity(data_range=1.0)`` with its
   defaults (7 x 7 uniform window). "axial" slices are z-planes (the headline number); "coronal"
   (fixed y) and "sagittal" (fixed x) means are for reports, since through-plane errors of a slice
   interpolator show up there first. Slices are compared on the voxel grid as is, with no resampling
   to isotropic spacing.
6. HU MAE = mean |pred - truth| of the clipped HU (not normalised), over the trimmed volume.

``soft_tissue_bias`` adds a signed check that the others cannot give: a systematic HU offset in soft
tissue (truth in [0, 100] HU), which MAE and PSNR hide among edge errors.
"""

from __future__ import annotations

import math

import numpy as np
from skimage.metrics import structural_similarity

HU_MIN = -1024.0
HU_MAX = 2048.0
TRIM = 5
PLANES = ("axial", "coronal", "sagittal")


def normalize_hu(hu: np.ndarray) -> np.ndarray:
    """HU clipped to [HU_MIN, HU_MAX] and mapped linearly to [0, 1], as float64."""
    clipped = np.clip(np.asarray(hu, dtype=np.float64), HU_MIN, HU_MAX)
    return (clipped - HU_MIN) / (HU_MAX - HU_MIN)


def psnr(pred_hu: np.ndarray, truth_hu: np.ndarray, trim: int = TRIM) -> float:
    """PSNR in dB with peak 1 on the trimmed, normalised volumes; ``math.inf`` when they are identical."""
    return _psnr(*_normalized_pair(pred_hu, truth_hu, trim))


def ssim(pred_hu: np.ndarray, truth_hu: np.ndarray, trim: int = TRIM, plane: str = "axial") -> float:
    """Mean 2D SSIM over the ``plane`` slices ("axial", "coronal" or "sagittal") of the trimmed volumes."""
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")
    return _ssim(*_normalized_pair(pred_hu, truth_hu, trim), plane)


def hu_mae(pred_hu: np.ndarray, truth_hu: np.ndarray, trim: int = TRIM) -> float:
    """Mean absolute difference in HU of the clipped, trimmed volumes."""
    return _hu_mae(*_normalized_pair(pred_hu, truth_hu, trim))


def evaluate(pred_hu: np.ndarray, truth_hu: np.ndarray, trim: int = TRIM,
             planes: tuple[str, ...] = ("axial",)) -> dict[str, float]:
    """All protocol metrics at once: ``psnr``, ``ssim`` (axial), ``hu_mae``, and ``ssim_coronal`` /
    ``ssim_sagittal`` when ``planes`` asks for them. The volumes are normalised once."""
    unknown = [p for p in planes if p not in PLANES]
    if unknown:
        raise ValueError(f"unknown plane(s) {unknown}; choose from {PLANES}")
    pred, truth = _normalized_pair(pred_hu, truth_hu, trim)
    result = {"psnr": _psnr(pred, truth), "ssim": _ssim(pred, truth, "axial"), "hu_mae": _hu_mae(pred, truth)}
    for plane in planes:
        if plane != "axial":
            result[f"ssim_{plane}"] = _ssim(pred, truth, plane)
    return result


def soft_tissue_bias(pred_hu: np.ndarray, truth_hu: np.ndarray, lo: float = 0.0, hi: float = 100.0,
                     trim: int = TRIM) -> float:
    """Mean (pred - truth) in HU over trimmed voxels whose truth lies in [lo, hi] HU; NaN if there are none.

    NaN rather than an error, so that one case without soft tissue cannot abort a whole validation run.
    """
    pred, truth = _trimmed_pair(pred_hu, truth_hu, trim)
    mask = (truth >= lo) & (truth <= hi)
    if not mask.any():
        return math.nan
    return float(np.mean(pred[mask].astype(np.float64) - truth[mask].astype(np.float64)))


def _trimmed_pair(pred_hu: np.ndarray, truth_hu: np.ndarray, trim: int) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred_hu), np.asarray(truth_hu)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth shape {truth.shape}")
    if pred.ndim != 3:
        raise ValueError(f"expected (z, y, x) volumes, got {pred.ndim} dimensions")
    if trim < 0:
        raise ValueError(f"trim must be >= 0, got {trim}")
    depth = pred.shape[0]
    if depth <= 2 * trim:
        raise ValueError(f"a volume of {depth} slices is too short to drop {trim} at each end")
    return pred[trim:depth - trim], truth[trim:depth - trim]


def _normalized_pair(pred_hu: np.ndarray, truth_hu: np.ndarray, trim: int) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = _trimmed_pair(pred_hu, truth_hu, trim)
    return normalize_hu(pred), normalize_hu(truth)


def _psnr(pred: np.ndarray, truth: np.ndarray) -> float:
    mse = float(np.mean((pred - truth) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def _ssim(pred: np.ndarray, truth: np.ndarray, plane: str) -> float:
    axis = PLANES.index(plane)
    pred, truth = np.moveaxis(pred, axis, 0), np.moveaxis(truth, axis, 0)
    return float(np.mean([structural_similarity(p, t, data_range=1.0) for p, t in zip(pred, truth, strict=True)]))


def _hu_mae(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - truth))) * (HU_MAX - HU_MIN)
