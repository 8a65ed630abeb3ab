"""``ctslice train``: the config (with ``--set`` and the shorthand options folded in), then the trainer."""

from __future__ import annotations

from pathlib import Path


def run(config: Path, overrides: list[str] | None, out: Path | None, *, resume: str | None, device: str | None,
        vae_checkpoint: Path | None, precision: str | None, threads: int | None) -> None:
    from ctslice.config import load_config

    chosen = [f"training.precision={precision}"] if precision else []
    settings = load_config(config, [*with_vae(overrides, vae_checkpoint), *chosen])  # before torch is imported
    from ctslice.training.trainer import train as run_training

    run_training(settings, out or Path("runs") / config.stem, resume=resume, device_name=device, threads=threads)


def with_vae(overrides: list[str] | None, vae_checkpoint: Path | None) -> list[str]:
    """``--vae-checkpoint`` is shorthand for ``--set codec.checkpoint=PATH``."""
    return [*(overrides or []), *([f"codec.checkpoint={vae_checkpoint}"] if vae_checkpoint else [])]
