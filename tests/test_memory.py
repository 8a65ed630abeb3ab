"""The memory model behind ``ctslice inspect-memory``: traced figures, measured agreement, verdicts, suggestions.

The prediction traces the real code on meta tensors (``ctslice.memory.trace``), so most tests are
cheap; one test measures a real tiny-config training step in a subprocess (about 15 s on 2 busy cores).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ctslice.config import load_config
from ctslice.data import cache as cache_files
from ctslice.data.cache import Cache
from ctslice.data.pairs import simulate_pair
from ctslice.errors import InputError
from ctslice.io.volume import Volume
from ctslice.memory import (
    device_memories,
    estimate_memory,
    inspect,
    measure_memory,
    resolve_geometry,
    with_overrides,
)
from ctslice.memory.estimate import COMPONENTS, GIB, TraceRecorder
from ctslice.memory.trace import MetaTrace
from ctslice.memory.workload import ACTIVATIONS, ATTENTION, Geometry
from ctslice.models import build_model

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"
SMALL_VOLUME = (20, 48, 48)  # the tiny patch is then the whole volume: the training step is the training peak


@pytest.fixture(scope="module")
def tiny():
    return load_config(TINY)


def _geometry(volume=SMALL_VOLUME) -> Geometry:
    return Geometry(5.0, volume, volume, "test")


def _activations(config, device_type="cpu") -> int:
    step = estimate_memory(config, _geometry(), device_type).training[1]
    assert step.name == "train step"
    return step.components.get(ACTIVATIONS, 0) + step.components.get(ATTENTION, 0)


def test_meta_trace_counts_allocations_frees_and_views():
    with MetaTrace() as trace:
        a = torch.empty(1024, device="meta")  # 4 KiB
        view = a[:10]
        b = a * 2
        assert trace.current == 8192 and trace.peak == 8192
        del a
        assert trace.current == 8192  # the view keeps a's storage alive
        del view, b
        assert trace.current == 0 and trace.peak == 8192
        assert torch.ones(3, device="meta").sum().item() == 1.0  # values do not exist: a placeholder


def test_emulated_autocast_follows_each_device_policy():
    x = torch.empty(1, 8, 4, 4, 4, device="meta")
    weight = torch.empty(8, 8, 3, 3, 3, device="meta")
    with MetaTrace() as trace:
        with trace.autocast("cuda", torch.bfloat16):
            y = torch.nn.functional.conv3d(x, weight)
            assert y.dtype == torch.bfloat16
            assert torch.nn.functional.group_norm(y, 4).dtype == torch.float32  # CUDA: GroupNorm in fp32
            assert y.softmax(-1).dtype == torch.float32
            assert torch.cat([y, x[..., :2, :2, :2]]).dtype == torch.float32  # promote to the widest
        with trace.autocast("cpu", torch.bfloat16):
            assert torch.nn.functional.group_norm(torch.nn.functional.conv3d(x, weight), 4).dtype == torch.bfloat16
        assert torch.nn.functional.conv3d(x, weight).dtype == torch.float32


def test_meta_trace_of_a_bf16_step_matches_the_same_step_on_real_cpu_tensors(tiny):
    """The trace on meta tensors with emulated CPU autocast equals a real CPU run under real autocast."""
    config = with_overrides(tiny, {"training.precision": "bf16"})

    def peak(device: str) -> int:
        torch.manual_seed(0)
        with MetaTrace() as trace:
            model = TraceRecorder(trace, "cpu", "bf16").model(config, 1) if device == "meta" else \
                build_model(config, 1, device)
            x = torch.rand(2, 1, 8, 16, 16, device=device)
            trace.reset_peak()
            start = trace.current
            with trace.autocast("cpu", torch.bfloat16) if device == "meta" else torch.autocast("cpu", torch.bfloat16):
                loss = model.loss(x, x)
            loss.backward()
            return trace.peak - start

    assert peak("meta") == pytest.approx(peak("cpu"), rel=0.01)


def test_tiny_config_predicted_and_measured_agree_on_cpu(tiny):
    geometry = _geometry()
    estimate = estimate_memory(tiny, geometry, "cpu")
    assert estimate.training_peak.name == "train step"
    measured = measure_memory(tiny, geometry, torch.device("cpu"), parts=("train step",))[0]
    assert measured.bytes is not None, measured.error
    assert measured.bytes / estimate.training_peak.total == pytest.approx(1.0, abs=0.25)


def test_checkpointing_lowers_predicted_activations(tiny):
    on = with_overrides(tiny, {"model.gradient_checkpointing": True})
    assert _activations(on) < 0.8 * _activations(tiny)


def test_bigger_patch_raises_activations_roughly_linearly(tiny):
    geometry = _geometry((80, 96, 96))
    deeper = with_overrides(tiny, {"data.patch_thick_slices": 8})  # 20 -> 40 thin slices

    def activations(config):
        return estimate_memory(config, geometry, "cpu").training[1].components[ACTIVATIONS]

    assert activations(deeper) / activations(tiny) == pytest.approx(2.0, rel=0.15)


def test_cuda_bf16_holds_more_than_cpu_bf16_but_less_than_fp32(tiny):
    """CUDA autocast keeps GroupNorm in float32, CPU autocast does not."""
    bf16, fp32 = (with_overrides(tiny, {"training.precision": p}) for p in ("bf16", "fp32"))
    assert _activations(bf16, "cpu") < _activations(bf16, "cuda") < _activations(fp32, "cuda")


@pytest.mark.parametrize("device_type", ["cuda", "cpu"])
def test_flash_attention_keeps_attention_linear_in_the_tokens(tiny, device_type):
    """Without flash attention, 4x the middle-block tokens hold about 16x the attention memory; with it, ~4x,
    on CUDA (flash or memory-efficient kernel) and on the CPU (its flash kernel)."""
    def attention(flash: bool, thick_slices: int) -> int:  # 2 -> 8 thick slices: 10 -> 40 thin (12 -> 40 padded)
        config = with_overrides(tiny, {"hardware.flash_attention": flash, "data.patch_thick_slices": thick_slices})
        step = estimate_memory(config, _geometry((40, 48, 48)), device_type).training[1]
        return step.components.get(ATTENTION, 0)

    assert attention(False, 8) / attention(False, 2) > 10
    assert attention(True, 8) / attention(True, 2) < 5
    assert attention(True, 8) < attention(False, 8) / 10


def test_every_stage_adds_up_and_the_table_has_every_component(cli):
    result = cli("inspect-memory", "--config", TINY, "--set", "codec.name=maisi", "--volume", "64x64x64",
                 "--device-memory", "80GB")
    assert result.exit_code == 0, result.output
    for component in COMPONENTS:
        assert component in result.stdout, component
    for heading in ("Training, GB", "Inference (ctslice infer), GB", "Total", "Fits?", "fits"):
        assert heading in result.stdout


def test_json_is_one_document_whose_totals_add_up(cli):
    result = cli("inspect-memory", "--config", TINY, "--volume", "20x48x48", "--device-memory", "24,80", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["device_type"] == "cpu" and document["measured"] is None
    for table in ("training", "inference"):
        stages = document[table]["stages"]
        for stage in stages.values():
            assert stage["total_gb"] == pytest.approx(sum(stage["components_gb"].values()), abs=1e-3)
        assert document[table]["peak"]["gb"] == max(s["total_gb"] for s in stages.values())
    assert [d["memory_gb"] for d in document["devices"]] == [24, 80]
    assert all(d["training_fits"] for d in document["devices"])


@pytest.mark.parametrize(("capability", "device", "expected"), [
    ("AVX2", "cpu", "fp32"), ("AVX512", "cpu", "bf16"), ("AVX2", "cuda", "bf16")])
def test_auto_precision_is_predicted_as_the_target_device_resolves_it(cli, monkeypatch, capability, device, expected):
    """``auto`` is what a run on that device uses: this CPU's answer for cpu, bf16 for a GPU; shown in both outputs."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    result = cli("inspect-memory", "--config", TINY, "--volume", "20x48x48", "--device", device, "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["precision"] == expected and document["facts"]["precision"].startswith("auto: ")
    table = cli("inspect-memory", "--config", TINY, "--volume", "20x48x48", "--device", device)
    assert f"{expected} (auto: " in table.stdout
    fp32 = estimate_memory(with_overrides(load_config(TINY), {"training.precision": "fp32"}), _geometry(), device)
    same = (expected == "fp32") == (fp32.training_peak.total == estimate_memory(
        load_config(TINY), _geometry(), device).training_peak.total)
    assert same


