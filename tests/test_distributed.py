"""DDP training on the CPU with the gloo backend: two ranks, identical weights, only rank 0 writes."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp

from ctslice.config import config_from_dict
from ctslice.training import trainer
from ctslice.training.session import prepare
from tests.tiny import tiny_config


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
        trainer._loop(session, trainer._StopFlag())
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
