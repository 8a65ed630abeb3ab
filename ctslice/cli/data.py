"""``ctslice preprocess`` and ``ctslice split``: raw scans into the HDF5 cache, cache into splits."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from ctslice.cli.app import command
from ctslice.cli.domains import SEED, SPACING, number
from ctslice.cli.stops import stopped_cleanly


@command("preprocess", example="ctslice preprocess scans/ study.zip -o cache.h5 --thick-spacing 5 --thin-spacing 1 "
                               "--workers 4")
def preprocess(
    inputs: list[Path] = typer.Argument(..., help="Scans: files (NIfTI/NRRD/MHA), DICOM folders or zips, "
                                        "study folders/zips with a thick and a thin series, or folders of "
                                        "these. With --merge: shard caches to merge."),
    output: Path = typer.Option(..., "-o", "--output", help="The HDF5 cache to create or update."),
    thick_spacing: float = number(5.0, "--thick-spacing", help="Thick slice spacing (mm) simulated from thin-only "
                                  "scans.", **SPACING),
    thin_spacing: float = number(1.0, "--thin-spacing", help="Thin slice spacing (mm) the thin volumes are resampled "
                                 "to.", **SPACING),
    size: int = number(0, "--size", help="Resample in-plane to SIZE x SIZE (0: keep the scan's matrix).", low=0,
                       high=4096, integer=True),
    profile: Literal["slab", "gaussian"] = typer.Option("slab", help="Simulated slice profile: slab (box average) "
                                                        "or gaussian."),
    min_slices: int = number(8, "--min-slices", help="Reject thick volumes with fewer slices than this.", low=1,
                             high=10_000, integer=True),
    workers: int = number(1, "--workers", help="Parallel worker processes (one writer).", low=1, high=256,
                          integer=True),
    shard: str = typer.Option(None, help="Process only shard I of N (I/N, 0-based), as in a Kubernetes "
                              "Indexed Job; merge the shard caches with --merge."),
    merge: bool = typer.Option(False, "--merge", help="Merge the shard caches given as INPUTS into -o."),
    no_tilt_correction: bool = typer.Option(False, "--no-tilt-correction", help="Refuse tilted-gantry DICOM "
                                            "series instead of resampling them onto an untilted grid."),
    z_spacing: float = number(None, "--z-spacing", help="Slice spacing (mm) for tilted or unevenly spaced DICOM "
                              "series (default: their smallest step).", low=0.05, high=20.0),
    series: list[str] = typer.Option(None, "--series", help="When a DICOM study holds several CT series: the "
                                     "one to use, by SeriesNumber or SeriesDescription (repeat it to name a thick "
                                     "and a thin one). By default the thick series pairs with the thin one of the "
                                     "same kernel (else the nearest description), same field of view and "
                                     "orientation; screenshots, localizers and other images that are not CT "
                                     "volumes are skipped."),
    no_self_supervised: bool = typer.Option(False, "--no-self-supervised", help="Exclude scans with only a thick "
                                            "series instead of keeping them as self-supervised cases (in-plane "
                                            "training pairs, see data.inplane_fraction)."),
) -> None:
    """Turn raw CT scans into (thick, thin) pairs in one HDF5 cache (int16 HU, with geometry); thick-only scans
    become self-supervised cases."""
    from ctslice.commands import preprocess as body
    from ctslice.data.preprocess import PreprocessOptions

    if merge:
        body.merge(inputs, output)
        return
    options = PreprocessOptions(thick_spacing=thick_spacing, thin_spacing=thin_spacing, size=size,
                                profile=profile, min_slices=min_slices, tilt_correction=not no_tilt_correction,
                                z_spacing=z_spacing, series=tuple(series or ()),
                                self_supervised=not no_self_supervised)
    with stopped_cleanly("the worker processes were ended; the finished cases are kept, rerun to go on"):
        body.run(inputs, output, options, workers=workers, shard=shard)


@command("split", example="ctslice split cache.h5 -o splits.json --val 0.15 --test 0.10 --seed 42")
def split(
    cache: Path = typer.Argument(..., help="The HDF5 cache written by `ctslice preprocess`."),
    output: Path = typer.Option(..., "-o", "--output", help="splits.json to write (or update: existing "
                                "assignments are kept)."),
    val: float = number(0.15, "--val", help="Fraction of patients for validation.", low=0, high=0.99),
    test: float = number(0.10, "--test", help="Fraction of patients for testing.", low=0, high=0.99),
    seed: int = number(42, "--seed", help="Seed of the assignment.", **SEED),
) -> None:
    """Patient-level train/val/test split of the cases that preprocessed successfully."""
    from ctslice.commands import split as body

    body.run(cache, output, val=val, test=test, seed=seed)
