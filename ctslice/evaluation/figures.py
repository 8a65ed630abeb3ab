"""Comparison figures: the same coronal and sagittal slices of thick input, cubic, model and truth.

Researchers look before they read numbers: slice-interpolation errors (stair steps, blurred vessels,
seams between windows) show along z, so the figure shows reformatted planes at their physical aspect
ratio, all on the same thin grid and the same HU window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

WINDOW_HU = (-1000.0, 1000.0)


def comparison_figure(panels: dict[str, np.ndarray], spacing: tuple[float, float, float], path: Path,
                      title: str = "") -> Path:
    """Write a PNG with one column per panel (name -> (z, y, x) HU array) and rows coronal, sagittal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sx, sy, sz = spacing
    depth, height, width = next(iter(panels.values())).shape
    views = {"coronal": (lambda a: a[::-1, height // 2, :], sz / sx),
             "sagittal": (lambda a: a[::-1, :, width // 2], sz / sy)}
    figure, axes = plt.subplots(2, len(panels), figsize=(3.2 * len(panels), 6.4), squeeze=False)
    for column, (name, array) in enumerate(panels.items()):
        for row, (view, (cut, aspect)) in enumerate(views.items()):
            axis = axes[row][column]
            axis.imshow(cut(array), cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1], aspect=aspect,
                        interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(name)
            if column == 0:
                axis.set_ylabel(view)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
