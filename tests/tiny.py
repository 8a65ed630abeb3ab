"""The tiny data set and model settings the training, inference and reliability tests share.

Four small phantom scans (40 x 32 x 32 at 12 mm in-plane, 1 mm slices, so the body fits) preprocessed
to 5 mm -> 1 mm pairs, and a U-Net of two levels with 8 and 16 channels on 16-pixel patches: a few
training steps take seconds on two CPU cores. FP32, so that runs compare bit for bit.
"""

from __future__ import annotations

from pathlib import Path

from ctslice.config import Config, load_config
from ctslice.data.pairs import simulate_pair
from ctslice.data.phantom import make_phantom
from ctslice.data.preprocess import PreprocessOptions, run_preprocess
from ctslice.data.splits import run_split
from ctslice.io import write_volume
from ctslice.io.volume import Volume

TINY = ["model.channels=[8, 16]", "model.attention_levels=[false, false]", "model.norm_num_groups=4",
        "model.attention_heads=2", "data.patch_size=16", "data.patch_thick_slices=2", "training.batch_size=2",
        "training.log_interval=1", "inference.window_slices=16", "inference.window_size=32",
        "validation.val_steps=2", "training.warmup_steps=0", "training.lr=1e-3", "training.precision=fp32"]


def make_phantom_cache(folder: Path, val: float = 0.25, test: float = 0.0) -> tuple[Path, Path]:
    """A cache of 4 phantom cases in ``folder`` and its splits."""
    for seed in range(4):
        write_volume(make_phantom(shape=(40, 32, 32), spacing=(12.0, 12.0, 1.0), seed=seed),
                     folder / "raw" / f"case{seed}.nii.gz")
    cache, splits = folder / "cache.h5", folder / "splits.json"
    run_preprocess([folder / "raw"], cache, PreprocessOptions(5.0, 1.0, min_slices=4))
    run_split(cache, splits, val=val, test=test, seed=0)
    return cache, splits


def tiny_config(dataset: tuple[Path, Path], *extra: str) -> Config:
    cache, splits = dataset
    return load_config(None, [*TINY, f"data.cache={cache}", f"data.splits={splits}", "hardware.device=cpu", *extra])


def thick_phantom(seed: int, shape: tuple[int, int, int] = (30, 24, 24)) -> Volume:
    """A small thick (5 mm) scan: a 1 mm phantom slab-averaged x5."""
    truth = make_phantom(shape=shape, spacing=(16.0, 16.0, 1.0), seed=seed)
    return simulate_pair(truth, 5.0, 1.0).thick
