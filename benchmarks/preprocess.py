"""Preprocessing throughput, random patch reads from the HDF5 cache, and the cache's compression.

Run from the repository root with the venv active (about 4 minutes on 2 idle CPU cores, 5 with ``--layouts``)::

    python benchmarks/preprocess.py                   # defaults below
    python benchmarks/preprocess.py --phantoms 2 --reads 30 --layouts   # quicker, plus the layout study

It prints three tables (and a fourth with ``--layouts``):

1. preprocessing: ``run_preprocess`` on the small real volumes of ``--real`` (cases processed and
   excluded by design), on ``--phantoms`` synthetic phantom NIfTI files and on the large real volume,
   with each ``--workers`` count: wall and CPU seconds (workers included) and processed cases/s; then a
   rerun where every case is reused (hash check only; excluded cases are checked again);
2. random patch reads/s, the training access pattern (``--patch-depth`` thin slices x ``--patch-size``
   squared plus the thick slab around them), on the large real volume and on the phantoms:
   ``Cache.region`` (raw reads), ``PatchDataset`` items (raw reads + cubic interpolation of the
   condition) and the naive alternative, ``read_volume`` of the source NIfTI each time and slicing
   the same patch (the naive figure leaves out building the thick slab, so it flatters the naive way);
   per wall second and per CPU second (the latter is less sensitive to other jobs on the machine);
3. cache size on disk versus the raw int16 size of its volumes;
4. with ``--layouts``: read rate and size of the large case's volumes rewritten with other chunk shapes,
   compression settings and HDF5 chunk-cache sizes (the evidence for ``CHUNK_SLICES``/``CHUNK_PIXELS``).

Real volumes are read in place (never copied); everything written goes to a temporary folder that is
removed at the end unless ``--keep`` is given. Rates are the best of ``--repeat`` passes, because the
machine may be shared; the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from rich.console import Console
from rich.table import Table

from ctslice.config import DataConfig
from ctslice.data.cache import Cache
from ctslice.data.patches import THICK_MARGIN, PatchDataset, PixelSource
from ctslice.data.phantom import make_phantom
from ctslice.data.preprocess import PreprocessOptions, run_preprocess
from ctslice.io.reader import read_volume
from ctslice.io.writer import write_volume

SHARED_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct"
MIB = 2**20
out = Console(highlight=False, width=None if sys.stdout.isatty() else 120)  # tables unwrapped in a log file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", type=Path, default=SHARED_CT, help="folder of the small real volumes (*.nii.gz)")
    parser.add_argument("--large", type=Path, default=SHARED_CT / "large" / "popi_thorax_2mm_full.nii.gz",
                        help="the full-size real volume")
    parser.add_argument("--phantoms", type=int, default=8, help="number of synthetic phantom cases")
    parser.add_argument("--phantom-shape", type=int, nargs=3, default=(200, 256, 256), metavar=("Z", "Y", "X"),
                        help="phantom size in voxels at 1 mm")
    parser.add_argument("--workers", type=int, nargs="+", default=(1, 2), help="worker counts to time")
    parser.add_argument("--reads", type=int, default=200, help="random patches per rate measurement")
    parser.add_argument("--naive-reads", type=int, default=6, help="patches for the read_volume-each-time rate")
    parser.add_argument("--repeat", type=int, default=3, help="passes per rate; the best is reported")
    parser.add_argument("--patch-depth", type=int, default=20, help="thin slices per patch")
    parser.add_argument("--patch-size", type=int, default=64, help="in-plane patch side")
    parser.add_argument("--thick-spacing", type=float, default=5.0)
    parser.add_argument("--layouts", action="store_true", help="also compare chunk shapes/compression/chunk cache")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="ctslice-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        run(args, work)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    options = PreprocessOptions(thick_spacing=args.thick_spacing, thin_spacing=1.0)
    out.print(f"ctslice preprocessing benchmark: {os.cpu_count()} CPU(s), load average {_load()}")

    phantom_dir = work / "phantoms"
    started = time.perf_counter()
    for seed in range(args.phantoms):
        volume = make_phantom(tuple(args.phantom_shape), (1.0, 1.0, 1.0), seed=seed)
        write_volume(volume, phantom_dir / f"phantom_{seed:02d}.nii.gz")
    out.print(f"wrote {args.phantoms} phantom(s) of {tuple(args.phantom_shape)} voxels at 1 mm in "
              f"{time.perf_counter() - started:.1f} s (not counted below)")

    real = sorted(args.real.glob("*.nii.gz"))
    rows = []
    caches = {}
    for label, inputs, worker_counts in (("real small", real, args.workers), ("phantoms", [phantom_dir], args.workers),
                                         ("real large", [args.large], (1,))):
        for workers in worker_counts:
            cache = work / f"{label.replace(' ', '_')}_w{workers}.h5"
            results, seconds, cpu = _timed(run_preprocess, inputs, cache, options, workers)
            processed = sum(r.status == "processed" for r in results)
            excluded = sum(r.status == "failed" for r in results)
            rows.append((label, str(workers), str(processed), str(excluded), f"{seconds:.2f}", f"{cpu:.2f}",
                         f"{processed / seconds:.2f}"))
            caches[label] = cache
        results, seconds, cpu = _timed(run_preprocess, inputs, cache, options, 1)
        reused = sum(r.status == "reused" for r in results)
        rows.append((f"{label} (rerun)", "1", f"{reused} reused", "", f"{seconds:.2f}", f"{cpu:.2f}",
                     f"{len(results) / seconds:.1f}"))
    _table("1. Preprocessing (run_preprocess, fresh cache per row; CPU s includes workers)",
           ("cases", "workers", "processed", "excluded", "wall s", "CPU s", "cases/s"), rows)

    rows = []
    for label in ("real large", "phantoms"):
        rows.extend(_patch_rates(label, caches[label], args))
    _table(f"2. Random patch reads ({args.patch_depth} thin x {args.patch_size} x {args.patch_size} + thick slab)",
           ("cases", "method", "reads/s", "ms/read", "reads/CPU-s", "vs naive"), rows)

    rows = []
    for label, cache in caches.items():
        raw, disk = _sizes(cache)
        rows.append((label, f"{raw / MIB:.1f}", f"{disk / MIB:.1f}", f"{raw / disk:.2f}"))
    _table("3. Cache size (thin + thick int16)", ("cases", "raw int16 MiB", "on disk MiB", "ratio"), rows)

    if args.layouts:
        _table("4. Layout study on the large case (raw reads of thin patch + thick slab, passes interleaved)",
               ("chunks (z, y, x)", "compression", "chunk cache", "MiB", "write s", "whole thin CPU-s", "reads/s",
                "reads/CPU-s"), _layouts(caches["real large"], work, args))
    out.print(f"load average at the end: {_load()}")


def _patch_rates(label: str, cache_path: Path, args: argparse.Namespace) -> list[tuple[str, ...]]:
    """reads/s of the same random patches by Cache.region, PatchDataset and read_volume + slicing."""
    with Cache(cache_path) as cache:
        case_ids = cache.case_ids()
        infos = {c: cache.info(c) for c in case_ids}
    config = DataConfig(patch_thick_slices=math.ceil(args.patch_depth / args.thick_spacing),
                        patch_size=args.patch_size, flips=False)
    dataset = PatchDataset(PixelSource(cache_path, case_ids), config, seed=0)
    patches = [dataset.plan(k) for k in range(args.reads)]

    with Cache(cache_path) as cache:  # opened once, as a training worker does
        def raw(patch) -> None:
            info = infos[patch.case_id]
            low = max(0, int(patch.z[0] // info.ratio) - THICK_MARGIN)
            high = min(info.thick_shape[0], int(math.ceil(patch.z[1] / info.ratio)) + THICK_MARGIN + 1)
            thin = cache.region(patch.case_id, "thin", patch.z, patch.y, patch.x)
            thick = cache.region(patch.case_id, "thick", (low, high), patch.y, patch.x)
            assert thin.array.shape[0] == patch.z[1] - patch.z[0] and thick.array.size

        rates = {"Cache.region": _rate(raw, patches, args.repeat)}
    rates["PatchDataset item"] = _rate(dataset.__getitem__, range(args.reads), args.repeat)

    def naive(patch) -> None:  # the thin patch only: building the thick slab would cost more
        volume = read_volume(Path(infos[patch.case_id].source))
        scale = volume.array.shape[0] / infos[patch.case_id].thin_shape[0]  # the source's z may be coarser
        z = slice(int(patch.z[0] * scale), int(math.ceil(patch.z[1] * scale)))
        assert volume.array[z, slice(*patch.y), slice(*patch.x)].size

    rates["read_volume + slice"] = _rate(naive, patches[: args.naive_reads], 1)
    naive_rate = rates["read_volume + slice"][0]
    return [(f"{label} ({len(case_ids)})", method, f"{wall:.1f}", f"{1000 / wall:.1f}", f"{cpu:.1f}",
             f"{wall / naive_rate:.0f}x") for method, (wall, cpu) in rates.items()]


def _layouts(cache_path: Path, work: Path, args: argparse.Namespace) -> list[tuple[str, ...]]:
    """Rewrite the case's volumes with other layouts and time the same raw patch reads on each."""
    with Cache(cache_path) as cache:
        case_id = cache.case_ids()[0]
        thin, thick = cache.dataset(case_id, "thin")[()], cache.dataset(case_id, "thick")[()]
        ratio = cache.info(case_id).ratio
    rng = np.random.default_rng(1)
    patches = []
    for _ in range(args.reads):
        z0 = int(rng.integers(0, thin.shape[0] - args.patch_depth + 1))
        y0, x0 = (int(rng.integers(0, n - args.patch_size + 1)) for n in thin.shape[1:])
        low = max(0, int(z0 // ratio) - THICK_MARGIN)
        high = min(thick.shape[0], int(math.ceil((z0 + args.patch_depth) / ratio)) + THICK_MARGIN + 1)
        patches.append((z0, y0, x0, low, high))
    variants = [((8, 64, 64), "gzip", 1, 1), ((8, 64, 64), "gzip", 1, 16), ((8, 64, 64), None, None, 1),
                ((8, 64, 64), "gzip", 4, 1), ((4, 64, 64), "gzip", 1, 1), ((16, 64, 64), "gzip", 1, 1),
                ((4, 32, 32), "gzip", 1, 1), ((8, 32, 32), "gzip", 1, 1), ((16, 32, 32), "gzip", 1, 1),
                ((8, 128, 128), "gzip", 1, 1), ((1, 512, 512), "gzip", 1, 1)]  # first: the cache's own layout
    files, rows = [], []
    for number, (chunks, compression, level, chunk_cache_mib) in enumerate(variants):
        path = work / f"layout_{number}.h5"
        started = time.perf_counter()
        with h5py.File(path, "w") as file:
            for name, array in (("thin", thin), ("thick", thick)):
                shape = tuple(min(c, n) for c, n in zip(chunks, array.shape, strict=True))
                file.create_dataset(name, data=array, chunks=shape, compression=compression,
                                    compression_opts=level, shuffle=compression is not None)
        write_seconds = time.perf_counter() - started
        files.append(h5py.File(path, "r", rdcc_nbytes=chunk_cache_mib * MIB, rdcc_nslots=10007))
        label = f"gzip {level}+shuffle" if compression else "none"
        rows.append([str(chunks), label, f"{chunk_cache_mib} MiB", f"{path.stat().st_size / MIB:.1f}",
                     f"{write_seconds:.1f}"])
    best = [(0.0, 0.0)] * len(files)
    whole = [math.inf] * len(files)
    d, s = args.patch_depth, args.patch_size
    for _ in range(args.repeat):  # interleaved, so that a burst of load from elsewhere hits every layout alike
        for number, file in enumerate(files):
            thin_ds, thick_ds = file["thin"], file["thick"]  # held open: their chunk caches persist
            whole[number] = min(whole[number], _timed(thin_ds.__getitem__, ())[2])

            def read(p, thin_ds=thin_ds, thick_ds=thick_ds) -> None:
                z0, y0, x0, low, high = p
                thin_ds[z0:z0 + d, y0:y0 + s, x0:x0 + s]
                thick_ds[low:high, y0:y0 + s, x0:x0 + s]

            best[number] = tuple(max(a, b) for a, b in zip(best[number], _rate(read, patches, 1), strict=True))
    for file in files:
        file.close()
    return [(*row, f"{seconds:.2f}", f"{wall:.0f}", f"{cpu:.0f}")
            for row, seconds, (wall, cpu) in zip(rows, whole, best, strict=True)]


def _timed(function, *args):
    """(result, wall seconds, CPU seconds of this process and its finished children) of one call."""
    before, started = os.times(), time.perf_counter()
    result = function(*args)
    wall, after = time.perf_counter() - started, os.times()
    return result, wall, sum(after[:4]) - sum(before[:4])


def _rate(function, items, repeat: int) -> tuple[float, float]:
    """Calls per wall second and per CPU second over ``items``, best of ``repeat`` passes (after a warm-up)."""
    items = list(items)
    function(items[0])
    wall = cpu = math.inf
    for _ in range(repeat):
        started, cpu_started = time.perf_counter(), time.process_time()
        for item in items:
            function(item)
        wall = min(wall, time.perf_counter() - started)
        cpu = min(cpu, time.process_time() - cpu_started)
    return len(items) / wall, len(items) / max(cpu, 1e-9)


def _sizes(cache_path: Path) -> tuple[int, int]:
    with h5py.File(cache_path, "r") as file:
        raw = sum(group[name].size * 2 for group in file["cases"].values() for name in ("thin", "thick"))
    return raw, cache_path.stat().st_size


def _load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    table = Table(title=f"{title}; load average {_load()}", title_justify="left")
    for number, column in enumerate(columns):
        table.add_column(column, justify="left" if number == 0 else "right")
    for row in rows:
        table.add_row(*row)
    out.print(table)


if __name__ == "__main__":
    main()
