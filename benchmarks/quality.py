"""Quality of the default-model recipe on real CT against classical interpolation (issues 8 and 21).

    python benchmarks/quality.py --out scratch/q21 --minutes 110 --set training.init_from=bundled   # today's model
    python benchmarks/quality.py --out scratch/q21 --minutes 60 --resume      # continue an interrupted run
    python benchmarks/quality.py --out scratch/q21 --skip-training            # evaluate an existing run
    python benchmarks/quality.py --out scratch/q21 --skip-training --bundle   # ... and ship it
    python benchmarks/quality.py --out scratch/q21 --skip-training --checkpoint old.pt   # ... or any model

Data (all of ``../shared/data/ct/``): x5 pairs simulated by slab averaging at each thin volume's native
spacing, training scans at five slab phases (thick slabs starting at thin slice k = 0..4); the full-
resolution scans as thick-only (self-supervised) cases that give in-plane pairs at 1, 1.5 and 2 mm
(``THICK_ONLY``; the real 5 mm scan at its own profile). Splits: ``ts_chest_aorta_1p5mm`` is the test
split (never trained on, never used to choose anything), ``ts_abdomen_pelvis_3mm`` the validation split
(the run's validation, by which the recipe is chosen), the rest trains. The recipe
``ctslice/configs/default_model.yaml`` is trained with a fixed seed for at most ``--minutes``; the final
checkpoint is evaluated: on the held-out volume PSNR / SSIM / HU MAE / soft-tissue bias under the
documented protocol for linear, cubic, Lanczos, the default (mean) mode and single DDIM samples, the
sampling rows on a central crop (``evaluate``), and per body region (``regions``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ctslice.checkpoint import read_checkpoint, write_checkpoint
from ctslice.config import load_config
from ctslice.data import cache as cache_files
from ctslice.data.cache import Cache
from ctslice.data.pairs import SliceProfile, self_supervised_case, simulate_pair
from ctslice.data.splits import SPLITS
from ctslice.evaluation import metrics
from ctslice.inference.consistency import make_consistent
from ctslice.inference.loading import load_model
from ctslice.io import read_volume
from ctslice.io.geometry import interpolate
from ctslice.training.trainer import train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct"
HELD_OUT = "ts_chest_aorta_1p5mm"  # test split: never trained on, never used to choose anything
VALIDATION = "ts_abdomen_pelvis_3mm"  # val split: the training run's validation, which picks the recipe
THROUGH_PLANE = ["head_ct8800_1p5mm", "popi_thorax_2mm", "large/popi_thorax_2mm_full"]  # simulated x5 pairs
# Thick-only (self-supervised) cases, in-plane pairs only: (scan, thin spacing mm, slice profile mm or None for
# the scan's own). The real 5 mm scan at its own profile, and both full-resolution chests at the 1-2 mm thin
# spacings researchers ask for (their 0.84-0.98 mm pixels are finer than each).
THICK_ONLY = [("large/lungdx_chest_5mm_full", 1.0, None), ("large/lungdx_chest_5mm_full", 1.5, 7.5),
              ("large/lungdx_chest_5mm_full", 2.0, 10.0), ("large/popi_thorax_2mm_full", 1.0, 5.0),
              ("large/popi_thorax_2mm_full", 1.5, 7.5)]
RATIO = 5
CROP_PIXELS = 96  # one inference window in-plane
RECIPE = Path(__file__).resolve().parents[1] / "ctslice" / "configs" / "default_model.yaml"
BUNDLE = Path(__file__).resolve().parents[1] / "ctslice" / "default_model" / "default.pt"


def build_cache(out: Path, phases: int) -> tuple[Path, Path]:
    """The cache and splits: x5 simulated pairs at native spacing (training scans at ``phases`` slab phases,
    validation and held-out scans once) and the thick-only cases of ``THICK_ONLY``."""
    cache = out / "cache.h5"
    splits = out / "splits.json"
    if cache.exists() and splits.exists():
        return cache, splits
    parts = cache_files.parts_dir(cache)
    members = {name: [] for name in SPLITS}
    for name in [HELD_OUT, VALIDATION, *THROUGH_PLANE]:
        thin = read_volume(SHARED / f"{name}.nii.gz")
        split = {HELD_OUT: "test", VALIDATION: "val"}.get(name, "train")
        for phase in range(phases if split == "train" else 1):
            pair = simulate_pair(thin.slices(phase, thin.depth), RATIO * thin.spacing[2], thin.spacing[2])
            case_id = f"{Path(name).name}_phase{phase}"
            write_case(parts, case_id, pair, name, {"phase": phase})
            members[split].append(case_id)
    for name, thin_spacing, profile in THICK_ONLY:
        thick = read_volume(SHARED / f"{name}.nii.gz")
        pair = self_supervised_case(thick, thin_spacing)
        if profile is not None:
            pair = replace(pair, profile=SliceProfile(profile, profile, "simulated"))
        case_id = f"{Path(name).name}_inplane{thin_spacing:g}mm"
        write_case(parts, case_id, pair, name, {"inplane_profile_mm": pair.profile.thickness})
        members["train"].append(case_id)
    cache_files.consolidate_parts(cache)
    splits.write_text(json.dumps({**members, "meta": {"held_out": HELD_OUT, "validation": VALIDATION,
                                                      "ratio": RATIO}}, indent=2), encoding="utf-8")
    return cache, splits


def write_case(parts: Path, case_id: str, pair, name: str, options: dict) -> None:
    patient = Path(name).name.replace("_full", "")
    cache_files.write_part(parts, case_id, pair, source=str(SHARED / f"{name}.nii.gz"), content_hash=case_id,
                           patient=patient, options=options)


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

    def raw_model(volume, **options) -> np.ndarray:
        """The network's output without the consistency correction (``inference.consistency: false``)."""
        inference = loaded.interpolator.config.inference
        kept, inference.consistency = inference.consistency, False
        try:
            return model(volume, **options)
        finally:
            inference.consistency = kept

    whole_truth = truth.array.astype(np.float32)
    for method in ("linear", "cubic", "lanczos"):
        score(method, *timed(baseline, thick, method), truth_hu=whole_truth)
    cubic = baseline(thick, "cubic")
    score("cubic, made consistent", make_consistent(cubic, thick.array, spacing, thick.spacing[2]), 0.0,
          truth_hu=whole_truth)
    score("model, default (mean)", *timed(model, thick), truth_hu=whole_truth)
    score("model, mean, no consistency step", *timed(raw_model, thick), truth_hu=whole_truth)
    score("model, one sample (DDIM 20)", *timed(model, thick, mode="sample", steps=20, seed=0),
          truth_hu=whole_truth)
    score("model, one sample (DDIM 20), no consistency step",
          *timed(raw_model, thick, mode="sample", steps=20, seed=0), truth_hu=whole_truth)

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
    if singles:
        score(f"{label} mean of {samples} samples (DDIM 20)", np.mean(singles, axis=0), float("nan"),
              truth_hu=part_truth)
    for steps in step_counts:
        if steps == 20 and singles:
            continue  # the seed-0 DDIM-20 sample above
        score(f"{label} sample DDIM {steps} steps", *timed(model, part, mode="sample", steps=steps, seed=0),
              truth_hu=part_truth)
    return rows


