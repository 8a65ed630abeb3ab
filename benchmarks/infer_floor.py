"""The arithmetic floor of model inference on this CPU, and how close each setting of the windows comes to it.

    python benchmarks/infer_floor.py                       # floor, then the variants on a 64 x 256 x 256 region
    python benchmarks/infer_floor.py --region 40 512 512   # the variants on a full-width slab
    python benchmarks/infer_floor.py --variants            # only the variants (skip the floor)
    python benchmarks/infer_floor.py --default-malloc      # glibc's malloc as 0.2.0 left it

For the bundled model (``ctslice/default_model/default.pt``):
1. FLOPs per voxel of one U-Net window, counted by ``torch.utils.flop_counter`` (multiply-adds count 2);
2. the throughput this CPU achieves on the convolutions of one window batch (GFLOP/s: FLOPs counted as in
   1, seconds from the profiler's convolution kernels), and on the whole network pass;
3. hence the floor in CPU-seconds per million output voxels (every voxel computed once, at that rate);
4. each variant of the windowed pass (window size, overlap, blending, batch, attention kernel) over a
   region of random condition (no air: every window runs the U-Net): windows run, CPU-seconds per
   million output voxels, and the fraction of the floor reached. ``before`` is the configuration of
   ctslice 0.2.0 (windows of 40 x 96 x 96 pixels shrunk to 40 x 80 x 80 by the attention cap, overlap
   0.5 in every axis, MONAI's fixed scan rule, two windows a call; see ``before_plan``).
Freed blocks are kept for reuse as every command does (``hardware.keep_freed_memory``) unless
``--default-malloc``. Every row carries ``torch.backends.cpu.get_cpu_capability()``; BF16 is not used
(FP32 throughout, as precision auto gives on a CPU without AVX512-BF16/AMX).
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import time
from contextlib import contextmanager

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from ctslice.hardware import keep_freed_memory
from ctslice.inference.loading import load_model
from ctslice.models.sampling import WindowedNetwork, mean_estimate
from ctslice.models.window_plan import WindowPlan

CONVOLUTIONS = ("aten::mkldnn_convolution", "aten::slow_conv3d_forward")  # the kernels; self time only


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def attention_kernel(unet: torch.nn.Module, fused: bool):
    """MONAI's self-attention through ``scaled_dot_product_attention`` (fused) or its einsum/softmax path."""
    blocks = [m for m in unet.modules() if hasattr(m, "use_flash_attention")]
    before = [m.use_flash_attention for m in blocks]
    for m in blocks:
        m.use_flash_attention = fused
    try:
        yield
    finally:
        for m, flag in zip(blocks, before, strict=True):
            m.use_flash_attention = flag


def window_flops(unet, window: tuple[int, int, int], channels: int) -> tuple[int, int]:
    """FLOPs of one window: all of them, and those of its convolutions."""
    x = torch.zeros(1, 2 * channels, *window)
    with attention_kernel(unet, False), FlopCounterMode(display=False) as counter, torch.inference_mode():
        unet(x, torch.full((1,), 999, dtype=torch.long))
    return counter.get_total_flops(), counter.get_flop_counts()["Global"].get(torch.ops.aten.convolution, 0)


def floor(loaded, window: tuple[int, int, int], batch: int) -> float:
    """Prints the floor rows; returns the network's GFLOP/s (fused attention) on ``batch`` windows."""
    unet = loaded.interpolator.model.unet
    channels = loaded.interpolator.codec.latent_channels
    flops, conv_flops = window_flops(unet, window, channels)
    voxels = window[0] * window[1] * window[2]
    x = torch.randn(batch, 2 * channels, *window)
    t = torch.full((batch,), 999, dtype=torch.long)
    with torch.inference_mode(), attention_kernel(unet, True):
        unet(x, t)  # warm-up: oneDNN picks and caches its kernels
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            started = time.perf_counter()
            unet(x, t)
            wall = time.perf_counter() - started
    conv_seconds = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in CONVOLUTIONS) / 1e6
    threads = torch.get_num_threads()
    conv_rate = batch * conv_flops / conv_seconds / 1e9
    net_rate = batch * flops / wall / 1e9
    per_voxel = flops / voxels
    print(f"FLOPs per output voxel (one window of {window}): {per_voxel / 1e3:.0f} k "
          f"({flops / 1e9:.1f} GFLOP a window)")
    print(f"convolutions of one window batch of {batch}: {conv_rate:.1f} GFLOP/s on {threads} threads "
          f"({conv_seconds:.2f} s of {wall:.2f} s); the whole pass {net_rate:.1f} GFLOP/s")
    floor_cpu = per_voxel * 1e6 / (conv_rate * 1e9) * threads
    print(f"floor: {floor_cpu:.1f} CPU-s per million output voxels ({floor_cpu / threads:.1f} wall-s on "
          f"{threads} threads) at the convolution rate; a 512 x 512 x 320 output (83.9 M voxels): "
          f"{floor_cpu * 83.9 / threads / 60:.1f} min wall")
    return floor_cpu


