"""Devices, precision, threads and memory readings, the same for every command.

Each is resolved here once, from what the user asked for and what this machine has:

- Device: ``auto`` is CUDA when available, else the CPU; ``cuda`` means the current CUDA device, with
  its index (``torch.cuda.set_device`` and DDP need one). A device that is not there is an
  ``InputError`` (one line, exit 2).
- Precision: ``auto`` is BF16 autocast where the device runs it fast (CUDA GPUs with native BF16;
  CPUs with AVX512-BF16 or AMX, which PyTorch uses only when its kernels run at AVX512 capability),
  FP32 elsewhere: on an AVX2-only CPU BF16 autocast was measured 18x slower for a training step and
  20-73x slower for inference than FP32.
- Threads: intra-op threads follow the CPUs this process may use (its affinity mask and its cgroup
  CPU quota), not the CPUs the machine has.

TF32 matmuls are switched on for CUDA. CUDA-only features (fp16 GroupNorm in the VAE) are decided where
those modules are built, from the device chosen here; fused (flash) attention runs on CUDA and the CPU.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import re
import resource
import sys
from pathlib import Path
from typing import NamedTuple

import torch

from ctslice.errors import InputError, shown

PRECISIONS = ("auto", "bf16", "fp32")
CGROUP = Path("/sys/fs/cgroup")
FAST_BF16_CAPABILITIES = ("AVX512",)  # ATen's kernel level; its BF16 paths need AVX512-BF16/AMX at this level


def resolve_device(requested: str | None, source: str = "device") -> torch.device:
    """The device for ``requested`` (auto, cpu, cuda, cuda:N), CUDA always with its index.

    ``source`` names where the request came from (the caller's label: "device", "hardware.device"; the
    command layer passes its flag) in the one-line
    error for a device that does not exist or is not available.
    """
    name = (requested or "auto").strip().lower()
    if name == "auto":
        return _current_cuda() if torch.cuda.is_available() else torch.device("cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise InputError(f"{source} {shown(requested)}: expected auto, cpu, cuda or cuda:N")
    device = torch.device(name)
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        raise InputError(f"{source} {requested}: CUDA requested but no GPU is visible; use cpu")
    if device.index is None:
        return _current_cuda()
    count = torch.cuda.device_count()
    if device.index >= count:
        raise InputError(f"{source} {requested}: no such GPU ({count} visible: cuda:0"
                         f"{f' to cuda:{count - 1}' if count > 1 else ''})")
    return device


def _current_cuda() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device())


class Precision(NamedTuple):
    """The autocast precision a run uses (``name``: bf16 or fp32) and why, for the one line commands print."""

    name: str
    reason: str

    @property
    def line(self) -> str:
        return f"Precision: {self.name} ({self.reason})"


def cpu_capability() -> str:
    """ATen's CPU kernel level (``ATEN_CPU_CAPABILITY`` lowers it), e.g. AVX2, AVX512; with the BF16 units."""
    capability = torch.backends.cpu.get_cpu_capability()
    units = [unit for unit, present in (("AVX512-BF16", torch.cpu._is_avx512_bf16_supported()),
                                        ("AMX", torch.cpu._is_amx_tile_supported())) if present]
    return capability + (f" with {', '.join(units)}" if units and capability in FAST_BF16_CAPABILITIES else "")


def cpu_has_fast_bf16() -> bool:
    """Whether PyTorch runs BF16 fast on this CPU: AVX512-BF16 or AMX, used at AVX512 kernel level."""
    return (torch.backends.cpu.get_cpu_capability() in FAST_BF16_CAPABILITIES
            and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()))


def resolve_precision(requested: str | None, device: torch.device | str) -> Precision:
    """``auto`` (or None) -> bf16 where ``device`` runs BF16 autocast fast, else fp32; bf16/fp32 as asked.

    For a CUDA ``device`` on a machine without CUDA (predicting memory for a GPU) ``auto`` is bf16, as on
    every GPU since Ampere.
    """
    name = (requested or "auto").strip().lower()
    if name not in PRECISIONS:
        raise InputError(f"precision {requested!r}: choose one of {', '.join(PRECISIONS)}")
    kind = torch.device(device).type
    if kind == "cuda":
        native = not torch.cuda.is_available() or torch.cuda.is_bf16_supported(including_emulation=False)
        where = "this GPU" if torch.cuda.is_available() else "a CUDA GPU"
        fast = f"{where} has native BF16" if native else f"{where} has no native BF16"
    else:
        native = cpu_has_fast_bf16()
        fast = (f"this CPU ({cpu_capability()}) has a fast BF16 path" if native
                else f"this CPU ({cpu_capability()}) has no fast BF16 path")
    if name == "auto":
        return Precision("bf16" if native else "fp32", f"auto: {fast}")
    slow = "; expect BF16 to be many times slower than fp32 here" if name == "bf16" and not native else ""
    return Precision(name, f"requested{slow}")


