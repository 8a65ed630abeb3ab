"""``ctslice infer``: thick scans made thin, one scan or a whole folder of them.

The library steps (``ctslice.inference.thinning``) are the ones the Python API runs; this module adds
what a command does around them: every choice and path checked before any work and worded as the flag
the user typed, the input read with its notes, the output written atomically (a volume file, or a
folder holding one DICOM series), and the lines a user or a log reads: the model used, its precision,
``Wrote ...`` and a ``Stages:`` line that scripts grep. A folder of cases is planned by
``ctslice.inference.batch``: the model is loaded once, cases whose output exists are skipped, a failed
case is one line and the others go on, and a summary table ends the run.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table
from rich.text import Text

from ctslice import __version__
from ctslice.console import console, note, progress, stdout
from ctslice.data.discover import Discovery, find_cases
from ctslice.errors import CtsliceError, InputError
from ctslice.hardware import configure, memory_line, reset_peak_memory, resolve_device
from ctslice.inference.batch import OUTPUT_TYPES as EXTENSION_CHOICES
from ctslice.inference.batch import CaseResult, plan_batch, run_batch
from ctslice.inference.thinning import (
    DEFAULT_THIN_SPACING,
    Choices,
    OutOfMemory,
    check_input,
    checked_steps,
    thin_by_method,
    thin_by_model,
)
from ctslice.io import ReadOptions, read_scan, write_volume
from ctslice.io.dicom_output import check_replaceable, input_study_tags, write_dicom_series
from ctslice.io.intensity import cast_rounded
from ctslice.io.paths import check_output, ensure_space, printable, resolved
from ctslice.io.reader import data_files
from ctslice.io.volume import Volume
from ctslice.io.writer import output_bytes

VOLUME_TYPES = {"nifti": (".nii.gz", ".nii"), "nrrd": (".nrrd",), "mha": (".mha", ".mhd")}
"""``--output-type`` -> the file names it writes; ``dicom`` writes a folder holding one DICOM series."""
OUTPUT_TYPES = (*VOLUME_TYPES, "dicom")
EXTENSIONS = {"nifti": ".nii.gz", "nrrd": ".nrrd", "mha": ".mha", "dicom": "dicom"}  # folder inference's --ext
FLAGS = {"method ": "--method ", "mode ": "--mode ", "samples ": "--samples ", "steps ": "--steps ",
         "seed ": "--seed ", "thin spacing ": "--thin-spacing ", "adapt ": "--adapt ",
         "give either a checkpoint (a model) or a method": "give either --checkpoint (a model) or --method"}
"""The library's neutral wording of a choice (``Choices.checked``) -> the flag the user typed."""


def _check_output_type(kind: str) -> None:
    if kind not in OUTPUT_TYPES:
        raise InputError(f"--output-type {kind!r}: choose one of {', '.join(OUTPUT_TYPES)}")


def output_type(output: Path, requested: str | None) -> str:
    """The output type for ``output``: ``requested`` (checked against the name), else the one its suffix names."""
    name = str(output).lower()
    by_suffix = next((kind for kind, suffixes in VOLUME_TYPES.items() if name.endswith(suffixes)), None)
    if requested is None and by_suffix is None:
        suffixes = ", ".join(s for group in VOLUME_TYPES.values() for s in group)
        raise InputError(f"{printable(output)}: unknown output format; use one of {suffixes}, or --output-type dicom "
                         "for a folder holding a DICOM series")
    if requested == "dicom":
        if by_suffix is not None:
            raise InputError(f"--output-type dicom writes a folder; {printable(output)} is named like a volume file")
        return requested
    if requested is None or requested == by_suffix:
        return by_suffix
    _check_output_type(requested)
    raise InputError(f"--output-type {requested}: {printable(output)} does not end in "
                     f"{' or '.join(VOLUME_TYPES[requested])}")


def checked_choices(choices: Choices) -> Choices:
    """``choices.checked()``, its one-line refusal worded with the flags."""
    with _flag_wording():
        return choices.checked()