REGIONS = [("chest", HELD_OUT, "held out"), ("abdomen", VALIDATION, "validation"),
           ("head", "head_ct8800_1p5mm", "trained on")]


def regions(checkpoint: Path, cache: Path) -> dict:
    """Cubic against the model (mean mode, with and without the consistency step) per body region, each scan's
    role said: only the chest is held out (the abdomen chose the recipe and the consistency step, the head was
    trained on: its row shows fit, not generalisation)."""
    loaded = load_model(checkpoint, "cpu")
    rows = {}
    print(f"\n{'region (scan, role)':52s} {'cubic dB':>9s} {'raw dB':>7s} {'model dB':>9s} {'gain':>6s} "
          f"{'SSIM c/raw/m':>22s} {'ST bias c/raw/m':>20s}")
    with Cache(cache) as opened:
        for region, name, role in REGIONS:
            case = f"{name}_phase0"
            thick, truth = opened.volume(case, "thick"), opened.volume(case, "thin").array.astype(np.float32)
            spacing = opened.grid(case, "thin").spacing[2]
            outputs = {"cubic": interpolate(thick, spacing, "cubic").array}
            for key, consistency in (("raw", False), ("model", True)):
                loaded.interpolator.config.inference.consistency = consistency
                outputs[key] = loaded.interpolator.predict(thick, spacing).volume.array
            scores = {k: {**metrics.evaluate(v, truth), "soft_tissue_bias": metrics.soft_tissue_bias(v, truth)}
                      for k, v in outputs.items()}
            rows[region] = {"scan": name, "role": role, **scores}
            c, r, m = scores["cubic"], scores["raw"], scores["model"]
            print(f"{f'{region} ({name}, {role})':52s} {c['psnr']:9.2f} {r['psnr']:7.2f} {m['psnr']:9.2f} "
                  f"{m['psnr'] - c['psnr']:+6.2f} {c['ssim']:.4f}/{r['ssim']:.4f}/{m['ssim']:.4f} "
                  f"{c['soft_tissue_bias']:6.2f}/{r['soft_tissue_bias']:.2f}/{m['soft_tissue_bias']:.2f}", flush=True)
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
    parser.add_argument("--checkpoint", type=Path, help="evaluate this checkpoint instead of the run's final one")
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
    checkpoint = args.checkpoint or run / "checkpoints" / "final.pt"
    print(f"checkpoint {checkpoint}, step {read_checkpoint(checkpoint)['step']}")
    rows = evaluate(checkpoint, cache, args.samples, args.steps, args.crop_slices)
    rows["regions"] = regions(checkpoint, cache)
    (args.out / "quality.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    if args.bundle:
        path = bundle(checkpoint, BUNDLE)
        print(f"bundled {path} ({path.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
