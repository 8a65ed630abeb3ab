"""Devices, precision and threads (``ctslice.hardware``), with CUDA and the CPU's features stubbed.

These run without a GPU: ``torch.cuda`` calls are replaced by fakes that say how many GPUs there are,
which one is current, and record what ``configure`` sets. The CPU's BF16 support is stubbed too, so
the AVX2 and AVX512-BF16 answers are both checked on whatever CPU runs the tests; one test also asks a
fresh interpreter with ``ATEN_CPU_CAPABILITY=avx2``, the real switch.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ctslice import hardware
from ctslice.config import load_config
from ctslice.errors import InputError
from ctslice.hardware import (
    autocast,
    available_cpus,
    configure,
    reset_peak_memory,
    resolve_device,
    resolve_precision,
    resolve_threads,
)
from ctslice.training.distributed import Distributed

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny_cpu.yaml"
NO_GPU = "CUDA requested but no GPU is visible; use cpu"


@pytest.fixture
def gpus(monkeypatch):
    """Pretend CUDA has ``count`` GPUs with ``current`` selected; returns the calls made to CUDA."""
    calls = []

    def install(count: int = 2, current: int = 1, bf16: bool = True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
        monkeypatch.setattr(torch.cuda, "set_device", lambda index: calls.append(("set_device", index)))
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
        monkeypatch.setattr(torch.cuda, "init", lambda: calls.append(("init",)))
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats",
                            lambda device=None: calls.append(("reset", device)))
        return calls

    return install


@pytest.fixture
def cpu_features(monkeypatch):
    """Pretend the CPU has ATen capability ``capability`` and these BF16 units."""

    def install(capability: str, avx512_bf16: bool = False, amx: bool = False):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)

    return install


@pytest.fixture
def threads_restored():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


# ---- devices


def test_cuda_resolves_to_the_current_device_with_its_index(gpus):
    gpus(count=2, current=1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device(None) == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device(" CUDA:0 ") == torch.device("cuda", 0)
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_is_the_cpu_without_cuda(gpus):
    gpus(count=0)
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_one_clear_line(gpus, name):
    gpus(count=0)
    with pytest.raises(InputError, match=f"^device {name}: {NO_GPU}"):
        resolve_device(name)


def test_a_gpu_index_that_does_not_exist_names_the_visible_ones(gpus):
    gpus(count=2)
    with pytest.raises(InputError, match=r"^device cuda:2: no such GPU \(2 visible: cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("name", ["gpu", "mps", "cuda:x", "cuda:-1", ""])
def test_unknown_device_names_are_input_errors(name):
    with pytest.raises(InputError, match="expected auto, cpu, cuda or cuda:N"):
        resolve_device(name or "cuda:")


def test_the_error_names_where_the_device_came_from(gpus):
    gpus(count=0)
    with pytest.raises(InputError, match="^hardware.device cuda: CUDA requested"):
        resolve_device("cuda", "hardware.device")


def test_configure_selects_an_indexed_device(gpus, threads_restored):
    calls = gpus(count=2, current=1)
    configure(torch.device("cuda", 0), threads=1)
    configure(torch.device("cuda"), threads=1)  # a caller that did not resolve: the current device
    assert calls == [("set_device", 0), ("set_device", 1)]


def test_reset_peak_memory_initialises_cuda_first(gpus):
    calls = gpus(count=1, current=0)
    reset_peak_memory(torch.device("cuda", 0))
    assert calls == [("init",), ("reset", torch.device("cuda", 0))]
    reset_peak_memory(torch.device("cpu"))
    assert len(calls) == 2


def test_torchrun_ranks_get_their_local_gpu_or_a_clear_error(gpus):
    gpus(count=2)
    assert Distributed(1, 2, 1).device_for(torch.device("cuda", 0)) == torch.device("cuda", 1)
    assert Distributed(0, 2, 0).device_for(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(InputError, match="LOCAL_RANK 2 has no GPU"):
        Distributed(2, 3, 2).device_for(torch.device("cuda", 0))


# ---- precision


@pytest.mark.parametrize(("capability", "avx512_bf16", "amx", "expected"), [
    ("AVX2", True, False, "fp32"),  # the units exist, but ATen runs AVX2 kernels (ATEN_CPU_CAPABILITY=avx2)
    ("AVX2", False, False, "fp32"),
    ("DEFAULT", False, False, "fp32"),
    ("AVX512", False, False, "fp32"),  # AVX512 without BF16 units: BF16 is emulated
    ("AVX512", True, False, "bf16"),
    ("AVX512", False, True, "bf16"),
])
def test_auto_precision_on_the_cpu_follows_its_bf16_path(cpu_features, capability, avx512_bf16, amx, expected):
    cpu_features(capability, avx512_bf16, amx)
    precision = resolve_precision("auto", torch.device("cpu"))
    assert precision.name == expected
    assert resolve_precision(None, "cpu").name == expected
    assert precision.line.startswith(f"Precision: {expected} (auto: this CPU ({capability}")


def test_the_avx2_line_says_why(cpu_features):
    cpu_features("AVX2", avx512_bf16=True)
    assert resolve_precision("auto", "cpu").line == "Precision: fp32 (auto: this CPU (AVX2) has no fast BF16 path)"


def test_auto_precision_on_cuda_follows_native_bf16(gpus):
    gpus(bf16=True)
    assert resolve_precision("auto", torch.device("cuda", 0)).name == "bf16"
    gpus(bf16=False)
    assert resolve_precision("auto", torch.device("cuda", 0)).name == "fp32"


def test_auto_precision_predicted_for_a_gpu_without_one_is_bf16(gpus):
    gpus(count=0)
    assert resolve_precision("auto", "cuda").name == "bf16"


def test_an_explicit_precision_is_kept_and_slow_bf16_is_flagged(cpu_features):
    cpu_features("AVX2")
    assert resolve_precision("fp32", "cpu").line == "Precision: fp32 (requested)"
    bf16 = resolve_precision("BF16", "cpu")
    assert bf16.name == "bf16" and "many times slower" in bf16.reason
    with pytest.raises(InputError, match="^precision 'fp16': choose one of auto, bf16, fp32"):
        resolve_precision("fp16", "cpu")


def test_avx2_capability_from_the_environment_resolves_to_fp32():
    """The real switch, in a fresh interpreter: ``ATEN_CPU_CAPABILITY=avx2`` (as on an AVX2-only CPU)."""
    code = "from ctslice.hardware import resolve_precision; print(resolve_precision('auto', 'cpu').line)"
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "Precision: fp32 (auto: this CPU (AVX2) has no fast BF16 path)"


def test_autocast_refuses_an_unresolved_precision():
    with pytest.raises(ValueError, match="resolved precision"):
        autocast(torch.device("cpu"), "auto")
    with autocast(torch.device("cpu"), "bf16"):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32


def test_every_shipped_config_defaults_to_auto():
    for path in sorted((REPO / "ctslice" / "configs").glob("*.yaml")):
        assert load_config(path).training.precision == "auto", path.name
    assert load_config(None).training.precision == "auto"


def test_a_checkpoints_stored_bf16_is_overridden_at_load(cpu_features, tmp_path):
    """A model trained in BF16 (as 0.2.0's bundled one was) infers in the precision this CPU runs fast."""
    from ctslice.checkpoint import bundled_model_path, read_checkpoint, write_checkpoint
    from ctslice.inference.loading import load_model

    state = read_checkpoint(bundled_model_path())
    state["config"]["training"]["precision"] = "bf16"
    write_checkpoint(state, tmp_path / "bf16.pt")
    cpu_features("AVX2", avx512_bf16=True)
    loaded = load_model(tmp_path / "bf16.pt", "cpu")
    assert read_checkpoint(loaded.path)["config"]["training"]["precision"] == "bf16"
    assert loaded.precision.name == "fp32"
    assert loaded.interpolator.config.training.precision == "fp32"
    assert load_model(tmp_path / "bf16.pt", "cpu", precision="bf16").interpolator.config.training.precision == "bf16"


# ---- threads


@pytest.fixture
def eight_cpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)


