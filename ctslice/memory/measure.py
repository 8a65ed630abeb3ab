"""Measured peaks of the same stages the model predicts, on the device at hand (``--measure``).

Each part (a training step, then the encode, denoise and decode stages of inference) runs the same
code as the prediction (``workload.py``) with real tensors and random weights: memory does not depend
on the weights' values, so no VAE checkpoint is needed.

CUDA: the parts run in this process, one after the other; each is the peak of
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was allocated before
it. That is what the prediction models (PyTorch's allocations, not the CUDA context or the caching
allocator's reserve).

CPU: PyTorch's CPU allocator keeps no statistics, so a part's peak is the process's peak resident set
(VmHWM) minus its resident set just before the part. Each part runs in a fresh Python process, which
first runs the same part at a tiny size (to load kernels, code pages and thread pools, none of which
the prediction counts), returns freed heap to the OS (``malloc_trim``) and resets VmHWM through
``/proc/self/clear_refs``; Linux only. The process runs with glibc's mmap threshold fixed at 64 KiB
(``MALLOC_MMAP_THRESHOLD_``): by default glibc raises the threshold after large frees and then serves
tensors of up to 32 MB from its heap, whose freed pages it keeps, so the resident set depends on the
allocation history (three identical tiny-config steps: 297, 329 and 319 MiB, for 264 MiB allocated).
With a fixed threshold every tensor above 64 KiB is its own mapping, returned when freed, and the
resident set follows what is allocated (270 MiB each time): the CPU counterpart of CUDA's
``max_memory_allocated``. ``malloc_threshold=None`` measures with glibc's defaults instead.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ctslice.codecs import codec_for
from ctslice.config import Config, config_from_dict, with_precision
from ctslice.errors import InputError
from ctslice.memory.workload import PARTS, Geometry, config_codec, notes_off, run_part
from ctslice.models.unet import size_multiple


@dataclass
class Measurement:
    part: str
    bytes: int | None  # None when the part could not run (see ``error``)
    error: str = ""


def measure_memory(config: Config, geometry: Geometry, device: torch.device, parts=PARTS,
                   skip_above: dict[str, int] | None = None, malloc_threshold: int | None = 65536
                   ) -> list[Measurement]:
    """Peak bytes of each part on ``device``; parts whose predicted bytes in ``skip_above`` exceed the
    memory available on a CPU are skipped rather than run into the kernel's OOM killer.
    ``training.precision`` auto is resolved for ``device``, as a run there would."""
    from ctslice.hardware import resolve_precision

    config = with_precision(config, resolve_precision(config.training.precision, device).name)
    results = []
    for part in parts:
        if device.type == "cuda":
            results.append(_on_cuda(part, config, geometry, device))
            continue
        needed = (skip_above or {}).get(part, 0)
        available = _available_bytes()
        if needed > 0.8 * available:
            results.append(Measurement(part, None, f"skipped: predicted {needed / 2**30:.1f} GB, "
                                                   f"{available / 2**30:.1f} GB available"))
            continue
        results.append(_in_subprocess(part, config, geometry, malloc_threshold))
    return results


def _on_cuda(part: str, config: Config, geometry: Geometry, device: torch.device) -> Measurement:
    from ctslice.hardware import reset_peak_memory

    gc.collect()
    torch.cuda.empty_cache()
    reset_peak_memory(device)
    before = torch.cuda.memory_allocated(device)
    try:
        with notes_off():
            run_part(part, config, geometry, device, RealRecorder(device, config.training.precision))
    except torch.cuda.OutOfMemoryError:
        return Measurement(part, None, "out of memory")
    return Measurement(part, torch.cuda.max_memory_allocated(device) - before)


def _in_subprocess(part: str, config: Config, geometry: Geometry, malloc_threshold: int | None) -> Measurement:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    if malloc_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(malloc_threshold)
    with tempfile.TemporaryDirectory() as folder:
        spec = Path(folder) / "spec.json"
        spec.write_text(json.dumps({"part": part, "config": config.to_dict(), "geometry": asdict(geometry)}),
                        encoding="utf-8")
        done = subprocess.run([sys.executable, "-m", "ctslice.memory.measure", str(spec)], capture_output=True,
                              text=True, env=env)
        answer = _answer_path(spec)
        if done.returncode != 0 or not answer.exists():
            killed = done.returncode < 0 or done.returncode == 137
            reason = "killed (out of memory?)" if killed else (done.stderr.strip().splitlines() or ["failed"])[-1]
            return Measurement(part, None, reason)
        return Measurement(part, json.loads(answer.read_text(encoding="utf-8"))["bytes"])


def _answer_path(spec: Path) -> Path:
    """Where the worker writes its answer: a file beside its spec (stdout is left to the libraries)."""
    return Path(spec).with_name("answer.json")


def _worker(spec_path: str) -> None:
    """One part in this fresh process: warm up, reset the high-water mark, run, print the peak as JSON."""
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    config = config_from_dict(spec["config"])
    geometry = Geometry(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["geometry"].items()})
    device = torch.device("cpu")
    tiny_config, tiny_geometry = _warm_up_config(config)
    run_part(spec["part"], tiny_config, tiny_geometry, device, RealRecorder(device, config.training.precision))
    gc.collect()
    _reset_peak_rss()
    before = _status_kib("VmRSS")
    run_part(spec["part"], config, geometry, device, RealRecorder(device, config.training.precision))
    answer = {"bytes": (_status_kib("VmHWM") - before) * 1024}
    _answer_path(Path(spec_path)).write_text(json.dumps(answer), encoding="utf-8")


class RealRecorder:
    """Builds real weights on ``device`` (random: memory does not depend on their values) and autocasts
    the forward pass like the trainer; tags are ignored, since only the total can be measured."""

    def __init__(self, device: torch.device, precision: str) -> None:
        self.device, self.precision = device, precision

    def tag(self, name: str):
        return nullcontext()

    def codec(self, config: Config):
        return codec_for(config.codec, self.device, random_weights=True)

    def model(self, config: Config, latent_channels: int):
        from ctslice.models import build_model

        return build_model(config, latent_channels, self.device)

    def optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """PyTorch picks AdamW's implementation from the parameters' device, as in the trainer."""

    def forward_precision(self):
        from ctslice.hardware import autocast

        return autocast(self.device, self.precision)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()  # outside autocast, as in the trainer

    def codec_precision(self):
        return nullcontext()  # the codec sets its own (fp16 autocast on CUDA)

    def ready(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _reset_peak_rss()


def _reset_peak_rss() -> None:
    """Returns freed heap to the OS, then resets the peak resident set (VmHWM) to the current one."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as error:
        raise InputError(f"cannot reset the peak resident set on this system ({error}); "
                         "measuring on the CPU needs Linux") from None


def _warm_up_config(config: Config) -> tuple[Config, Geometry]:
    """A tiny run of the same networks, to load kernels and thread pools before measuring."""
    multiple = size_multiple(config.model)
    cz, cy, _ = config_codec(config).compression
    data = replace(config.data, whole_volumes=False, patch_thick_slices=1, patch_size=multiple * cy)
    volume = (4 * multiple * cz, multiple * cy, multiple * cy)
    return replace(config, data=data), Geometry(1.0, volume, volume, "warm-up")


def _status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _available_bytes() -> int:
    try:
        return int(re.search(r"MemAvailable:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) * 1024
    except (OSError, AttributeError):
        return 1 << 62  # unknown: do not skip


if __name__ == "__main__":
    _worker(sys.argv[1])