def available_cpus(cgroup: Path = CGROUP) -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us``/``cpu.cfs_period_us``), rounded up; at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota(cgroup)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def _cgroup_quota(cgroup: Path) -> float | None:
    """The CPU quota in CPUs, or None when there is none (or no cgroup file to read)."""
    try:
        fields = (cgroup / "cpu.max").read_text().split()  # v2: "max 100000" or "150000 100000"
        if fields and fields[0] != "max":
            return int(fields[0]) / int(fields[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    for folder in (cgroup / "cpu", cgroup / "cpu,cpuacct"):
        try:
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            period = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota / period if quota > 0 and period > 0 else None
    return None


def resolve_threads(requested: int | None = None) -> int:
    """Intra-op threads: ``requested``, else the CPUs this process may use."""
    if requested is not None and requested < 1:
        raise InputError(f"threads {requested}: must be at least 1")
    return requested or available_cpus()


# glibc's mallopt parameters (malloc.h) and the largest block kept for reuse: above every activation of a
# CPU inference window or training step, below the whole-volume buffers (336 MB for 512 x 512 x 320 float32),
# which are allocated once each.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_FREED_BYTES = 256 * 2**20


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks of up to ``KEEP_FREED_BYTES`` for reuse instead of handing them
    back to the kernel; False where the C library is not glibc (nothing changes there).

    Why: PyTorch's CPU tensors come from malloc, and glibc serves each block above its mmap threshold (at
    most 32 MB) with a fresh ``mmap`` whose pages the kernel zero-fills on first touch, then ``munmap``s it.
    Every activation of every U-Net window went that way: inference of a 512 x 512 x 320 volume on 2 AVX2
    cores spent 409 of its 1,121 CPU-seconds in the kernel. With the blocks kept, one window batch of the
    bundled model ran in 2.4 s instead of 4.35 s, with 0.02 s instead of 2.97 s of system time
    (``benchmarks/RESULTS.md``, "Inference at the floor"); the resident set stays at the run's peak.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, KEEP_FREED_BYTES) and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def configure(device: torch.device, tf32: bool = True, threads: int | None = None) -> int:
    """Process-wide settings for ``device``: intra-op threads (``resolve_threads``), freed memory kept for
    reuse (``keep_freed_memory``), TF32 and the current device on CUDA. Returns the number of threads."""
    keep_freed_memory()
    count = resolve_threads(threads)
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.cuda.set_device(device.index if device.index is not None else torch.cuda.current_device())
    return count


def autocast(device: torch.device, precision: str):
    """BF16 autocast for a resolved ``precision`` "bf16", a no-op context for "fp32".

    "auto" is refused: it means different things on different devices (``resolve_precision``).
    """
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"autocast needs a resolved precision (bf16 or fp32), got {precision!r}")
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def reset_peak_memory(device: torch.device) -> None:
    """CUDA: start a new peak. CUDA is initialised first: the allocator's statistics do not exist before
    (``Invalid device argument ...: did you call init?``)."""
    if device.type == "cuda":
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: peak allocated by PyTorch since the last reset. CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def memory_line(device: torch.device) -> str:
    """One line for logs: what was measured and how much."""
    gib = peak_memory_bytes(device) / 2**30
    kind = "CUDA peak allocated" if device.type == "cuda" else "peak RSS"
    return f"{kind} {gib:.2f} GiB"


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's OutOfMemoryError, Python's MemoryError, or PyTorch's CPU allocator failing (a plain RuntimeError)."""
    return isinstance(error, (torch.OutOfMemoryError, MemoryError)) or "DefaultCPUAllocator" in str(error)
