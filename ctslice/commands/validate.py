"""``ctslice validate``: the report of ``ctslice.evaluation.validate`` printed (a table or JSON) and written."""

from __future__ import annotations

from pathlib import Path

from ctslice.commands.options import flag_wording
from ctslice.commands.validation_table import table
from ctslice.console import console, progress_callback, stdout
from ctslice.evaluation.report import to_json, write_json
from ctslice.evaluation.validate import validate_split


def run_validate(checkpoint: Path | None, cache_path: Path, splits_path: Path, split: str = "test",
                 steps: int | None = None, out: Path | None = None, json_output: bool = False, mode: str | None = None,
                 device_name: str | None = None, vae_checkpoint: Path | None = None, precision: str | None = None,
                 threads: int | None = None, window: str | None = None) -> dict:
    """Validate ``split``, write ``<out>/report.json`` and print the table (or, ``json_output``, the JSON).

    ``window``: the figures' HU window (``--window lung|soft|bone|W,L``). Returns the report.
    """
    with progress_callback() as on_progress, flag_wording(device="--device", window="--window", precision="--precision",
                                                          threads="--threads"):
        report, out = validate_split(checkpoint, cache_path, splits_path, split=split, steps=steps, out=out, mode=mode,
                                     device_name=device_name, vae_checkpoint=vae_checkpoint, precision=precision,
                                     threads=threads, window=window, on_progress=on_progress)
    path = write_json(report, out / "report.json")
    if json_output:
        stdout.print_json(to_json(report))
    else:
        stdout.print(table(report))
        console.print(f"Report: {path}; figures: {out / 'figures'}")
    return report
