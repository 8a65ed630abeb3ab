"""Devices, precision and memory readings, the same for every command.

BF16 autocast runs on CUDA (A100/H100) and on CPUs where PyTorch supports it; TF32 matmuls are
switched on for CUDA. CUDA-only features (flash attention, fp16 GroupNorm in the VAE) are decided
where those modules are built, from the device chosen here.
"""

from __future__ import annotations

import contextlib
import resource
import sys

import torch

from ctslice.errors import InputError, shown


def resolve_device(requested: str | None) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an unavailable CUDA request is a clear error."""
    name = (requested or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise InputError(f"--device {shown(requested)}: expected cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {requested}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {requested}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise InputError(f"--device {shown(requested)}: expected cpu, cuda or cuda:N")
    return device


def configure(device: torch.device, tf32: bool = True) -> None:
    """Process-wide settings for ``device`` (TF32 on CUDA)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.cuda.set_device(device)


def autocast(device: torch.device, precision: str):
    """BF16 autocast where supported (``precision`` "bf16"), else a no-op context."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
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