@contextmanager
def _flag_wording() -> Iterator[None]:
    """The library's one-line refusal of a choice (``FLAGS``), re-raised worded with the flag the user typed."""
    try:
        yield
    except InputError as error:
        message = str(error)
        for neutral, flag in FLAGS.items():
            if message.startswith(neutral):
                message = flag + message[len(neutral):]
                break
        raise InputError(message) from None


@dataclass
class _Engine:
    """The device and the model (loaded once, when first needed; None for a classical baseline)."""

    choices: Choices
    device: object
    vae_checkpoint: Path | None
    precision: str | None
    loaded: object = None
    source: str = field(default="")

    @classmethod
    def start(cls, choices: Choices, device_name, threads, vae_checkpoint, precision) -> _Engine:
        device = resolve_device("cpu" if choices.method else device_name, "--device")
        configure(device, threads=threads)
        return cls(choices, device, vae_checkpoint, precision)

    def model(self):
        """The ``LoadedModel``, loaded (and its precision line printed) on the first call."""
        if self.loaded is None:
            from ctslice.inference.loading import load_model

            reset_peak_memory(self.device)
            loaded = load_model(self.choices.checkpoint, self.device, self.vae_checkpoint, self.precision)
            with _flag_wording():  # before any case: more steps than the model has timesteps
                checked_steps(loaded, self.choices)
            self.loaded = loaded
            path = self.loaded.path
            self.source = (f"checkpoint {path}" if self.choices.checkpoint
                           else f"the bundled default model ({path.name})")
            console.print(self.loaded.precision.line)
        return self.loaded


def run_infer(input: Path, output: Path, *, checkpoint: Path | None = None, method: str | None = None,
              mode: str = "mean", samples: int = 1, std_out: Path | None = None, thin_spacing: float | None = None,
              steps: int | None = None, seed: int = 0, device_name: str | None = None,
              vae_checkpoint: Path | None = None, precision: str | None = None, threads: int | None = None,
              read_options: ReadOptions | None = None, kind: str | None = None, overwrite: bool = False,
              adapt: float = 0.0) -> Volume:
    """Write the thin volume for one scan ``input`` to ``output`` (and the std map to ``std_out``); returns it.

    ``adapt``: minutes to fine-tune a copy of the model on this scan's own in-plane pairs first (``_adapted``).

    ``kind``: the output type (``OUTPUT_TYPES``; default from ``output``'s suffix); ``dicom`` writes
    ``output`` as a folder holding one DICOM series (an existing one replaced only with ``overwrite``).
    """
    kind = output_type(output, kind)
    if std_out is not None and output_type(std_out, None) not in VOLUME_TYPES:
        raise InputError(f"--std-out {printable(std_out)}: write the spread as a volume file")
    choices = checked_choices(Choices(method, checkpoint, mode, samples, thin_spacing, steps, seed, adapt))
    if std_out is not None and choices.samples < 2:
        raise InputError("--std-out needs --samples 2 or more (the spread between samples)")
    inputs = (input, *data_files(input), checkpoint, vae_checkpoint)
    check_output(output, inputs=inputs, folder=kind == "dicom")
    if std_out is not None:
        check_output(std_out, inputs=inputs)
        if resolved(std_out) == resolved(output):
            raise InputError(f"--std-out {printable(std_out)} is the -o file; the spread would replace the thin "
                             "volume: give it another name")
    if kind == "dicom" and output.exists() and not overwrite:
        raise InputError(f"{printable(output)} exists; choose another folder for the DICOM series or pass --overwrite")
    if kind == "dicom":
        check_replaceable(output)
    engine = _Engine.start(choices, device_name, threads, vae_checkpoint, precision)
    return _infer_case(engine, Path(input), Path(output), kind, std_out, read_options)


