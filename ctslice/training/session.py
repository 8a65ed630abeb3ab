"""Everything a training run needs before its first step, built in order from the config.

Data (cache, splits, patch source), the frozen codec, the model, the optimizer and its schedule,
then either a fresh start (latent statistics fitted on training patches) or a resume (model,
optimizer, schedule, RNG states, step and best metric from a checkpoint), the data loader positioned
at the step, the log, the validator and the checkpoint policy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ctslice.codecs import codec_for
from ctslice.config import Config, save_config, with_precision
from ctslice.console import console, note
from ctslice.data.cache import Cache
from ctslice.data.patches import PatchDataset, PixelSource
from ctslice.data.splits import read_splits
from ctslice.errors import InputError, Preempted, first_line
from ctslice.hardware import configure, resolve_device, resolve_precision
from ctslice.io.paths import check_output
from ctslice.models import LatentStats, build_model
from ctslice.training import checkpoint as ckpt
from ctslice.training.distributed import Distributed
from ctslice.training.latents import LatentSource, build_latent_cache, encode_batch
from ctslice.training.optim import build_optimizer, warmup_cosine
from ctslice.training.progress import TrainingProgress
from ctslice.training.run_log import RunLog, read_log
from ctslice.training.state import Saver, restore_rng, seed_everything
from ctslice.training.validation import Validator

STATS_INDEX = 2**60  # patches for the latent statistics come from far beyond any training index


@dataclass
class Session:
    config: Config
    run_dir: Path
    device: torch.device
    world: Distributed
    codec: object
    model: torch.nn.Module
    objective: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: object
    source: object
    log: RunLog
    validator: Validator
    saver: Saver
    start_step: int
    total_steps: int
    best_psnr: float | None

    def close(self) -> None:
        self.log.close()
        self.source.close()


class IndexStream(torch.utils.data.Sampler):
    """Sample indices for this rank from optimizer step ``start_step`` on, forever."""

    def __init__(self, start_step: int, per_step: int, rank: int, world: int, batch: int):
        self.start, self.per_step, self.rank, self.world, self.batch = start_step, per_step, rank, world, batch

    def __iter__(self):
        step = self.start
        while True:
            for micro in range(self.per_step):
                first = ((step * self.per_step + micro) * self.world + self.rank) * self.batch
                yield from range(first, first + self.batch)
            step += 1


class Objective(torch.nn.Module):
    """The loss as a module's forward, so DDP sees the call it needs to synchronise gradients."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, thin, cond):
        return self.model.loss(thin, cond)


