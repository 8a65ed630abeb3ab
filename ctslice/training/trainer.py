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
A non-finite loss skips its step; ``max_bad_steps`` of them in a row stop the run with a checkpoint.
Running out of memory stops the run with one line that says what to change (without a checkpoint: an
optimizer step cut short may have updated only some weights; the last periodic one stands).
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ctslice.checkpoint import periodic_checkpoints
from ctslice.config import Config
from ctslice.console import console, warn
from ctslice.errors import CtsliceError, Preempted, first_line
from ctslice.hardware import autocast, is_out_of_memory, memory_line, peak_memory_bytes
from ctslice.training.latents import encode_batch
from ctslice.training.progress import TrainingProgress
from ctslice.training.progress_figure import ProgressFigure
from ctslice.training.session import Session, prepare


class OutOfMemory(CtsliceError):
    """The run needed more memory than the device has; the message says what to change (exit code 1)."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    best_psnr: float | None
    final_metrics: dict


def train(config: Config, run_dir: Path, resume: str | None = None, device_name: str | None = None,
          threads: int | None = None) -> TrainResult:
    """Train ``config`` into ``run_dir``; see the module docstring. ``threads``: intra-op CPU threads
    (default: the CPUs this process may use)."""
    stop = _SigtermFlag()
    session = None
    try:
        session = prepare(config, run_dir, resume, device_name, stop_requested=lambda: stop.requested,
                          threads=threads)
        return _loop(session, stop)
    except (RuntimeError, MemoryError) as error:  # torch.OutOfMemoryError is a RuntimeError
        if not is_out_of_memory(error):
            raise
        raise OutOfMemory(_out_of_memory_message(config, run_dir, error)) from None
    finally:
        stop.restore()
        if session is not None:
            session.close()
            session.world.close()


def _loop(s: Session, stop: _SigtermFlag) -> TrainResult:
    training, world, device = s.config.training, s.world, s.device
    step, bad_steps, started = s.start_step, 0, time.time()
    figure = ProgressFigure(s.run_dir, enabled=world.is_main)  # <run>/progress.png, redrawn at each validation
    with TrainingProgress(s.total_steps, s.start_step, enabled=world.is_main) as bar:
        while step < s.total_steps:
            tic = time.time()
            loss, grad_norm = _optimizer_step(s)
            step += 1
            step_time = time.time() - tic
            bad_steps = 0 if grad_norm is not None else bad_steps + 1
            if grad_norm is None:
                warn(f"non-finite loss at step {step}; step skipped ({bad_steps} in a row)")
            if bad_steps >= training.max_bad_steps:
                s.saver.save(step, s.best_psnr, periodic=True)
                raise CtsliceError(f"{bad_steps} non-finite losses in a row at step {step}: stopping (checkpoint "
                                   "saved). Lower training.lr, or check the data for NaNs")
            lr = s.scheduler.get_last_lr()[0]
            bar.update(step, loss, lr, step_time, peak_memory_bytes(device))
            if step == s.start_step + min(3, s.total_steps - s.start_step):
                console.print(f"Memory after {step - s.start_step} step(s): {memory_line(device)}")
            if step % training.log_interval == 0 or step == s.total_steps:
                s.log.write({"kind": "train", "step": step, "loss": loss, "lr": lr, "step_time": step_time,
                             "grad_norm": grad_norm, "memory_gib": peak_memory_bytes(device) / 2**30})
            out_of_time = (training.time_limit_minutes is not None
                           and time.time() - started > 60 * training.time_limit_minutes)
            finishing = step == s.total_steps or world.any_true(out_of_time, device)
            if step % training.val_interval == 0 and not finishing:
                metrics = s.validator.run(s.model, step, s.log) if world.is_main else {}
                s.best_psnr = s.saver.maybe_best(step, metrics, s.best_psnr)
                figure.redraw()
            if step % training.checkpoint_interval == 0:
                s.saver.save(step, s.best_psnr, periodic=True)
            if world.any_true(stop.requested, device):
                s.saver.save(step, s.best_psnr, periodic=True)
                raise Preempted(f"stopped by SIGTERM at step {step}; checkpoint saved (resume with --resume latest)")
            if finishing:
                if out_of_time:
                    console.print(f"Time limit of {training.time_limit_minutes:g} min reached at step {step}")
                break
    final_metrics = s.validator.run(s.model, step, s.log, final=True) if world.is_main else {}
    s.best_psnr = s.saver.maybe_best(step, final_metrics, s.best_psnr)
    figure.redraw()
    s.saver.save(step, s.best_psnr, periodic=False)
    world.barrier()
    if world.is_main:
        console.print(f"Training finished at step {step}: {s.run_dir / 'checkpoints' / 'final.pt'}")
    return TrainResult(s.run_dir, step, s.best_psnr, final_metrics)


def _optimizer_step(s: Session) -> tuple[float, float | None]:
    """One optimizer step over the accumulated micro-batches: (loss, gradient norm or None if skipped)."""
    training = s.config.training
    s.model.train()
    loss_sum = 0.0
    for micro in range(training.grad_accumulation):
        batch = next(s.batches)
        if s.config.data.cache_latents:
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


def _out_of_memory_message(config: Config, run_dir: Path, error: BaseException) -> str:
    """One line: what ran out, the changes that lower training memory, where the run can continue from."""
    from ctslice.memory.advice import set_options

    device = (config.hardware.device if config.hardware.device != "auto"
              else "cuda" if torch.cuda.is_available() else "cpu")
    savings = set_options(config, "cuda" if device.startswith("cuda") else "cpu")
    inspect = f"`ctslice inspect-memory --config {run_dir / 'config.yaml'}`"
    advice = (f"Try any of {', '.join(f'`--set {change}`' for change in savings)}; {inspect} predicts the effect of "
              "each." if savings else f"Every memory saving is already on; {inspect} shows where the memory goes.")
    checkpoints = periodic_checkpoints(run_dir)
    resume = (f"The steps after {checkpoints[0].name} are lost; continue with --resume latest." if checkpoints
              else "No checkpoint was written yet.")
    return f"out of memory ({first_line(error, 200)}). {advice} {resume}"


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
