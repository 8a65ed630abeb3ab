"""``ctslice validate`` and ``ctslice infer``: metrics on a split, thin volumes from thick scans."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from ctslice.cli.app import PrecisionChoice, command, precision_option, threads_option
from ctslice.cli.domains import SEED, SPACING, number
from ctslice.cli.stops import stopped_cleanly


@command("validate", example="ctslice validate --checkpoint runs/tiny/checkpoints/best.pt --cache cache.h5 "
                             "--splits splits.json --split test --out report/")
def validate(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Model checkpoint (.pt)."),
    cache: Path = typer.Option(..., "--cache", help="HDF5 cache."),
    splits: Path = typer.Option(..., "--splits", help="splits.json."),
    split: Literal["val", "test"] = typer.Option("test", "--split", help="The split to evaluate."),
    steps: int = number(None, "--steps", help="DDIM steps (default: the checkpoint's).", low=1, high=10_000,
                        integer=True),
    out: Path = typer.Option(None, "--out", help="Folder for the report and figures."),
    json_output: bool = typer.Option(False, "--json", help="Print the report as one JSON document."),
    mode: Literal["mean", "sample"] | None = typer.Option(None, "--mode", help="Deterministic mean or diffusion "
                                                          "samples (default: the checkpoint's validation.mode)."),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: CUDA if available)."),
    vae_checkpoint: Path = typer.Option(None, "--vae-checkpoint", help="MAISI VAE weights for a maisi model."),
    precision: PrecisionChoice = precision_option(),
    threads: int = threads_option(),
    window: str = typer.Option(None, "--window", help="HU window of the figures: lung, soft, bone, or W,L (width, "
                               "level), e.g. 400,40 (default: a wide window, 2000,0)."),
) -> None:
    """PSNR/SSIM/HU MAE of the model and classical baselines on every case of a split, with figures."""
    from ctslice.commands.validate import run_validate

    with stopped_cleanly("the figures of the cases done are kept, no report was written"):
        run_validate(checkpoint, cache, splits, split=split, steps=steps, out=out, json_output=json_output,
                     mode=mode, device_name=device, vae_checkpoint=vae_checkpoint, precision=precision.value,
                     threads=threads, window=window)


@command("infer", example="ctslice infer scan.nii.gz -o thin.nii.gz; a folder: ctslice infer scans/ -o thin/ "
                          "--ext .nrrd; a DICOM series: ctslice infer dicom/ -o thin_dicom/ --output-type dicom")
def infer(
    input: Path = typer.Argument(..., help="Thick-slice scan: NIfTI/NRRD/MHA file, DICOM folder or zip; or a folder "
                                 "of scans. A folder whose only scan is one DICOM study is that scan; a folder of "
                                 "volume files, zips or several studies is inferred case by case into -o (a folder)."),
    output: Path = typer.Option(..., "-o", "--output", help="Thin output (.nii.gz, .nii, .nrrd, .mha, or a folder "
                                "with --output-type dicom); for a folder of scans, the output folder."),
    output_type: Literal["nifti", "nrrd", "mha", "dicom"] | None = typer.Option(
        None, "--output-type", help="Output format (default: from the -o suffix; for a folder: --ext). dicom "
        "writes a folder holding one DICOM CT series (a DICOM input's study and patient tags are carried over)."),
    ext: Literal[".nii.gz", ".nii", ".nrrd", ".mha", "dicom"] | None = typer.Option(
        None, "--ext", help="Folder of scans: the output of each case, OUTDIR/<case><ext> (default .nii.gz; dicom: "
        "a DICOM series folder per case)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Folder of scans: redo cases whose output exists "
                                   "(default: skip them). One scan: replace an existing DICOM output folder."),
    shard: str = typer.Option(None, "--shard", help="Folder of scans: only shard I of N (I/N, 0-based), as in "
                              "preprocess."),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="Model checkpoint (default: the bundled model)."),
    method: Literal["linear", "cubic", "lanczos"] | None = typer.Option(None, "--method", help="A classical "
                                                                        "baseline instead of the model."),
    mode: Literal["mean", "sample"] = typer.Option("mean", "--mode", help="mean: deterministic best-PSNR estimate; "
                                                   "sample: diffusion."),
    samples: int = number(1, "--samples", help="Diffusion samples to draw (their mean is written).", low=1, high=100,
                          integer=True),
    std_out: Path = typer.Option(None, "--std-out", help="Also write the per-voxel std between samples here."),
    thin_spacing: float = number(None, "--thin-spacing", help="Output slice spacing in mm (default: the model's, "
                                 "or 1.0 for --method).", **SPACING),
    steps: int = number(None, "--steps", help="DDIM steps for sampling (default: the model's config).", low=1,
                        high=10_000, integer=True),
    seed: int = number(0, "--seed", help="Seed of the noise (sample i uses seed + i).", **SEED),
    adapt: float = number(0.0, "--adapt", help="One scan: first fine-tune a copy of the model for this many minutes "
                          "on the scan's own in-plane pairs (self-supervision; the model file is not changed).",
                          low=0, high=1440),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: CUDA if available)."),
    vae_checkpoint: Path = typer.Option(None, "--vae-checkpoint", help="MAISI VAE weights for a maisi model."),
    no_tilt_correction: bool = typer.Option(False, "--no-tilt-correction", help="Refuse a tilted-gantry DICOM "
                                            "series instead of resampling it onto an untilted grid."),
    z_spacing: float = number(None, "--z-spacing", help="Slice spacing (mm) for a tilted or unevenly spaced DICOM "
                              "series (default: its smallest step).", low=0.05, high=20.0),
    precision: PrecisionChoice = precision_option(),
    threads: int = threads_option(),
) -> None:
    """Turn a thick-slice scan (or a folder of them) into thin-slice scans that overlay them exactly (int16 HU)."""
    from ctslice.commands.infer import infer_command

    with stopped_cleanly("unfinished output files were removed"):
        infer_command(input, output, output_type=output_type, ext=ext, overwrite=overwrite, shard=shard,
                      checkpoint=checkpoint, method=method, mode=mode, samples=samples, std_out=std_out,
                      thin_spacing=thin_spacing, steps=steps, seed=seed, adapt=adapt, device_name=device,
                      vae_checkpoint=vae_checkpoint, precision=precision.value, threads=threads,
                      tilt_correction=not no_tilt_correction, z_spacing=z_spacing)
