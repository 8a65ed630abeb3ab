"""How much memory a config needs, where it goes, and what to change when it does not fit.

    ctslice inspect-memory --config configs/slice_interpolation_full_medium.yaml              # A100/H100?
    ctslice inspect-memory --config configs/tiny_cpu.yaml --measure --volume 40x96x96         # and measured

Modules: ``trace`` (running code on meta tensors and counting its live bytes), ``workload`` (the
stages of a run, written once for tracing and for measuring), ``estimate`` (the memory model),
``advice`` (verdicts per device, suggestions), ``measure`` (real peaks), ``report`` (the whole answer,
JSON); the tables are drawn by ``ctslice.commands.inspect_memory``.
"""

from ctslice.memory.advice import (
    DeviceMemory,
    Suggestion,
    Verdict,
    default_devices,
    device_memories,
    judge,
    suggest,
)
from ctslice.memory.estimate import MemoryEstimate, Stage, estimate_memory, resolve_geometry, with_overrides
from ctslice.memory.measure import Measurement, measure_memory
from ctslice.memory.report import Inspection, inspect, to_json
from ctslice.memory.workload import PARTS, Geometry

__all__ = [
    "PARTS", "DeviceMemory", "Geometry", "Inspection", "Measurement", "MemoryEstimate", "Stage", "Suggestion",
    "Verdict", "default_devices", "estimate_memory", "inspect", "judge", "measure_memory", "device_memories",
    "resolve_geometry", "suggest", "to_json", "with_overrides",
]
