"""``ctslice demo``: the whole pipeline on embedded data, for a first run on a laptop.

Synthesises phantom scans (or takes ``--input`` scans), preprocesses them into a cache, splits them,
fine-tunes the bundled model (its own recipe, ``default_model.yaml``, at a fine-tuning learning rate)
for a bounded time, so the closing table shows what a trained model adds, validates against linear, cubic and Lanczos
interpolation on the test case, infers the test case's thick volume, and says where everything is.
Each step is the command body behind the matching command, so the demo is also a tour of them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ctslice.commands import preprocess, split
from ctslice.commands.infer import run_infer
from ctslice.commands.validate import run_validate
from ctslice.config import load_config
from ctslice.console import console, stdout
from ctslice.data.cache import Cache
from ctslice.data.phantom import make_phantom
from ctslice.data.preprocess import PreprocessOptions
from ctslice.errors import CtsliceError, InputError
from ctslice.hardware import resolve_device
from ctslice.io import write_volume
from ctslice.io.paths import check_output

PHANTOMS = 6
MARKER = ".ctslice-demo"  # in a folder the demo made: a rerun may reuse (and update) what is in it
PHANTOM_SHAPE = (100, 128, 128)  # z, y, x voxels at 1 mm along z and 3 mm in-plane
PHANTOM_SPACING = (3.0, 3.0, 1.0)


@dataclass
class DemoResult:
    cache: Path
    run: Path
    report: dict
    thick: Path
    thin: Path
    figure: Path
    seconds: float


FINE_TUNING_LR = 1e-4  # a tenth of the recipe's 1e-3, which was for training from scratch
FINE_TUNING_WARMUP = 10  # steps: the fresh optimizer's first updates stay small on trained weights


def recipe_config_path() -> Path:
    """The bundled model's recipe: the same architecture as its weights."""
    return Path(str(resources.files("ctslice") / "configs" / "default_model.yaml"))


def run_demo(out: Path, inputs: list[Path] | None = None, minutes: float = 3.0, device: str = "cpu",
             precision: str = "auto", threads: int | None = None) -> DemoResult:
    started = time.time()
    check_output(out, inputs=inputs or (), folder=True)
    cache, splits = out / "cache.h5", out / "splits.json"
    config = load_config(recipe_config_path(), [
        f"data.cache={cache}", f"data.splits={splits}", "training.init_from=bundled",
        f"training.lr={FINE_TUNING_LR}", f"training.warmup_steps={FINE_TUNING_WARMUP}", "training.max_steps=100000",
        f"training.time_limit_minutes={minutes}", "training.val_interval=100000", f"hardware.device={device}",
        f"training.precision={precision}",
        "data.inplane_fraction=0"])  # the phantom's 2 mm pixels are no 1 mm in-plane truth: through-plane pairs only
    resolve_device(device, "--device")  # a device that is not there fails before any work
    _check_demo_folder(out, inputs or [])
    out.mkdir(parents=True, exist_ok=True)  # the config (--device, --minutes) is checked before any work
    (out / MARKER).touch()
    raw = list(inputs) if inputs else [_synthesise(out / "raw")]

    console.rule("1/5 preprocess")
    preprocess.run(raw, cache, PreprocessOptions(thick_spacing=5.0, thin_spacing=1.0), workers=1, shard=None)
    console.rule("2/5 split")
    with Cache(cache) as opened:
        cases = len(opened.case_ids())
    if cases < 3:
        raise CtsliceError(f"the demo needs at least 3 usable scans (train, val, test); {cases} preprocessed")
    assigned = split.run(cache, splits, val=1 / cases, test=1 / cases, seed=0)

    console.rule(f"3/5 fine-tune the bundled model (at most {minutes:g} min)")
    run_dir = out / "run"
    from ctslice.commands.train_display import training_display
    from ctslice.training.trainer import train

    with training_display(config.training.log_interval) as display:
        train(config, run_dir, resume="latest", threads=threads, on_progress=display.progress, on_step=display.step)
    checkpoint = run_dir / "checkpoints" / "final.pt"

    console.rule("4/5 validate on the test case")
    report = run_validate(checkpoint, cache, splits, split="test", out=run_dir / "validation_test", device_name=device,
                          precision=precision, threads=threads)

    console.rule("5/5 infer the test case's thick scan")
    test_case = assigned["test"][0]
    thick_path = out / f"{test_case}_thick.nii.gz"
    with Cache(cache) as opened:
        write_volume(opened.volume(test_case, "thick"), thick_path)
    thin_path = out / f"{test_case}_thin.nii.gz"
    run_infer(thick_path, thin_path, checkpoint=checkpoint, device_name=device, precision=precision, threads=threads)

    result = DemoResult(cache, run_dir, report, thick_path, thin_path, Path(report["cases"][0]["figure"]),
                        time.time() - started)
    _print_summary(result)
    return result


def _check_demo_folder(out: Path, inputs: list[Path]) -> None:
    """The demo writes cache.h5, splits.json, run/ ... into ``out`` and reuses them on a rerun, so ``out`` must be
    new, empty or an earlier demo's: a folder of other work may hold a cache, splits or a run of the same names
    that the demo would change. Missing inputs are found here too, before the folder is made."""
    for path in inputs:
        if not path.exists():
            raise InputError(f"--input {path}: no such file or folder")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise InputError(f"--out {out}: the folder holds other files and no earlier demo; give a new or empty folder")


def _synthesise(folder: Path) -> Path:
    """Phantom chest scans at 1 mm slices (thin ground truth; the thick slices are simulated)."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(PHANTOMS):
        path = folder / f"phantom_{seed:02d}.nii.gz"
        if not path.exists():
            write_volume(make_phantom(PHANTOM_SHAPE, PHANTOM_SPACING, seed=seed), path)
    console.print(f"Synthesised {PHANTOMS} phantom scans in {folder}")
    return folder


def _print_summary(result: DemoResult) -> None:
    mean = result.report["mean"]
    lines = [f"  {name:8s} PSNR {scores['psnr']:6.2f} dB   SSIM {scores['ssim']:.4f}   HU MAE {scores['hu_mae']:6.1f}"
             for name, scores in mean.items()]
    stdout.print("\n".join([
        f"Demo finished in {result.seconds / 60:.1f} min. Test case, model against classical interpolation:",
        *lines,
        f"Thin volume:        {result.thin} (from {result.thick})",
        f"Report:             {result.run / 'validation_test' / 'report.json'}",
        f"Case figure:        {result.figure}",
        f"Training curves:    {result.run / 'progress.png'}",
        f"Checkpoints, logs:  {result.run}",
    ]))
