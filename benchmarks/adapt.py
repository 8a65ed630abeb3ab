"""Does per-scan adaptation help? Held-out PSNR against minutes of fine-tuning on the scan's own in-plane pairs.

    python benchmarks/adapt.py --minutes 0 2 5 10

The held-out ``ts_chest_aorta_1p5mm`` made thick x5 (slab averaging at 7.5 mm, as the quality benchmark
does) is thinned by the bundled model (or ``--checkpoint``) after ``ctslice.training.adapt`` fine-tuned a
copy of it on that thick scan alone for each number of minutes (0: the model as it is); each output is
scored against the thin truth under the README's metric protocol, beside cubic.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ctslice.checkpoint import bundled_model_path, read_checkpoint
from ctslice.data.pairs import simulate_pair
from ctslice.evaluation import metrics
from ctslice.inference.loading import load_model
from ctslice.io import read_volume
from ctslice.io.geometry import interpolate
from ctslice.training.adapt import adapt

HELD_OUT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct" / "ts_chest_aorta_1p5mm.nii.gz"
RATIO = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[0, 2, 5, 10])
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: the bundled model")
    args = parser.parse_args()
    checkpoint = args.checkpoint or bundled_model_path()
    source = read_volume(HELD_OUT)
    pair = simulate_pair(source, RATIO * source.spacing[2], source.spacing[2])
    thick, truth, spacing = pair.thick, pair.thin.array.astype(np.float32), source.spacing[2]
    print(f"CPU capability: {torch.backends.cpu.get_cpu_capability()}, threads {torch.get_num_threads()}")
    print(f"{'output':28s} {'steps':>6s} {'PSNR':>7s} {'SSIM':>7s} {'HU MAE':>7s} {'ST bias':>8s}")

    def score(name: str, volume: np.ndarray, steps: int | str) -> None:
        row = metrics.evaluate(volume, truth)
        print(f"{name:28s} {steps!s:>6s} {row['psnr']:7.2f} {row['ssim']:7.4f} {row['hu_mae']:7.1f} "
              f"{metrics.soft_tissue_bias(volume, truth):8.2f}", flush=True)

    score("cubic", interpolate(thick, spacing, "cubic").array, "")
    for minutes in args.minutes:
        with tempfile.TemporaryDirectory() as folder:
            started = time.time()
            model = adapt(checkpoint, thick, spacing, minutes, Path(folder)) if minutes > 0 else checkpoint
            seconds = time.time() - started
            output = load_model(model, "cpu").interpolator.predict(thick, spacing).volume.array
            steps = read_checkpoint(model)["step"] if minutes > 0 else 0
            score(f"model, adapted {minutes:g} min ({seconds / 60:.1f})", output, steps)


if __name__ == "__main__":
    main()
