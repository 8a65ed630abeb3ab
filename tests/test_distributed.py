"""DDP training on the CPU with the gloo backend: two ranks, identical weights, only rank 0 writes; a signal
to either rank or to both during rank 0's validation or latent cache ends both together."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import h5py
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ctslice.checkpoint import read_checkpoint
from ctslice.config import config_from_dict
from ctslice.errors import CtsliceError, Preempted
from ctslice.training import distributed, latents, state, trainer
from ctslice.training.run_log import read_log
from ctslice.training.session import prepare
from ctslice.training.stops import StopFlag
from tests.tiny import TINY, tiny_config


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rank_worker(rank: int, port: int, config: dict, run_dirs: list[str], dumps: list[str]) -> None:
    """One torchrun-like rank: train, then dump this rank's final weights where the test can compare them."""
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    session = prepare(config_from_dict(config), Path(run_dirs[rank]), None, "cpu")
    try:
        trainer._loop(session, StopFlag())
        torch.save(session.model.state_dict(), dumps[rank])
    finally:
        session.close()
        session.world.close()


def test_two_ranks_hold_identical_weights_and_only_rank_0_writes(dataset, tmp_path):
    config = tiny_config(dataset, "training.max_steps=3", "training.checkpoint_interval=2",
                         "validation.val_samples=0", "data.cache_latents=false")
    run_dirs = [str(tmp_path / "rank0"), str(tmp_path / "rank1")]  # rank 1 gets its own folder: must stay empty
    dumps = [str(tmp_path / "weights0.pt"), str(tmp_path / "weights1.pt")]
    mp.spawn(rank_worker, args=(free_port(), config.to_dict(), run_dirs, dumps), nprocs=2, join=True)

    first, second = (torch.load(path, weights_only=True) for path in dumps)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    written = sorted(p.relative_to(tmp_path / "rank0").as_posix() for p in (tmp_path / "rank0").rglob("*")
                     if p.is_file() and "tensorboard" not in p.parts)
    assert written == ["checkpoints/final.pt", "checkpoints/latest.pt", "checkpoints/step_2.pt", "config.yaml",
                       "log.jsonl", "progress.png"]
    assert not [p for p in (tmp_path / "rank1").rglob("*") if p.is_file()]
    log = (tmp_path / "rank0" / "log.jsonl").read_text(encoding="utf-8")
    records = [line for line in log.splitlines() if '"train"' in line]
    assert len(records) == 3  # one record per step, written once


# --- stops: SIGTERM or Ctrl-C reaching one rank or all of them --------------------------------------------------

def start_ranks(dataset, run: Path, tmp_path: Path, *settings: str) -> list[subprocess.Popen]:
    """``python -m ctslice train`` as two ranks, each a process (and session) of its own, as torchrun starts
    them; rank R's stderr in ``tmp_path/rankR.txt``."""
    config = tmp_path / "empty.yaml"
    config.write_text("{}\n", encoding="utf-8")
    sets = [*TINY, f"data.cache={dataset[0]}", f"data.splits={dataset[1]}", "hardware.device=cpu",
            "data.cache_latents=false", "training.checkpoint_interval=10000", *settings]
    args = [sys.executable, "-m", "ctslice", "train", "--config", str(config), "--out", str(run), "--threads", "1",
            *(a for s in sets for a in ("--set", s))]
    port, ranks = free_port(), []
    for rank in range(2):
        env = {**os.environ, "COLUMNS": "1000", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)}
        with open(tmp_path / f"rank{rank}.txt", "w") as stderr:
            ranks.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
                                          env=env))
    return ranks


def train_steps(run: Path) -> list[int]:
    """Steps of the complete train records in ``log.jsonl`` (the line being written may be partial)."""
    path = run / "log.jsonl"
    lines = path.read_text(encoding="utf-8").split("\n")[:-1] if path.exists() else []
    return [r["step"] for r in map(json.loads, lines) if r["kind"] == "train"]


def signal_after_step_2(ranks: list[subprocess.Popen], targets: list[int], signum: int, run: Path,
                        pause: float) -> None:
    """Send ``signum`` to the ranks ``targets`` ``pause`` seconds after step 2 is logged; both ranks must be
    gone within 60 s (a rank left in a collective would wait for its timeout: 30 min with gloo)."""
    deadline = time.monotonic() + 120
    while 2 not in train_steps(run):
        assert all(rank.poll() is None for rank in ranks), [rank.returncode for rank in ranks]
        assert time.monotonic() < deadline, "no step 2 within 120 s"
        time.sleep(0.02)
    time.sleep(pause)
    assert all(rank.poll() is None for rank in ranks), "a rank exited before the signal"
    for target in targets:
        ranks[target].send_signal(signum)
    deadline = time.monotonic() + 60
    try:
        for rank in ranks:
            rank.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for rank in ranks:
            rank.kill()
        raise AssertionError(f"ranks still running 60 s after the signal: {[r.poll() for r in ranks]}") from None


def stderr_lines(tmp_path: Path, rank: int) -> list[str]:
    text = (tmp_path / f"rank{rank}.txt").read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in text, text
    return [line for line in text.splitlines() if line.startswith("error: ")]


# A validation that would run for minutes: every DDIM step of sampling mode runs the U-Net on every window.
ENDLESS_VALIDATION = ["validation.mode=sample", "validation.val_steps=1000", "validation.val_samples=1"]
RESUME = "(resume from the latest checkpoint)"


