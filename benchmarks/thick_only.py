"""A real thick-only scan: slab periodicity, slab consistency and sharpness, before and after fine-tuning on it.

    python benchmarks/thick_only.py --out scratch/thick_only                      # cubic and the bundled model
    python benchmarks/thick_only.py --out scratch/thick_only --finetune-minutes 20   # ... and fine-tuned on the scan
    python benchmarks/thick_only.py --out scratch/thick_only --checkpoint old.pt     # ... and any other model
    python benchmarks/thick_only.py --out scratch/thick_only --sample-steps 10       # ... and one DDIM sample
    python benchmarks/thick_only.py --scan ../shared/data/ct/large/lungdx_chest_5mm_full.nii.gz --crop 256 \
        --finetune-minutes 10                 # the same series at full resolution, a central 256 x 256 crop

The scan (default ``../shared/data/ct/lungdx_chest_5mm.nii.gz``, a real clinical 5 mm series) has no thin
truth, so each output is judged by ``ctslice.evaluation.thick_input`` against the scan itself: the
border/inside slice-to-slice ratio (1 = no memory of the slab grid), the HU MAE of the output
re-thickened by the scan's slice profile against the scan (how well it explains what was measured),
and the mean slice-to-slice change (through-plane detail: higher is sharper) beside cubic's. The
bundled model is also measured without its consistency step (``inference.consistency: false``).

Fine-tuning runs the README's workflow as commands: ``ctslice preprocess`` (the scan becomes a
self-supervised case), ``ctslice split``, ``ctslice train --config default_model --set
training.init_from=bundled --set data.inplane_fraction=1`` for the given minutes. In-plane pairs need
axial pixels no coarser than the thin spacing: the 2 x 2 binned ``lungdx_chest_5mm`` (1.68 mm pixels)
gives none at 1 mm, so fine-tuning runs on its full-resolution original (0.84 mm pixels), cropped in-plane
(``--crop``) to keep the inference of each model short.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ctslice.evaluation.thick_input import slab_consistency, slab_periodicity, through_plane_change
from ctslice.inference.loading import load_model
from ctslice.io import read_volume, write_volume
from ctslice.io.geometry import interpolate

SCAN = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct" / "lungdx_chest_5mm.nii.gz"
THIN_SPACING = 1.0
RATIO = 5


def ctslice(*args) -> None:
    """Run a ctslice command as a user would; its output goes to this script's."""
    command = [sys.executable, "-m", "ctslice", *map(str, args)]
    print("$", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)


def finetune(scan: Path, out: Path, minutes: float) -> Path:
    """The thick-only workflow of the README on ``scan``; returns the fine-tuned checkpoint."""
    cache, splits, run = out / "cache.h5", out / "splits.json", out / "finetune"
    ctslice("preprocess", scan, "-o", cache, "--thick-spacing", RATIO * THIN_SPACING, "--thin-spacing", THIN_SPACING)
    ctslice("split", cache, "-o", splits, "--val", 0, "--test", 0)
    ctslice("train", "--config", "default_model", "--out", run, "--set", f"data.cache={cache}",
            "--set", f"data.splits={splits}", "--set", "training.init_from=bundled",
            "--set", "data.inplane_fraction=1", "--set", f"training.time_limit_minutes={minutes}")
    return run / "checkpoints" / "final.pt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("scratch/thick_only"))
    parser.add_argument("--scan", type=Path, default=SCAN)
    parser.add_argument("--checkpoint", type=Path, action="append", default=[], help="another model to measure")
    parser.add_argument("--crop", type=int, default=0, help="a central in-plane crop of this many pixels (0: none)")
    parser.add_argument("--finetune-minutes", type=float, default=0.0, help="fine-tune the bundled model this long")
    parser.add_argument("--sample-steps", type=int, default=0,
                        help="also one DDIM sample of the bundled model with this many steps (0: none)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"CPU capability: {torch.backends.cpu.get_cpu_capability()}, threads {torch.get_num_threads()}")
    thick, scan = read_volume(args.scan), args.scan
    if args.crop:
        rows, columns = thick.array.shape[1:]
        y0, x0 = (rows - args.crop) // 2, (columns - args.crop) // 2
        thick = thick.crop((0, thick.depth), (y0, y0 + args.crop), (x0, x0 + args.crop))
        scan = args.out / "scan" / f"cropped_{args.crop}.nii.gz"
        write_volume(thick, scan)
    models = {"bundled model": None, **{str(path): path for path in args.checkpoint}}
    if args.finetune_minutes > 0:
        started = time.time()
        models["fine-tuned on the scan"] = finetune(scan, args.out, args.finetune_minutes)
        print(f"fine-tuning: {(time.time() - started) / 60:.1f} min wall (preprocess, split, train)")
    measured = thick.array.astype(np.float32)

    def predict(path: Path | None, consistency: bool = True, **options) -> np.ndarray:
        interpolator = load_model(path, "cpu").interpolator
        interpolator.config.inference.consistency = consistency
        return interpolator.predict(thick, THIN_SPACING, **options).volume.array

    outputs = {"cubic": lambda: interpolate(thick, THIN_SPACING, "cubic").array}
    for name, path in models.items():
        outputs[name] = lambda path=path: predict(path)
    outputs["bundled model, no consistency step"] = lambda: predict(None, consistency=False)
    if args.sample_steps:
        sample = {"mode": "sample", "steps": args.sample_steps, "seed": 0}
        outputs[f"one sample (DDIM {args.sample_steps})"] = lambda: predict(None, **sample)
        outputs[f"one sample (DDIM {args.sample_steps}), no consistency"] = lambda: predict(None, False, **sample)
    rows = {}
    print(f"\n{scan.name}: {thick.array.shape} (z, y, x) at {thick.spacing[2]:g} mm -> {THIN_SPACING:g} mm")
    print(f"{'output':40s} {'border/inside':>13s} {'re-thickened MAE HU':>20s} {'slice change HU':>16s} "
          f"{'seconds':>8s}")
    for name, make in outputs.items():
        started = time.time()
        thin = make()
        seconds = time.time() - started
        rows[name] = {"slab_periodicity": slab_periodicity(thin, RATIO),
                      "slab_consistency_hu": slab_consistency(thin, measured, RATIO),
                      "through_plane_change_hu": through_plane_change(thin, RATIO), "seconds": seconds}
        row = rows[name]
        print(f"{name[-40:]:40s} {row['slab_periodicity']:13.3f} {row['slab_consistency_hu']:20.2f} "
              f"{row['through_plane_change_hu']:16.2f} {seconds:8.1f}", flush=True)
    (args.out / "thick_only.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