def prepare(config: Config, run_dir: Path, resume: str | None, device_name: str | None,
            stop_requested: Callable[[], bool] = lambda: False, threads: int | None = None) -> Session:
    device = resolve_device(device_name or config.hardware.device, "--device" if device_name else "hardware.device")
    world = Distributed.from_environment(device.type)
    device = world.device_for(device)
    configure(device, config.hardware.tf32, threads)
    precision = resolve_precision(config.training.precision, device)
    console.print(precision.line)
    requested, config = config, with_precision(config, precision.name)  # autocast gets bf16 or fp32, never auto
    seed_everything(config.training.seed)

    # ---- data: train/val cases from the cache and splits (checked before anything is written)
    with Cache(Path(config.data.cache)) as cache:
        case_ids = cache.case_ids()
        splits = read_splits(Path(config.data.splits), case_ids)
        ratios = sorted({round(cache.info(c).ratio, 3) for c in splits["train"]})
        thin_spacings = sorted({round(cache.grid(c, "thin").spacing[2], 4) for c in splits["train"]})
        inplane_size = int(cache.options(splits["train"][0]).get("size", 0)) if splits["train"] else 0
    if not splits["train"]:
        raise InputError(f"{config.data.splits}: no training cases")
    if config.data.whole_volumes and config.training.batch_size > 1:
        raise InputError("data.whole_volumes needs training.batch_size 1 (volumes differ in shape)")
    if len(ratios) > 1:
        note(f"training cases have different thick/thin ratios {ratios}; "
                      f"the checkpoint records the largest")
    thin_spacing = thin_spacings[0] if len(thin_spacings) == 1 else None  # None: mixed, infer uses T / ratio
    check_output(run_dir, inputs=(Path(config.data.cache), Path(config.data.splits)), folder=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    if world.is_main:
        save_config(requested, run_dir / "config.yaml")  # as asked (auto stays auto for another machine)

    # ---- codec (frozen) and model
    codec = codec_for(config.codec, device)
    model = build_model(config, codec.latent_channels, device)
    if config.hardware.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    _print_parameters(model, codec)

    # ---- patches: cached latents (each volume encoded once) or pixels encoded at every step
    if config.data.cache_latents:
        latents_path = run_dir / "latents.h5"
        if world.is_main:
            encoded = []

            def after_case(case_id: str) -> None:  # encoding hundreds of volumes can outlast a preemption notice
                advance()
                encoded.append(case_id)
                if stop_requested() and len(encoded) < len(splits["train"]):
                    raise Preempted(f"stopped by SIGTERM while building the latent cache ({len(encoded)} of "
                                    f"{len(splits['train'])} training volumes encoded, kept in {latents_path}); "
                                    "rerun with --resume latest")

            with TrainingProgress.encoding(len(splits["train"])) as advance:
                build_latent_cache(Path(config.data.cache), splits["train"], codec, codec_fingerprint(config),
                                   latents_path, device, on_case=after_case)
        world.barrier()
        source = LatentSource(latents_path, splits["train"], type(codec))
    else:
        source = PixelSource(Path(config.data.cache), splits["train"], codec.compression)
    dataset = PatchDataset(source, config.data, config.training.seed)

    # ---- optimizer and schedule
    optimizer = build_optimizer({"unet": model.unet}, config.training)
    total_steps, warmup_steps = _schedule_length(config, len(splits["train"]))
    scheduler = warmup_cosine(optimizer, warmup_steps, total_steps)

    # ---- fresh start (latent statistics) or resume (everything)
    start_step, best_psnr = 0, None
    resumed = ckpt.resolve_resume(resume, run_dir) if resume else None
    if resumed:
        path, state = resumed
        ckpt.load_weights(model, state["model"], path, " (was model.* changed since the run started?)")
        try:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["lr_scheduler"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise ckpt.CheckpointError(f"{path}: weights do not fit the model in this config (was model.* "
                                       f"changed since the run started?): {first_line(error, 160)}") from None
        start_step, best_psnr = int(state["step"]), state.get("best_metric")
        restore_rng(state["rng"])
        if world.is_main:
            _truncate_log(run_dir, start_step)
        console.print(f"Resumed from {path} at step {start_step}")
    else:
        stats = _fit_latent_stats(dataset, codec, config, device)
        model.set_stats(stats)
        console.print("Latent scale factor (1/std of training latents): "
                      + ", ".join(f"{v:.3f}" for v in stats.target_scale.tolist()))

    objective = Objective(model)
    if world.enabled:
        objective = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.training.batch_size, num_workers=config.data.num_workers,
        sampler=IndexStream(start_step, config.training.grad_accumulation, world.rank, world.world_size,
                            config.training.batch_size),
        generator=torch.Generator().manual_seed(config.training.seed),  # leaves the global RNG alone
        persistent_workers=config.data.num_workers > 0, pin_memory=device.type == "cuda")
    meta = {"codec": codec_identity(codec), "data": {"thin_spacing": thin_spacing, "ratio": ratios[-1],
                                                     "inplane_size": inplane_size}}
    return Session(
        config=config, run_dir=run_dir, device=device, world=world, codec=codec, model=model, objective=objective,
        optimizer=optimizer, scheduler=scheduler, batches=iter(loader), source=source,
        log=RunLog(run_dir, enabled=world.is_main),
        validator=Validator(config, Path(config.data.cache), splits["val"], codec, device, inplane_size),
        saver=Saver(run_dir, config, model, optimizer, scheduler, meta, world),
        start_step=start_step, total_steps=total_steps, best_psnr=best_psnr)


def codec_identity(codec) -> dict:
    """What inference needs to rebuild the same codec (weights come from the user, not the checkpoint)."""
    return {"name": codec.name, "latent_channels": codec.latent_channels, "compression": list(codec.compression)}


def codec_fingerprint(config: Config) -> str:
    """Changes whenever cached latents would: the codec, its weights file, its chunking."""
    weights = config.codec.checkpoint
    stamp = ""
    if weights and Path(weights).exists():
        stat = Path(weights).stat()
        stamp = f"{stat.st_size}:{int(stat.st_mtime)}"
    return f"{config.codec.name}:{weights}:{stamp}:{config.codec.encode_chunk}"


def _print_parameters(model, codec) -> None:
    unet = sum(p.numel() for p in model.unet.parameters())
    unet_trainable = sum(p.numel() for p in model.unet.parameters() if p.requires_grad)
    vae = codec.parameter_count()
    console.print(f"Parameters: Total {unet + vae:,} | Trainable {unet_trainable:,} | "
                  f"VAE: {vae:,} (0 trainable) | U-Net: {unet:,}")


def _schedule_length(config: Config, train_cases: int) -> tuple[int, int]:
    """Total and warmup optimizer steps. An epoch is one patch per training case."""
    per_step = config.training.batch_size * config.training.grad_accumulation
    steps_per_epoch = max(1, math.ceil(train_cases / per_step))
    total = config.training.max_steps or max(1, math.ceil(config.training.epochs * steps_per_epoch))
    warmup = config.training.warmup_steps
    if config.training.warmup_epochs is not None:
        warmup = int(round(config.training.warmup_epochs * steps_per_epoch))
    return total, min(warmup, total)


def _fit_latent_stats(dataset: PatchDataset, codec, config: Config, device: torch.device,
                      samples: int = 8) -> LatentStats:
    """Latent statistics (the scale factor) from a few training patches, drawn without touching the RNG."""
    thins, conds = [], []
    for index in range(samples):
        batch = {k: v[None] for k, v in dataset[STATS_INDEX + index].items()}
        if config.data.cache_latents:
            thin, cond = batch["thin"], batch["cond"]
        else:
            thin, cond = encode_batch(batch, codec, device)
        thins.append(thin.cpu())
        conds.append(cond.cpu())
    return LatentStats.fit(thins, conds, config.model.residual)


def _truncate_log(run_dir: Path, step: int) -> None:
    """Drop log records after the checkpoint we resume from (they will be written again)."""
    records = [r for r in read_log(run_dir) if r.get("step", 0) <= step]
    path = run_dir / "log.jsonl"
    if path.exists():
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