@pytest.mark.parametrize("targets, signum, code, words, validation, settings", [
    ([0], signal.SIGTERM, 143, "stopped by SIGTERM", "validation", ["training.val_interval=2"]),
    ([1], signal.SIGTERM, 143, "stopped by SIGTERM", "validation", ["training.val_interval=2"]),
    ([1], signal.SIGINT, 130, "interrupted by Ctrl-C", "final validation", ["training.max_steps=2"]),
    ([0, 1], signal.SIGTERM, 143, "stopped by SIGTERM", "final validation", ["training.max_steps=2"]),
], ids=["sigterm-rank-0-periodic", "sigterm-rank-1-periodic", "ctrl-c-rank-1-final", "sigterm-both-final"])
def test_a_stop_during_rank_0s_validation_ends_every_rank_together(targets, signum, code, words, validation,
                                                                   settings, dataset, tmp_path):
    """Only rank 0 validates; a signal reaching any rank abandons it, every rank exits with the signal's code,
    rank 0 alone prints the line, and step 2 is checkpointed (no final.pt: the run has not finished)."""
    run = tmp_path / "run"
    ranks = start_ranks(dataset, run, tmp_path, "training.max_steps=10000", *settings, *ENDLESS_VALIDATION)
    signal_after_step_2(ranks, targets, signum, run, pause=2)  # past the validation loss, into the inference
    assert [rank.returncode for rank in ranks] == [code, code]
    assert stderr_lines(tmp_path, 0) == [f"error: {words} during the {validation} at step 2; checkpoint of step 2 "
                                         f"saved {RESUME}"]
    assert stderr_lines(tmp_path, 1) == []
    assert read_checkpoint(run / "checkpoints" / "latest.pt")["step"] == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest.pt", "step_2.pt"]
    assert train_steps(run) == [1, 2]
    assert not [r for r in read_log(run) if "validation" in r["kind"]]


def test_ctrl_c_on_rank_1_during_training_stops_every_rank_with_130(dataset, tmp_path):
    """The ranks agree on the signal, not only on stopping: Ctrl-C on rank 1 is exit 130 on rank 0 too."""
    run = tmp_path / "run"
    ranks = start_ranks(dataset, run, tmp_path, "training.max_steps=10000", "training.val_interval=10000",
                        "validation.val_samples=0")
    signal_after_step_2(ranks, [1], signal.SIGINT, run, pause=0)
    assert [rank.returncode for rank in ranks] == [130, 130]
    [line] = stderr_lines(tmp_path, 0)
    step = int(re.fullmatch(rf"error: interrupted by Ctrl-C at step (\d+); checkpoint saved {re.escape(RESUME)}",
                            line).group(1))
    assert stderr_lines(tmp_path, 1) == []
    assert read_checkpoint(run / "checkpoints" / "latest.pt")["step"] == step
    assert train_steps(run) == list(range(1, step + 1))


def latent_cache_worker(rank: int, port: int, config: dict, run_dir: str, outcomes: list[str]) -> None:
    """A rank that gets SIGTERM (rank 1, before anything) or builds the latent cache (rank 0, whose first
    volume waits until rank 1 has passed its signal on, so that the signal surely arrives during the build)."""
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    encode = latents.encode_volume

    def encode_once_told(*args):
        dist.distributed_c10d._get_default_store().wait([distributed.STOP_KEY], timedelta(seconds=60))
        return encode(*args)

    latents.encode_volume = encode_once_told
    stop = StopFlag()
    stop.listen()
    if rank == 1:
        os.kill(os.getpid(), signal.SIGTERM)
    try:
        prepare(config_from_dict(config), Path(run_dir), None, "cpu", stop=stop)
        outcome = {"error": None}
    except CtsliceError as error:
        outcome = {"error": type(error).__name__, "message": str(error), "silent": error.silent}
    finally:
        stop.restore()
        dist.destroy_process_group()
    Path(outcomes[rank]).write_text(json.dumps(outcome), encoding="utf-8")


def test_sigterm_on_rank_1_while_rank_0_builds_the_latent_cache_stops_both_after_the_volume_in_hand(dataset, tmp_path):
    config = tiny_config(dataset, "data.cache_latents=true", "validation.val_samples=0")
    run, outcomes = tmp_path / "run", [str(tmp_path / "outcome0.json"), str(tmp_path / "outcome1.json")]
    mp.spawn(latent_cache_worker, args=(free_port(), config.to_dict(), str(run), outcomes), nprocs=2, join=True)

    first, second = (json.loads(Path(path).read_text(encoding="utf-8")) for path in outcomes)
    assert first == {"error": "Preempted", "silent": False,
                     "message": f"stopped by SIGTERM while building the latent cache (1 of 3 training volumes encoded, "
                                f"kept in {run / 'latents.h5'}); rerun with --resume latest"}
    assert second["error"] == "Preempted" and second["silent"] is True
    with h5py.File(run / "latents.h5", "r") as store:
        assert len(store) == 1


def test_a_stop_at_a_checkpoint_step_writes_that_checkpoint_once(dataset, tmp_path, monkeypatch):
    """SIGTERM during step 2 of a run checkpointing every 2 steps: the periodic checkpoint is the stop's too."""
    written = []
    write = state.ckpt.write_checkpoint
    monkeypatch.setattr(state.ckpt, "write_checkpoint", lambda document, path: written.append(path.name) or
                        write(document, path))
    config = tiny_config(dataset, "training.max_steps=10000", "training.checkpoint_interval=2",
                         "validation.val_samples=0", "data.cache_latents=false")

    def preempt_at_step_2(report: trainer.StepReport) -> None:
        if report.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(Preempted, match=r"^stopped by SIGTERM at step 2; checkpoint saved"):
        trainer.train(config, tmp_path / "run", on_step=preempt_at_step_2)
    assert written == ["step_2.pt"]
