"""``ctslice inspect-memory``: the memory model's answer (``ctslice.memory.inspect``) as Rich tables or JSON.

The tables have one column per stage of a run (the moments whose peaks matter) and one row per
component; a column's total is the memory in use at that stage's peak, and the largest column is what
the device must hold. GB means 2^30 bytes throughout (nvidia-smi's MiB / 1024).
"""

from __future__ import annotations

import re
from pathlib import Path

from rich.table import Table

from ctslice.console import stdout
from ctslice.errors import InputError, shown
from ctslice.memory.estimate import COMPONENTS, GIB, MemoryEstimate, Stage
from ctslice.memory.report import Inspection, _measured_peak, _predicted, _ratio, _size
from ctslice.memory.workload import ATTENTION, DECODE, ENCODE, GRADIENTS, UNET_WEIGHTS, VAE_WEIGHTS, WINDOWS

INFERENCE_COMPONENTS = (VAE_WEIGHTS, UNET_WEIGHTS, ATTENTION, ENCODE, WINDOWS, DECODE)


def run(config: Path, overrides: list[str] | None, *, measure: bool, device_memory: str | None, json_output: bool,
        device: str | None, ratio: float | None, volume: str | None) -> None:
    """Predict (and with ``measure`` measure) the memory ``config`` needs; print tables or one JSON document."""
    from ctslice.config import load_config

    settings = load_config(config, overrides)  # before torch is even imported
    from ctslice.commands.options import flag_wording
    from ctslice.memory import inspect, to_json

    sizes = parse_device_memory(device_memory) if device_memory is not None else None  # '' is refused, not ignored
    shape = parse_volume(volume) if volume is not None else None
    with flag_wording(device="--device", ratio="--ratio"):
        inspection = inspect(settings, device=device, device_memory=sizes, measure=measure, ratio=ratio, volume=shape)
    if json_output:
        stdout.print_json(data=to_json(inspection, str(config)))
        return
    for renderable in render(inspection, str(config)):
        stdout.print(renderable)
        stdout.print()


UNITS = {"": GIB, "g": GIB, "gb": GIB, "gib": GIB, "m": 2**20, "mb": 2**20, "mib": 2**20, "t": 2**40,
         "tb": 2**40, "tib": 2**40}
MAX_DEVICE_MEMORY = 1024 * 2**40  # bytes: a petabyte is no device
MAX_VOLUME_SIDE = 65_536
MAX_DEVICES = 16


def parse_device_memory(text: str) -> list[int]:
    """``--device-memory`` '80GB', '80', '40GiB', '24,40,80' -> bytes (GB here means 2^30 bytes, as nvidia-smi's)."""
    sizes = []
    if text.count(",") >= MAX_DEVICES:  # each size is a row of the verdict table, each re-run through the advice
        raise InputError(f"--device-memory: {text.count(',') + 1:,} sizes; give at most {MAX_DEVICES}")
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d{1,9}(?:\.\d{1,9})?)\s*([a-zA-Z]*)\s*", part)
        unit = match and match.group(2).lower()
        size = float(match.group(1)) * UNITS[unit] if match and unit in UNITS else 0
        if not 0 < size <= MAX_DEVICE_MEMORY:
            raise InputError(f"--device-memory {shown(text)}: expected a size such as 80GB (up to "
                             f"{MAX_DEVICE_MEMORY // 2**40} TB), or several such as 24,40,80")
        sizes.append(int(size))
    return sizes


def parse_volume(text: str) -> tuple[int, int, int]:
    """``--volume`` '300x512x512' -> the thin-slice (depth, height, width)."""
    sizes = re.split(r"\s*[x,]\s*", text.strip().lower())
    if len(sizes) != 3 or not all(re.fullmatch(r"\d{1,6}", s) and 0 < int(s) <= MAX_VOLUME_SIDE for s in sizes):
        raise InputError(f"--volume {shown(text)}: expected thin-slice depth x height x width from 1 to "
                         f"{MAX_VOLUME_SIDE:,} each, e.g. 300x512x512")
    return tuple(int(s) for s in sizes)

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


def _header(estimate: MemoryEstimate, label: str) -> Table:
    c, f, g = estimate.config, estimate.facts, estimate.geometry
    tokens = ", ".join(f"{'middle block' if k == 'middle' else f'level {k}'} {v:,}"
                       for k, v in f["attention_tokens"].items())
    flash = "flash attention" if f["flash_attention"] else "no flash attention"
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
        options = " ".join(f"--set {setting}" for setting in s.settings)
        table.add_row(s.change, options, _number(s.training_peak), _number(s.inference_peak),
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
