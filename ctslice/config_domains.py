"""The values each config key accepts beyond its type (``ctslice.config`` checks every loaded config against them).

``CHOICES``: keys with a fixed set of values. ``DOMAINS``: every other key that is not a bool, with its
range, length or pattern; a value outside makes training wrong or fails late. ``tests/test_domains.py``
fails for a key declared in ``ctslice.config`` but missing from both.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

CHOICES = {
    "codec.name": ("identity", "maisi"),
    "codec.strategy": ("auto", "blocks", "slabs"),
    "diffusion.schedule": ("cosine", "linear_beta", "scaled_linear_beta", "sigmoid_beta"),
    "diffusion.prediction_type": ("sample", "epsilon", "v_prediction"),
    "diffusion.loss": ("mse", "l1"),
    "training.precision": ("auto", "bf16", "fp32"),
    "validation.mode": ("mean", "sample"),
}


@dataclass(frozen=True)
class Domain:
    """The values a key accepts beyond its type. A value outside makes training wrong or fails late."""

    text: str  # what the message says the key must be
    low: float | None = None
    high: float | None = None
    above: bool = False  # ``low`` itself is excluded
    length: tuple[int, int] | None = None  # strings and lists
    pattern: str | None = None  # strings: the whole value must match
    items: Domain | None = None  # lists: every element

    def accepts(self, value: Any) -> bool:
        if isinstance(value, (str, list)):
            if self.length and not self.length[0] <= len(value) <= self.length[1]:
                return False
            if isinstance(value, list):
                return self.items is None or all(self.items.accepts(v) for v in value)
            return self.pattern is None or re.fullmatch(self.pattern, value) is not None
        if isinstance(value, bool):
            return True
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return ((self.low is None or (value > self.low if self.above else value >= self.low))
                and (self.high is None or value <= self.high))


def ints(low: int, high: int) -> Domain:
    return Domain(f"an integer from {low:,} to {high:,}", low, high)


def floats(low: float, high: float, above: bool = False) -> Domain:
    return Domain(f"a finite number {'above' if above else 'from'} {low:g} {'and at most' if above else 'to'} "
                  f"{high:g}", low, high, above)


def lists(items: Domain | None, longest: int, what: str) -> Domain:
    return Domain(f"a list of 1 to {longest} {what}", length=(1, longest), items=items)


PATH = Domain("a non-empty path of at most 4096 characters", length=(1, 4096))
STEPS = ints(1, 10**9)

# Every key that is not a bool or in CHOICES, with the values it accepts (None, where the type allows
# it, means "not set" and is not checked). tests/test_domains.py fails for a key missing here.
DOMAINS: dict[str, Domain] = {
    "data.cache": PATH,
    "data.splits": PATH,
    "data.patch_thick_slices": ints(1, 1024),
    "data.patch_size": ints(0, 4096),
    "data.num_workers": ints(0, 256),
    "data.inplane_fraction": floats(0, 1),
    "codec.checkpoint": PATH,
    "codec.encode_chunk": ints(1, 4096),
    "codec.decode_chunk": ints(1, 4096),
    "codec.overlap": ints(0, 1024),
    "codec.memory_gb": floats(0, 1e6, above=True),  # None: from the free memory
    "model.channels": lists(ints(1, 4096), 8, "channel counts from 1 to 4,096"),
    "model.attention_levels": lists(None, 8, "true/false values"),
    "model.attention_heads": ints(1, 1024),
    "model.num_res_blocks": ints(1, 16),
    "model.norm_num_groups": ints(1, 4096),
    "diffusion.num_train_timesteps": ints(1, 100_000),
    "diffusion.mean_fraction": floats(0, 1),
    "training.seed": ints(0, 2**32 - 1),
    "training.max_steps": STEPS,
    "training.epochs": floats(0, 1e6, above=True),
    "training.batch_size": ints(1, 4096),
    "training.grad_accumulation": ints(1, 4096),
    "training.lr": floats(0, 1, above=True),
    "training.weight_decay": floats(0, 10),
    "training.warmup_steps": ints(0, 10**9),
    "training.warmup_epochs": floats(0, 1e6),
    "training.grad_clip": floats(0, 1e6, above=True),  # 0 would zero every gradient, below 0 flip them
    "training.log_interval": STEPS,
    "training.val_interval": STEPS,
    "training.checkpoint_interval": STEPS,
    "training.time_limit_minutes": floats(0, 1e6, above=True),
    "training.max_bad_steps": ints(1, 10**6),
    "training.init_from": Domain("a checkpoint path or bundled", length=(1, 4096)),
    "validation.val_samples": ints(0, 10**6),  # 0: no validation
    "validation.val_steps": ints(1, 10_000),
    "inference.steps": ints(1, 10_000),
    "inference.window_slices": ints(4, 8192),
    "inference.window_size": ints(16, 8192),  # 0 made thousands of tiny windows
    "inference.overlap": floats(0, 0.9),  # 0.99 would run 100x more windows per axis
    "inference.window_batch": ints(1, 1024),
    "hardware.device": Domain("auto, cpu, cuda or cuda:N", pattern=r"auto|cpu|cuda(:\d{1,3})?", length=(1, 16)),
}