def test_a_config_that_does_not_fit_gets_suggestions_that_lower_its_peak(tiny):
    fp32 = with_overrides(tiny, {"training.precision": "fp32"})
    inspection = inspect(fp32, device_memory=[int(0.2 * GIB)], volume=(20, 48, 48))  # needs 0.26 GB, 0.18 GB usable
    training, inference = inspection.estimate.training_peak.total, inspection.estimate.inference_peak.total
    assert not inspection.verdicts[0].training_fits
    changes = [s.change for s in inspection.suggestions]
    assert "gradient checkpointing on" in changes and "BF16 autocast" in changes
    for suggestion in inspection.suggestions:  # each lowers a peak that does not fit, none raises the other
        assert suggestion.training_peak < training or suggestion.inference_peak < inference, suggestion
        assert suggestion.training_peak <= training and suggestion.inference_peak <= inference, suggestion
        assert suggestion.settings and all("=" in setting for setting in suggestion.settings)


def test_geometry_comes_from_the_options_else_typical_values(tiny, tmp_path):
    assumed = resolve_geometry(with_overrides(tiny, {"data.cache": str(tmp_path / "none.h5")}))
    assert (assumed.ratio, assumed.largest) == (5.0, (300, 512, 512))
    assert assumed.source.startswith("ratio and volumes assumed (no cache at")
    given = resolve_geometry(tiny, ratio=3.0, volume=(90, 128, 128))
    assert (given.ratio, given.largest, given.smallest) == (3.0, (90, 128, 128), (90, 128, 128))


