"""Validation during training: loss on fixed validation patches, and PSNR/SSIM on whole cases.

The whole-case metrics run the same inference pipeline and the same metric protocol as
``ctslice validate``, so the numbers in ``log.jsonl`` and in a validation report agree. Cubic
interpolation is scored on the same cases (``cubic_psnr``, ``cubic_ssim``: the line a model has to
beat, drawn in ``progress.png``); it does not change during a run, so it is computed once per case.

A validation can take minutes (every case, every U-Net window of every DDIM step), longer than a
preemption notice: ``check_stop`` is called between cases and after every batch of U-Net windows, and
raises (``Preempted``/``Interrupted``) to abandon the validation when SIGTERM or Ctrl-C has arrived.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ctslice.config import Config
from ctslice.data.cache import Cache
from ctslice.data.patches import PatchDataset, PixelSource
from ctslice.evaluation import metrics
from ctslice.hardware import autocast
from ctslice.inference.pipeline import SliceInterpolator
from ctslice.io.geometry import interpolate
from ctslice.training.latents import encode_batch
from ctslice.training.run_log import RunLog

logger = logging.getLogger(__name__)

VALIDATION_PATCHES = 4
VALIDATION_SEED = 12345


class Validator:
    def __init__(self, config: Config, cache_path: Path, case_ids: list[str], codec, device: torch.device,
                 inplane_size: int):
        self.config, self.cache_path, self.codec, self.device = config, cache_path, codec, device
        self.case_ids = case_ids[: config.validation.val_samples]
        self.inplane_size = inplane_size
        self.patches = None
        self._cubic: dict[str, dict[str, float]] = {}  # case id -> cubic's scores, computed at the first run
        if self.case_ids:
            source = PixelSource(cache_path, self.case_ids, codec.compression)
            through_plane = dataclasses.replace(config.data, inplane_fraction=0.0)  # the loss the metrics measure
            dataset = PatchDataset(source, through_plane, VALIDATION_SEED)
            self.patches = [dataset[k] for k in range(VALIDATION_PATCHES)]

    @torch.no_grad()
    def run(self, model, step: int, log: RunLog, final: bool = False,
            check_stop: Callable[[str], None] = lambda detail: None) -> dict:
        """Scores of ``model`` at ``step``, written to ``log``; ``check_stop(detail)`` raises to abandon the
        validation (nothing is logged then), ``detail`` saying where it stopped."""
        if not self.case_ids:
            logger.info("no validation cases in the splits: validation skipped")
            return {}
        model.eval()
        result = {"val_loss": self._loss(model)}
        interpolator = SliceInterpolator(model, self.codec, self.config, self.device, self.inplane_size)
        scores, cubic = [], []
        where = f"during the {'final ' if final else ''}validation at step {step}"

        def after_windows(stage: str, done: int, total: int) -> None:
            check_stop(where)

        with Cache(self.cache_path) as cache:
            for case_id in self.case_ids:
                check_stop(where)
                truth = cache.volume(case_id, "thin")
                prediction = interpolator.predict(cache.volume(case_id, "thick"), truth.spacing[2],
                                                  mode=self.config.validation.mode,
                                                  steps=self.config.validation.val_steps, seed=step,
                                                  on_step=after_windows)
                scores.append(metrics.evaluate(prediction.volume.array, truth.array.astype(np.float32)))
                cubic.append(self._cubic_scores(case_id, cache))
        for key in ("psnr", "ssim", "hu_mae"):
            result[key] = float(np.mean([s[key] for s in scores]))
        for key in ("psnr", "ssim"):
            result[f"cubic_{key}"] = float(np.mean([s[key] for s in cubic]))
        log.write({"kind": "final_validation" if final else "validation", "step": step, **result})
        logger.info(f"{'Final validation' if final else 'Validation'} at step {step}: "
                    f"loss {result['val_loss']:.4f}, PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f}, "
                    f"HU MAE {result['hu_mae']:.1f} ({len(scores)} case(s))")
        model.train()
        return result

    def _cubic_scores(self, case_id: str, cache: Cache) -> dict[str, float]:
        if case_id not in self._cubic:
            truth = cache.volume(case_id, "thin")
            cubic = interpolate(cache.volume(case_id, "thick"), method="cubic", grid=truth.grid)
            self._cubic[case_id] = metrics.evaluate(cubic.array, truth.array.astype(np.float32))
        return self._cubic[case_id]

    def _loss(self, model) -> float:
        """Mean loss on fixed patches with fixed noise, without disturbing the training RNG stream."""
        losses = []
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(VALIDATION_SEED)
            for patch in self.patches:
                batch = {k: v[None] for k, v in patch.items()}
                thin, cond = encode_batch(batch, self.codec, self.device)
                with autocast(self.device, self.config.training.precision):
                    losses.append(float(model.loss(thin, cond)))
        return float(np.mean(losses))
