"""Everything a training run needs before its first step, built from the config in named steps.

``prepare`` reads as the list of steps: the checkpoint to resume from or (on a fresh start) the one
``training.init_from`` names, read first, and the run folder checked (a run already in it is only
ever resumed); the device; the data (cases and splits, checked before anything is written); the
frozen codec; the model, with the init checkpoint's weights loaded; the optimizer (always fresh) and
its schedule, with the resumed checkpoint's states loaded (all before the run folder is written: a
checkpoint that does not fit leaves nothing behind); the run folder; the patch source (the latent
cache, each volume encoded once, or pixels encoded at every step); then either a resume (RNG states,
step and best metric from the checkpoint; ``init_from`` is ignored) or a fresh start (latent statistics
from the init checkpoint when it used the same codec, else fitted on training patches); and last the
data loader positioned at the step, the log, the validator and the checkpoint policy. Notes go to
``logging``; the latent cache's progress to ``on_progress(description, completed, total)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ctslice import checkpoint as ckpt
from ctslice.codecs import Codec, codec_for
from ctslice.config import Config, save_config, with_precision
from ctslice.data.cache import Cache
from ctslice.data.patches import PatchDataset, PatchSource, PixelSource
from ctslice.data.splits import read_splits
from ctslice.errors import InputError, first_line
from ctslice.hardware import configure, resolve_device, resolve_precision
from ctslice.io.paths import check_output
from ctslice.models import LatentStats, SliceDiffusion, build_model
from ctslice.reporting import NOTE
from ctslice.training.distributed import Distributed
from ctslice.training.latents import LatentSource, build_latent_cache, encode_batch, uses_latent_cache
from ctslice.training.optim import build_optimizer, warmup_cosine
from ctslice.training.run_log import RunLog
from ctslice.training.state import Saver, restore_rng, rng_state, seed_everything
from ctslice.training.stops import StopFlag, on_main, stop_together
from ctslice.training.validation import Validator

log = logging.getLogger(__name__)

STATS_INDEX = 2**60  # patches for the latent statistics come from far beyond any training index

ProgressCallback = Callable[[str, int, "int | None"], None]  # (description, completed, total)


@dataclass
class Session:
    config: Config
    run_dir: Path
    device: torch.device
    world: Distributed
    codec: Codec
    model: SliceDiffusion
    objective: torch.nn.Module  # the loss as a module (DistributedDataParallel-wrapped under DDP)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: Iterator[dict[str, torch.Tensor]]
    source: PatchSource
    log: RunLog
    validator: Validator
    saver: Saver
    start_step: int
    total_steps: int
    best_psnr: float | None

    def close(self) -> None:
        self.log.close()
        self.source.close()


@dataclass(frozen=True)
class TrainingData:
    """The cases a run trains and validates on, and what the checkpoint records about their geometry."""

    train: list[str]  # the cases patches are drawn from (without in-plane pairs: those with a thin volume)
    val: list[str]
    ratio: float  # the largest thick/thin ratio of the training cases
    thin_spacing: float | None  # None: mixed (inference then uses thick spacing / ratio)
    inplane_size: int  # the fixed in-plane matrix the cases were resampled to (0: none)


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
            stop: StopFlag | None = None, threads: int | None = None,
            on_progress: ProgressCallback | None = None) -> Session:
    """The steps before the first optimizer step, in order (see the module docstring)."""
    _check_run_folder(run_dir, resume is not None)
    resumed = ckpt.resolve_resume(resume, run_dir) if resume is not None else None
    init = None if resumed else _init_checkpoint(config)  # a resume restores its own weights
    device, world = _device(config, device_name, threads)
    precision = resolve_precision(config.training.precision, device)
    log.info(precision.line)
    requested, config = config, with_precision(config, precision.name)  # autocast gets bf16 or fp32, never auto
    seed_everything(config.training.seed)
    data = _data(config)
    codec = codec_for(config.codec, device)
    model = _model(config, codec, device)
    if init:  # before the run folder: weights that do not fit leave nothing behind
        _init_weights(model, *init)
    optimizer = build_optimizer({"unet": model.unet}, config.training)
    total_steps, warmup_steps = _schedule_length(config, len(data.train))
    scheduler = warmup_cosine(optimizer, warmup_steps, total_steps)
    if resumed:  # before the run folder too: a checkpoint of another model leaves the run as it was
        _load_state(resumed, model, optimizer, scheduler)
    _create_run_dir(requested, run_dir, world)
    source = _patch_source(config, data, codec, run_dir, world, device, stop or StopFlag(), on_progress)
    dataset = PatchDataset(source, config.data, config.training.seed)
    if resumed:
        start_step, best_psnr = _resume(resumed, run_dir, world)
    else:
        if world.is_main:  # --resume latest before any checkpoint: the log of a run whose weights are gone
            (run_dir / "log.jsonl").unlink(missing_ok=True)
        start_step, best_psnr = 0, None
        if not init or init[1].get("codec") != codec.description():  # the init's statistics fit its codec only
            _fit_latent_stats(model, dataset, codec, config, device)
    meta = {"codec": codec.description(),
            "data": {"thin_spacing": data.thin_spacing, "ratio": data.ratio, "inplane_size": data.inplane_size}}
    return Session(
        config=config, run_dir=run_dir, device=device, world=world, codec=codec, model=model,
        objective=_objective(model, world, device), optimizer=optimizer, scheduler=scheduler,
        batches=iter(_loader(dataset, config, start_step, world, device)), source=source,
        log=RunLog(run_dir, enabled=world.is_main),
        validator=Validator(config, Path(config.data.cache), data.val, codec, device, data.inplane_size),
        saver=Saver(run_dir, config, model, optimizer, scheduler, meta, world),
        start_step=start_step, total_steps=total_steps, best_psnr=best_psnr)


def _device(config: Config, device_name: str | None, threads: int | None) -> tuple[torch.device, Distributed]:
    """The device (this rank's under DDP), configured (TF32, CPU threads)."""
    device = resolve_device(device_name or config.hardware.device, "device" if device_name else "hardware.device")
    world = Distributed.from_environment(device.type)
    device = world.device_for(device)
    configure(device, config.hardware.tf32, threads)
    return device, world


def _data(config: Config) -> TrainingData:
    """Train/val cases from the cache and splits, checked before anything is written."""
    with Cache(Path(config.data.cache)) as cache:
        splits = read_splits(Path(config.data.splits), cache.case_ids())
        infos = {c: cache.info(c) for c in splits["train"] + splits["val"]}
        train = _training_cases(config, splits["train"], infos)
        ratios = sorted({round(infos[c].ratio, 3) for c in train})
        thin_spacings = sorted({round(infos[c].thin_spacing, 4) for c in train})
        inplane_size = int(cache.options(train[0]).get("size", 0)) if train else 0
    if not train:
        raise InputError(f"{config.data.splits}: no training cases")
    if config.data.whole_volumes and config.training.batch_size > 1:
        raise InputError("data.whole_volumes needs training.batch_size 1 (volumes differ in shape)")
    if len(ratios) > 1:
        log.info("training cases have different thick/thin ratios %s; the checkpoint records the largest", ratios)
    thin_spacing = thin_spacings[0] if len(thin_spacings) == 1 else None
    val = [c for c in splits["val"] if infos[c].has_truth]
    if len(val) < len(splits["val"]):  # only a hand-written splits file puts them there
        log.info(f"validation skips {len(splits['val']) - len(val)} self-supervised case(s) of the val split: no "
                 "thin ground truth to score", extra=NOTE)
    return TrainingData(train, val, ratios[-1], thin_spacing, inplane_size)


def _training_cases(config: Config, train: list[str], infos: dict) -> list[str]:
    """The training cases patches come from: self-supervised cases only give in-plane pairs, so without them
    (``data.inplane_fraction`` 0) they are left out, with a note saying how to use them."""
    if config.data.inplane_fraction > 0:
        return train
    pairs = [c for c in train if infos[c].has_truth]
    if len(pairs) < len(train):
        log.info(f"{len(train) - len(pairs)} self-supervised training case(s) unused: they give in-plane pairs "
                 "only; set data.inplane_fraction above 0 to train on them", extra=NOTE)
    if train and not pairs:
        raise InputError(f"{config.data.splits}: every training case is self-supervised (no thin volume): set "
                         "data.inplane_fraction above 0 (1: in-plane pairs only) to train on them")
    return pairs


def _create_run_dir(requested: Config, run_dir: Path, world: Distributed) -> None:
    """The run folder, with the config as asked (``auto`` stays auto, for another machine)."""
    check_output(run_dir, inputs=(Path(requested.data.cache), Path(requested.data.splits)), folder=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    if world.is_main:
        save_config(requested, run_dir / "config.yaml")


def _patch_source(config: Config, data: TrainingData, codec: Codec, run_dir: Path, world: Distributed,
                  device: torch.device, stop: StopFlag, on_progress: ProgressCallback | None) -> PatchSource:
    """Cached latents (each training volume encoded once, by rank 0; a stop ends every rank after the volume
    in hand, keeping those encoded) or pixels encoded at every step."""
    if not uses_latent_cache(config.data):
        if config.data.cache_latents:
            log.info("in-plane pairs are made from pixels at every draw: the latent cache is not used, each batch "
                     "is encoded as it comes (data.inplane_fraction > 0)", extra=NOTE)
        return PixelSource(Path(config.data.cache), data.train, codec.compression)
    latents_path = run_dir / "latents.h5"

    def build(check_stop: Callable[[str], None]) -> None:
        encoded: list[str] = []
        what = "Encoding training volumes"

        def after_case(case_id: str) -> None:  # encoding hundreds of volumes can outlast a preemption notice
            encoded.append(case_id)
            if on_progress:
                on_progress(what, len(encoded), len(data.train))
            if len(encoded) < len(data.train):
                check_stop(f"while building the latent cache ({len(encoded)} of {len(data.train)} training "
                           f"volumes encoded, kept in {latents_path}); rerun with --resume latest")

        if on_progress:
            on_progress(what, 0, len(data.train))
        build_latent_cache(Path(config.data.cache), data.train, codec, codec_fingerprint(config), latents_path,
                           device, on_case=after_case)

    on_main(world, stop, "latent cache", build)
    kept = f"after building the latent cache (kept in {latents_path}); rerun with --resume latest"
    stop_together(world, device, stop, lambda: stop.where or kept)
    return LatentSource(latents_path, data.train, type(codec))


def _model(config: Config, codec: Codec, device: torch.device) -> SliceDiffusion:
    model = build_model(config, codec.latent_channels, device)
    if config.hardware.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    unet = sum(p.numel() for p in model.unet.parameters())
    trainable = sum(p.numel() for p in model.unet.parameters() if p.requires_grad)
    vae = codec.parameter_count()
    log.info(f"Parameters: Total {unet + vae:,} | Trainable {trainable:,} | VAE: {vae:,} (0 trainable) | "
             f"U-Net: {unet:,}")
    return model


def _init_checkpoint(config: Config) -> tuple[Path, dict] | None:
    """The checkpoint ``training.init_from`` names (``bundled``: the packaged model), read; None when unset."""
    name = config.training.init_from
    if name is None:
        return None
    path = ckpt.bundled_model_path() if name == ckpt.BUNDLED else Path(name)
    try:
        return path, ckpt.read_checkpoint(path)
    except ckpt.CheckpointError as error:
        raise ckpt.CheckpointError(f"training.init_from: {error}") from None


def _init_weights(model: SliceDiffusion, path: Path, state: dict) -> None:
    """A new run's starting weights (U-Net and latent statistics) from another run's checkpoint."""
    ckpt.load_weights(model, state.get("model"), path, " (training.init_from needs the same model.* settings)")
    log.info(f"Starting from the weights of {path} (step {state.get('step', 0)}); the optimizer starts fresh")


class RunInFolder(InputError):
    """A new run was asked for in a folder that holds one; the command layer says how to continue it."""


def _check_run_folder(run_dir: Path, resuming: bool) -> None:
    """Before any work: the run folder's parts are what a run writes, and a run in it is continued, never
    started over (a fresh start would replace its checkpoints and append to its log)."""
    folder, record = ckpt.checkpoint_dir(run_dir), run_dir / "log.jsonl"
    for path in (folder, run_dir / "tensorboard"):
        if path.exists() and not path.is_dir():
            raise InputError(f"{path} is a file, not a folder of the run; move it away or choose another run folder")
    written = [record, run_dir / "config.yaml", run_dir / "latents.h5",
               *(folder / f"{name}.pt" for name in ("latest", "best", "final")), *ckpt.periodic_checkpoints(run_dir)]
    for path in written:  # found now, not when the first checkpoint is saved
        if path.exists() and not path.is_file():
            raise InputError(f"{path} is not a file, so not the run's {path.name}; move it away or choose another "
                             "run folder")
    if resuming:
        return
    found = sorted(p.name for p in folder.glob("*.pt")) if folder.is_dir() else []
    if found or (record.is_file() and record.stat().st_size):
        held = f"checkpoints ({', '.join(found[:3])}{' ...' if len(found) > 3 else ''})" if found else "a log"
        raise RunInFolder(f"{run_dir} already holds a training run ({held})")


def _load_state(resumed: tuple[Path, dict], model: SliceDiffusion, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """Model, optimizer and schedule states from the checkpoint to resume, or one line if they do not fit."""
    path, state = resumed
    hint = " (was model.* changed since the run started?)"
    ckpt.load_weights(model, state.get("model"), path, hint)
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["lr_scheduler"])
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        raise ckpt.CheckpointError(f"{path}: the training state does not fit the model in this config{hint}: "
                                   f"{first_line(error, 160)}") from None
    current = rng_state()
    try:  # restored for real after the patch source is built; tried here, before the run folder is written
        if not (isinstance(state.get("step"), int) and state["step"] >= 0):
            raise ValueError(f"step {state.get('step')!r}")
        restore_rng(state["rng"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as error:
        raise ckpt.CheckpointError(f"{path}: its training state is damaged ({first_line(error, 120)}); resume from "
                                   "another checkpoint") from None
    finally:
        restore_rng(current)


def _resume(resumed: tuple[Path, dict], run_dir: Path, world: Distributed) -> tuple[int, float | None]:
    """The RNG states of the checkpoint to resume and its step; the log cut back to that step."""
    path, state = resumed
    start_step = int(state["step"])
    restore_rng(state["rng"])
    dropped = RunLog.truncate(run_dir, start_step) if world.is_main else 0
    if dropped:
        log.warning(f"dropped {dropped} unreadable line(s) of {run_dir / 'log.jsonl'} (a run stopped while writing "
                    "it?)")
    log.info(f"Resumed from {path} at step {start_step}")
    return start_step, state.get("best_metric")


def _objective(model: SliceDiffusion, world: Distributed, device: torch.device) -> torch.nn.Module:
    objective = Objective(model)
    if world.enabled:
        objective = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None)
    return objective


def _loader(dataset: PatchDataset, config: Config, start_step: int, world: Distributed,
            device: torch.device) -> torch.utils.data.DataLoader:
    """Batches from optimizer step ``start_step`` on: the same stream an uninterrupted run sees."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=config.training.batch_size, num_workers=config.data.num_workers,
        sampler=IndexStream(start_step, config.training.grad_accumulation, world.rank, world.world_size,
                            config.training.batch_size),
        generator=torch.Generator().manual_seed(config.training.seed),  # leaves the global RNG alone
        persistent_workers=config.data.num_workers > 0, pin_memory=device.type == "cuda")


def codec_fingerprint(config: Config) -> str:
    """Changes whenever cached latents would: the codec, its weights file, its chunking."""
    weights = config.codec.checkpoint
    stamp = ""
    if weights and Path(weights).exists():
        stat = Path(weights).stat()
        stamp = f"{stat.st_size}:{int(stat.st_mtime)}"
    return f"{config.codec.name}:{weights}:{stamp}:{config.codec.encode_chunk}"


def _schedule_length(config: Config, train_cases: int) -> tuple[int, int]:
    """Total and warmup optimizer steps. An epoch is one patch per training case."""
    per_step = config.training.batch_size * config.training.grad_accumulation
    steps_per_epoch = max(1, math.ceil(train_cases / per_step))
    total = config.training.max_steps or max(1, math.ceil(config.training.epochs * steps_per_epoch))
    warmup = config.training.warmup_steps
    if config.training.warmup_epochs is not None:
        warmup = int(round(config.training.warmup_epochs * steps_per_epoch))
    return total, min(warmup, total)


def _fit_latent_stats(model: SliceDiffusion, dataset: PatchDataset, codec: Codec, config: Config,
                      device: torch.device, samples: int = 8) -> None:
    """Latent statistics (the scale factor) from a few training patches, drawn without touching the RNG."""
    thins, conds = [], []
    for index in range(samples):
        batch = {k: v[None] for k, v in dataset[STATS_INDEX + index].items()}
        if uses_latent_cache(config.data):
            thin, cond = batch["thin"], batch["cond"]
        else:
            thin, cond = encode_batch(batch, codec, device)
        thins.append(thin.cpu())
        conds.append(cond.cpu())
    stats = LatentStats.fit(thins, conds, config.model.residual)
    model.set_stats(stats)
    log.info("Latent scale factor (1/std of training latents): "
             + ", ".join(f"{v:.3f}" for v in stats.target_scale.tolist()))
