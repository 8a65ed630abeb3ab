"""Predicted versus measured memory of ``ctslice inspect-memory``'s model, as patches and volumes grow deeper.

    python benchmarks/memory_model.py                        # CPU: tiny config and two larger variants
    python benchmarks/memory_model.py --variants tiny wide   # some of them
    python benchmarks/memory_model.py --device cuda          # on a GPU: the same, plus the full-size config

Each row is one stage of a run at one size: a training step at a patch depth (the U-Net's activations
grow linearly with the patch, the middle block's attention quadratically), or an inference stage at a
volume depth (chunked encoding and decoding should stay flat, the windowed U-Net pass grows with the
volume's latent buffers). "Predicted" is the stage's total from ``estimate_memory`` for the device
measured on; "measured" is ``measure_memory`` (CPU: peak resident set per stage in a fresh process;
CUDA: ``torch.cuda.max_memory_allocated``). Variants:

- tiny: ``configs/tiny_cpu.yaml`` as is (pixel space, U-Net [16, 32, 32], batch 2, BF16); tiny-fp32: in FP32.
- maisi: the MAISI VAE (random weights), U-Net [32, 64, 64], BF16, gradient checkpointing; patches 64 x 64
  in-plane, volumes 32 x 32 (the VAE on 2 CPU cores takes minutes per volume).
- wide: pixel space, U-Net [32, 64, 128] with 8 heads, fp32: a middle block whose attention dominates.
- full (CUDA only): the A100 config of the design (MAISI, [128, 256, 512, 512], 4 heads, checkpointing,
  batch 1 x 8, BF16, 512 x 512 slices, 5 -> 1 mm).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from ctslice.config import load_config
from ctslice.hardware import configure, resolve_device
from ctslice.memory import Geometry, estimate_memory, measure_memory, with_overrides

GIB = 2**30
TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"
FULL = {"codec.name": "maisi", "model.channels": [128, 256, 512, 512], "model.attention_levels": [False] * 4,
        "model.attention_heads": 4, "model.norm_num_groups": 32, "model.gradient_checkpointing": True,
        "training.batch_size": 1, "training.grad_accumulation": 8, "training.precision": "bf16",
        "data.patch_size": 0, "inference.window_slices": 64, "inference.window_size": 256}

# name: (overrides, patch side, patch depths in thick slices, volume side, inference volume depths, CUDA only)
VARIANTS = {
    "tiny": ({}, 48, (2, 4, 8), 48, (40, 80, 160), False),
    "tiny-fp32": ({"training.precision": "fp32"}, 48, (2, 4, 8), 48, (40, 80, 160), False),
    "maisi": ({"codec.name": "maisi", "model.channels": [32, 64, 64], "model.gradient_checkpointing": True,
               "training.precision": "bf16", "data.patch_size": 64, "inference.window_size": 32}, 64, (8, 16, 32),
              32, (64, 160, 256), False),
    "wide": ({"model.channels": [32, 64, 128], "model.attention_heads": 8, "training.precision": "fp32",
              "data.patch_size": 64,
              "inference.window_size": 64, "inference.window_slices": 16}, 64, (2, 4, 8), 64, (32, 64, 128), False),
    "full": (FULL, 512, (2, 4, 8), 512, (150, 300, 600), True),
}


def rows_for(name: str, device: torch.device):
    overrides, patch_side, thick_slices, side, depths, cuda_only = VARIANTS[name]
    if cuda_only and device.type != "cuda":
        return
    base = with_overrides(load_config(TINY), {"hardware.device": device.type, **overrides})
    for slices in thick_slices:
        config = with_overrides(base, {"data.patch_thick_slices": slices})
        volume = (slices * 5, patch_side, patch_side)
        yield name, "train step", f"patch {slices * 5} x {patch_side} x {patch_side}", config, \
            Geometry(5.0, volume, volume, "")
    for depth in depths:
        volume = (depth, side, side)
        for part in ("encode", "denoise", "decode"):
            yield name, part, f"volume {depth} x {side} x {side}", base, Geometry(5.0, volume, volume, "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = resolve_device(args.device)  # "cuda" -> cuda:N (memory statistics need the index)
    configure(device)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    print(f"# {time.strftime('%Y-%m-%d')}, {platform.node()}, {torch.get_num_threads()} threads, {gpu}, "
          f"torch {torch.__version__}", flush=True)
    print("| variant | stage | size (thin voxels) | predicted GB | measured GB | measured / predicted | s |")
    print("|---|---|---|---:|---:|---:|---:|", flush=True)
    ratios = []
    for name in args.variants:
        for variant, part, size, config, geometry in rows_for(name, device):
            started = time.time()
            estimate = estimate_memory(config, geometry, device.type)
            predicted = next(s.total for s in estimate.training + estimate.inference if s.name == part)
            measured = measure_memory(config, geometry, device, parts=(part,), skip_above={part: predicted})[0]
            if measured.bytes is None:
                shown, ratio = measured.error, ""
            else:
                ratios.append(measured.bytes / predicted)
                shown, ratio = f"{measured.bytes / GIB:.3f}", f"{measured.bytes / predicted:.2f}"
            print(f"| {variant} | {part} | {size} | {predicted / GIB:.3f} | {shown} | {ratio} | "
                  f"{time.time() - started:.0f} |", flush=True)
    if ratios:
        print(f"\nmeasured / predicted over {len(ratios)} rows: {min(ratios):.2f} to {max(ratios):.2f}")


if __name__ == "__main__":
    main()
