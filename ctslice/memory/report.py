"""``ctslice inspect-memory``: the whole answer (prediction, verdicts, suggestions, measurements),
printed as Rich tables or as one JSON document.

The tables have one column per stage of a run (the moments whose peaks matter) and one row per
component; a column's total is the memory in use at that stage's peak, and the largest column is what
the device must hold. GB means 2^30 bytes throughout (nvidia-smi's MiB / 1024).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rich.table import Table

from ctslice.config import Config
from ctslice.errors import InputError, shown
from ctslice.memory.advice import (
    DeviceMemory,
    Suggestion,
    Verdict,
    default_devices,
    judge,
    parse_device_memory,
    suggest,
)
from ctslice.memory.estimate import COMPONENTS, GIB, MemoryEstimate, Stage, estimate_memory, resolve_geometry
from ctslice.memory.measure import Measurement, measure_memory
from ctslice.memory.workload import ATTENTION, DECODE, ENCODE, GRADIENTS, PARTS, UNET_WEIGHTS, VAE_WEIGHTS, WINDOWS


@dataclass
class Inspection:
    estimate: MemoryEstimate
    verdicts: list[Verdict]
    suggestions: list[Suggestion]
    suggestions_for: DeviceMemory | None
    measurements: list[Measurement] | None = None
    measured_on: str | None = None


def inspect(config: Config, *, device: str | None = None, device_memory: str | None = None, measure: bool = False,
            ratio: float | None = None, volume: str | None = None) -> Inspection:
    """Everything ``inspect-memory`` reports; options as the command takes them (errors are ``InputError``).

    The prediction is for CUDA unless the device (``device``, else ``hardware.device``) is the CPU; with
    ``measure`` it is for the device the measurement runs on.
    """
    from ctslice.hardware import configure, resolve_device

    name = (device or config.hardware.device).strip().lower()
    source = "--device" if device else "hardware.device"
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise InputError(f"{source} {shown(name)}: expected auto, cpu, cuda or cuda:N")
    measure_device = resolve_device(name, source) if measure else None
    if measure_device is not None:
        configure(measure_device, config.hardware.tf32)
    device_type = measure_device.type if measure_device else ("cpu" if name == "cpu" else "cuda")
    if ratio is not None and ratio <= 0:
        raise InputError(f"--ratio {ratio}: the thick/thin spacing ratio must be positive")
    size = _parse_volume(volume) if volume else None
    small = measure_device is not None and size is None and not Path(config.data.cache).is_file()
    geometry = resolve_geometry(config, ratio, MEASURE_VOLUME if small else size)
    if small:  # measuring the assumed 300 x 512 x 512 volume on a CPU would take many minutes
        geometry = replace(geometry, source=f"no cache at {config.data.cache} and no --volume, so --measure predicts "
                           f"and measures a small {_size(MEASURE_VOLUME)} volume (--volume DxHxW for another)")
    devices = parse_device_memory(device_memory, device_type) if device_memory else default_devices(device_type)
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


def render(inspection: Inspection, label: str) -> list:
    """Rich renderables, in the order they are printed."""
    estimate = inspection.estimate
    out = [_header(estimate, label),
           _stage_table("Training", estimate.training, COMPONENTS,
                        f"peak: {_peak(estimate.training_peak)}{_gradients(estimate)}"),
           _stage_table("Inference (ctslice infer)", estimate.inference, INFERENCE_COMPONENTS,
                        f"peak: {_peak(estimate.inference_peak)}"),
           _verdict_table(inspection)]
    if inspection.suggestions:
        out.append(_suggestion_table(inspection))
    if inspection.measurements is not None:
        out.append(_measurement_table(inspection))
    return out


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


INFERENCE_COMPONENTS = (VAE_WEIGHTS, UNET_WEIGHTS, ATTENTION, ENCODE, WINDOWS, DECODE)


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


MAX_VOLUME_SIDE = 65_536


def _parse_volume(text: str) -> tuple[int, int, int]:
    sizes = re.split(r"\s*[x,]\s*", text.strip().lower())
    if len(sizes) != 3 or not all(re.fullmatch(r"\d{1,6}", s) and 0 < int(s) <= MAX_VOLUME_SIDE for s in sizes):
        raise InputError(f"--volume {shown(text)}: expected thin-slice depth x height x width from 1 to "
                         f"{MAX_VOLUME_SIDE:,} each, e.g. 300x512x512")
    return tuple(int(s) for s in sizes)


def _header(estimate: MemoryEstimate, label: str) -> Table:
    c, f, g = estimate.config, estimate.facts, estimate.geometry
    tokens = ", ".join(f"{'middle block' if k == 'middle' else f'level {k}'} {v:,}"
                       for k, v in f["attention_tokens"].items())
    flash = "flash attention" if f["flash_attention"] else "no flash attention" + (
        " (CUDA only)" if estimate.device_type == "cpu" else "")
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("Predicted", f"{label} on {'CUDA' if estimate.device_type == 'cuda' else 'the CPU'}")
    grid.add_row("Precision", f"{c.training.precision} ({f['precision']}), gradient checkpointing "
                              f"{'on' if c.model.gradient_checkpointing else 'off'}, {flash}")
    grid.add_row("Data", f"thick/thin ratio {g.ratio:g}; thin volumes {_size(g.largest)} (largest), "
                         f"{_size(g.smallest)} (smallest); {g.source}")
    grid.add_row("Patch", f"{_size(f['pixel_patch'])} thin voxels -> {_size(f['latent_patch'])} latents (U-Net "
                          f"input {_size(f['padded_patch'])}); batch {c.training.batch_size} x accumulation "
                          f"{c.training.grad_accumulation}")
    grid.add_row("Networks", f"U-Net {f['unet_parameters'] / 1e6:.2f} M parameters (trained), {c.codec.name} codec "
                             f"{f['vae_parameters'] / 1e6:.2f} M (frozen)")
    grid.add_row("Attention", f"tokens: {tokens}; {c.model.attention_heads} heads")
    grid.add_row("Inference", f"windows of {_size(f['window'])} latents over {_size(f['latent_volume'])}")
    grid.add_row("Units", "GB = 2^30 bytes")
    return grid


def _stage_table(title: str, stages: list[Stage], components: tuple[str, ...], caption: str) -> Table:
    table = Table(title=f"{title}, GB", caption=caption + _notes(stages), title_justify="left",
                  caption_justify="left")
    table.add_column("Component")
    for stage in stages:
        table.add_column(stage.name, justify="right")
    for component in components:
        table.add_row(component, *[_cell(stage.components.get(component)) for stage in stages])
    table.add_row("[bold]Total[/]", *[f"[bold]{_number(stage.total)}[/]" for stage in stages], end_section=True)
    return table


def _gradients(estimate: MemoryEstimate) -> str:
    """Gradients appear during backward as activations are freed, so the step's peak may hold only some;
    DDP (torchrun) keeps its gradient buckets besides the gradients unless they are views of them."""
    step = next(s for s in estimate.training if s.name == "train step")
    live, total = step.components.get(GRADIENTS, 0), 4 * estimate.facts["unet_parameters"]
    notes = f"\nunder torchrun (DDP) add {_number(total)} GB per GPU for the gradient buckets"
    if live < 0.99 * total:
        notes += (f"\ngradients: {_number(total)} GB in all, {_number(live)} GB at the step's peak (backward "
                  "allocates them as it frees activations)")
    return notes


def _notes(stages: list[Stage]) -> str:
    return "".join(f"\n{stage.name}: {stage.note}" for stage in stages if stage.note)


def _verdict_table(inspection: Inspection) -> Table:
    estimate = inspection.estimate
    reserve = " less 0.5 GB for the CUDA context" if estimate.device_type == "cuda" else ""
    table = Table(title="Fits?", title_justify="left", caption_justify="left",
                  caption=f"usable = 90% of the memory{reserve} (allocator fragmentation, workspaces)")
    for column in ("Device", "Memory", "Usable", f"Training ({_number(estimate.training_peak.total)})",
                   f"Inference ({_number(estimate.inference_peak.total)})"):
        table.add_column(column, justify="left" if column == "Device" else "right")
    for verdict in inspection.verdicts:
        usable = verdict.device.usable
        table.add_row(verdict.device.label, _number(verdict.device.bytes), _number(usable),
                      _fit(verdict.training_fits, estimate.training_peak.total, usable),
                      _fit(verdict.inference_fits, estimate.inference_peak.total, usable))
    return table


def _suggestion_table(inspection: Inspection) -> Table:
    table = Table(title=f"To fit {inspection.suggestions_for.label}: each change re-run through the model",
                  title_justify="left")
    for column in ("Change", "Options", "Training", "Inference", "Fits"):
        table.add_column(column, justify="right" if column in ("Training", "Inference") else "left")
    for s in inspection.suggestions:
        table.add_row(s.change, s.set_options, _number(s.training_peak), _number(s.inference_peak),
                      "[green]yes[/]" if s.fits else "no")
    return table


def _measurement_table(inspection: Inspection) -> Table:
    estimate = inspection.estimate
    how = ("torch.cuda.max_memory_allocated per part" if estimate.device_type == "cuda" else
           "peak resident set per part, each in a fresh process after a warm-up (Linux)")
    table = Table(title=f"Measured on {inspection.measured_on}, GB", title_justify="left", caption=how,
                  caption_justify="left")
    for column in ("Part", "Predicted", "Measured", "Measured / predicted"):
        table.add_column(column, justify="left" if column == "Part" else "right")
    for m in inspection.measurements:
        ratio = _ratio(m, estimate)
        table.add_row(m.part, _number(_predicted(estimate, m.part)), m.error if m.bytes is None else _number(m.bytes),
                      "" if ratio is None else f"{ratio:.2f}")
    peak = _measured_peak(inspection)
    if peak is not None:
        table.add_row("[bold]Largest[/]", _number(peak[0]), _number(peak[1]), f"{peak[1] / peak[0]:.2f}",
                      end_section=True)
    return table


def _stages_json(stages: list[Stage], peak: Stage) -> dict:
    return {"stages": {s.name: {"components_gb": {k: _gb(v) for k, v in s.components.items()},
                                "total_gb": _gb(s.total), "note": s.note or None} for s in stages},
            "peak": {"stage": peak.name, "gb": _gb(peak.total)}}


def _jsonable(facts: dict) -> dict:
    return {k: {str(a): b for a, b in v.items()} if isinstance(v, dict) else list(v) if isinstance(v, tuple) else v
            for k, v in facts.items()}


def _fit(fits: bool, needed: int, usable: int) -> str:
    if fits:
        return f"[green]fits[/], {_number(usable - needed)} spare"
    return f"[red]no[/], {_number(needed - usable)} over"


def _peak(stage: Stage) -> str:
    return f"{_number(stage.total)} GB ({stage.name})"


def _cell(value: int | None) -> str:
    return "" if value is None else _number(value)


def _number(value: int) -> str:
    gb = value / GIB
    return f"{gb:.1f}" if gb >= 10 else f"{gb:.2f}" if gb >= 0.01 or gb == 0 else f"{gb:.3f}"


def _gb(value: int) -> float:
    return round(value / GIB, 4)


def _size(size) -> str:
    return " x ".join(str(n) for n in size)
