"""What a checkpoint holds and when each checkpoint file is written.

``Saver`` writes ``step_N.pt`` (periodic, the last ``keep`` kept) and points ``latest.pt`` at it,
``best.pt`` whenever validation PSNR improves, and ``final.pt`` at the end; rank 0 only. RNG states
(Python, NumPy, torch CPU and CUDA) are stored as tensors and plain lists so that the file loads with
``weights_only=True``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from ctslice import checkpoint as ckpt
from ctslice.config import Config
from ctslice.training.distributed import Distributed


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, keys.tolist(), position, has_gauss, cached],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


class Saver:
    """Checkpoint policy of a run (see the module docstring)."""

    def __init__(self, run_dir: Path, config: Config, model, optimizer, scheduler, meta: dict,
                 world: Distributed, keep: int = 3):
        self.folder = ckpt.checkpoint_dir(run_dir)
        self.run_dir = run_dir
        self.config, self.model, self.optimizer, self.scheduler = config, model, optimizer, scheduler
        self.meta, self.world, self.keep = meta, world, keep

    def state(self, step: int, best_psnr: float | None) -> dict:
        return {"step": step, "best_metric": best_psnr, "config": self.config.to_dict(),
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.scheduler.state_dict(), "rng": rng_state(), **self.meta}

    def save(self, step: int, best_psnr: float | None, periodic: bool) -> None:
        if not self.world.is_main:
            return
        name = f"step_{step}.pt" if periodic else "final.pt"
        path = ckpt.write_checkpoint(self.state(step, best_psnr), self.folder / name)
        _point(self.folder / "latest.pt", path)
        for old in ckpt.periodic_checkpoints(self.run_dir)[self.keep:]:
            old.unlink(missing_ok=True)

    def maybe_best(self, step: int, metrics: dict, best_psnr: float | None) -> float | None:
        psnr = metrics.get("psnr")
        if psnr is None or (best_psnr is not None and psnr <= best_psnr):
            return best_psnr
        if self.world.is_main:
            ckpt.write_checkpoint(self.state(step, psnr), self.folder / "best.pt")
        return psnr


def _point(link: Path, target: Path) -> None:
    """Make ``link`` an atomic hard link to ``target`` (a copy where links are not possible)."""
    temporary = link.with_name(f".{link.name}.tmp")
    temporary.unlink(missing_ok=True)
    try:
        os.link(target, temporary)
    except OSError:
        import shutil

        shutil.copyfile(target, temporary)
    os.replace(temporary, link)
