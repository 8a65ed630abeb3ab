"""Reliability, part 2: training on preemptible nodes, where a failure may cost a few steps, never the run.

Interruptions are real ``python -m ctslice train`` processes stopped by SIGTERM (a Kubernetes
preemption) or SIGKILL (a node lost); faults that have to be injected (a non-finite loss, running out
of memory) are injected in-process. One uninterrupted run of the same config is the reference that a
resumed run must reproduce exactly. (kill -9 during preprocessing is in ``test_preprocess.py``.)
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ctslice.checkpoint import read_checkpoint
from ctslice.config import load_config
from ctslice.data.phantom import make_phantom
from ctslice.errors import Preempted
from ctslice.inference.pipeline import SliceInterpolator
from ctslice.io import write_volume
from ctslice.memory.advice import set_options
from ctslice.models.diffusion import SliceDiffusion
from ctslice.training.run_log import RunLog, read_log
from ctslice.training.trainer import train
from tests.tiny import TINY

RUN = ["training.max_steps=8", "training.checkpoint_interval=3", "training.val_interval=1000",
       "validation.val_samples=0"]


def settings(dataset, *extra: str) -> list[str]:
    cache, splits = dataset
    return [*TINY, f"data.cache={cache}", f"data.splits={splits}", "hardware.device=cpu", *RUN, *extra]


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory) -> Path:
    """The uninterrupted run: 8 steps, checkpoints at steps 3 and 6, then final.pt."""
    run = tmp_path_factory.mktemp("reference") / "run"
    train(load_config(None, settings(dataset)), run)
    return run


def train_args(dataset, run: Path, *extra: str) -> list[str]:
    """``ctslice train`` arguments for the run's config (an empty file: every key comes from --set)."""
    config = run.parent / "empty.yaml"
    config.write_text("{}\n", encoding="utf-8")
    return ["train", "--config", str(config), *(a for s in settings(dataset, *extra) for a in ("--set", s)),
            "--out", str(run)]


WIDE = {**os.environ, "COLUMNS": "1000"}  # Rich wraps lines (and folds long paths) at the console width


def start(args: list[str], log: Path) -> subprocess.Popen:
    """``python -m ctslice ARGS`` as a process of its own, stderr to ``log``."""
    with open(log, "w") as stderr:
        return subprocess.Popen([sys.executable, "-m", "ctslice", *args], stdout=subprocess.DEVNULL, stderr=stderr,
                                start_new_session=True, env=WIDE)


@pytest.fixture
def wide_console(monkeypatch):
    """The same for messages printed in-process."""
    from ctslice.console import console

    monkeypatch.setattr(console, "width", 1000)


def logged_steps(run: Path) -> list[int]:
    """Steps of the complete train records in ``log.jsonl`` (the line being written may be partial)."""
    path = run / "log.jsonl"
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]
    return [r["step"] for r in map(json.loads, lines) if r["kind"] == "train"]


def wait_for_step(run: Path, step: int, process: subprocess.Popen, timeout: float = 300) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        steps = logged_steps(run)
        if steps and steps[-1] >= step:
            return steps[-1]
        assert process.poll() is None, f"training exited early with code {process.returncode}"
        time.sleep(0.01)
    raise AssertionError(f"no step {step} within {timeout} s")


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_log(run) if r["kind"] == "train"]


def error_line(output: str) -> str:
    """The one line an expected failure prints (progress bars are transient or go before it)."""
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


# --- interruptions -------------------------------------------------------------------------------------------

