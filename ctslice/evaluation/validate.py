"""``ctslice validate``: the model and the classical baselines on every case of a split.

Each case's thick volume goes through the model (the same pipeline as ``ctslice infer``) and through
linear, cubic and Lanczos interpolation onto the case's thin grid; all are scored against the thin
truth under the one metric protocol (``ctslice.evaluation.metrics``), and a comparison figure is drawn.
``validate_split`` returns the report (a JSON-ready dict); the command prints it and writes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ctslice.data.cache import Cache
from ctslice.data.splits import read_splits
from ctslice.errors import InputError, shown
from ctslice.evaluation import metrics
from ctslice.evaluation.figures import case_figure, parse_window
from ctslice.evaluation.report import mean_scores
from ctslice.hardware import configure, resolve_device
from ctslice.io.geometry import METHODS, interpolate
from ctslice.io.paths import check_output
from ctslice.reporting import NOTE

PLANES = ("axial", "coronal", "sagittal")
PROTOCOL = ("HU clipped to [-1024, 2048] mapped to [0, 1]; PSNR with peak 1; SSIM = mean of 2D SSIMs per plane; "
            f"{metrics.TRIM} thin slices excluded at each end; HU MAE on clipped HU")

log = logging.getLogger(__name__)


def validate_split(checkpoint: Path | None, cache_path: Path, splits_path: Path, split: str = "test",
                   steps: int | None = None, out: Path | None = None, mode: str | None = None,
                   device_name: str | None = None, vae_checkpoint: Path | None = None, precision: str | None = None,
                   threads: int | None = None, window=None,
                   on_progress: Callable[[str, int, int | None], None] | None = None) -> tuple[dict, Path]:
    """The report of every case of ``split`` and the folder (``out``, default beside the run) holding its figures.

    ``window``: the figures' HU window (``lung``, ``soft``, ``bone``, ``W,L`` or a ``Window``; see
    ``parse_window``). ``on_progress(description, cases done, cases)`` reports progress.
    """
    from ctslice.inference.loading import load_model

    if split not in ("train", "val", "test"):
        raise InputError(f"split {shown(split)}: choose val or test (or train)")
    window = parse_window(window)
    device = resolve_device(device_name)
    with Cache(cache_path) as cache:
        case_ids = read_splits(splits_path, cache.case_ids())[split]
        unscored = [c for c in case_ids if not cache.info(c).has_truth]
    if not case_ids:
        raise InputError(f"{splits_path}: the '{split}' split is empty")
    if unscored:  # only a hand-written splits file puts them there (``ctslice split`` keeps them in train)
        log.info(f"skipped {len(unscored)} self-supervised case(s) of the '{split}' split: no thin ground truth to "
                 f"score ({', '.join(unscored[:5])})", extra=NOTE)
        case_ids = [c for c in case_ids if c not in unscored]
        if not case_ids:
            raise InputError(f"{splits_path}: the '{split}' split holds only self-supervised cases (no thin ground "
                             "truth); run `ctslice split` again")
    configure(device, threads=threads)
    loaded = load_model(checkpoint, device, vae_checkpoint, precision)
    log.info(loaded.precision.line)
    config = loaded.interpolator.config
    mode = mode or config.validation.mode
    steps = steps or config.validation.val_steps
    inputs = (checkpoint, cache_path, splits_path)
    out = check_output(out or _default_out(loaded.path, split), inputs=inputs, folder=True)
    for written in (out / "report.json", *(out / "figures" / f"{case_id}.png" for case_id in case_ids)):
        check_output(written, inputs=inputs)  # e.g. --splits DIR/report.json --out DIR; a folder in the way
    methods = ["model", *METHODS]
    cases = []
    description = f"Validating ({split})"
    with Cache(cache_path) as cache:
        for done, case_id in enumerate(case_ids):
            if on_progress:
                on_progress(description, done, len(case_ids))
            thick, truth = cache.volume(case_id, "thick"), cache.volume(case_id, "thin")
            outputs = {"model": loaded.interpolator.predict(thick, truth.spacing[2], mode=mode, steps=steps).volume}
            outputs.update({m: interpolate(thick, method=m, grid=truth.grid) for m in METHODS})
            reference = truth.array.astype(np.float32)
            scores = {m: metrics.evaluate(v.array, reference, planes=PLANES) for m, v in outputs.items()}
            nearest = interpolate(thick, method="nearest", grid=truth.grid).array
            figure = case_figure(out / "figures" / f"{case_id}.png", truth.spacing, thick=nearest,
                                 cubic=outputs["cubic"].array, model=outputs["model"].array, truth=reference,
                                 scores={"thick": metrics.evaluate(nearest, reference, planes=PLANES), **scores},
                                 window=window, title=case_id)
            cases.append({"case": case_id, "scores": scores, "figure": str(figure)})
    if on_progress:
        on_progress(description, len(case_ids), len(case_ids))
    report = {"checkpoint": str(loaded.path), "step": loaded.step, "split": split, "mode": mode,
              "steps": steps if mode == "sample" else None, "methods": methods, "protocol": PROTOCOL,
              "protocol_short": f"PSNR/SSIM on HU [-1024, 2048], {metrics.TRIM} end slices excluded",
              "cases": cases, "mean": mean_scores(cases, methods)}
    return report, out


def _default_out(checkpoint: Path, split: str) -> Path:
    """Beside the run when the checkpoint sits in ``<run>/checkpoints/``, else in the current folder."""
    folder = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else Path.cwd()
    return folder / f"validation_{split}"
