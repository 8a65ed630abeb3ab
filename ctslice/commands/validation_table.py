"""The validation report (``ctslice.evaluation.report``) as a Rich table: a mean row per method, then each case."""

from __future__ import annotations

from rich.table import Table


def table(report: dict) -> Table:
    """Mean row per method first, then each case; the best mean PSNR is bold."""
    methods = report["methods"]
    result = Table(title=f"Validation on '{report['split']}' ({len(report['cases'])} case(s)); "
                         f"{report['protocol_short']}", title_justify="left")
    for column in ("case", "method", "PSNR dB", "SSIM ax", "SSIM cor", "SSIM sag", "HU MAE"):
        result.add_column(column, justify="left" if column in ("case", "method") else "right")
    best = max(methods, key=lambda m: report["mean"][m]["psnr"])
    for method in methods:
        scores = report["mean"][method]
        style = "bold" if method == best else None
        result.add_row("mean", method, *_cells(scores), style=style)
    for case in report["cases"]:
        result.add_section()
        for method in methods:
            result.add_row(case["case"], method, *_cells(case["scores"][method]))
    return result


def _cells(scores: dict) -> list[str]:
    return [f"{scores['psnr']:.2f}", f"{scores['ssim']:.4f}", f"{scores['ssim_coronal']:.4f}",
            f"{scores['ssim_sagittal']:.4f}", f"{scores['hu_mae']:.1f}"]