def _infer_case(engine: _Engine, input: Path, output: Path, kind: str, std_out: Path | None,
                read_options: ReadOptions | None, case: str = "") -> Volume:
    """Read, check, make thin and write one case, printing its notes, ``Wrote ...`` and ``Stages:`` lines."""
    choices, device = engine.choices, engine.device
    started = time.time()
    scan = read_scan(input, read_options)
    thick = scan.volume
    tags = input_study_tags(input) if kind == "dicom" else None
    seconds = {"read": time.time() - started}
    if scan.skipped:
        note(f"{case}skipped {scan.skipped} file(s) that are not images (DICOMDIR, index files, OS litter, DICOM "
             "objects without pixels)")
    for line in scan.report.lines():
        note(case + line)
    try:
        check_input(thick, choices.thin_spacing)
    except InputError as error:  # the checks judge an array; the user needs to know which file
        raise InputError(f"{input}: {error}") from None
    outputs = [output, *([std_out] if std_out else [])]
    if choices.method:
        spacing = choices.thin_spacing or DEFAULT_THIN_SPACING
        _check_space(thick, spacing, outputs)
        console.print(f"{case}{choices.method} interpolation to {spacing:g} mm")
        result, std = thin_by_method(thick, choices.method, choices.thin_spacing), None
        seconds["interpolate"] = time.time() - started - seconds["read"]
        how = choices.method
    else:
        result, std, spacing, stages = _run_model(engine, thick, outputs, case)
        seconds.update(stages)
        how = "model mean" if choices.samples == 1 and choices.mode == "mean" else (
            f"model, mean of {choices.samples} samples" if choices.samples > 1 else "model, 1 sample")
    writing = time.time()
    if kind == "dicom":
        write_dicom_series(result, output, description=f"ctslice {__version__} thin {spacing:g} mm ({how})"[:64],
                           source=tags, overwrite=True)
    else:
        write_volume(result.with_array(cast_rounded(result.array)), output)
    if std_out is not None:
        write_volume(std.with_array(cast_rounded(std.array)), std_out)
    seconds["write"] = time.time() - writing
    console.print(f"{case}Wrote {output}: {result.depth} slices at {spacing:g} mm (input {thick.depth} slices at "
                  f"{thick.spacing[2]:g} mm) in {time.time() - started:.1f} s, {memory_line(device)}")
    console.print(case + _stages_line(seconds, device), soft_wrap=True)  # one line, whatever the width: grepped
    return result


def _run_model(engine: _Engine, thick: Volume, outputs: list[Path], case: str):
    """The model's thin volume, std map, spacing and stage seconds for ``thick``, with its lines and progress."""
    loaded, choices = engine.model(), engine.choices
    spacing = choices.thin_spacing or loaded.default_thin_spacing(thick.spacing[2])
    steps = choices.steps or loaded.interpolator.config.inference.steps
    _check_space(thick, spacing, outputs)
    adapted = {}
    if choices.adapt > 0:
        started = time.time()
        loaded = _adapted(engine, thick, spacing)
        adapted["adapt"] = time.time() - started
    what = "mean estimate" if choices.mode == "mean" else f"{choices.samples} DDIM sample(s) of {steps} steps"
    console.print(f"{case}Using {engine.source}: {what}, {thick.spacing[2]:g} mm -> {spacing:g} mm on "
                  f"{engine.device}")
    if abs(thick.spacing[2] / spacing - loaded.ratio) > 0.5:
        note(f"{case}the model was trained to divide slices by {loaded.ratio:g}; this scan "
             f"asks for {thick.spacing[2]:g} -> {spacing:g} mm (x{thick.spacing[2] / spacing:.2g})")
    with progress() as bar:
        task = bar.add_task("Inferring", total=None)

        def on_step(stage: str, done: int, total: int) -> None:
            bar.update(task, description=f"{case}{stage.capitalize()} (windows)", completed=done, total=total)

        try:
            thinned = thin_by_model(loaded, thick, choices, on_step=on_step)
        except OutOfMemory as error:
            raise CtsliceError(f"out of memory while inferring ({error.reason}); nothing was written. Try --device "
                               "cpu (slower, uses system memory) or a device with more memory") from None
    return thinned.volume, thinned.std, thinned.thin_spacing, {**adapted, **thinned.seconds}