def test_sigterm_during_train_writes_a_checkpoint_and_exits_143(dataset, tmp_path):
    """As on Kubernetes preemption: the step in flight finishes, a checkpoint is written, exit code 143."""
    run = tmp_path / "run"
    process = start(train_args(dataset, run, "training.max_steps=10000", "training.checkpoint_interval=10000"),
                    tmp_path / "stderr.txt")
    wait_for_step(run, 2, process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    stderr = (tmp_path / "stderr.txt").read_text(encoding="utf-8", errors="replace")  # progress bars
    stopped = re.search(r"error: stopped by SIGTERM at step (\d+); checkpoint saved "
                        r"\(resume from the latest checkpoint\)", stderr)
    assert stopped, stderr
    step = int(stopped.group(1))
    assert read_checkpoint(run / "checkpoints" / "latest.pt")["step"] == step
    assert (run / "checkpoints" / f"step_{step}.pt").exists()
    assert logged_steps(run) == list(range(1, step + 1))  # nothing done is lost


# A validation that would run for minutes: every DDIM step of sampling mode runs the U-Net on every window.
ENDLESS_VALIDATION = ["validation.mode=sample", "validation.val_steps=1000", "validation.val_samples=1"]


def stopped_in_validation(process: subprocess.Popen, run: Path, signum: int, record_property) -> float:
    """Send ``signum`` once the validation after step 2 is under way; the seconds the process took to exit."""
    wait_for_step(run, 2, process)
    time.sleep(2)  # past the validation loss on fixed patches, into the whole-case inference
    assert process.poll() is None, "training exited before the signal"
    sent = time.monotonic()
    process.send_signal(signum)
    try:
        process.wait(timeout=60)  # without the stop checks the validation would run for minutes
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("training did not stop within 60 s of the signal") from None
    seconds = time.monotonic() - sent
    record_property("seconds_to_exit", round(seconds, 2))
    return seconds


@pytest.mark.parametrize("signum, code, words", [(signal.SIGTERM, 143, "stopped by SIGTERM"),
                                                 (signal.SIGINT, 130, "interrupted by Ctrl-C")])
def test_a_signal_during_a_periodic_validation_stops_it_and_checkpoints_the_step(signum, code, words, dataset,
                                                                                tmp_path, record_property):
    """A validation can take minutes; the signal abandons it (nothing of it logged) and keeps step 2."""
    run = tmp_path / "run"
    process = start(train_args(dataset, run, "training.max_steps=10000", "training.checkpoint_interval=10000",
                               "training.val_interval=2", *ENDLESS_VALIDATION), tmp_path / "stderr.txt")
    stopped_in_validation(process, run, signum, record_property)
    assert process.returncode == code
    stderr = (tmp_path / "stderr.txt").read_text(encoding="utf-8", errors="replace")
    assert error_line(stderr) == (f"error: {words} during the validation at step 2; checkpoint of step 2 saved "
                                  "(resume from the latest checkpoint)")
    assert read_checkpoint(run / "checkpoints" / "latest.pt")["step"] == 2
    assert logged_steps(run) == [1, 2]
    assert not [r for r in read_log(run) if r["kind"] == "validation"]


def test_ctrl_c_during_the_final_validation_keeps_the_last_step_for_a_resume(dataset, tmp_path, record_property):
    """All steps done, the final validation under way: Ctrl-C saves the last step (no final.pt), exit 130."""
    run = tmp_path / "run"
    process = start(train_args(dataset, run, "training.max_steps=2", "training.checkpoint_interval=10000",
                               *ENDLESS_VALIDATION), tmp_path / "stderr.txt")
    stopped_in_validation(process, run, signal.SIGINT, record_property)
    assert process.returncode == 130
    stderr = (tmp_path / "stderr.txt").read_text(encoding="utf-8", errors="replace")
    assert error_line(stderr) == ("error: interrupted by Ctrl-C during the final validation at step 2; checkpoint "
                                  "of step 2 saved (resume from the latest checkpoint)")
    assert read_checkpoint(run / "checkpoints" / "latest.pt")["step"] == 2
    assert not (run / "checkpoints" / "final.pt").exists()


def test_sigterm_while_building_the_latent_cache_keeps_the_encoded_volumes(dataset, tmp_path, monkeypatch):
    """Encoding hundreds of volumes can outlast a preemption notice: stop between volumes, keep what is done."""
    import h5py

    from ctslice.training import latents

    encoded = []
    encode = latents.encode_volume

    def encode_then_preempt(codec, hu, device):
        encoded.append(hu.shape)
        if len(encoded) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return encode(codec, hu, device)

    monkeypatch.setattr(latents, "encode_volume", encode_then_preempt)
    run = tmp_path / "run"
    config = load_config(None, settings(dataset, "training.max_steps=2"))
    with pytest.raises(Preempted, match=r"while building the latent cache \(1 of 3 training volumes encoded"):
        train(config, run)
    with h5py.File(run / "latents.h5", "r") as store:
        assert len(store) == 1 and set(store[next(iter(store))]) == {"cond", "thin"}
    assert len(encoded) == 2  # the condition and the thin volume of the first case only

    result = train(config, run, resume="latest")
    assert len(encoded) == 2 + 2 * 2  # the other two cases; the first is reused
    assert result.step == 2 and (run / "checkpoints" / "final.pt").exists()


def test_kill_9_during_train_then_resume_latest_reproduces_the_uninterrupted_run(dataset, reference, tmp_path):
    run = tmp_path / "run"
    process = start(train_args(dataset, run), tmp_path / "killed.txt")
    killed_after = wait_for_step(run, 4, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert killed_after < 8, "the run finished before the kill; the test proves nothing"
    saved = read_checkpoint(run / "checkpoints" / "latest.pt")["step"]
    assert saved in (3, 6) and saved <= killed_after

    done = subprocess.run([sys.executable, "-m", "ctslice", *train_args(dataset, run), "--resume", "latest"],
                          capture_output=True, encoding="utf-8", errors="replace", timeout=600, env=WIDE)
    assert done.returncode == 0, done.stderr
    assert f"Resumed from {run / 'checkpoints' / 'latest.pt'} at step {saved}" in done.stderr
    assert logged_steps(run) == list(range(1, 9))  # the log was cut back to the checkpoint: no step twice
    assert losses(run) == losses(reference)
    resumed = read_checkpoint(run / "checkpoints" / "final.pt")["model"]
    uninterrupted = read_checkpoint(reference / "checkpoints" / "final.pt")["model"]
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


def _truncated_copy(checkpoints: Path) -> None:
    """A node died while copying step_6.pt to latest.pt: a separate, short file."""
    data = (checkpoints / "step_6.pt").read_bytes()
    (checkpoints / "latest.pt").write_bytes(data[: len(data) // 2])


def _zeroed_in_place(checkpoints: Path) -> None:
    """Bytes zeroed inside latest.pt, a hard link to step_6.pt, so both are damaged; the zip still opens."""
    os.link(checkpoints / "step_6.pt", checkpoints / "latest.pt")
    with open(checkpoints / "latest.pt", "r+b") as handle:
        handle.seek(handle.seek(0, os.SEEK_END) * 2 // 3)
        handle.write(bytes(256))


@pytest.mark.parametrize("damage, warnings, resumed_at", [
    (_truncated_copy, [r"warning: .*latest\.pt: damaged or not a checkpoint \(PytorchStreamReader failed reading "
                       r"zip archive: failed finding central directory.*\); trying an earlier checkpoint",
                       r"warning: resuming from step_6\.pt instead"], 6),
    (_zeroed_in_place, [r"warning: .*latest\.pt: damaged: its contents do not match the checksum written with them",
                        r"warning: .*step_6\.pt: damaged: its contents do not match the checksum",
                        r"warning: resuming from step_3\.pt instead"], 3),
], ids=["truncated copy", "zeroed in place"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(damage, warnings, resumed_at, dataset, reference,
                                                                 tmp_path, capsys, caplog, wide_console):
    caplog.set_level(logging.INFO, logger="ctslice")
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    checkpoints = run / "checkpoints"
    for name in ("latest.pt", "final.pt"):  # as preempted after step 6
        (checkpoints / name).unlink()
    damage(checkpoints)
    capsys.readouterr()
    train(load_config(None, settings(dataset)), run, resume="latest")
    stderr = capsys.readouterr().err
    for warning in warnings:
        assert re.search(warning, stderr), stderr
    assert any(m.startswith("Resumed from ") and m.endswith(f" at step {resumed_at}") for m in caplog.messages)
    assert losses(run) == losses(reference)


def test_resume_with_a_changed_model_config_is_one_line(dataset, reference, tmp_path, cli):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    result = cli(*train_args(dataset, run, "model.channels=[8, 8]"), "--resume", "latest")
    assert result.exit_code == 2
    line = error_line(result.output)
    assert re.search(r"weights do not fit the model in its config \(was model\.\* changed since the run started\?\): "
                     r"parameter \S+ is \d+x\S+ in the checkpoint, \d+x\S+ in the model$", line), line


# --- faults --------------------------------------------------------------------------------------------------

def inject(monkeypatch, fault, steps) -> list[int]:
    """Make the training loss at the given optimizer ``steps`` (1-based) ``fault(loss)``; returns the
    optimizer steps actually taken. The real loss runs first, so the RNG stream is the uninterrupted one."""
    loss, step_optimizer = SliceDiffusion.loss, torch.optim.AdamW.step
    calls, taken = [], []

    def faulty_loss(self, thin, cond):
        calls.append(1)
        value = loss(self, thin, cond)
        return fault(value) if len(calls) in steps else value

    def counted_step(self, *args, **kwargs):
        taken.append(len(calls))
        return step_optimizer(self, *args, **kwargs)

    monkeypatch.setattr(SliceDiffusion, "loss", faulty_loss)
    monkeypatch.setattr(torch.optim.AdamW, "step", counted_step)
    return taken


def test_non_finite_losses_skip_their_steps_with_a_warning(dataset, tmp_path, monkeypatch, caplog):
    taken = inject(monkeypatch, lambda loss: loss * float("nan"), steps={3})
    result = train(load_config(None, settings(dataset, "training.max_steps=4")), tmp_path / "run")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["non-finite loss at step 3; step skipped (1 in a row)"]
    assert taken == [1, 2, 4]  # no optimizer step on the NaN gradients
    assert result.step == 4
    records = {r["step"]: r for r in read_log(tmp_path / "run") if r["kind"] == "train"}
    assert records[3]["grad_norm"] is None and records[4]["grad_norm"] is not None


def test_the_record_of_a_skipped_step_is_json(tmp_path):
    log = RunLog(tmp_path)
    log.write({"kind": "train", "step": 3, "loss": float("nan"), "grad_norm": None})
    log.close()
    for line in (tmp_path / "log.jsonl").read_text(encoding="utf-8").splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in log.jsonl: not JSON"))


def test_max_bad_steps_in_a_row_stop_with_a_clear_message_and_a_checkpoint(dataset, tmp_path, monkeypatch, cli):
    taken = inject(monkeypatch, lambda loss: loss * float("inf"), steps=set(range(2, 9)))
    run = tmp_path / "run"
    result = cli(*train_args(dataset, run, "training.max_bad_steps=2"))
    assert result.exit_code == 1
    assert error_line(result.output) == ("error: 2 non-finite losses in a row at step 3: stopping (checkpoint saved). "
                                         "Lower training.lr, or check the data for NaNs")
    assert taken == [1]
    state = read_checkpoint(run / "checkpoints" / "latest.pt")
    assert state["step"] == 3 and (run / "checkpoints" / "step_3.pt").exists()


CPU_ALLOCATOR = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                 "tried to allocate 274877906944 bytes. Error code 12 (Cannot allocate memory)")


@pytest.mark.parametrize("error, step, lost", [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.25 "
                            "GiB of which 3.12 GiB is free."), 2,
     "The steps after step_1.pt are lost; continue with --resume latest."),
    (RuntimeError(CPU_ALLOCATOR), 1, "No checkpoint was written yet."),
], ids=["cuda", "cpu allocator"])
def test_out_of_memory_is_one_line_with_what_to_change(error, step, lost, dataset, tmp_path, monkeypatch, cli):
    def out_of_memory(loss):
        raise error

    inject(monkeypatch, out_of_memory, steps={step})
    run = tmp_path / "run"
    result = cli(*train_args(dataset, run, "training.checkpoint_interval=1"))
    assert result.exit_code == 1
    line = error_line(result.output)
    # (the CLI guard prints messages as Rich markup, which eats "[enforce fail ...]": see test_reliability_inputs)
    assert line.startswith("error: out of memory (") and str(error).split("] ")[-1] + "). Try any of " in line
    for change in ("training.precision=bf16", "model.gradient_checkpointing=true", "data.patch_size=8",
                   "data.patch_thick_slices=1", "training.batch_size=1 --set training.grad_accumulation=2"):
        assert f"`--set {change}`" in line
    assert f"`ctslice inspect-memory --config {run / 'config.yaml'}` predicts the effect of each" in line
    assert line.endswith(lost)


def test_memory_savings_follow_the_config():
    frugal = load_config(None, [*TINY, "training.precision=bf16", "model.gradient_checkpointing=true",
                                "training.batch_size=1", "data.patch_thick_slices=1", "data.patch_size=2",
                                "inference.window_size=16"])  # the smallest window accepted
    assert set_options(frugal, "cpu") == []
    maisi = set_options(load_config(None, ["codec.name=maisi", "data.patch_size=16"]), "cuda")
    assert "data.patch_size=8" not in maisi  # 16 is the U-Net's smallest side: 2 x 2 levels x 4 (VAE)
    assert "codec.decode_chunk=4" in maisi


def test_out_of_memory_during_infer_is_one_line_and_writes_nothing(reference, tmp_path, monkeypatch, cli):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB.")

    monkeypatch.setattr(SliceInterpolator, "predict", out_of_memory)
    scan = write_volume(make_phantom(shape=(8, 32, 32), spacing=(12.0, 12.0, 5.0), seed=9), tmp_path / "scan.nii.gz")
    result = cli("infer", scan, "-o", tmp_path / "out" / "thin.nii.gz", "--checkpoint",
                 reference / "checkpoints" / "final.pt", "--device", "cpu")
    assert result.exit_code == 1
    assert error_line(result.output) == ("error: out of memory while inferring (CUDA out of memory. Tried to allocate "
                                         "8.00 GiB.); nothing was written. Try --device cpu (slower, uses system "
                                         "memory) or a device with more memory")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("config, extra, message", [
    ("training:\n  max_steps: ten\n", [], "{path}: training.max_steps must be int, got 'ten'"),
    ("{}\n", ["--set", "training.checkpoint_every=5"], "--set training.checkpoint_every=5: "
     "unknown key 'training.checkpoint_every' (did you mean 'training.checkpoint_interval'?)"),
], ids=["wrong type in the file", "unknown key in --set"])
def test_bad_config_fails_before_any_work(config, extra, message, dataset, tmp_path, cli):
    path = tmp_path / "config.yaml"
    path.write_text(config, encoding="utf-8")
    result = cli("train", "--config", path, *extra, "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert error_line(result.output) == "error: " + message.format(path=path)
    assert not (tmp_path / "run").exists()
