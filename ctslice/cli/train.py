"""``ctslice train``, ``ctslice inspect-memory`` and ``ctslice configs``: they start from a config file."""

from __future__ import annotations

from pathlib import Path

import typer

from ctslice.cli.app import PrecisionChoice, command, precision_option, threads_option
from ctslice.cli.domains import number
from ctslice.cli.stops import stopped_cleanly

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
    from ctslice.commands import train as body

    body.run(config, overrides, out, resume=resume, device=device, vae_checkpoint=vae_checkpoint,
             precision=precision.value if precision else None, threads=threads)


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
    from ctslice.commands import inspect_memory as body

    with stopped_cleanly("the measurement process was ended"):  # subprocess.run kills its child on the way out
        body.run(config, overrides, measure=measure, device_memory=device_memory, json_output=json_output,
                 device=device, ratio=ratio, volume=volume)


@command("configs", example="ctslice configs")
def configs() -> None:
    """List the configs that come with ctslice: usable by name (--config tiny_cpu) from any folder."""
    from ctslice.commands import configs as body

    body.run()
