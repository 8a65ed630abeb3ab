"""Per-scan adaptation: fine-tune a copy of a model on one thick scan's own in-plane pairs (SR4ZCT).

``infer --adapt MINUTES`` calls ``adapt`` before inferring: the scan goes into a one-case cache as a
self-supervised case (``ctslice.data.pairs.self_supervised_case``: its slice profile, the thin
spacing asked for), and an ordinary training run of the model's own config starts from the model's
weights (``training.init_from``) with in-plane pairs only (``data.inplane_fraction`` 1), no
validation (there is no thin truth), a small constant learning rate (the cosine schedule spread over
far more steps than the time allows) and the time limit. The run is a normal run folder, so an
interrupted adaptation stops cleanly with its checkpoint; the caller infers with ``final.pt``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

from ctslice import checkpoint as ckpt
from ctslice.config import config_from_dict
from ctslice.data import cache as cache_files
from ctslice.data.pairs import self_supervised_case
from ctslice.io.volume import Volume
from ctslice.training.trainer import StepReport, train

CASE = "scan"
ADAPT_LR = 1e-4  # a tenth of a typical training rate: a few hundred steps on one scan must not forget the rest
ADAPT_STEPS = 1_000_000  # the schedule's length: far beyond any time limit, so the rate stays at ADAPT_LR


def adapt(checkpoint: Path, thick: Volume, thin_spacing: float, minutes: float, workdir: Path,
          device_name: str | None = None, threads: int | None = None,
          on_step: Callable[[StepReport], None] | None = None) -> Path:
    """Fine-tune ``checkpoint`` on ``thick``'s in-plane pairs for ``minutes``; returns the adapted checkpoint.

    The slice profile is the scan's spacing (a read volume carries no DICOM SliceThickness). Everything is
    written under ``workdir`` (the cache, splits and run folder), which the caller owns."""
    state = ckpt.read_checkpoint(checkpoint)
    cache, splits = workdir / "scan.h5", workdir / "splits.json"
    parts = cache_files.parts_dir(cache)
    cache_files.write_part(parts, CASE, self_supervised_case(thick, thin_spacing), source=CASE,
                           content_hash=CASE, patient=CASE, options={"thin_spacing": thin_spacing})
    cache_files.consolidate_parts(cache)
    splits.write_text(json.dumps({"train": [CASE], "val": [], "test": []}), encoding="utf-8")
    settings = copy.deepcopy(state["config"])
    settings["data"].update(cache=str(cache), splits=str(splits), inplane_fraction=1.0, num_workers=0)
    settings["training"].update(init_from=str(checkpoint), time_limit_minutes=float(minutes), max_steps=ADAPT_STEPS,
                                epochs=None, lr=ADAPT_LR, warmup_steps=0, warmup_epochs=None,
                                val_interval=ADAPT_STEPS, checkpoint_interval=ADAPT_STEPS)
    settings["validation"].update(val_samples=0)
    config = config_from_dict(settings, where=f"{checkpoint} (config, adapted)")
    run = workdir / "run"
    train(config, run, device_name=device_name, threads=threads, on_step=on_step)
    return run / "checkpoints" / "final.pt"
