"""``ctslice train``, ``ctslice inspect-memory`` and ``ctslice configs``: they start from a config file."""

from __future__ import annotations

from pathlib import Path

import typer

from ctslice.cli.app import PrecisionChoice, command, precision_option, threads_option
from ctslice.cli.domains import number

SET_HELP = "Override a config key, e.g. --set training.max_steps=100 (repeatable)."
CONFIG_HELP = "YAML config: a file, or the name of a shipped one (`ctslice configs` lists them)."


@command("train", example="ctslice train --config tiny_cpu --set data.cache=cache.h5 --set data.splits=splits.json "
                          "--out runs/tiny")
def train(
    config: Path = typer.Option(..., "--config", "-c", help=CONFIG_HELP),
    overrides: list[str] = typer.Option(None, "--set", help=SET_HELP),
    out: Path = typer.Option(None, "--out", help="Run folder (config, checkpoints, logs); default runs/<config name>."),
    resume: str = typer.Option(None, "--resume", help="`latest` (in --out) or a checkpoint path."),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: the config's)."),
    vae_checkpoint: Path = typer.Option(None, "--vae-checkpoint", help="MAISI VAE weights (sets codec.checkpoint)."),
    precision: PrecisionChoice = precision_option(None, "the config's training.precision, auto by default"),
    threads: int = threads_option(),
) -> None:
    """Train the denoising U-Net on the cache (BF16 on CUDA; DDP when launched with torchrun)."""
    from ctslice.config import load_config

    chosen = [f"training.precision={precision.value}"] if precision else []
    settings = load_config(config, [*with_vae(overrides, vae_checkpoint), *chosen])  # before torch is imported
    from ctslice.cli.train_display import training_display, with_memory_advice
    from ctslice.errors import CtsliceError
    from ctslice.training.trainer import OutOfMemory
    from ctslice.training.trainer import train as run_training

    with training_display() as display:
        try:
            run_training(settings, out or Path("runs") / config.stem, resume=resume, device_name=device,
                         threads=threads, on_progress=display.progress, on_step=display.step)
        except OutOfMemory as error:
            raise CtsliceError(with_memory_advice(error, settings)) from None


def with_vae(overrides: list[str] | None, vae_checkpoint: Path | None) -> list[str]:
    """``--vae-checkpoint`` is shorthand for ``--set codec.checkpoint=PATH``."""
    return [*(overrides or []), *([f"codec.checkpoint={vae_checkpoint}"] if vae_checkpoint else [])]


@command("inspect-memory",
         example="ctslice inspect-memory --config slice_interpolation_full_medium --device-memory 40GB")
def inspect_memory(
    config: Path = typer.Option(..., "--config", "-c", help=CONFIG_HELP),
    overrides: list[str] = typer.Option(None, "--set", help=SET_HELP),
    measure: bool = typer.Option(False, "--measure", help="Also run one step and report measured peaks."),
    device_memory: str = typer.Option(None, "--device-memory", help="Device memory to judge against, e.g. 80GB."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON document instead of tables."),
    device: str = typer.Option(None, "--device", help="cpu or cuda: what to predict for (and measure on); "
                                                      "default: the config's, predicting for CUDA unless it is cpu."),
    ratio: float = number(None, "--ratio", help="Thick/thin spacing ratio (default: from data.cache, else 5).",
                          low=1, high=100),
    volume: str = typer.Option(None, "--volume", help="Largest thin volume DxHxW, e.g. 300x512x512 "
                                                      "(default: from data.cache, else 300x512x512)."),
) -> None:
    """Predict (and optionally measure) the memory a config needs, per component."""
    from ctslice.config import load_config

    settings = load_config(config, overrides)  # before torch is even imported
    from ctslice.console import stdout
    from ctslice.memory import inspect, render, to_json

    inspection = inspect(settings, device=device, device_memory=device_memory, measure=measure, ratio=ratio,
                         volume=volume)
    if json_output:
        stdout.print_json(data=to_json(inspection, str(config)))
        return
    for renderable in render(inspection, str(config)):
        stdout.print(renderable)
        stdout.print()


@command("configs", example="ctslice configs")
def configs() -> None:
    """List the configs that come with ctslice: usable by name (--config tiny_cpu) from any folder."""
    from rich.table import Table

    from ctslice.config import SHIPPED_CONFIGS, shipped_configs
    from ctslice.console import stdout

    table = Table("Config", "Description", title=f"Shipped configs ({SHIPPED_CONFIGS})", title_justify="left")
    for name, (_, description) in shipped_configs().items():
        table.add_row(name, description)
    stdout.print(table)
