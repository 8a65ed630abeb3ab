"""The training loop, top to bottom.

    ctslice train --config configs/tiny_cpu.yaml --out runs/tiny             # CPU, minutes
    ctslice train --config configs/slice_interpolation_full_medium.yaml      # one A100/H100, BF16
    torchrun --nproc_per_node=4 -m ctslice train --config ...                # DDP, rank 0 logs and saves
    ctslice train --config ... --out runs/x --resume latest                  # continue exactly

One optimizer step = ``grad_accumulation`` micro-batches of ``batch_size`` patches per rank. The
patch stream is a pure function of (seed, sample index) and the loss's noise comes from the global
RNG, whose state is saved with each checkpoint, so a resumed run continues the exact loss trajectory
of an uninterrupted one. SIGTERM (Kubernetes preemption) finishes the current step, writes a
checkpoint and exits with code 143 so the Job reschedules the pod, which resumes with ``--resume latest``;
Ctrl-C does the same and exits with 130 (a second Ctrl-C stops at once, without a checkpoint). Either
signal during a validation (periodic or final) abandons it within a U-Net window batch and checkpoints
the last finished step, so a resumed run validates again. Under DDP a signal reaching any rank ends every
rank together, with one exit code and one line (``stops``).
A non-finite loss skips its step; ``max_bad_steps`` of them in a row stop the run with a checkpoint.
Running out of memory stops the run with ``OutOfMemory`` (without a checkpoint: an optimizer step cut
short may have updated only some weights; the last periodic one stands); the command layer adds what
to change (``ctslice.memory.advice``: the trainer never imports the memory model that models it).

Reporting: notes and warnings go to ``logging`` (``ctslice.training.*`` loggers); progress to two
optional callbacks, silent when absent:

- ``on_progress(description: str, completed: int, total: int | None)``: the latent cache's encoding
  ("Encoding training volumes") and the steps ("Training", called once with the start step before the
  first step, then after each step);
- ``on_step(report: StepReport)``: after each optimizer step (loss, learning rate, seconds, memory).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ctslice.checkpoint import periodic_checkpoints
from ctslice.config import Config
from ctslice.errors import CtsliceError, first_line
from ctslice.hardware import autocast, is_out_of_memory, memory_line, peak_memory_bytes
from ctslice.training.latents import encode_batch, uses_latent_cache
from ctslice.training.progress_figure import ProgressFigure
from ctslice.training.session import ProgressCallback, Session, prepare
from ctslice.training.stops import StopFlag, on_main, stop_together

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepReport:
    """One optimizer step, for ``on_step``: its number of ``total_steps``, loss, learning rate, seconds
    and the peak memory so far (bytes)."""

    step: int
    total_steps: int
    loss: float
    lr: float
    seconds: float
    memory_bytes: int


class OutOfMemory(CtsliceError):
    """The run needed more memory than the device has (exit code 1).

    The message says what ran out and where the run can continue from; ``device_type`` (the device the
    run used) and ``config_path`` (the run's config) let the command layer add what to change.
    """

    def __init__(self, error: BaseException, device_type: str, run_dir: Path):
        checkpoints = periodic_checkpoints(run_dir)
        self.what = f"out of memory ({first_line(error, 200)})"
        self.resume = (f"The steps after {checkpoints[0].name} are lost; continue with --resume latest."
                       if checkpoints else "No checkpoint was written yet.")
        self.device_type, self.config_path = device_type, run_dir / "config.yaml"
        super().__init__(f"{self.what}. {self.resume}")


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    best_psnr: float | None
    final_metrics: dict


def train(config: Config, run_dir: Path, resume: str | None = None, device_name: str | None = None,
          threads: int | None = None, on_progress: ProgressCallback | None = None,
          on_step: Callable[[StepReport], None] | None = None) -> TrainResult:
    """Train ``config`` into ``run_dir``; see the module docstring. ``threads``: intra-op CPU threads
    (default: the CPUs this process may use); ``on_progress`` and ``on_step``: see the module docstring
    (rank 0 only)."""
    stop = StopFlag()
    stop.listen()
    session = None
    try:
        session = prepare(config, run_dir, resume, device_name, stop=stop, threads=threads, on_progress=on_progress)
        if not session.world.is_main:
            on_progress = on_step = None
        return _loop(session, stop, on_progress, on_step)
    except (RuntimeError, MemoryError) as error:  # torch.OutOfMemoryError is a RuntimeError
        if not is_out_of_memory(error):
            raise
        device_type = session.device.type if session else _device_type(config)
        raise OutOfMemory(error, device_type, run_dir) from None
    finally:
        stop.restore()
        if session is not None:
            session.close()
            session.world.close()


def _loop(s: Session, stop: StopFlag, on_progress: ProgressCallback | None = None,
          on_step: Callable[[StepReport], None] | None = None) -> TrainResult:
    on_progress, on_step = on_progress or _silent, on_step or _silent
    training, world, device = s.config.training, s.world, s.device
    step, bad_steps, started, saved = s.start_step, 0, time.time(), False
    figure = ProgressFigure(s.run_dir, enabled=world.is_main)  # <run>/progress.png, redrawn at each validation
    on_progress("Training", step, s.total_steps)
    while step < s.total_steps:
        tic = time.time()
        loss, grad_norm = _optimizer_step(s)
        step += 1
        step_time = time.time() - tic
        bad_steps = 0 if grad_norm is not None else bad_steps + 1
        if grad_norm is None:
            log.warning(f"non-finite loss at step {step}; step skipped ({bad_steps} in a row)")
        if bad_steps >= training.max_bad_steps:
            s.saver.save(step, s.best_psnr, periodic=True)
            raise CtsliceError(f"{bad_steps} non-finite losses in a row at step {step}: stopping (checkpoint "
                               "saved). Lower training.lr, or check the data for NaNs")
        lr = s.scheduler.get_last_lr()[0]
        on_progress("Training", step, s.total_steps)
        on_step(StepReport(step, s.total_steps, loss, lr, step_time, peak_memory_bytes(device)))
        if step == s.start_step + min(3, s.total_steps - s.start_step):
            log.info(f"Memory after {step - s.start_step} step(s): {memory_line(device)}")
        if step % training.log_interval == 0 or step == s.total_steps:
            s.log.write({"kind": "train", "step": step, "loss": loss, "lr": lr, "step_time": step_time,
                         "grad_norm": grad_norm, "memory_gib": peak_memory_bytes(device) / 2**30})
        out_of_time = (training.time_limit_minutes is not None
                       and time.time() - started > 60 * training.time_limit_minutes)
        finishing = step == s.total_steps or world.any_true(out_of_time, device)
        if step % training.val_interval == 0 and not finishing:
            metrics = _validate(s, step, stop)
            if metrics is not None:
                s.best_psnr = s.saver.maybe_best(step, metrics, s.best_psnr)
                figure.redraw()
        saved = step % training.checkpoint_interval == 0
        if saved:
            s.saver.save(step, s.best_psnr, periodic=True)
        _stop_together(s, step, stop, saved)
        if finishing:
            if out_of_time:
                log.info(f"Time limit of {training.time_limit_minutes:g} min reached at step {step}")
            break
    final_metrics = _validate(s, step, stop, final=True)
    _stop_together(s, step, stop, saved)
    final_metrics = final_metrics or {}
    s.best_psnr = s.saver.maybe_best(step, final_metrics, s.best_psnr)
    figure.redraw()
    s.saver.save(step, s.best_psnr, periodic=False)
    world.barrier()
    if world.is_main:
        log.info(f"Training finished at step {step}: {s.run_dir / 'checkpoints' / 'final.pt'}")
    return TrainResult(s.run_dir, step, s.best_psnr, final_metrics)


def _validate(s: Session, step: int, stop: StopFlag, final: bool = False) -> dict | None:
    """The validator's scores at ``step`` on rank 0; None on the other ranks and when a stop abandoned the
    validation (``stops.on_main``: every rank acts on the stop in ``_stop_together``)."""
    return on_main(s.world, stop, f"{'final ' if final else ''}validation {step}",
                   lambda check: s.validator.run(s.model, step, s.log, final=final, check_stop=check))


def _stop_together(s: Session, step: int, stop: StopFlag, saved: bool) -> None:
    """Every rank, after each step and after the final validation: when a stop reached any rank, rank 0
    checkpoints ``step`` (finished: a validation does not change the weights) unless it ``saved`` it just
    now, and every rank ends with the stop's error (``stops.stop_together``)."""

    def checkpoint() -> str:
        if not saved:
            s.saver.save(step, s.best_psnr, periodic=True)
        done = f"{stop.where}; checkpoint of step {step} saved" if stop.where else f"at step {step}; checkpoint saved"
        return f"{done} (resume from the latest checkpoint)"

    stop_together(s.world, s.device, stop, checkpoint)


def _optimizer_step(s: Session) -> tuple[float, float | None]:
    """One optimizer step over the accumulated micro-batches: (loss, gradient norm or None if skipped)."""
    training = s.config.training
    s.model.train()
    loss_sum = 0.0
    for micro in range(training.grad_accumulation):
        batch = next(s.batches)
        if uses_latent_cache(s.config.data):
            thin, cond = batch["thin"].to(s.device), batch["cond"].to(s.device)
        else:
            thin, cond = encode_batch(batch, s.codec, s.device)
        last = micro == training.grad_accumulation - 1
        with _maybe_no_sync(s.objective, last), autocast(s.device, training.precision):
            loss = s.objective(thin, cond) / training.grad_accumulation
        loss.backward()
        loss_sum += float(loss.detach())
    grad_norm = None
    if s.world.all_true(math.isfinite(loss_sum), s.device):
        grad_norm = float(torch.nn.utils.clip_grad_norm_(s.model.unet.parameters(), training.grad_clip))
        s.optimizer.step()
    s.optimizer.zero_grad(set_to_none=True)
    s.scheduler.step()
    return loss_sum, grad_norm


def _device_type(config: Config) -> str:
    """The device type a run of ``config`` gets, for an out-of-memory error raised before it had a device."""
    device = config.hardware.device
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if device.startswith("cuda") else "cpu"


def _silent(*args) -> None:
    """The default callback: training reports nothing unless asked."""


def _maybe_no_sync(objective, sync: bool):
    """DDP: skip the gradient all-reduce on all but the last micro-batch of an accumulated step."""
    if sync or not hasattr(objective, "no_sync"):
        return contextlib.nullcontext()
    return objective.no_sync()
