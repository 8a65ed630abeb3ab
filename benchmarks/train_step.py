"""Training step time and peak memory, with and without latent caching and gradient checkpointing.

    python benchmarks/train_step.py                 # CPU: tiny, a larger CPU config, a MAISI (random weights) one
    python benchmarks/train_step.py --device cuda   # adds the full 512 x 512 config on a GPU (BF16)
    python benchmarks/train_step.py --variants tiny --precision fp32   # one variant, one precision

Each variant trains for ``--steps`` steps in a fresh process (so peaks do not mix) on a phantom cache
built once; it reports the mean step time after the first three steps and the peak memory (CUDA:
``max_memory_allocated``; CPU: peak resident set of that process). Validation is off. With
``data.cache_latents`` the frozen codec encodes each training volume once before the first step; without
it, every step encodes its patches, which is what latent caching saves.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from fresh_process import run_variant

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny_cpu.yaml"
RECIPE = REPO / "configs" / "default_model.yaml"
FULL = REPO / "configs" / "slice_interpolation_full_medium.yaml"

CPU_VARIANTS = {
    "tiny": (TINY, []),
    "tiny, no latent cache": (TINY, ["data.cache_latents=false"]),
    "tiny, checkpointing": (TINY, ["model.gradient_checkpointing=true"]),
    "larger (default-model recipe)": (RECIPE, []),
    "larger, checkpointing": (RECIPE, ["model.gradient_checkpointing=true"]),
    # Cached latents come from whole-volume encodes: chunked encoding (exact GroupNorm statistics, one pass
    # per layer) of the 120-slice training volumes takes many minutes on a CPU and does not change the step.
    "maisi (random VAE), latent cache": (TINY, ["codec.name=maisi", "data.patch_size=64", "model.channels=[32,64]",
                                                "model.attention_levels=[false,false]", "training.batch_size=1",
                                                "codec.encode_chunk=128"]),
    "maisi (random VAE), no latent cache": (TINY, ["codec.name=maisi", "data.patch_size=64", "model.channels=[32,64]",
                                                   "model.attention_levels=[false,false]", "training.batch_size=1",
                                                   "data.cache_latents=false"]),
}
GPU_VARIANTS = {
    "full A100 config, 512 x 512, BF16": (FULL, ["training.grad_accumulation=1", "data.num_workers=0"]),
    "full, no checkpointing": (FULL, ["training.grad_accumulation=1", "data.num_workers=0",
                                      "model.gradient_checkpointing=false"]),
}


def build_data(folder: Path, size: int) -> tuple[Path, Path, Path]:
    """Four phantom scans (1 mm slices) -> cache and splits; a random-weight MAISI VAE file."""
    import torch

    from ctslice.codecs.maisi import build_network
    from ctslice.data.phantom import make_phantom
    from ctslice.data.preprocess import PreprocessOptions, run_preprocess
    from ctslice.data.splits import run_split
    from ctslice.io import write_volume

    for seed in range(4):
        write_volume(make_phantom((120, size, size), (384 / size, 384 / size, 1.0), seed=seed),
                     folder / "raw" / f"phantom{seed}.nii.gz")
    run_preprocess([folder / "raw"], folder / "cache.h5", PreprocessOptions(5.0, 1.0))
    run_split(folder / "cache.h5", folder / "splits.json", val=0.25, test=0.0, seed=0)
    torch.save(build_network().state_dict(), folder / "vae.pt")
    return folder / "cache.h5", folder / "splits.json", folder / "vae.pt"


def worker(args: argparse.Namespace) -> None:
    """One variant in this process: train, print a JSON line with step time and peak memory."""

    from ctslice.config import load_config
    from ctslice.hardware import peak_memory_bytes, resolve_device, resolve_precision
    from ctslice.training.run_log import read_log
    from ctslice.training.trainer import train

    config_path, overrides = {**CPU_VARIANTS, **GPU_VARIANTS}[args.worker]
    config = load_config(config_path, [*overrides, f"data.cache={args.cache}", f"data.splits={args.splits}",
                                       f"codec.checkpoint={args.vae}", f"training.max_steps={args.steps}",
                                       "training.log_interval=1", "training.val_interval=100000",
                                       "validation.val_samples=0", f"hardware.device={args.device}",
                                       *([f"training.precision={args.precision}"] if args.precision else [])])
    device = resolve_device(args.device)
    run = Path(args.run)
    train(config, run, threads=args.threads)
    times = [r["step_time"] for r in read_log(run) if r["kind"] == "train"][3:]
    print(json.dumps({"step_s": sum(times) / len(times), "peak_gib": peak_memory_bytes(device) / 2**30,
                      "precision": resolve_precision(config.training.precision, device).name}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=13)
    parser.add_argument("--size", type=int, default=128, help="phantom in-plane matrix (use 512 on a GPU)")
    parser.add_argument("--variants", nargs="*", help="run only these variants (names as printed)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), help="override training.precision")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: the CPUs this process may use)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--splits", help=argparse.SUPPRESS)
    parser.add_argument("--vae", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    variants = dict(CPU_VARIANTS, **(GPU_VARIANTS if args.device.startswith("cuda") else {}))
    variants = {name: variant for name, variant in variants.items() if not args.variants or name in args.variants}
    with tempfile.TemporaryDirectory() as folder:
        cache, splits, vae = build_data(Path(folder), 512 if args.device.startswith("cuda") else args.size)
        print(f"{'variant':40s} {'step s':>8s} {'peak GiB':>9s}  precision")
        for name in variants:
            command = [sys.executable, __file__, "--worker", name, "--cache", str(cache), "--splits", str(splits),
                       "--vae", str(vae), "--run", str(Path(folder) / name.replace(" ", "_").replace(",", "")),
                       "--steps", str(args.steps), "--device", args.device,
                       *(["--precision", args.precision] if args.precision else []),
                       *(["--threads", str(args.threads)] if args.threads else [])]
            result = run_variant(command)
            if isinstance(result, str):
                print(f"{name:40s} failed: {result}")
                continue
            print(f"{name:40s} {result['step_s']:8.3f} {result['peak_gib']:9.2f}  {result['precision']}", flush=True)


if __name__ == "__main__":
    main()
