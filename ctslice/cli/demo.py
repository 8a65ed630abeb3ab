"""``ctslice demo``: the whole pipeline on embedded synthetic data, for a first run."""

from __future__ import annotations

from pathlib import Path

import typer

from ctslice.cli.app import PrecisionChoice, command, precision_option, threads_option
from ctslice.cli.domains import number


@command("demo", example="ctslice demo --out ctslice-demo --minutes 3")
def demo(
    out: Path = typer.Option(Path("ctslice-demo"), "--out", help="Folder for everything the demo writes."),
    inputs: list[Path] = typer.Option(None, "--input", help="Use these scans instead of phantoms (repeatable; "
                                      "thin scans, e.g. scans/*.nii.gz)."),
    minutes: float = number(3.0, "--minutes", help="Fine-tuning time budget.", low=0, high=7 * 24 * 60, above=True),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:N or auto."),
    precision: PrecisionChoice = precision_option(),
    threads: int = threads_option(),
) -> None:
    """Synthesise scans, preprocess, split, train briefly, validate and infer, in minutes on a CPU."""
    from ctslice.commands.demo import run_demo

    run_demo(out, inputs, minutes=minutes, device=device, precision=precision.value, threads=threads)
