"""``ctslice validate`` and ``ctslice infer``: metrics on a split, thin volumes from thick scans."""

from __future__ import annotations

from pathlib import Path

import typer

from ctslice.cli.app import PrecisionChoice, command, precision_option, threads_option


@command("validate")
def validate(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Model checkpoint (.pt)."),
    cache: Path = typer.Option(..., "--cache", help="HDF5 cache."),
    splits: Path = typer.Option(..., "--splits", help="splits.json."),
    split: str = typer.Option("test", "--split", help="val or test."),
    steps: int = typer.Option(None, "--steps", help="DDIM steps (default: the checkpoint's)."),
    out: Path = typer.Option(None, "--out", help="Folder for the report and figures."),
    json_output: bool = typer.Option(False, "--json", help="Print the report as one JSON document."),
    mode: str = typer.Option(None, "--mode", help="mean or sample (default: the checkpoint's validation.mode)."),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: CUDA if available)."),
    vae_checkpoint: Path = typer.Option(None, "--vae-checkpoint", help="MAISI VAE weights for a maisi model."),
    precision: PrecisionChoice = precision_option(),
    threads: int = threads_option(),
) -> None:
    """PSNR/SSIM/HU MAE of the model and classical baselines on every case of a split, with figures."""
    from ctslice.evaluation.validate import run_validate

    run_validate(checkpoint, cache, splits, split=split, steps=steps, out=out, json_output=json_output, mode=mode,
                 device_name=device, vae_checkpoint=vae_checkpoint, precision=precision.value, threads=threads)


@command("infer")
def infer(
    input: Path = typer.Argument(..., help="Thick-slice scan: NIfTI/NRRD/MHA file, DICOM folder or zip."),
    output: Path = typer.Option(..., "-o", "--output", help="Thin output (.nii.gz, .nii, .nrrd, .mha)."),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="Model checkpoint (default: the bundled model)."),
    method: str = typer.Option(None, "--method", help="A classical baseline instead: linear, cubic or lanczos."),
    mode: str = typer.Option("mean", "--mode", help="mean: deterministic best-PSNR estimate; sample: diffusion."),
    samples: int = typer.Option(1, "--samples", help="Diffusion samples to draw (their mean is written)."),
    std_out: Path = typer.Option(None, "--std-out", help="Also write the per-voxel std between samples here."),
    thin_spacing: float = typer.Option(None, "--thin-spacing", help="Output slice spacing in mm "
                                       "(default: the model's, or 1.0 for --method)."),
    steps: int = typer.Option(None, "--steps", help="DDIM steps for sampling (default: the model's config)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the noise (sample i uses seed + i)."),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: CUDA if available)."),
    vae_checkpoint: Path = typer.Option(None, "--vae-checkpoint", help="MAISI VAE weights for a maisi model."),
    precision: PrecisionChoice = precision_option(),
    threads: int = threads_option(),
) -> None:
    """Turn a thick-slice scan into a thin-slice scan that overlays it exactly (int16 HU)."""
    from ctslice.inference.run import run_infer

    run_infer(input, output, checkpoint=checkpoint, method=method, mode=mode, samples=samples, std_out=std_out,
              thin_spacing=thin_spacing, steps=steps, seed=seed, device_name=device, vae_checkpoint=vae_checkpoint,
              precision=precision.value, threads=threads)
