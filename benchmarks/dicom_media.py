"""Reading a real-media DICOM export: header scan speed, tilt/spacing correction cost and its geometry error.

Run from the repository root (about half a minute on 2 CPU cores)::

    python benchmarks/dicom_media.py [--slices 40] [--size 512] [--tilt 12] [--repeat 3]

It writes, into a temporary folder, a CT series of ``--slices`` slices of ``--size``^2 pixels sampled
from an analytic HU field at the exact physical position of every pixel, sheared by a gantry tilt of
``--tilt`` degrees and with uneven steps (2.5 mm, every fifth 1.25 mm), plus index files and OS litter;
then prints:

1. the header scan (``scan_series``: pydicom, only the tags ctslice needs) against what the previous
   GDCM-based scan did (series ids, file names, one ``ReadImageInformation`` per file), files/s;
2. reading the pixels (``ImageSeriesReader``) and the exact resampling onto the untilted, uniform grid
   (``DicomSeries.load``), seconds;
3. the geometry of the result against the known field: origin, spacing, extent along the normal, and the
   largest and mean |HU error| over the voxels inside the sheared stack.

Times are the best of ``--repeat`` passes (the machine may be shared).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctslice.io import scan_series  # noqa: E402
from tests.dicom_utils import litter, write_slices  # noqa: E402

PIXEL = 0.7


def field(points: np.ndarray) -> np.ndarray:
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    return -150.0 + 350.0 * np.sin(x / 9.0) * np.cos(y / 11.0) + 6.0 * z


def build(folder: Path, slices: int, size: int, tilt: float) -> tuple[np.ndarray, np.ndarray]:
    steps = np.where(np.arange(1, slices) % 5 == 0, 1.25, 2.5)
    heights = np.concatenate([[0.0], np.cumsum(steps)])
    shear = math.tan(math.radians(tilt))
    j, i = np.mgrid[:size, :size]
    written = []
    for h in heights:
        position = np.array([0.0, h * shear, h])  # axial slices, sheared along the column (y)
        points = position + np.stack([i * PIXEL, j * PIXEL, np.zeros_like(i, dtype=float)], axis=-1)
        image = sitk.GetImageFromArray(np.rint(field(points)).astype(np.int16))
        image.SetSpacing((PIXEL, PIXEL))
        written.append((image, position, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)))
    write_slices(written, folder, names=[f"IM{(7 * k) % 997:05d}" for k in range(slices)])
    litter(folder)
    return heights, shear


def best(function, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def gdcm_scan(folder: Path) -> None:
    """What ``find_series`` did before pydicom: GDCM series listing, then one header read per file."""
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
        for file in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid):
            reader = sitk.ImageFileReader()
            reader.SetFileName(file)
            reader.ReadImageInformation()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--tilt", type=float, default=12.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"ctslice DICOM media benchmark: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {args.slices} slices of {args.size}^2, "
          f"tilt {args.tilt} degrees")
    with tempfile.TemporaryDirectory(prefix="ctslice-media-") as tmp:
        folder = Path(tmp) / "series"
        heights, shear = build(folder, args.slices, args.size, args.tilt)
        files = len(list(folder.iterdir()))
        pydicom_s, scan = best(lambda: scan_series(folder), args.repeat)
        gdcm_s, _ = best(lambda: gdcm_scan(folder), args.repeat)
        print(f"1. header scan of {files} files ({len(scan.skipped)} skipped as not images): pydicom "
              f"{files / pydicom_s:.0f} files/s ({pydicom_s:.3f} s); previous GDCM scan {files / gdcm_s:.0f} files/s "
              f"({gdcm_s:.3f} s)")
        [series] = scan.series
        pixels_s, _ = best(lambda: series._read_pixels(), args.repeat)
        load_s, (volume, report) = best(lambda: series.load(), args.repeat)
        print(f"2. pixels read {pixels_s:.2f} s; read + resampling onto the untilted uniform grid {load_s:.2f} s "
              f"({'; '.join(report.lines())})")
        k, j, i = np.mgrid[: volume.depth, : volume.array.shape[1], : volume.array.shape[2]]
        points = np.asarray(volume.origin) + np.stack([i, j, k], axis=-1) * np.asarray(volume.spacing)
        own_row = points[..., 1] - points[..., 2] * shear  # y within the slice the voxel's line crosses
        inside = (own_row >= PIXEL) & (own_row <= (args.size - 2) * PIXEL)
        error = np.abs(volume.array - field(points))[inside]
        extent = (volume.depth - 1) * volume.spacing[2]
        print(f"3. origin {np.round(volume.origin, 4).tolist()} (expected [0, 0, 0]); spacing "
              f"{np.round(volume.spacing, 4).tolist()}; extent along the normal {extent:.3f} mm (input "
              f"{heights[-1]:.3f} mm); |HU error| inside the stack: max {error.max():.2f}, mean {error.mean():.3f} "
              f"over {error.size} voxels")


if __name__ == "__main__":
    main()