def before_plan(network: WindowedNetwork):
    """The 0.2.0 rule: a fixed window min(roi, size) and MONAI's interval int(window * (1 - overlap))."""
    def plan(shape):
        roi = tuple(min(r, s) for r, s in zip(network.roi, shape, strict=True))
        counts = []
        for size, window in zip(shape, roi, strict=True):
            interval = max(1, int(window * (1 - network.overlap))) if window < size else window
            counts.append(1 if window >= size else math.ceil((size - window) / interval) + 1)
        return WindowPlan(roi, (network.overlap,) * 3, tuple(counts))

    network.plan = plan
    return network


VARIANTS = {  # name: (window pixels (z, y, x), overlap, blend, batch, fused attention, 0.2.0 scan rule)
    "before": ((40, 80, 80), 0.5, "gaussian", 2, False, True),
    "+ fused attention": ((40, 80, 80), 0.5, "gaussian", 2, True, True),
    "+ overlap 0.125, planned": ((40, 80, 80), 0.125, "gaussian", 2, True, False),
    "windows 48 x 96 x 96": ((48, 96, 96), 0.125, "gaussian", 2, True, False),
    "windows 64 x 128 x 128": ((64, 128, 128), 0.125, "gaussian", 2, True, False),
    "windows 64 x 128 x 128, batch 1": ((64, 128, 128), 0.125, "gaussian", 1, True, False),
    "windows 64 x 160 x 160, batch 1": ((64, 160, 160), 0.125, "gaussian", 1, True, False),
    "constant blending": ((64, 128, 128), 0.125, "constant", 2, True, False),
    "48 x 96 x 96, overlap 0.0625 (new)": ((48, 96, 96), 0.0625, "gaussian", 2, True, False),
}
FULL_SIZE = (320, 512, 512)  # lungdx_chest_5mm_full at 1 mm


def computed_voxels(network: WindowedNetwork, shape) -> int:
    """Voxels the windows of one pass over ``shape`` compute (overlaps counted each time)."""
    plan = network.plan(shape)
    return plan.windows * math.prod(plan.roi)


def variants(loaded, region: tuple[int, int, int], names: list[str], floor_cpu: float | None) -> None:
    model = loaded.interpolator.model
    channels = loaded.interpolator.codec.latent_channels
    cond = torch.randn(1, channels, *region, generator=torch.Generator().manual_seed(0))
    mvox = math.prod(region) / 1e6
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"\nvariants over a {region} region ({mvox:.2f} M output voxels), capability {capability}, "
          f"{torch.get_num_threads()} threads; the last columns project onto a {FULL_SIZE} output")
    print(f"{'variant':36} {'windows':>7} {'wall s':>7} {'CPU-s/Mvox':>10} {'of floor':>8} "
          f"{'full: windows':>13} {'computed x':>10} {'wall min':>8}")
    for name in names:
        window, overlap, blend, batch, fused, old_rule = VARIANTS[name]
        network = WindowedNetwork(model, window, overlap, batch, blend=blend)
        if old_rule:
            before_plan(network)
        windows = network.windows(region)
        with attention_kernel(model.unet, fused), torch.inference_mode():
            started, cpu = time.perf_counter(), cpu_seconds()
            mean_estimate(model, cond, network)
            wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu
        per = cpu / mvox
        share = f"{floor_cpu / per:.0%}" if floor_cpu else "-"
        full_computed = computed_voxels(network, FULL_SIZE)
        full_wall = wall / computed_voxels(network, region) * full_computed / 60
        print(f"{name:36} {windows:7d} {wall:7.1f} {per:10.1f} {share:>8} {network.windows(FULL_SIZE):13d} "
              f"{full_computed / math.prod(FULL_SIZE):10.2f} {full_wall:8.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--region", type=int, nargs=3, default=(64, 256, 256), metavar=("Z", "Y", "X"))
    parser.add_argument("--window", type=int, nargs=3, default=(44, 92, 92), metavar=("Z", "Y", "X"),
                        help="the window the floor is measured on (default: the bundled model's on a full-size scan)")
    parser.add_argument("--batch", type=int, default=2, help="windows per U-Net call for the floor")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc as it is (0.2.0) instead of keeping freed blocks as commands do")
    parser.add_argument("--variants", action="store_true", help="only the variants")
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args()
    kept = False if args.default_malloc else keep_freed_memory()
    loaded = load_model(None, "cpu", precision="fp32")
    print(f"capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, freed blocks kept for reuse: {kept}")
    floor_cpu = None if args.variants else floor(loaded, tuple(args.window), args.batch)
    variants(loaded, tuple(args.region), args.only, floor_cpu)


if __name__ == "__main__":
    main()
