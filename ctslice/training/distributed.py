"""DDP when launched with ``torchrun``; a single process otherwise. Only rank 0 logs and saves.

``torchrun`` sets RANK, WORLD_SIZE and LOCAL_RANK; with WORLD_SIZE > 1 this joins the process group
(NCCL on CUDA, gloo on CPU) and each rank uses GPU LOCAL_RANK.

Work that only rank 0 does (the latent cache, validation) runs under ``on_main``: the other ranks wait for
it by polling the process group's key-value store, not inside a collective, because Python runs a signal
handler only between bytecodes, never while a rank is blocked in a collective (nor does a long validation
then run into the collective timeout). A rank that hears a signal while waiting tells rank 0 through the
store (``signal_elsewhere``), so rank 0 can abandon the work at once; ``ctslice.training.stops`` has every
rank stop together at the next collective (``largest`` of the ranks' signals).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from ctslice.errors import InputError

T = TypeVar("T")
STOP_KEY = "ctslice/stop"  # the signal a rank heard while waiting for rank 0
POLL_SECONDS = 0.05


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device_type: str) -> Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def device_for(self, device: torch.device) -> torch.device:
        """Each rank on its own GPU (cuda:LOCAL_RANK); CPU ranks share the CPU."""
        if device.type != "cuda" or not self.enabled:
            return device
        if self.local_rank >= torch.cuda.device_count():
            raise InputError(f"torchrun rank {self.rank}: LOCAL_RANK {self.local_rank} has no GPU "
                             f"({torch.cuda.device_count()} visible); start "
                             f"{torch.cuda.device_count()} or fewer processes per node")
        return torch.device("cuda", self.local_rank)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_true(self, flag: bool, device: torch.device) -> bool:
        """True on every rank only if ``flag`` is true on every rank (ranks must agree to skip a step)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item() > 0.5)

    def any_true(self, flag: bool, device: torch.device) -> bool:
        return not self.all_true(not flag, device)

    def largest(self, value: int, device: torch.device) -> int:
        """The largest of the ranks' ``value``, on every rank (ranks agree on which signal stops them)."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def on_main(self, name: str, work: Callable[[], T], signal_here: Callable[[], int | None]) -> T | None:
        """``work()`` on rank 0; on the other ranks None once rank 0 is done with it. They wait polling the
        store (see the module docstring) and pass ``signal_here()``, the signal this rank heard, on to rank 0.
        ``name`` must differ between calls in one process group."""
        if not self.enabled:
            return work()
        store, done = dist.distributed_c10d._get_default_store(), f"ctslice/done/{name}"
        if self.is_main:
            try:
                return work()
            finally:
                store.set(done, "1")
        told = False
        while not store.check([done]):
            signum = signal_here()
            if signum and not told:
                store.set(STOP_KEY, str(signum))
                told = True
            time.sleep(POLL_SECONDS)
        return None

    def signal_elsewhere(self) -> int | None:
        """On rank 0: the signal another rank heard while it waited in ``on_main`` (None when none has)."""
        if not (self.enabled and self.is_main):
            return None
        store = dist.distributed_c10d._get_default_store()
        return int(store.get(STOP_KEY)) if store.check([STOP_KEY]) else None

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
