"""Do window borders show? Slice-to-slice change across the inference windows' borders, along z and x.

    python benchmarks/seams.py OUTPUT.nii.gz REFERENCE.nii.gz [--window Z Y X] [--overlap F]

For OUTPUT (a model's thin volume) and REFERENCE (the same scan by cubic interpolation, on the same
grid), the profile along an axis is the mean |v[k+1] - v[k]| over body voxels (above -500 HU, HU clipped
to [-1024, 2048]) for each neighbouring pair k, k+1. Dividing OUTPUT's profile by REFERENCE's cancels the
anatomy; a seam is a spike of that ratio at a pair that straddles a window border (the first and last
voxel of each window's overlap, as ``ctslice.models.window_plan`` places them for the bundled model's
windows, or ``--window``/``--overlap``). Printed: the ratio's mean over border pairs, over all other pairs,
and their quotient (1.00: no seam), per axis; with ``--profile``, the whole ratio profile.
"""

from __future__ import annotations

import argparse

import numpy as np
import SimpleITK as sitk

from ctslice.models.window_plan import plan_axis

LO, HI, BODY = -1024.0, 2048.0, -500.0


def profile(volume: np.ndarray, body: np.ndarray, axis: int) -> np.ndarray:
    """Mean |v[k+1] - v[k]| along ``axis`` over pairs whose both voxels are in ``body``."""
    step = np.abs(np.diff(volume, axis=axis))
    both = np.logical_and(np.take(body, range(body.shape[axis] - 1), axis=axis),
                          np.take(body, range(1, body.shape[axis]), axis=axis))
    other = tuple(a for a in range(3) if a != axis)
    return (step * both).sum(axis=other) / np.maximum(both.sum(axis=other), 1)


def borders(size: int, largest: int, overlap: float, multiple: int = 4) -> list[int]:
    """Pairs (k, k+1) that straddle a window's first or last voxel, for windows planned over ``size``."""
    window, fraction, count = plan_axis(size, largest, overlap, multiple)
    if count == 1:
        return []
    interval = int(window * (1 - fraction))
    starts = [min(i * interval, size - window) for i in range(count)]
    edges = {s - 1 for s in starts[1:]} | {s + window - 1 for s in starts[:-1]}
    return sorted(k for k in edges if 0 <= k < size - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("reference")
    parser.add_argument("--window", type=int, nargs=3, default=None, help="largest window (z y x voxels)")
    parser.add_argument("--overlap", type=float, default=None)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    if args.window is None or args.overlap is None:
        from ctslice.inference.loading import load_model

        loaded = load_model(None, "cpu")
        args.window = args.window or list(loaded.interpolator.roi())
        args.overlap = args.overlap if args.overlap is not None else loaded.interpolator.config.inference.overlap
    out = np.clip(sitk.GetArrayFromImage(sitk.ReadImage(args.output)).astype(np.float32), LO, HI)
    ref = np.clip(sitk.GetArrayFromImage(sitk.ReadImage(args.reference)).astype(np.float32), LO, HI)
    body = ref > BODY
    for axis, name in ((0, "z"), (2, "x")):
        ratio = profile(out, body, axis) / np.maximum(profile(ref, body, axis), 1e-3)
        edges = borders(out.shape[axis], args.window[axis], args.overlap)
        inside = np.setdiff1d(np.arange(ratio.size), edges)
        at = ratio[edges].mean() if edges else float("nan")
        print(f"{name}: {len(edges)} border pairs, ratio to cubic at borders {at:.3f}, elsewhere "
              f"{ratio[inside].mean():.3f}, quotient {at / ratio[inside].mean():.3f}")
        if args.profile:
            print("  " + " ".join(f"{k}{'*' if k in edges else ''}:{r:.2f}" for k, r in enumerate(ratio)))


if __name__ == "__main__":
    main()
