"""What the consistency step (``ctslice.inference.consistency``) costs on a full-size scan.

    python benchmarks/consistency.py                  # 512 x 512, 64 slabs of 5 mm -> 320 slices at 1 mm
    python benchmarks/consistency.py --slabs 400      # a 2,000-slice output

Prints the CPU capability, the seconds of one ``make_consistent`` call on random HU (its cost does not depend
on the values), the largest slab residual before and after, and the peak memory it added beyond the volumes.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
import torch

from ctslice.inference.consistency import make_consistent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slabs", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--ratio", type=int, default=5)
    args = parser.parse_args()
    generator = np.random.default_rng(0)
    thick = generator.normal(0, 300, (args.slabs, args.size, args.size)).astype(np.float32)
    thin = generator.normal(0, 300, (args.slabs * args.ratio, args.size, args.size)).astype(np.float32)

    def worst_residual() -> float:
        means = thin.reshape(args.slabs, args.ratio, args.size, args.size).mean(axis=1)
        return float(np.abs(means - thick).max())

    before = worst_residual()
    tracemalloc.start()
    started = time.perf_counter()
    make_consistent(thin, thick, 1.0, float(args.ratio))
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"CPU capability: {torch.backends.cpu.get_cpu_capability()}, threads {torch.get_num_threads()}")
    print(f"thin {thin.shape}, thick {thick.shape}: {seconds:.2f} s, largest slab residual {before:.1f} -> "
          f"{worst_residual():.4f} HU, {peak / 2**20:.0f} MiB added at peak")


if __name__ == "__main__":
    main()
