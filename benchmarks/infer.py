"""Inference time and peak memory per volume as its depth grows.

    python benchmarks/infer.py                  # CPU, the tiny model (random weights), 128 x 128 in-plane
    python benchmarks/infer.py --device cuda    # adds a 512 x 512 x 50 -> 246 volume with the full config

Each (depth, mode) runs ``ctslice infer`` logic in a fresh process so that peaks do not mix. The model's
weights do not change time or memory, so an untrained checkpoint of the config is used. CPU peaks are the
process's peak resident set; CUDA peaks are ``max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from fresh_process import run_variant

REPO = Path(__file__).resolve().parents[1]


def make_checkpoint(folder: Path, config_path: Path, overrides: list[str]) -> Path:
    """An untrained checkpoint of ``config`` (what inference loads), plus a random MAISI VAE if it uses one."""
    import torch

    from ctslice.checkpoint import write_checkpoint
    from ctslice.codecs import codec_for
    from ctslice.codecs.maisi import build_network
    from ctslice.config import load_config
    from ctslice.models import build_model

    config = load_config(config_path, overrides)
    if config.codec.name == "maisi":  # a random VAE of the released config, saved as a user's weights would be
        vae = folder / "vae.pt"
        torch.save(build_network().state_dict(), vae)
        config = load_config(config_path, [*overrides, f"codec.checkpoint={vae}"])
    codec = codec_for(config.codec)
    model = build_model(config, codec.latent_channels)
    state = {"step": 0, "config": config.to_dict(), "model": model.state_dict(), "codec": codec.description(),
             "data": {"thin_spacing": 1.0, "ratio": 5.0, "inplane_size": 0}}
    return write_checkpoint(state, folder / "model.pt")


def worker(args: argparse.Namespace) -> None:

    from ctslice.commands.infer import run_infer
    from ctslice.data.pairs import simulate_pair
    from ctslice.data.phantom import make_phantom
    from ctslice.hardware import peak_memory_bytes, reset_peak_memory, resolve_device
    from ctslice.io import write_volume

    size = args.size
    truth = make_phantom((args.depth * 5, size, size), (384 / size, 384 / size, 1.0), seed=0)
    scan = write_volume(simulate_pair(truth, 5.0, 1.0).thick, Path(args.folder) / f"thick_{args.depth}.nii.gz")
    device = resolve_device(args.device)  # "cuda" -> cuda:N; reset_peak_memory initialises CUDA first
    reset_peak_memory(device)
    started = time.time()
    run_infer(scan, Path(args.folder) / "thin.nii.gz", checkpoint=Path(args.checkpoint), mode=args.mode,
              steps=args.steps, device_name=args.device, precision=args.precision)
    print(json.dumps({"seconds": time.time() - started, "peak_gib": peak_memory_bytes(device) / 2**30}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--depths", type=int, nargs="*", default=[10, 20, 40, 80], help="thick slices")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sample-depths", type=int, nargs="*", default=[10],
                        help="depths that also run DDIM sampling (about --steps times the mean pass)")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    for hidden in ("--worker", "--folder", "--checkpoint", "--depth", "--mode"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.depth = int(args.depth)
        worker(args)
        return
    runs = [("tiny", REPO / "configs" / "tiny_cpu.yaml", [], args.size, depth, mode)
            for depth in args.depths for mode in ("mean", "sample") if mode == "mean" or depth in args.sample_depths]
    if args.device.startswith("cuda"):  # 50 thick slices -> 250 thin at 512 x 512 (246 inside the first/last slab)
        runs += [("full", REPO / "configs" / "slice_interpolation_full_medium.yaml", [], 512, 50, mode)
                 for mode in ("mean", "sample")]
    with tempfile.TemporaryDirectory() as folder:
        checkpoints = {}
        print(f"{'model':6s} {'thick x H x W':>16s} {'thin slices':>11s} {'mode':>7s} {'seconds':>9s} {'peak GiB':>9s}")
        for name, config, overrides, size, depth, mode in runs:
            if name not in checkpoints:
                sub = Path(folder) / name
                sub.mkdir()
                checkpoints[name] = make_checkpoint(sub, config, overrides)
            command = [sys.executable, __file__, "--worker", "1", "--folder", folder, "--checkpoint",
                       str(checkpoints[name]), "--depth", str(depth), "--mode", mode, "--size", str(size),
                       "--steps", str(args.steps), "--device", args.device, "--precision", args.precision]
            result = run_variant(command)
            if isinstance(result, str):
                print(f"{name:6s} {depth:>6d} x {size} x {size} failed: {result}")
                continue
            label = mode if mode == "mean" else f"DDIM {args.steps}"
            print(f"{name:6s} {f'{depth} x {size} x {size}':>16s} {depth * 5:>11d} {label:>7s} "
                  f"{result['seconds']:9.1f} {result['peak_gib']:9.2f}", flush=True)


if __name__ == "__main__":
    main()
