"""Peak memory and time of whole-volume versus chunked MAISI encoding and decoding as depth grows.

    python benchmarks/codec_memory.py                       # depths 32 64 128 256, 32 x 32 in-plane
    python benchmarks/codec_memory.py --depths 64 256 --size 16 --overlap 20

The released CT config with random weights (seeded), float32 on CPU, the codec's default chunking
(block by block where the activations fit, see ``codecs/strategy.py``; 32 slices per encode chunk, 8
latent slices per decode chunk, overlap 40 for the slab method) unless told otherwise. Every (operation,
mode, depth) runs in a fresh subprocess so that one peak cannot hide another. Peak memory is the
working memory of the call: the process's peak RSS during it (VmHWM, reset just before through
/proc/self/clear_refs) minus its RSS just before it (network and input loaded, one small warm-up
call made), with glibc's mmap threshold fixed and one arena, so that RSS follows live tensors.
Agreement is max |chunked - whole| / max |whole|. Prints a table and the ratios the issue asks for.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 2**20


def _status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def settle() -> int:
    """Frees what can be freed and resets the peak RSS; returns the RSS now (KiB), the call's baseline."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # return freed heap, so that "before" is what is really in use
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current RSS
    return _status_kib("VmRSS")


def malloc_env() -> dict[str, str]:
    """The environment of a measuring subprocess: RSS that follows live memory.

    A fixed mmap threshold turns off glibc's dynamic one, which otherwise lets freed tensors of up to
    32 MiB fragment the heap, and one arena keeps threads from each growing their own: RSS then
    follows live memory (run to run within 1 MiB) rather than the allocation history (+-15 MiB).
    """
    return {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MIB), "MALLOC_ARENA_MAX": "1"}


def worker(op: str, mode: str, depth: int, size: int, overlap: int, threads: int, out: Path) -> None:
    """One measurement in this (fresh) process; prints one JSON line and saves the result to ``out``."""
    import torch

    from ctslice.codecs.maisi import MaisiCodec, build_network

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    network = build_network()
    big = 1 << 20  # chunks deeper than any volume: one whole-volume pass
    codec = (
        MaisiCodec(network, overlap=overlap)
        if mode == "chunked"
        else MaisiCodec(network, encode_chunk=big, decode_chunk=big)
    )
    g = torch.Generator().manual_seed(depth)
    if op == "encode":
        z = torch.arange(depth, dtype=torch.float32).view(1, 1, depth, 1, 1)
        x = (0.4 + 0.3 * torch.sin(z / 9.0) + 0.1 * torch.randn(1, 1, depth, size, size, generator=g)).clamp(0, 1)
        run = codec.encode
    else:
        x = torch.randn(1, 4, depth // 4, size // 4, size // 4, generator=g)
        run = codec.decode
    run(x[:, :, :8])  # warm-up: one-off allocations (thread pools, kernel workspaces) are not the call's
    before = settle()
    started = time.perf_counter()
    result = run(x)
    seconds = time.perf_counter() - started
    peak = _status_kib("VmHWM")
    torch.save(result, out)
    print(json.dumps({"peak_mib": (peak - before) / 1024, "rss_mib": peak / 1024, "seconds": seconds}))


def measure(op: str, mode: str, depth: int, args: argparse.Namespace, out: Path) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        op,
        mode,
        str(depth),
        str(out),
        "--size",
        str(args.size),
        "--overlap",
        str(args.overlap),
        "--threads",
        str(args.threads),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=malloc_env())
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", type=int, nargs="+", default=[32, 64, 128, 256])
    parser.add_argument("--size", type=int, default=32, help="in-plane size (voxels per side)")
    parser.add_argument("--overlap", type=int, default=40, help="chunk halo per side, in image slices")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", nargs=4, metavar=("OP", "MODE", "DEPTH", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        op, mode, depth, out = args.worker
        worker(op, mode, int(depth), args.size, args.overlap, args.threads, Path(out))
        return

    import torch

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for op in ("encode", "decode"):
            for depth in args.depths:
                row = {}
                for mode in ("whole", "chunked"):
                    out = Path(tmp) / f"{op}-{mode}-{depth}.pt"
                    row[mode] = measure(op, mode, depth, args, out)
                    print(
                        f"  {op} {mode:7s} {depth:4d} slices: {row[mode]['peak_mib']:8.1f} MiB "
                        f"{row[mode]['seconds']:7.1f} s",
                        file=sys.stderr,
                        flush=True,
                    )
                whole, chunked = (torch.load(Path(tmp) / f"{op}-{m}-{depth}.pt") for m in ("whole", "chunked"))
                row["agreement"] = ((chunked - whole).abs().max() / whole.abs().max()).item()
                rows[op, depth] = row

    print(
        f"MAISI VAE (released config, random weights), {args.size}x{args.size} in-plane, float32 CPU, "
        f"{args.threads} threads, chunks 32 slices (encode) / 8 latent slices (decode), overlap {args.overlap}"
    )
    print("| op | depth | whole peak MiB | chunked peak MiB | chunked/whole | whole s | chunked s | max rel. diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for (op, depth), row in rows.items():
        w, c = row["whole"], row["chunked"]
        print(
            f"| {op} | {depth} | {w['peak_mib']:.0f} | {c['peak_mib']:.0f} | {c['peak_mib'] / w['peak_mib']:.2f} | "
            f"{w['seconds']:.1f} | {c['seconds']:.1f} | {row['agreement']:.1e} |"
        )
    reference = 64 if 64 in args.depths else min(args.depths)
    for op in ("encode", "decode"):
        for mode in ("whole", "chunked"):
            base = rows[op, reference][mode]["peak_mib"]
            ratios = ", ".join(f"{d}: {rows[op, d][mode]['peak_mib'] / base:.2f}x" for d in args.depths)
            print(f"{op} {mode} peak relative to {reference} slices: {ratios}")


if __name__ == "__main__":
    main()