def _adapted(engine: _Engine, thick: Volume, spacing: float):
    """The engine's model fine-tuned on ``thick``'s own in-plane pairs for ``--adapt`` minutes
    (``ctslice.training.adapt``), in a temporary folder removed afterwards; the original is untouched."""
    from ctslice.inference.loading import load_model
    from ctslice.training.adapt import adapt

    minutes = engine.choices.adapt
    console.print(f"Adapting {engine.source} to this scan for {minutes:g} min (its in-plane pairs, {spacing:g} mm)")
    with tempfile.TemporaryDirectory(prefix="ctslice-adapt-") as folder, progress() as bar:
        task = bar.add_task("Adapting", total=minutes * 60)
        started = time.time()
        adapted = adapt(engine.loaded.path, thick, spacing, minutes, Path(folder), device_name=str(engine.device),
                        on_step=lambda report: bar.update(task, completed=min(time.time() - started, minutes * 60)))
        loaded = load_model(adapted, engine.device, engine.vae_checkpoint, engine.precision)
    engine.source = f"{engine.source}, adapted to this scan ({loaded.step} steps)"
    return loaded


def _check_space(thick: Volume, spacing: float, outputs: list[Path]) -> None:
    """Refuse before the work when an output cannot fit on its disk (int16 on the thin grid)."""
    slices = thick.depth * thick.spacing[2] / spacing
    if not math.isfinite(slices):
        return  # not a spacing: the option checks refuse it
    voxels = thick.array[0].size * (int(slices) + 1)
    for path in outputs:
        ensure_space(path, output_bytes(path, voxels))


def _stages_line(seconds: dict[str, float], device) -> str:
    """``Stages: read 0.2 s, encode 1.3 s, ...; <peak memory>``: one line that scripts can grep."""
    return "Stages: " + ", ".join(f"{name} {s:.1f} s" for name, s in seconds.items()) + f"; {memory_line(device)}"


def infer_command(input: Path, output: Path, *, output_type: str | None, ext: str | None, overwrite: bool,
                  shard: str | None, std_out: Path | None, tilt_correction: bool, z_spacing: float | None,
                  **choices) -> None:
    """``ctslice infer``: one scan (``run_infer``) or, for a folder of cases (``batch_cases``), ``run_infer_folder``."""
    from ctslice.commands.options import flag_wording, parse_shard

    with flag_wording(z_spacing="--z-spacing"):
        read_options = ReadOptions(tilt_correction=tilt_correction, z_spacing=z_spacing)
    found = batch_cases(input)
    if found is not None:
        if std_out is not None:
            raise InputError("--std-out is for one scan; a folder of scans writes one output per case")
        if choices.pop("adapt", 0):
            raise InputError("--adapt fine-tunes the model on one scan; give one scan, not a folder of scans")
        run_infer_folder(input, output, ext=ext, kind=output_type, overwrite=overwrite, shard=parse_shard(shard),
                         read_options=read_options, found=found, **choices)
        return
    for flag, value in (("--ext", ext), ("--shard", shard)):
        if value is not None:
            raise InputError(f"{flag} is for a folder of scans; {printable(input)} is one scan "
                             "(name the output with -o)")
    run_infer(input, output, std_out=std_out, kind=output_type, overwrite=overwrite, read_options=read_options,
              **choices)


# ---- a folder of cases


def batch_cases(input: Path) -> Discovery | None:
    """The cases of ``input`` when it is a folder of cases; None when it is one scan.

    A folder is one scan when the only case ``preprocess`` finds in it is a DICOM study (its series
    anywhere below it, as ``infer`` has always read a DICOM folder). A folder holding volume files, zips,
    or the series of several studies is a batch. A folder without any scan is refused here, before the
    output is judged (as a file or a folder) for a scan that is not there. The cases are returned so that
    the folder is searched once (DICOM headers are read for it).
    """
    if not Path(input).is_dir():
        return None
    found = find_cases([Path(input)])
    sources = found.sources
    if not sources:
        skipped = f"; {found.skipped} file(s) that are not images skipped" if found.skipped else ""
        raise InputError(f"{printable(input)}: no scans found (volume files, DICOM series folders or zips){skipped}")
    return found if sources and not (len(sources) == 1 and sources[0].series) else None


