"""The validation report: per-case and mean metrics per method, as JSON (``ctslice.commands.validation_table``
draws it as a table).

A PSNR of +inf (a prediction identical to the truth) is written as null (``ctslice.jsonsafe``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ctslice.jsonsafe import dumps

METRICS = ("psnr", "ssim", "ssim_coronal", "ssim_sagittal", "hu_mae")


def mean_scores(cases: list[dict], methods: list[str]) -> dict[str, dict[str, float]]:
    return {m: {k: float(np.mean([c["scores"][m][k] for c in cases])) for k in METRICS} for m in methods}


def to_json(report: dict) -> str:
    return dumps(report, indent=2)


def write_json(report: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(report) + "\n", encoding="utf-8")
    return path
