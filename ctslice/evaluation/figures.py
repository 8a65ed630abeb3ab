"""Validation figures: one tight grid per case, and the shared atomic PNG writer.

Researchers look before they read numbers: slice-interpolation errors (stair steps, blurred vessels,
seams between windows) show along z, so besides the axial slice the figure shows coronal and sagittal
reformats, all on the same thin grid and the same HU window, with the difference to the truth beside
them (the columns look alike at a glance; the difference map shows where they are not). Each panel
carries the case's PSNR and the SSIM of its plane, so the picture and the report cannot be confused.

Figures are drawn on a bare ``matplotlib.figure.Figure`` (the Agg renderer, no pyplot state): safe in
a training process and on machines without a display.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctslice.errors import InputError, shown


@dataclass(frozen=True)
class Window:
    """A display window in HU: ``width`` around ``level`` (radiology's W/L)."""

    width: float
    level: float

    @property
    def low(self) -> float:
        return self.level - self.width / 2

    @property
    def high(self) -> float:
        return self.level + self.width / 2

    def label(self) -> str:
        return f"W{self.width:g} L{self.level:g}"


WINDOWS = {"lung": Window(1500, -600), "soft": Window(400, 40), "bone": Window(1800, 400)}
MAX_WIDTH = 65_536  # HU: the whole int16 range, beyond which a window shows nothing more
DEFAULT_WINDOW = Window(2000, 0)  # air to dense bone: every tissue visible, none at its best contrast
_NUMBERS = re.compile(r"^\s*([-+]?[0-9.eE+-]+)\s*,\s*([-+]?[0-9.eE+-]+)\s*$")


def parse_window(text: str | Window | None) -> Window:
    """``lung`` (W1500 L-600), ``soft`` (W400 L40), ``bone`` (W1800 L400) or ``W,L`` in HU; None gives the
    default wide window. Anything else is an ``InputError`` naming ``--window``."""
    if text is None:
        return DEFAULT_WINDOW
    if isinstance(text, Window):
        return text
    preset = WINDOWS.get(str(text).strip().lower())
    if preset is not None:
        return preset
    match = _NUMBERS.match(str(text))
    try:
        width, level = (float(match.group(1)), float(match.group(2))) if match else (math.nan, math.nan)
    except ValueError:
        width = level = math.nan
    if not (1 <= width <= MAX_WIDTH and abs(level) <= MAX_WIDTH):  # NaN fails too; 1e300 overflowed the colour map
        raise InputError(f"window {shown(text)}: give lung, soft, bone, or W,L in HU with a width from 1 to "
                         f"{MAX_WIDTH:,} and a level from -{MAX_WIDTH:,} to {MAX_WIDTH:,} (e.g. 1500,-600)")
    return Window(width, level)


def save_png(figure, path: Path, **options) -> Path:
    """Write ``figure`` to ``path`` atomically (temporary file, then rename): a reader never sees half a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        figure.savefig(temporary, format="png", **options)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


COLUMNS = ("thick", "cubic", "model", "truth")
TITLES = {"thick": "thick (nearest)", "cubic": "cubic", "model": "model", "truth": "truth"}
PANEL_INCHES = 2.4  # width of one panel; heights follow each view's physical aspect ratio
DPI = 150  # a 2.4-inch panel is 360 pixels: a 512 matrix loses little detail, a file stays under ~1 MB
MIN_ASPECT = 0.25  # flatter views (a few cm of z under a whole chest) are stretched in z, and labelled so
VIEW_SSIM = {"axial": "ssim", "coronal": "ssim_coronal", "sagittal": "ssim_sagittal"}


def case_figure(path: Path, spacing: tuple[float, float, float], *, thick: np.ndarray, cubic: np.ndarray,
                model: np.ndarray, truth: np.ndarray, scores: dict[str, dict] | None = None,
                window: Window | str | None = None, title: str = "") -> Path:
    """Write a PNG grid: rows axial, coronal, sagittal (through the volume's centre); columns thick input
    (nearest on the thin grid), cubic, model, truth and model minus truth with its colour bar.

    All arrays are (z, y, x) HU on the same thin grid of ``spacing`` (x, y, z) mm. ``scores`` maps
    ``thick``/``cubic``/``model`` to ``ctslice.evaluation.metrics.evaluate`` results; each panel shows its
    PSNR and the SSIM of its plane (``ssim``, ``ssim_coronal``, ``ssim_sagittal``) when present.
    """
    from matplotlib.figure import Figure

    window, scores = parse_window(window), scores or {}
    arrays = {"thick": thick, "cubic": cubic, "model": model, "truth": truth}
    difference = np.asarray(model, dtype=np.float32) - np.asarray(truth, dtype=np.float32)
    views = _views(truth.shape, spacing)
    limit = _difference_limit([cut(difference) for _, cut, _ in views])
    heights = [PANEL_INCHES * aspect for _, _, aspect in views]
    inches = sum(heights) * 1.06 + 0.6  # panels, the gaps between rows, the titles above
    figure = Figure(figsize=(PANEL_INCHES * (len(COLUMNS) + 1.1), inches))
    grid = figure.add_gridspec(len(views), len(COLUMNS) + 2, width_ratios=[1] * (len(COLUMNS) + 1) + [0.06],
                               height_ratios=heights, wspace=0.03, hspace=0.06, top=1 - 0.5 / inches, bottom=0.01)
    for row, (view, cut, aspect) in enumerate(views):
        for column, name in enumerate((*COLUMNS, "difference")):
            axis = figure.add_subplot(grid[row, column])
            if name == "difference":
                image = axis.imshow(cut(difference), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto",
                                    interpolation="nearest")
                text = f"HU MAE {scores['model']['hu_mae']:.1f}" if "hu_mae" in scores.get("model", {}) else ""
            else:
                axis.imshow(cut(np.asarray(arrays[name])), cmap="gray", vmin=window.low, vmax=window.high,
                            aspect="auto", interpolation="nearest")
                text = _score_text(scores.get(name, {}), view) if name != "truth" else "reference"
            if text:
                axis.text(0.02, 0.97, text, transform=axis.transAxes, va="top", ha="left", fontsize=7,
                          color="white", bbox={"facecolor": "black", "alpha": 0.6, "pad": 1.5, "lw": 0})
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(TITLES.get(name, "model − truth (HU)"), fontsize=9)
            if column == 0:
                stretch = aspect / _physical_aspect(view, truth.shape, spacing)
                axis.set_ylabel(view + (f"\nz ×{stretch:.1f}" if stretch > 1.05 else ""), fontsize=9, rotation=0,
                                ha="right", va="center")
    bar = figure.colorbar(image, cax=figure.add_subplot(grid[:, -1]))
    bar.ax.tick_params(labelsize=7)
    figure.suptitle(f"{title}   window {window.label()}" if title else f"window {window.label()}", fontsize=10,
                    y=1 - 0.1 / inches)
    return save_png(figure, path, dpi=DPI, bbox_inches="tight", pad_inches=0.05)


def _views(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> list:
    """(name, cut of a (z, y, x) array, displayed height / width) for the three planes, z up in reformats."""
    depth, height, width = shape
    cuts = {"axial": lambda a: a[depth // 2], "coronal": lambda a: a[::-1, height // 2, :],
            "sagittal": lambda a: a[::-1, :, width // 2]}
    return [(view, cut, max(MIN_ASPECT, _physical_aspect(view, shape, spacing))) for view, cut in cuts.items()]


def _physical_aspect(view: str, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> float:
    """Height over width in millimetres of a view's slice."""
    (depth, height, width), (sx, sy, sz) = shape, spacing
    return {"axial": height * sy / (width * sx), "coronal": depth * sz / (width * sx),
            "sagittal": depth * sz / (height * sy)}[view]


def _difference_limit(slices: list[np.ndarray]) -> float:
    """Symmetric colour limit: the 99th percentile of |difference| on the shown slices, at least 10 HU, so
    that a few extreme voxels do not wash out the map and a near-perfect model does not show noise as red."""
    values = np.abs(np.concatenate([s.ravel() for s in slices]))
    return max(10.0, float(np.percentile(values, 99)))


def _score_text(scores: dict, view: str) -> str:
    parts = []
    if "psnr" in scores:
        parts.append(f"PSNR {scores['psnr']:.2f} dB")
    if VIEW_SSIM[view] in scores:
        parts.append(f"SSIM {scores[VIEW_SSIM[view]]:.3f}")
    return " · ".join(parts)
