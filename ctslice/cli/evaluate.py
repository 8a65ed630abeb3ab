"""``ctslice validate`` and ``ctslice infer``: metrics on a split, thin volumes from thick scans."""

from __future__ import annotations

from pathlib import Path

import typer

from ctslice.cli.app import command, not_built


@command("validate")
def validate(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Model checkpoint (.pt)."),
    cache: Path = typer.Option(..., "--cache", help="HDF5 cache."),
    splits: Path = typer.Option(..., "--splits", help="splits.json."),
    split: str = typer.Option("test", "--split", help="val or test."),
    steps: int = typer.Option(None, "--steps", help="DDIM steps (default: the checkpoint's)."),
    out: Path = typer.Option(None, "--out", help="Folder for the report and figures."),
    json_output: bool = typer.Option(False, "--json", help="Print the report as one JSON document."),
) -> None:
    """PSNR/SSIM/HU MAE of the model and classical baselines on every case of a split."""
    not_built("validate")


@command("infer")
def infer(
    input: Path = typer.Argument(..., help="Thick-slice scan: NIfTI/NRRD/MHA file, DICOM folder or zip."),
    output: Path = typer.Option(..., "-o", "--output", help="Thin output (.nii.gz, .nrrd, .mha)."),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="Model checkpoint (default: the bundled model)."),
    method: str = typer.Option(None, "--method", help="Classical baseline instead: linear, cubic or lanczos."),
    thin_spacing: float = typer.Option(None, "--thin-spacing", help="Output slice spacing in mm."),
) -> None:
    """Turn a thick-slice scan into a thin-slice scan that overlays it exactly."""
    not_built("infer")