@pytest.mark.parametrize(("files", "expected"), [
    ({}, 8),  # no cgroup files: the affinity mask
    ({"cpu.max": "max 100000\n"}, 8),
    ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs of quota: two threads
    ({"cpu.max": "50000 100000\n"}, 1),
    ({"cpu.max": "2000000 100000\n"}, 8),  # quota above the mask: the mask
    ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),  # cgroup v1
    ({"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 8),
])
def test_available_cpus_follow_affinity_and_the_cgroup_quota(tmp_path, eight_cpus, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    assert available_cpus(tmp_path) == expected


def test_affinity_caps_the_cpus(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    (tmp_path / "cpu.max").write_text("400000 100000\n", encoding="utf-8")
    assert available_cpus(tmp_path) == 1


def test_configure_sets_the_threads(monkeypatch, threads_restored):
    monkeypatch.setattr(hardware, "available_cpus", lambda: 1)
    assert resolve_threads(None) == 1 and resolve_threads(3) == 3
    assert configure(torch.device("cpu")) == 1 and torch.get_num_threads() == 1
    assert configure(torch.device("cpu"), threads=2) == 2 and torch.get_num_threads() == 2
    with pytest.raises(InputError, match="^threads 0: must be at least 1"):
        resolve_threads(0)


# ---- every command: a missing GPU is one line and exit 2, before any work


def _one_line_no_gpu(result, flag: str = "--device cuda") -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in (result.stderr or result.output).strip().splitlines() if line.strip()]
    assert len(lines) == 1 and f"{flag}: {NO_GPU}" in lines[0], lines
    assert "Traceback" not in result.output


def test_every_command_refuses_cuda_without_a_gpu(cli, gpus, tmp_path):
    gpus(count=0)
    scan, cache, splits = tmp_path / "scan.nii.gz", tmp_path / "cache.h5", tmp_path / "splits.json"
    _one_line_no_gpu(cli("infer", scan, "-o", tmp_path / "thin.nii.gz", "--device", "cuda"))
    _one_line_no_gpu(cli("validate", "--checkpoint", tmp_path / "m.pt", "--cache", cache, "--splits", splits,
                         "--device", "cuda"))
    _one_line_no_gpu(cli("train", "--config", TINY, "--out", tmp_path / "run", "--device", "cuda"))
    _one_line_no_gpu(cli("demo", "--out", tmp_path / "demo", "--device", "cuda"))
    _one_line_no_gpu(cli("inspect-memory", "--config", TINY, "--measure", "--device", "cuda"))
    _one_line_no_gpu(cli("train", "--config", TINY, "--out", tmp_path / "run", "--set", "hardware.device=cuda"),
                     "hardware.device cuda")
    assert not any((tmp_path / name).exists() for name in ("run", "demo", "thin.nii.gz"))


def test_a_missing_gpu_index_is_one_line_too(cli, gpus, tmp_path):
    gpus(count=1, current=0)
    result = cli("infer", tmp_path / "scan.nii.gz", "-o", tmp_path / "thin.nii.gz", "--device", "cuda:3")
    assert result.exit_code == 2 and "--device cuda:3: no such GPU (1 visible: cuda:0)" in result.output


def test_infer_prints_the_precision_it_uses(cli, cpu_features, tmp_path, threads_restored):
    """The bundled model (stored bf16) on an AVX2 CPU infers in fp32 and says so, in one line."""
    from ctslice.data.phantom import make_phantom
    from ctslice.io import write_volume

    cpu_features("AVX2", avx512_bf16=True)
    scan = write_volume(make_phantom((8, 32, 32), (12.0, 12.0, 5.0), seed=0), tmp_path / "thick.nii.gz")
    result = cli("infer", scan, "-o", tmp_path / "thin.nii.gz", "--device", "cpu", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert "Precision: fp32 (auto: this CPU (AVX2) has no fast BF16 path)" in result.output
    assert torch.get_num_threads() == 1
    result = cli("infer", scan, "-o", tmp_path / "thin2.nii.gz", "--device", "cpu", "--precision", "bf16")
    assert result.exit_code == 0, result.output
    assert "Precision: bf16 (requested; expect BF16" in result.output


@pytest.mark.parametrize("name", ["train", "infer", "validate", "demo"])
def test_help_lists_the_precision_choices_and_threads(cli, name):
    result = cli(name, "--help")
    assert "auto|bf16|fp32" in result.output and "--threads" in result.output



FAULTS = """
import resource, sys, torch
from ctslice.hardware import keep_freed_memory
kept = sys.argv[1] == "kept" and keep_freed_memory()
faults, held = [], []
for round in range(4):  # as in a network's forward pass: big blocks freed while smaller ones stay allocated
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.ones(10 * 2**20 - 4096 * round)  # 40 MB (a window's activation), written whole
    held.append(torch.ones(1000))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del block
print(kept, *faults)
"""


def test_freed_blocks_are_kept_for_reuse_without_page_faults():
    """After ``keep_freed_memory`` (every command's ``configure``), 40 MB blocks freed and allocated again reuse
    the same pages; without it, each allocation takes 10,240 fresh zero-filled pages from the kernel."""
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")

    def faults(mode: str) -> list[str]:
        run = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        return run.stdout.split()

    kept, *rounds = faults("kept")
    assert kept == "True" and int(rounds[0]) > 10_000 and all(int(n) < 500 for n in rounds[1:]), rounds
    _, *rounds = faults("default")
    assert all(int(n) > 10_000 for n in rounds), rounds
