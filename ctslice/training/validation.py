"""Validation during training: loss on fixed validation patches, and PSNR/SSIM on whole cases.

The whole-case metrics run the same inference pipeline and the same metric protocol as
``ctslice validate``, so the numbers in ``log.jsonl`` and in a validation report agree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ctslice.config import Config
from ctslice.console import console, note
from ctslice.data.cache import Cache
from ctslice.data.patches import PatchDataset, PixelSource
from ctslice.evaluation import metrics
from ctslice.hardware import autocast
from ctslice.inference.pipeline import SliceInterpolator
from ctslice.training.latents import encode_batch
from ctslice.training.run_log import RunLog

VALIDATION_PATCHES = 4
VALIDATION_SEED = 12345


class Validator:
    def __init__(self, config: Config, cache_path: Path, case_ids: list[str], codec, device: torch.device,
                 inplane_size: int):
        self.config, self.cache_path, self.codec, self.device = config, cache_path, codec, device
        self.case_ids = case_ids[: config.validation.val_samples]
        self.inplane_size = inplane_size
        self.patches = None
        if self.case_ids:
            source = PixelSource(cache_path, self.case_ids, z_multiple=codec.compression[0],
                                 inplane_multiple=codec.compression[1])
            dataset = PatchDataset(source, config.data, VALIDATION_SEED)
            self.patches = [dataset[k] for k in range(VALIDATION_PATCHES)]

    @torch.no_grad()
    def run(self, model, step: int, log: RunLog, final: bool = False) -> dict:
        if not self.case_ids:
            note("no validation cases in the splits: validation skipped")
            return {}
        model.eval()
        result = {"val_loss": self._loss(model)}
        interpolator = SliceInterpolator(model, self.codec, self.config, self.device, self.inplane_size)
        scores = []
        with Cache(self.cache_path) as cache:
            for case_id in self.case_ids:
                truth = cache.volume(case_id, "thin")
                prediction = interpolator.predict(cache.volume(case_id, "thick"), truth.spacing[2],
                                                  mode=self.config.validation.mode,
                                                  steps=self.config.validation.val_steps, seed=step)
                scores.append(metrics.evaluate(prediction.volume.array, truth.array.astype(np.float32)))
        for key in ("psnr", "ssim", "hu_mae"):
            result[key] = float(np.mean([s[key] for s in scores]))
        log.write({"kind": "final_validation" if final else "validation", "step": step, **result})
        console.print(f"{'Final validation' if final else 'Validation'} at step {step}: "
                      f"loss {result['val_loss']:.4f}, PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f}, "
                      f"HU MAE {result['hu_mae']:.1f} ({len(scores)} case(s))")
        model.train()
        return result

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
