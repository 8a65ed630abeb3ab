"""The training loop, top to bottom.

    ctslice train --config configs/tiny_cpu.yaml --out runs/tiny             # CPU, minutes
    ctslice train --config configs/slice_interpolation_full_medium.yaml      # one A100/H100, BF16
    torchrun --nproc_per_node=4 -m ctslice train --config ...                # DDP, rank 0 logs and saves
    ctslice train --config ... --out runs/x --resume latest                  # continue exactly

One optimizer step = ``grad_accumulation`` micro-batches of ``batch_size`` patches per rank. The
patch stream is a pure function of (seed, sample index) and the loss's noise comes from the global
RNG, whose state is saved with each checkpoint, so a resumed run continues the exact loss trajectory
of an uninterrupted one. SIGTERM (Kubernetes preemption) finishes the current step, writes a
checkpoint and exits with code 143 so the Job reschedules the pod, which resumes with ``--resume latest``.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ctslice.codecs import build_codec
from ctslice.config import Config, save_config
from ctslice.console import console
from ctslice.data.cache import Cache
from ctslice.data.patches import PatchDataset, PixelSource
from ctslice.data.splits import read_splits
from ctslice.errors import CtsliceError, InputError
from ctslice.hardware import autocast, configure, memory_line, peak_memory_bytes, resolve_device
from ctslice.models import LatentStats, build_model
from ctslice.training import checkpoint as ckpt
from ctslice.training.distributed import Distributed
from ctslice.training.latents import LatentSource, build_latent_cache
from ctslice.training.optim import build_optimizer, warmup_cosine
from ctslice.training.progress import TrainingProgress
from ctslice.training.run_log import RunLog, read_log
from ctslice.training.state import Saver, restore_rng, seed_everything
from ctslice.training.validation import Validator

STATS_INDEX = 2**60  # patches for the latent statistics come from far beyond any training index


class Preempted(CtsliceError):
    """SIGTERM arrived; a checkpoint was written. Exit 143 so that a Kubernetes Job reschedules."""

    exit_code = 143


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    best_psnr: float | None
    final_metrics: dict


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


class _Objective(torch.nn.Module):
    """The loss as a module's forward, so DDP sees the call it needs to synchronise gradients."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, thin, cond):
        return self.model.loss(thin, cond)


