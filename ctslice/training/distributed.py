"""DDP when launched with ``torchrun``; a single process otherwise. Only rank 0 logs and saves.

``torchrun`` sets RANK, WORLD_SIZE and LOCAL_RANK; with WORLD_SIZE > 1 this joins the process group
(NCCL on CUDA, gloo on CPU) and each rank uses GPU LOCAL_RANK.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ctslice.errors import InputError


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

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
