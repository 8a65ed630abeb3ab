"""Quality of the default-model recipe on real CT against classical interpolation (issue 8).

    python benchmarks/quality.py --out scratch/quality --minutes 100            # build, train, evaluate
    python benchmarks/quality.py --out scratch/quality --minutes 60 --resume    # continue an interrupted run
    python benchmarks/quality.py --out scratch/quality --skip-training          # evaluate an existing run
    python benchmarks/quality.py --out scratch/quality --skip-training --bundle # ... and ship it

Pairs are simulated at x5 from the thin real volumes in ../shared/data/ct/ at their native thin
spacing (slab averaging), one volume is held out (never trained on, not used to pick a checkpoint:
the final checkpoint is evaluated), and the recipe ``ctslice/configs/default_model.yaml`` is trained
with a fixed seed for a bounded time. On the held-out volume it prints PSNR / SSIM / HU MAE / soft-tissue
bias under the documented protocol for linear, cubic, Lanczos, the default (mean) mode, single DDIM
samples and the mean of 4 samples, quality against the number of DDIM steps, and the inference time
of each mode (the many-pass sampling rows on a central crop, see ``evaluate``). Training volumes
also enter with their slab phase shifted (thick slabs starting at
thin slice k = 0..4), which gives five distinct thick volumes per scan.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ctslice.checkpoint import read_checkpoint, write_checkpoint
from ctslice.config import load_config
from ctslice.data import cache as cache_files
from ctslice.data.cache import Cache
from ctslice.data.pairs import simulate_pair
from ctslice.data.splits import SPLITS
from ctslice.evaluation import metrics
from ctslice.inference.loading import load_model
from ctslice.io import read_volume
from ctslice.io.geometry import interpolate
from ctslice.training.trainer import train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct"
HELD_OUT = "ts_chest_aorta_1p5mm"
TRAINING = ["head_ct8800_1p5mm", "popi_thorax_2mm", "ts_abdomen_pelvis_3mm", "large/popi_thorax_2mm_full"]
RATIO = 5
CROP_PIXELS = 96  # one inference window in-plane
RECIPE = Path(__file__).resolve().parents[1] / "ctslice" / "configs" / "default_model.yaml"
BUNDLE = Path(__file__).resolve().parents[1] / "ctslice" / "default_model" / "default.pt"


def build_cache(out: Path, phases: int) -> tuple[Path, Path]:
    """Cache of x5 simulated pairs at native spacing: training scans at ``phases`` slab phases, the held-out once."""
    cache = out / "cache.h5"
    splits = out / "splits.json"
    if cache.exists() and splits.exists():
        return cache, splits
    parts = cache_files.parts_dir(cache)
    members = {name: [] for name in SPLITS}
    for name in [HELD_OUT, *TRAINING]:
        thin = read_volume(SHARED / f"{name}.nii.gz")
        held_out = name == HELD_OUT
        for phase in range(1 if held_out else phases):
            pair = simulate_pair(thin.slices(phase, thin.depth), RATIO * thin.spacing[2], thin.spacing[2])
            case_id = f"{Path(name).name}_phase{phase}"
            cache_files.write_part(parts, case_id, pair, source=str(SHARED / f"{name}.nii.gz"), content_hash=case_id,
                                   patient=Path(name).name.replace("_full", ""), options={"phase": phase})
            members["val" if held_out else "train"].append(case_id)
    cache_files.consolidate(cache, sorted(parts.glob("*.h5")))
    cache_files.remove_parts(cache)
    splits.write_text(json.dumps({**members, "meta": {"held_out": HELD_OUT, "ratio": RATIO}}, indent=2),
                      encoding="utf-8")
    return cache, splits


def evaluate(checkpoint: Path, cache: Path, samples: int, step_counts: list[int], crop_slices: int) -> dict:
    """Every row on the whole held-out volume where one network pass per row is affordable, the rest on a crop.

    One pass over the whole volume takes about 20 s on 2 cores, so the mean of ``samples`` DDIM-20 samples
    and the DDIM-steps sweep (about 150 passes) run on a central crop (``crop_slices`` thick slices, one
    96 x 96 window in-plane), with cubic and the default mode repeated on the same crop for comparison.
    """
    loaded = load_model(checkpoint, "cpu")
    with Cache(cache) as opened:
        case = f"{HELD_OUT}_phase0"
        thick, truth = opened.volume(case, "thick"), opened.volume(case, "thin")
        spacing = opened.grid(case, "thin").spacing[2]
    rows: dict[str, dict] = {}
    print(f"{'held-out ' + HELD_OUT + f' at x{RATIO}':52s} {'PSNR':>7s} {'SSIM':>7s} {'HU MAE':>7s} "
          f"{'ST bias':>8s} {'seconds':>8s}")

    def score(name: str, volume: np.ndarray, seconds: float, truth_hu: np.ndarray) -> None:
        row = {**metrics.evaluate(volume, truth_hu), "soft_tissue_bias": metrics.soft_tissue_bias(volume, truth_hu),
               "seconds": seconds}
        rows[name] = row
        print(f"{name:52s} {row['psnr']:7.2f} {row['ssim']:7.4f} {row['hu_mae']:7.1f} "
              f"{row['soft_tissue_bias']:8.2f} {row['seconds']:8.1f}", flush=True)

    def timed(run, *args, **options) -> tuple[np.ndarray, float]:
        started = time.time()
        volume = run(*args, **options)
        return volume, time.time() - started

    def baseline(volume, method: str) -> np.ndarray:
        return interpolate(volume, spacing, method).array

    def model(volume, **options) -> np.ndarray:
        return loaded.interpolator.predict(volume, spacing, **options).volume.array

    whole_truth = truth.array.astype(np.float32)
    for method in ("linear", "cubic", "lanczos"):
        score(method, *timed(baseline, thick, method), truth_hu=whole_truth)
    score("model, default (mean)", *timed(model, thick), truth_hu=whole_truth)
    score("model, one sample (DDIM 20)", *timed(model, thick, mode="sample", steps=20, seed=0),
          truth_hu=whole_truth)

    z0 = (thick.depth - crop_slices) // 2
    y0, x0 = (thick.array.shape[1] - CROP_PIXELS) // 2, (thick.array.shape[2] - CROP_PIXELS) // 2
    part = thick.crop((z0, z0 + crop_slices), (y0, y0 + CROP_PIXELS), (x0, x0 + CROP_PIXELS))
    part_truth = truth.crop((RATIO * z0, RATIO * (z0 + crop_slices)), (y0, y0 + CROP_PIXELS),
                            (x0, x0 + CROP_PIXELS)).array.astype(np.float32)
    label = f"crop {RATIO * crop_slices}x{CROP_PIXELS}x{CROP_PIXELS}:"
    score(f"{label} cubic", *timed(baseline, part, "cubic"), truth_hu=part_truth)
    score(f"{label} model, default (mean)", *timed(model, part), truth_hu=part_truth)
    singles = []
    for seed in range(samples):
        single, seconds = timed(model, part, mode="sample", steps=20, seed=seed)
        singles.append(single)
        score(f"{label} sample seed {seed} (DDIM 20)", single, seconds, truth_hu=part_truth)
    score(f"{label} mean of {samples} samples (DDIM 20)", np.mean(singles, axis=0), float("nan"),
          truth_hu=part_truth)
    for steps in step_counts:
        if steps == 20 and singles:
            continue  # the seed-0 DDIM-20 sample above
        score(f"{label} sample DDIM {steps} steps", *timed(model, part, mode="sample", steps=steps, seed=0),
              truth_hu=part_truth)
    return rows


def bundle(checkpoint: Path, target: Path) -> Path:
    """A slim inference checkpoint (no optimizer, no RNG) as the package's default model."""
    state = read_checkpoint(checkpoint)
    slim = {k: state[k] for k in ("step", "config", "model", "codec", "data")}
    target.parent.mkdir(parents=True, exist_ok=True)
    write_checkpoint(slim, target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("scratch/quality"))
    parser.add_argument("--minutes", type=float, default=100.0, help="training time budget")
    parser.add_argument("--phases", type=int, default=RATIO, help="slab phases per training scan")
    parser.add_argument("--set", action="append", default=[], help="config override for the recipe")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--steps", type=int, nargs="*", default=[1, 5, 10, 20, 50])
    parser.add_argument("--crop-slices", type=int, default=16, help="thick slices of the crop for sampling rows")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its latest checkpoint")
    parser.add_argument("--bundle", action="store_true", help="copy the final model to ctslice/default_model/")
    args = parser.parse_args()
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    cache, splits = build_cache(args.out, args.phases)
    run = args.out / "run"
    if not args.skip_training:
        if not args.resume:
            shutil.rmtree(run, ignore_errors=True)
        config = load_config(RECIPE, [f"data.cache={cache}", f"data.splits={splits}",
                                      f"training.time_limit_minutes={args.minutes}", *args.set])
        started = time.time()
        train(config, run, resume="latest" if args.resume else None)
        print(f"training: {(time.time() - started) / 60:.1f} min")
    checkpoint = run / "checkpoints" / "final.pt"
    print(f"checkpoint {checkpoint}, step {read_checkpoint(checkpoint)['step']}")
    rows = evaluate(checkpoint, cache, args.samples, args.steps, args.crop_slices)
    (args.out / "quality.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    if args.bundle:
        path = bundle(checkpoint, BUNDLE)
        print(f"bundled {path} ({path.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