def run_infer_folder(input: Path, output: Path, *, ext: str | None = None, kind: str | None = None,
                     overwrite: bool = False, shard: tuple[int, int] | None = None, checkpoint: Path | None = None,
                     method: str | None = None, mode: str = "mean", samples: int = 1, thin_spacing: float | None = None,
                     steps: int | None = None, seed: int = 0, device_name: str | None = None,
                     vae_checkpoint: Path | None = None, precision: str | None = None, threads: int | None = None,
                     read_options: ReadOptions | None = None, found: Discovery | None = None) -> list[CaseResult]:
    """Every case in the folder ``input`` -> ``output/<case><ext>``, the model loaded once; prints a summary.

    ``ext`` (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha`` or ``dicom``) or ``kind`` (an ``--output-type``)
    chooses the outputs, default ``.nii.gz``. A case whose output exists is skipped unless ``overwrite``;
    one that fails is one line and the others go on; ``CtsliceError`` (exit 1) at the end if any failed.
    ``found``: the folder's cases when the caller has searched it already (``batch_cases``).
    """
    if kind is not None:
        _check_output_type(kind)
    if ext is not None and ext not in EXTENSION_CHOICES:
        raise InputError(f"--ext {ext!r}: choose one of {', '.join(EXTENSION_CHOICES)}")
    if ext is not None and kind is not None and _ext_type(ext) != kind:
        raise InputError(f"--ext {ext} and --output-type {kind} disagree; give one of them")
    ext = ext or EXTENSIONS[kind or "nifti"]
    if str(output).lower().endswith(tuple(s for group in VOLUME_TYPES.values() for s in group)):
        raise InputError(f"{printable(output)}: {printable(input)} is a folder of scans, written one output per case "
                         "into a folder; give -o a folder (and --ext for the format)")
    choices = checked_choices(Choices(method, checkpoint, mode, samples, thin_spacing, steps, seed))
    plan = plan_batch(input, output, ext=ext, overwrite=overwrite, shard=shard, found=found)
    engine = _Engine.start(choices, device_name, threads, vae_checkpoint, precision)
    pending = plan.pending
    console.print(f"{len(plan.cases)} case(s) in {printable(input)}: {len(pending)} to do, "
                  f"{len(plan.cases) - len(pending)} with an output already (skipped; --overwrite redoes them)")
    if pending and not choices.method:
        engine.model()  # once, before the first case: a bad checkpoint stops the run, not every case
    numbers = {case.output: (k + 1, case.case_id) for k, case in enumerate(pending)}

    def infer_one(source: Path, target: Path) -> None:
        number, case_id = numbers[target]
        console.print(f"Case {case_id} ({number}/{len(pending)}): {printable(source)}")
        _infer_case(engine, source, target, _ext_type(ext), None, read_options, case=f"{case_id}: ")

    def on_case(result: CaseResult) -> None:
        if result.status == "failed":
            console.print(Text.assemble(("failed: ", "red"), f"{result.case.case_id}: {result.reason}"),
                          soft_wrap=True)

    results = run_batch(plan, infer_one, on_case=on_case)
    stdout.print(summary_table(results))
    failed = [r.case.case_id for r in results if r.status == "failed"]
    if failed:
        raise CtsliceError(f"{len(failed)} of {len(results)} case(s) failed: {', '.join(failed)} (reasons above); "
                           "the others were written")
    return results


def _ext_type(ext: str) -> str:
    """The output type an ``--ext`` writes."""
    return "dicom" if ext == "dicom" else output_type(Path(f"case{ext}"), None)


def summary_table(results: list[CaseResult]) -> Table:
    """One row per case (status; its output, or why it failed) and a caption counting done, skipped and failed."""
    folder = printable(results[0].case.output.parent) if results else ""
    table = Table(title=f"Folder inference into {folder}", title_justify="left")
    for column in ("case", "status", "output / reason"):
        table.add_column(column, overflow="fold")
    for result in results:
        detail = {"failed": result.reason, "skipped": f"{result.case.output.name} (exists)"}
        table.add_row(result.case.case_id, result.status, detail.get(result.status, result.case.output.name))
    counts = {status: sum(r.status == status for r in results) for status in ("done", "skipped", "failed")}
    table.caption = ", ".join(f"{status} {count}" for status, count in counts.items())
    return table
