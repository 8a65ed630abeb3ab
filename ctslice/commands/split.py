"""``ctslice split``: write the split, print its counts."""

from __future__ import annotations

from pathlib import Path

from ctslice.console import stdout
from ctslice.data.splits import summary, write_split


def run(cache: Path, output: Path, val: float, test: float, seed: int) -> dict[str, list[str]]:
    splits, patients = write_split(cache, output, val=val, test=test, seed=seed)
    stdout.print(summary(splits, patients, output))
    return splits
