"""CPU time, peak memory and arithmetic of chunked MAISI decoding and encoding, block-wise versus slabs.

    python benchmarks/codec_speed.py                              # the figures issue 13 asks for
    python benchmarks/codec_speed.py --cases decode:64:16:8 --threads 1

Each case is ``op:latent_depth:latent_side:chunk`` (chunk in latent slices; an encode case encodes
the volume of 4x those sizes, in chunks of 4 x chunk image slices). Every case runs three ways: one
whole-volume pass, block by block (``strategy="blocks"``, the new default) and the whole network per
slab (``strategy="slabs"``, the method before issue 13, halo 40). Each run is a fresh subprocess
(``codec_memory.py``'s measurement: CPU time of the process, peak RSS above the RSS before the call).
Agreement is max |chunked - whole| / max |whole|.

Arithmetic per output voxel, relative to one whole-volume pass, is counted (not timed) with
``torch.utils.flop_counter`` on the meta device, so it is exact and also given at full size
(a 50 -> 250 x 512 x 512 decode: 63 x 128 x 128 latents), where a CPU cannot run it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from codec_memory import _status_kib, malloc_env, settle

DEFAULT_CASES = ["decode:64:16:8", "decode:48:16:12", "encode:48:16:12"]
FULL_SIZE = "decode:63:128:8"


def _codec(strategy: str, chunk: int, device: str = "cpu"):
    import torch

    from ctslice.codecs.maisi import MaisiCodec, build_network

    torch.manual_seed(0)
    big = 1 << 20  # chunks deeper than any volume: one whole-volume pass
    if strategy == "whole":
        return MaisiCodec(build_network(device), encode_chunk=big, decode_chunk=big)
    return MaisiCodec(build_network(device), encode_chunk=4 * chunk, decode_chunk=chunk, strategy=strategy)


def _input(op: str, depth: int, side: int, device: str = "cpu"):
    import torch

    g = torch.Generator().manual_seed(depth)
    if op == "decode":
        return torch.randn(1, 4, depth, side, side, generator=g).to(device)
    z = torch.arange(4 * depth, dtype=torch.float32).view(1, 1, -1, 1, 1)
    noise = torch.randn(1, 1, 4 * depth, 4 * side, 4 * side, generator=g)
    return (0.4 + 0.3 * torch.sin(z / 9.0) + 0.1 * noise).clamp(0, 1).to(device)


def worker(case: str, strategy: str, threads: int, out: Path) -> None:
    """One timed run in this fresh process; prints one JSON line and saves the result to ``out``."""
    import torch

    torch.set_num_threads(threads)  # the codec's log lines are not shown: no handler in this process
    op, depth, side, chunk = _parse(case)
    codec = _codec(strategy, chunk)
    x = _input(op, depth, side)
    run = getattr(codec, op)
    run(x[:, :, :2])  # warm-up: one-off allocations (thread pools, kernel workspaces) are not the call's
    before = settle()
    cpu, wall = time.process_time(), time.perf_counter()
    result = run(x)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    peak = _status_kib("VmHWM")
    torch.save(result, out)
    print(json.dumps({"cpu_s": cpu, "wall_s": wall, "peak_mib": (peak - before) / 1024}))


def arithmetic(case: str, strategy: str) -> float:
    """Floating-point operations of the call on the meta device (nothing is computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    op, depth, side, chunk = _parse(case)
    codec = _codec(strategy, chunk, "meta")
    with FlopCounterMode(display=False) as counter:
        getattr(codec, op)(_input(op, depth, side, "meta"))
    return counter.get_total_flops()


def _parse(case: str) -> tuple[str, int, int, int]:
    op, depth, side, chunk = case.split(":")
    if op not in ("encode", "decode"):
        raise SystemExit(f"case {case!r}: op must be encode or decode")
    return op, int(depth), int(side), int(chunk)


def measure(case: str, strategy: str, threads: int, out: Path) -> dict:
    command = [sys.executable, __file__, "--worker", case, strategy, str(out), "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=malloc_env())
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="op:latent_depth:latent_side:chunk")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-slabs", action="store_true", help="time only whole and block-wise (slabs are slow)")
    parser.add_argument("--worker", nargs=3, metavar=("CASE", "STRATEGY", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], args.threads, Path(args.worker[2]))
        return

    import torch

    print(f"MAISI VAE (released config, random weights), float32 CPU, {args.threads} threads, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print("Arithmetic relative to one whole-volume pass (FLOPs counted on the meta device):")
    for case in [*args.cases, FULL_SIZE]:
        whole = arithmetic(case, "whole")
        ratios = {s: arithmetic(case, s) / whole for s in ("blocks", "slabs")}
        print(f"  {case}: blocks {ratios['blocks']:.2f}x, slabs {ratios['slabs']:.2f}x "
              f"(whole {whole / 1e12:.2f} TFLOP)", flush=True)
    print("| case | method | CPU s | wall s | x whole CPU | peak MiB | max rel. diff |")
    print("|---|---|---:|---:|---:|---:|---:|")
    strategies = ("whole", "blocks") if args.skip_slabs else ("whole", "blocks", "slabs")
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases:
            rows = {s: measure(case, s, args.threads, Path(tmp) / f"{s}.pt") for s in strategies}
            whole = torch.load(Path(tmp) / "whole.pt")
            for s, row in rows.items():
                diff = (torch.load(Path(tmp) / f"{s}.pt") - whole).abs().max() / whole.abs().max()
                print(f"| {case} | {s} | {row['cpu_s']:.1f} | {row['wall_s']:.1f} | "
                      f"{row['cpu_s'] / rows['whole']['cpu_s']:.2f} | {row['peak_mib']:.0f} | {diff.item():.1e} |",
                      flush=True)


if __name__ == "__main__":
    main()
