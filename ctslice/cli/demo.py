"""``ctslice demo``: the whole pipeline on embedded synthetic data, for a first run."""

from __future__ import annotations

from pathlib import Path

import typer

from ctslice.cli.app import command, not_built


@command("demo")
def demo(
    out: Path = typer.Option(Path("ctslice-demo"), "--out", help="Folder for everything the demo writes."),
) -> None:
    """Synthesise scans, preprocess, split, train briefly, validate and infer, in minutes on a CPU."""
    not_built("demo")
