"""``ctslice inspect-memory``: the whole answer (prediction, verdicts, suggestions, measurements), as data
and as one JSON document (the command layer, ``ctslice.commands.inspect_memory``, draws the tables).

The tables have one column per stage of a run (the moments whose peaks matter) and one row per
component; a column's total is the memory in use at that stage's peak, and the largest column is what
the device must hold. GB means 2^30 bytes throughout (nvidia-smi's MiB / 1024).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ctslice.config import Config
from ctslice.errors import InputError, shown
from ctslice.memory.advice import (
    DeviceMemory,
    Suggestion,
    Verdict,
    default_devices,
    device_memories,
    judge,
    suggest,
)
from ctslice.memory.estimate import GIB, MemoryEstimate, Stage, estimate_memory, resolve_geometry
from ctslice.memory.measure import Measurement, measure_memory
from ctslice.memory.workload import PARTS


@dataclass
class Inspection:
    estimate: MemoryEstimate
    verdicts: list[Verdict]
    suggestions: list[Suggestion]
    suggestions_for: DeviceMemory | None
    measurements: list[Measurement] | None = None
    measured_on: str | None = None


def inspect(config: Config, *, device: str | None = None, device_memory: list[int] | None = None, measure: bool = False,
            ratio: float | None = None, volume: tuple[int, int, int] | None = None) -> Inspection:
    """Everything ``inspect-memory`` reports (errors are ``InputError``): ``device_memory`` in bytes (one
    verdict each), ``volume`` the thin-slice (depth, height, width).

    The prediction is for CUDA unless the device (``device``, else ``hardware.device``) is the CPU; with
    ``measure`` it is for the device the measurement runs on.
    """
    from ctslice.hardware import configure, resolve_device

    name = (device or config.hardware.device).strip().lower()
    source = "device" if device else "hardware.device"
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise InputError(f"{source} {shown(name)}: expected auto, cpu, cuda or cuda:N")
    measure_device = resolve_device(name, source) if measure else None
    if measure_device is not None:
        configure(measure_device, config.hardware.tf32)
    device_type = measure_device.type if measure_device else ("cpu" if name == "cpu" else "cuda")
    if ratio is not None and ratio <= 0:
        raise InputError(f"ratio {ratio}: the thick/thin spacing ratio must be positive")
    size = volume
    small = measure_device is not None and size is None and not Path(config.data.cache).is_file()
    geometry = resolve_geometry(config, ratio, MEASURE_VOLUME if small else size)
    if small:  # measuring the assumed 300 x 512 x 512 volume on a CPU would take many minutes
        geometry = replace(geometry, source=f"no cache at {config.data.cache} and no volume given, so the measurement "
                           f"predicts and measures a small {_size(MEASURE_VOLUME)} volume (give a volume DxHxW "
                           "for another)")
    devices = device_memories(device_memory, device_type) if device_memory else default_devices(device_type)
    estimate = estimate_memory(config, geometry, device_type)
    verdicts = judge(estimate, devices)
    failing = [v.device for v in verdicts if not (v.training_fits and v.inference_fits)]
    target = max(failing, key=lambda d: d.bytes) if failing else None
    inspection = Inspection(estimate, verdicts, suggest(estimate, target) if target else [], target)
    if measure_device is not None:
        inspection.measurements = measure_memory(config, geometry, measure_device,
                                                 skip_above={p: _predicted(estimate, p) for p in PARTS})
        inspection.measured_on = str(measure_device)
    return inspection


def to_json(inspection: Inspection, label: str) -> dict:
    estimate = inspection.estimate
    document = {
        "config": label, "device_type": estimate.device_type, "units": "GB = 2^30 bytes",
        "precision": estimate.config.training.precision,
        "geometry": asdict(estimate.geometry), "facts": _jsonable(estimate.facts),
        "training": _stages_json(estimate.training, estimate.training_peak),
        "inference": _stages_json(estimate.inference, estimate.inference_peak),
        "devices": [{"label": v.device.label, "memory_gb": _gb(v.device.bytes), "usable_gb": _gb(v.device.usable),
                     "training_fits": v.training_fits, "inference_fits": v.inference_fits}
                    for v in inspection.verdicts],
        "suggestions_for": inspection.suggestions_for.label if inspection.suggestions_for else None,
        "suggestions": [{"change": s.change, "set": s.settings,
                         "training_peak_gb": _gb(s.training_peak), "inference_peak_gb": _gb(s.inference_peak),
                         "fits": s.fits} for s in inspection.suggestions],
        "measured": None,
    }
    if inspection.measurements is not None:
        document["measured_on"] = inspection.measured_on
        document["measured"] = [{"part": m.part, "predicted_gb": _gb(_predicted(estimate, m.part)),
                                 "measured_gb": None if m.bytes is None else _gb(m.bytes),
                                 "ratio": _ratio(m, estimate), "error": m.error or None}
                                for m in inspection.measurements]
        peak = _measured_peak(inspection)
        document["measured_peak"] = None if peak is None else {
            "predicted_gb": _gb(peak[0]), "measured_gb": _gb(peak[1]), "ratio": round(peak[1] / peak[0], 3)}
    return document


# What ``--measure`` runs on when neither a cache nor ``--volume`` gives the volumes: as deep as the
# reference configs' training patches (16 thick slices x 5), whole 128 x 128 slices (32 x 32 latents).
MEASURE_VOLUME = (80, 128, 128)


def _size(volume: tuple[int, int, int]) -> str:
    return " x ".join(str(n) for n in volume)


def _predicted(estimate: MemoryEstimate, part: str) -> int:
    """The predicted total of the stage a measured part is (the training step, or an inference stage)."""
    return next(s.total for s in estimate.training + estimate.inference if s.name == part)


def _measured_peak(inspection: Inspection) -> tuple[int, int] | None:
    """(predicted, measured) largest stage over the parts that could be measured: the totals to compare."""
    done = [m for m in inspection.measurements if m.bytes is not None]
    if not done:
        return None
    return max(_predicted(inspection.estimate, m.part) for m in done), max(m.bytes for m in done)


def _ratio(measurement: Measurement, estimate: MemoryEstimate) -> float | None:
    if measurement.bytes is None:
        return None
    return round(measurement.bytes / max(1, _predicted(estimate, measurement.part)), 3)


def _stages_json(stages: list[Stage], peak: Stage) -> dict:
    return {"stages": {s.name: {"components_gb": {k: _gb(v) for k, v in s.components.items()},
                                "total_gb": _gb(s.total), "note": s.note or None} for s in stages},
            "peak": {"stage": peak.name, "gb": _gb(peak.total)}}


def _jsonable(facts: dict) -> dict:
    return {k: {str(a): b for a, b in v.items()} if isinstance(v, dict) else list(v) if isinstance(v, tuple) else v
            for k, v in facts.items()}


def _gb(value: int) -> float:
    return round(value / GIB, 4)