def test_geometry_comes_from_the_cache_when_there_is_one(tiny, tmp_path):
    """Largest volume for inference and the latent cache; elementwise smallest for clipping patches."""
    path = tmp_path / "cache.h5"
    for k, shape in enumerate([(40, 24, 32), (60, 16, 16)]):
        volume = Volume(np.zeros(shape, np.int16), (0.7, 0.7, 1.0), (0.0, 0.0, 0.0))
        cache_files.write_part(cache_files.parts_dir(path), f"case{k}", simulate_pair(volume, 5.0, 1.0),
                               source="test", content_hash=str(k), patient=str(k), options={})
    cache_files.consolidate_parts(path)
    with Cache(path) as cache:
        shapes = [cache.info(c).thin_shape for c in cache.case_ids()]
    geometry = resolve_geometry(with_overrides(tiny, {"data.cache": str(path)}))
    assert geometry.ratio == 5.0 and geometry.largest == max(shapes, key=np.prod)
    assert geometry.smallest == tuple(min(s[k] for s in shapes) for k in range(3))
    assert geometry.source == f"{path} (2 cases)"


def test_device_memory_text():
    """The command layer parses ``--device-memory``; the library takes bytes."""
    from ctslice.commands.inspect_memory import parse_device_memory, parse_volume

    assert parse_device_memory("80GB") == [80 * GIB]
    assert parse_device_memory("24, 40GiB,512MB") == [24 * GIB, 40 * GIB, 512 * 2**20]
    assert [m.label for m in device_memories([24 * GIB, 512 * 2**20])] == ["24 GB", "0.5 GB"]
    for bad in ("", "eighty", "80XB", "-4GB", "80GB,"):
        with pytest.raises(InputError, match="^--device-memory .*expected a size such as 80GB"):
            parse_device_memory(bad)
    assert parse_volume(" 300x512, 512 ") == (300, 512, 512)
    with pytest.raises(InputError, match="^--volume '300x512': expected thin-slice depth"):
        parse_volume("300x512")


@pytest.mark.parametrize("args, message", [
    (["--device-memory", "lots"], "--device-memory 'lots'"),
    (["--volume", "300x512"], "--volume '300x512'"),
    (["--ratio", "0"], "Invalid value for '--ratio': must be a finite number from 1 to 100, got '0'"),
    (["--device", "gpu"], "--device 'gpu'"),
    (["--set", "model.chanels=[8]"], "did you mean 'model.channels'"),
])
def test_bad_options_exit_2_with_one_line(cli, args, message):
    result = cli("inspect-memory", "--config", TINY, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_measuring_cuda_without_cuda_is_a_usage_error(cli):
    result = cli("inspect-memory", "--config", TINY, "--device", "cuda", "--measure")
    assert result.exit_code == 2
    assert "--device cuda: CUDA requested but no GPU is visible; use cpu" in result.output


def test_the_codec_halo_and_strategy_in_the_config_set_the_predicted_codec_peaks():
    """The model must trace the codec the config builds: with slabs, a shorter ``codec.overlap`` means
    smaller slabs; block by block, each block's own halo is used and the overlap changes nothing."""
    geometry = Geometry(5.0, (160, 16, 16), (160, 16, 16), "given")

    def codec_peaks(overlap: int, strategy: str) -> dict[str, int]:
        config = load_config(TINY, ["codec.name=maisi", f"codec.overlap={overlap}", "codec.decode_chunk=2",
                                    f"codec.strategy={strategy}"])
        return {s.name: s.total for s in estimate_memory(config, geometry, "cpu").inference if s.name != "denoise"}

    full, short = codec_peaks(40, "slabs"), codec_peaks(20, "slabs")
    assert short["encode"] < full["encode"] and short["decode"] < full["decode"]
    assert codec_peaks(40, "blocks") == codec_peaks(36, "blocks") != full
