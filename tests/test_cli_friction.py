"""What a first run stumbles over: configs by name from any folder, `ctslice configs`, shell completion,
choices and an example in every `--help`, no type noise in usage lines, a preprocessing run that
excluded every case failing, and `inspect-memory --measure` without a cache measuring a small volume.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from ctslice.config import SHIPPED_CONFIGS

COMMANDS = ["preprocess", "split", "train", "validate", "infer", "inspect-memory", "demo", "configs"]


def shipped_names() -> list[str]:
    return sorted(path.stem for path in SHIPPED_CONFIGS.glob("*.yaml"))


def unet_parameters(channels: list[int]) -> int:
    import torch

    from ctslice.config import ModelConfig
    from ctslice.models.unet import build_unet

    model = ModelConfig(channels=channels, attention_levels=[False] * len(channels))
    with torch.device("meta"):
        return sum(p.numel() for p in build_unet(model, 1).parameters())


# ---------------------------------------------------------------- configs by name

@pytest.mark.parametrize("name", ["tiny_cpu", "tiny_cpu.yaml"])
def test_a_shipped_config_is_found_by_name_from_any_folder(cli, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)  # no configs/ here: the packaged copy must be found
    result = cli("inspect-memory", "--config", name, "--volume", "40x96x96", "--json")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["config"] == name
    assert document["facts"]["unet_parameters"] == unet_parameters([16, 32, 32])  # tiny_cpu.yaml's channels


def test_a_file_of_that_name_wins_over_the_shipped_config(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny_cpu").write_text("model:\n  channels: [8, 16, 16]\nhardware:\n  device: cpu\n", encoding="utf-8")
    result = cli("inspect-memory", "--config", "tiny_cpu", "--volume", "40x96x96", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["facts"]["unet_parameters"] == unet_parameters([8, 16, 16])


def test_an_unknown_config_name_lists_the_shipped_ones(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli("train", "--config", "tiny_gpu")
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1 and "tiny_gpu: no such config file" in message, message
    assert all(name in message for name in shipped_names())


def test_train_resolves_a_config_name_too(cli, tmp_path, monkeypatch):
    """It gets past the config to the data: the missing cache is what stops it, not the config name."""
    monkeypatch.chdir(tmp_path)
    result = cli("train", "--config", "tiny_cpu", "--set", f"data.cache={tmp_path / 'absent.h5'}",
                 "--out", tmp_path / "run")
    assert result.exit_code != 0
    assert "no such config file" not in result.output and "absent.h5" in result.output, result.output


def test_configs_lists_every_shipped_config_with_its_first_comment_line(cli):
    result = cli("configs")
    assert result.exit_code == 0, result.output
    flat = " ".join(result.stdout.replace("│", " ").split())
    for path in SHIPPED_CONFIGS.glob("*.yaml"):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith("#"), f"{path.name}: no description line"
        assert path.stem in result.stdout
        assert " ".join(first.lstrip("#").split()[:6]) in flat, (path.name, first)


# ---------------------------------------------------------------- help, choices, completion

def test_shell_completion_is_offered(cli, monkeypatch):
    result = cli("--help")
    assert "--install-completion" in result.stdout and "--show-completion" in result.stdout
    # Typer takes the shell from the process tree (shellingham), not from an argument: a test runner's tree
    # (pytest-xdist workers, CI) may hold no shell it can name, so the test names it
    monkeypatch.setattr("typer.completion._get_shell_name", lambda: "bash")
    script = cli("--show-completion")
    assert script.exit_code == 0 and "complete" in script.stdout and "COMP_WORDS" in script.stdout, script.output


@pytest.mark.parametrize("name", COMMANDS)
def test_help_has_an_example_and_no_type_noise(cli, name):
    result = cli(name, "--help")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert re.search(rf"Example: ctslice {name}\b", text), text
    assert "<bool>" not in result.stdout, result.stdout
    usage = next(line for line in result.stdout.splitlines() if "Usage:" in line)
    assert "{" not in usage and re.search(r"\[OPTIONS\]( \[?[A-Z_]+(\.\.\.)?\]?)*\s*$", usage), usage


@pytest.mark.parametrize(("command", "option", "choices", "needed"), [
    ("infer", "--mode", ["mean", "sample"], ["x.nii.gz", "-o", "y.nii.gz"]),
    ("infer", "--method", ["linear", "cubic", "lanczos"], ["x.nii.gz", "-o", "y.nii.gz"]),
    ("validate", "--mode", ["mean", "sample"], ["--checkpoint", "c.pt", "--cache", "c.h5", "--splits", "s.json"]),
    ("validate", "--split", ["val", "test"], ["--checkpoint", "c.pt", "--cache", "c.h5", "--splits", "s.json"]),
    ("preprocess", "--profile", ["slab", "gaussian"], ["x.nii.gz", "-o", "c.h5"]),
])
def test_options_with_fixed_values_list_them_and_refuse_others(cli, monkeypatch, command, option, choices, needed):
    monkeypatch.setenv("COLUMNS", "200")  # wide enough that Rich does not wrap the choices list
    help_text = cli(command, "--help").stdout
    assert f"<{'|'.join(choices)}>" in help_text, help_text
    result = cli(command, *needed, option, "bogus")
    assert result.exit_code == 2
    assert all(choice in result.output for choice in choices), result.output


# ---------------------------------------------------------------- preprocess, inspect-memory --measure

def test_preprocess_fails_when_every_case_is_excluded(cli, tmp_path):
    from ctslice.data.phantom import make_phantom
    from ctslice.io import write_volume

    short = make_phantom(shape=(12, 48, 48), spacing=(4.0, 4.0, 1.0), seed=1)  # 2 thick slices at 5 mm
    write_volume(short, tmp_path / "in" / "short.nii.gz")
    write_volume(short.with_array(np.full((40, 48, 48), 40, np.int16)), tmp_path / "in" / "flat.nii.gz")
    output = tmp_path / "cache.h5"
    result = cli("preprocess", tmp_path / "in", "-o", output, "--min-slices", "4")
    assert result.exit_code == 1, result.output
    assert "every case was excluded (2 of 2)" in result.stderr
    from ctslice.data.cache import Cache

    with Cache(output) as cache:  # the reasons are kept in the cache all the same
        assert cache.case_ids() == []


def test_measure_without_a_cache_runs_on_a_small_volume_and_says_so(tmp_path, monkeypatch):
    from ctslice.config import load_config
    from ctslice.memory import report

    measured = []
    monkeypatch.setattr(report, "measure_memory", lambda config, geometry, device, **kw: measured.append(geometry)
                        or [])
    monkeypatch.chdir(tmp_path)
    config = load_config(SHIPPED_CONFIGS / "tiny_cpu.yaml")
    inspection = report.inspect(config, device="cpu", measure=True)
    (geometry,) = measured
    assert geometry.largest == geometry.smallest == report.MEASURE_VOLUME
    assert inspection.estimate.geometry == geometry  # the prediction it is compared with is for the same volume
    assert "small 80 x 128 x 128 volume" in geometry.source and "no cache" in geometry.source
    measured.clear()
    report.inspect(config, device="cpu", measure=True, volume=(40, 96, 96))
    assert measured[0].largest == (40, 96, 96)  # --volume still decides
    assert report.inspect(config, device="cpu").estimate.geometry.largest == (300, 512, 512)  # predictions alone
