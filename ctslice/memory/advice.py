"""Verdicts (does it fit this device?) and suggestions (what to change when it does not).

A prediction counts what PyTorch allocates. A device also holds the CUDA context (0.3 to 0.6 GB) and
the caching allocator's fragmentation and cuDNN workspaces (typically 5 to 10% of the peak), so a
verdict compares the peak with 90% of the memory less 0.5 GB. Suggestions are not rules of thumb:
each one is the model re-run with that one change (traces of unchanged stages are reused).
"""

from __future__ import annotations

from dataclasses import dataclass

from ctslice.config import Config
from ctslice.config_domains import DOMAINS
from ctslice.memory.estimate import GIB, MemoryEstimate, changes_parts, estimate_memory, with_overrides
from ctslice.memory.workload import config_codec
from ctslice.models.unet import size_multiple

USABLE_FRACTION = 0.9
CUDA_RESERVE = 0.5 * GIB
COMMON_GPUS = ((24, "RTX 4090, A10, L4"), (40, "A100 40GB"), (48, "A6000, L40S"), (80, "A100/H100 80GB"),
               (141, "H200"))


@dataclass(frozen=True)
class DeviceMemory:
    bytes: int
    label: str
    device_type: str = "cuda"

    @property
    def usable(self) -> int:
        reserve = CUDA_RESERVE if self.device_type == "cuda" else 0
        return max(0, int(USABLE_FRACTION * self.bytes - reserve))


@dataclass(frozen=True)
class Verdict:
    device: DeviceMemory
    training_fits: bool
    inference_fits: bool


@dataclass(frozen=True)
class Suggestion:
    change: str
    overrides: dict[str, object]
    training_peak: int
    inference_peak: int
    fits: bool  # on the device the suggestions are for

    @property
    def settings(self) -> list[str]:
        """``section.key=value`` for each change, as ``--set`` takes them."""
        return _settings(self.overrides)


def device_memories(sizes: list[int], device_type: str = "cuda") -> list[DeviceMemory]:
    """Device memories of ``sizes`` bytes, labelled in GB (2^30 bytes, as nvidia-smi's)."""
    return [DeviceMemory(size, f"{size / GIB:g} GB", device_type) for size in sizes]


def default_devices(device_type: str) -> list[DeviceMemory]:
    """The current GPU, else common GPUs; for a CPU prediction, this machine's memory."""
    import torch

    if device_type == "cpu":
        return [DeviceMemory(_machine_memory(), "this machine's RAM", "cpu")]
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(torch.cuda.current_device())
        return [DeviceMemory(properties.total_memory, f"{properties.name} (this GPU)")]
    return [DeviceMemory(gb * GIB, f"{gb} GB ({names})") for gb, names in COMMON_GPUS]


def judge(estimate: MemoryEstimate, devices: list[DeviceMemory]) -> list[Verdict]:
    training, inference = estimate.training_peak.total, estimate.inference_peak.total
    return [Verdict(d, training <= d.usable, inference <= d.usable) for d in devices]


def suggest(estimate: MemoryEstimate, device: DeviceMemory) -> list[Suggestion]:
    """Changes that lower a peak (training or inference) that does not fit ``device``, best first, each with
    its predicted effect; a last one combines them all when none is enough alone."""
    failing = {kind: stage for kind, stage in (("training", estimate.training_peak),
                                               ("inference", estimate.inference_peak)) if stage.total > device.usable}
    parts = tuple({part for stage in failing.values() for part in stage.parts})
    suggestions = []
    for change, overrides in savings(estimate.config, estimate.device_type):
        config = with_overrides(estimate.config, overrides)
        if not changes_parts(estimate.config, config, parts):
            continue  # leaves the stages that do not fit as they are
        changed = estimate_memory(config, estimate.geometry, estimate.device_type)
        if any(getattr(changed, f"{kind}_peak").total < stage.total for kind, stage in failing.items()):
            suggestions.append(_suggestion(change, overrides, changed, device))
    suggestions.sort(key=lambda s: max(s.training_peak, s.inference_peak))
    if len(suggestions) > 1 and not any(s.fits for s in suggestions):
        combined = {k: v for s in suggestions for k, v in s.overrides.items()}
        changed = estimate_memory(with_overrides(estimate.config, combined), estimate.geometry, estimate.device_type)
        suggestions.append(_suggestion("all of the above", combined, changed, device))
    return suggestions


