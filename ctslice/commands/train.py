"""``ctslice train``: the config (with ``--set`` and the shorthand options folded in), then the trainer."""

from __future__ import annotations

from pathlib import Path


def run(config: Path, overrides: list[str] | None, out: Path | None, *, resume: str | None, device: str | None,
        vae_checkpoint: Path | None, precision: str | None, threads: int | None) -> None:
    from ctslice.config import load_config

    chosen = [f"training.precision={precision}"] if precision else []
    settings = load_config(config, [*with_vae(overrides, vae_checkpoint), *chosen])  # before torch is imported
    out = out or Path("runs") / config.stem
    _check_config_kept(config, out, resume)
    from ctslice.commands.options import flag_wording
    from ctslice.commands.train_display import training_display, with_memory_advice
    from ctslice.errors import CtsliceError
    from ctslice.training.session import RunInFolder
    from ctslice.training.trainer import OutOfMemory
    from ctslice.training.trainer import train as run_training

    flags = flag_wording(device="--device", threads="--threads", resume="--resume")
    with training_display(settings.training.log_interval) as display, flags:
        try:
            run_training(settings, out, resume=resume, device_name=device,
                         threads=threads, on_progress=display.progress, on_step=display.step)
        except OutOfMemory as error:
            raise CtsliceError(with_memory_advice(error, settings)) from None
        except RunInFolder as error:
            raise RunInFolder(f"{error}; continue it with --resume latest, or choose another --out") from None


def with_vae(overrides: list[str] | None, vae_checkpoint: Path | None) -> list[str]:
    """``--vae-checkpoint`` is shorthand for ``--set codec.checkpoint=PATH``."""
    return [*(overrides or []), *([f"codec.checkpoint={vae_checkpoint}"] if vae_checkpoint else [])]


def _check_config_kept(config: Path, out: Path, resume: str | None) -> None:
    """A new run writes its resolved config to ``OUT/config.yaml``; that must not be the config file given
    (``--config config.yaml --out .``), whose comments and layout would be lost. A resume may rewrite it:
    ``--config runs/x/config.yaml --out runs/x --resume latest`` names the file the run wrote."""
    from ctslice.config import resolve_config
    from ctslice.errors import InputError

    source, target = resolve_config(config), out / "config.yaml"
    if resume is None and source.is_file() and target.exists() and source.resolve() == target.resolve():
        raise InputError(f"--out {out}: the run would replace the config file {config} with its resolved copy; "
                         "choose another run folder")