def train(config: Config, run_dir: Path, resume: str | None = None, device_name: str | None = None) -> TrainResult:
    """Train ``config`` into ``run_dir``; see the module docstring."""
    device = resolve_device(device_name or config.hardware.device)
    world = Distributed.from_environment(device.type)
    device = world.device_for(device)
    configure(device, config.hardware.tf32)
    seed_everything(config.training.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    if world.is_main:
        save_config(config, run_dir / "config.yaml")

    # ---- data: train/val cases from the cache and splits
    with Cache(Path(config.data.cache)) as cache:
        case_ids = cache.case_ids()
        splits = read_splits(Path(config.data.splits), case_ids)
        ratios = {cache.info(c).ratio for c in case_ids}
    if not splits["train"]:
        raise InputError(f"{config.data.splits}: no training cases")
    thin_spacing, inplane_size = _cache_geometry(Path(config.data.cache), splits["train"][0])
    if config.data.whole_volumes and config.training.batch_size > 1:
        raise InputError("data.whole_volumes needs training.batch_size 1 (volumes differ in shape)")

    # ---- codec (frozen) and model
    codec = build_codec(config.codec.name, checkpoint=config.codec.checkpoint, device=device,
                        encode_chunk=config.codec.encode_chunk, decode_chunk=config.codec.decode_chunk)
    model = build_model(config, codec.latent_channels, device)
    if config.hardware.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    _print_parameters(model, codec)

    # ---- patches: cached latents (encode each volume once) or pixels encoded at every step
    if config.data.cache_latents:
        latents_path = run_dir / "latents.h5"
        if world.is_main:
            with TrainingProgress.encoding(len(splits["train"])) as advance:
                build_latent_cache(Path(config.data.cache), splits["train"], codec, codec_fingerprint(config),
                                   latents_path, device, on_case=lambda _: advance())
        world.barrier()
        source = LatentSource(latents_path, splits["train"], codec.compression)
    else:
        source = PixelSource(Path(config.data.cache), splits["train"], z_multiple=codec.compression[0],
                             inplane_multiple=codec.compression[1])
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
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["lr_scheduler"])
        start_step, best_psnr = int(state["step"]), state.get("best_metric")
        restore_rng(state["rng"])
        if world.is_main:
            _truncate_log(run_dir, start_step)
        console.print(f"Resumed from {path} at step {start_step}")
    else:
        stats = _fit_latent_stats(dataset, codec, config, device)
        model.set_stats(stats)
        console.print(f"Latent scale factor (1/std of training latents): "
                      f"{', '.join(f'{v:.3f}' for v in stats.target_scale.tolist())}")

    objective = _Objective(model)
    if world.enabled:
        objective = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.training.batch_size, num_workers=config.data.num_workers,
        sampler=IndexStream(start_step, config.training.grad_accumulation, world.rank, world.world_size,
                            config.training.batch_size),
        generator=torch.Generator().manual_seed(config.training.seed),  # leaves the global RNG alone
        persistent_workers=config.data.num_workers > 0, pin_memory=device.type == "cuda")
    batches = iter(loader)

    meta = {"codec": codec_identity(codec), "data": {"thin_spacing": thin_spacing, "ratio": max(ratios),
                                                "thick_spacing": thin_spacing * max(ratios),
                                                "inplane_size": inplane_size}}
    log = RunLog(run_dir, enabled=world.is_main)
    validator = Validator(config, Path(config.data.cache), splits["val"], codec, device, thin_spacing, inplane_size)
    stop = _SigtermFlag()
    saver = Saver(run_dir, config, model, optimizer, scheduler, meta, world)

    # ---- the loop
    step, bad_steps, started = start_step, 0, time.time()
    final_metrics: dict = {}
    with TrainingProgress(total_steps, start_step, enabled=world.is_main) as bar:
        while step < total_steps:
            tic = time.time()
            model.train()
            loss_sum = 0.0
            for micro in range(config.training.grad_accumulation):
                batch = next(batches)
                thin, cond = (batch["thin"].to(device), batch["cond"].to(device)) if config.data.cache_latents \
                    else encode_batch(batch, codec, device)
                sync = micro == config.training.grad_accumulation - 1 or not world.enabled
                with _maybe_no_sync(objective, sync), autocast(device, config.training.precision):
                    loss = objective(thin, cond) / config.training.grad_accumulation
                loss.backward()
                loss_sum += float(loss.detach())
            finite = world.all_true(math.isfinite(loss_sum), device)
            if finite:
                grad_norm = torch.nn.utils.clip_grad_norm_(model.unet.parameters(), config.training.grad_clip)
                optimizer.step()
                bad_steps = 0
            else:
                bad_steps += 1
                console.print(f"[yellow]warning:[/] non-finite loss at step {step + 1}; step skipped "
                              f"({bad_steps} in a row)")
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            step_time = time.time() - tic
            if bad_steps >= config.training.max_bad_steps:
                saver.save(step, best_psnr, periodic=True)
                raise CtsliceError(f"{bad_steps} non-finite losses in a row at step {step}: stopping (checkpoint "
                                   "saved). Lower training.lr, or check the data for NaNs")
            lr = scheduler.get_last_lr()[0]
            bar.update(step, loss_sum, lr, step_time, peak_memory_bytes(device))
            if step == start_step + min(3, total_steps - start_step):
                console.print(f"Memory after {step - start_step} step(s): {memory_line(device)}")
            if step % config.training.log_interval == 0 or step == total_steps:
                log.write({"kind": "train", "step": step, "loss": loss_sum, "lr": lr, "step_time": step_time,
                           "grad_norm": float(grad_norm) if finite else None,
                           "memory_gib": peak_memory_bytes(device) / 2**30})
            out_of_time = (config.training.time_limit_minutes is not None
                           and time.time() - started > 60 * config.training.time_limit_minutes)
            finishing = step == total_steps or world.any_true(out_of_time, device)
            if step % config.training.val_interval == 0 and not finishing:
                metrics = validator.run(model, step, log) if world.is_main else {}
                best_psnr = saver.maybe_best(step, metrics, best_psnr)
            if step % config.training.checkpoint_interval == 0:
                saver.save(step, best_psnr, periodic=True)
            if world.any_true(stop.requested, device):
                saver.save(step, best_psnr, periodic=True)
                raise Preempted(f"stopped by SIGTERM at step {step}; checkpoint saved (resume with --resume latest)")
            if finishing:
                if out_of_time:
                    console.print(f"Time limit of {config.training.time_limit_minutes} min reached at step {step}")
                break
    final_metrics = validator.run(model, step, log, final=True) if world.is_main else {}
    best_psnr = saver.maybe_best(step, final_metrics, best_psnr)
    saver.save(step, best_psnr, periodic=False)
    log.close()
    stop.restore()
    world.barrier()
    world.close()
    if world.is_main:
        console.print(f"Training finished at step {step}: {run_dir / 'checkpoints' / 'final.pt'}")
    return TrainResult(run_dir, step, best_psnr, final_metrics)


def encode_batch(batch: dict, codec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel patches (HU) -> (thin, condition) latents with the frozen codec."""
    thin = codec.encode(codec.normalize(batch["thin"].to(device)))
    cond = codec.encode(codec.normalize(batch["cond"].to(device)))
    return thin.float(), cond.float()


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


def _cache_geometry(cache_path: Path, case_id: str) -> tuple[float, int]:
    """Thin slice spacing and in-plane matrix size (0: native) the cache was built with."""
    with Cache(cache_path) as cache:
        return cache.grid(case_id, "thin").spacing[2], int(cache.options(case_id).get("size", 0))


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
        import json

        path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _maybe_no_sync(objective, sync: bool):
    """DDP: skip the gradient all-reduce on all but the last micro-batch of an accumulated step."""
    if sync or not hasattr(objective, "no_sync"):
        return contextlib.nullcontext()
    return objective.no_sync()


class _SigtermFlag:
    """Remembers a SIGTERM until the loop reaches a point where it can checkpoint."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)