def _worst(estimate: MemoryEstimate) -> int:
    return max(estimate.training_peak.total, estimate.inference_peak.total)


def _suggestion(change: str, overrides: dict, estimate: MemoryEstimate, device: DeviceMemory) -> Suggestion:
    return Suggestion(change, overrides, estimate.training_peak.total, estimate.inference_peak.total,
                      _worst(estimate) <= device.usable)


def savings(config: Config, device_type: str) -> list[tuple[str, dict[str, object]]]:
    """One change per knob that can lower memory, sized one step (a halving) from the current value."""
    candidates = []
    model, data, training, codec = config.model, config.data, config.training, config.codec
    if training.precision == "fp32":
        candidates.append(("BF16 autocast", {"training.precision": "bf16"}))
    if not model.gradient_checkpointing:
        candidates.append(("gradient checkpointing on", {"model.gradient_checkpointing": True}))
    if device_type == "cuda" and not config.hardware.flash_attention:
        candidates.append(("flash attention on", {"hardware.flash_attention": True}))
    if training.batch_size > 1:
        candidates.append((f"batch {training.batch_size} -> 1, same effective batch",
                           {"training.batch_size": 1,
                            "training.grad_accumulation": training.grad_accumulation * training.batch_size}))
    _, cy, _ = config_codec(config).compression
    smallest_side = size_multiple(model) * cy
    if data.whole_volumes:
        candidates.append(("patches instead of whole volumes", {"data.whole_volumes": False}))
    elif data.patch_size == 0 or data.patch_size // 2 >= smallest_side:
        side = data.patch_size // 2 if data.patch_size else 256
        candidates.append((f"smaller patch ({data.patch_size or 'whole slices'} -> {side} pixels)",
                           {"data.patch_size": side}))
    if not data.whole_volumes and data.patch_thick_slices > 1:
        candidates.append((f"thinner patch ({data.patch_thick_slices} -> {data.patch_thick_slices // 2} thick slices)",
                           {"data.patch_thick_slices": data.patch_thick_slices // 2}))
    if codec.name == "maisi" and codec.decode_chunk > 1:
        candidates.append((f"smaller decode chunk ({codec.decode_chunk} -> {codec.decode_chunk // 2} latent slices)",
                           {"codec.decode_chunk": codec.decode_chunk // 2}))
    if codec.name == "maisi" and codec.encode_chunk > 4:
        smaller = max(4, codec.encode_chunk // 8 * 4)
        candidates.append((f"smaller encode chunk ({codec.encode_chunk} -> {smaller} slices)",
                           {"codec.encode_chunk": smaller}))
    if config.inference.window_size // 2 >= max(smallest_side, DOMAINS["inference.window_size"].low):
        candidates.append((f"smaller inference window ({config.inference.window_size} -> "
                           f"{config.inference.window_size // 2} pixels)",
                           {"inference.window_size": config.inference.window_size // 2}))
    return candidates


def set_options(config: Config, device_type: str) -> list[str]:
    """``savings`` as ``--set`` options (several for one change joined by `` --set ``), cheap: no tracing."""
    return [" --set ".join(_settings(overrides)) for _, overrides in savings(config, device_type)]


def _settings(overrides: dict[str, object]) -> list[str]:
    """``section.key=value`` for each override, as ``--set`` takes them (YAML booleans in lower case)."""
    return [f"{key}={str(value).lower() if isinstance(value, bool) else value}" for key, value in overrides.items()]


def _machine_memory() -> int:
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
