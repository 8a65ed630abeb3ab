"""Config: typed sections, unknown keys named with the closest valid one, --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ctslice.config import config_from_dict, load_config, save_config
from ctslice.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))


def write(tmp_path, data) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_misspelled_key_names_the_closest_valid_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'training.validate_every' \(did you mean "
                                          r"'training.val_interval'\?\)"):
        load_config(write(tmp_path, {"training": {"validate_every": 100}}))
    with pytest.raises(ConfigError, match="did you mean 'data.patch_size'"):
        load_config(None, ["data.patch_sise=32"])
    with pytest.raises(ConfigError, match="did you mean 'training'"):
        load_config(write(tmp_path, {"trainig": {}}))


@pytest.mark.parametrize("override, message", [
    ("training.max_steps=ten", "training.max_steps must be int"),
    ("training.lr=[1]", "training.lr must be float"),
    ("model.channels=[16, 32]", "attention_levels needs one entry per level"),
    ("codec.name=vqgan", "codec.name is 'vqgan'; choose one of identity, maisi"),
    ("training.batch_size=0",
     r"^--set training.batch_size=0: training.batch_size must be an integer from 1 to 4,096, got 0$"),
    ("training", "expected section.key=value"),
])
def test_wrong_values_fail_before_any_work(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_overrides_are_typed_like_the_file(tmp_path):
    config = load_config(write(tmp_path, {"training": {"lr": "3e-4", "max_steps": 5}}),
                         ["training.max_steps=7", "model.channels=[8, 16, 16]", "codec.checkpoint=null",
                          "data.cache=/data/c.h5"])
    assert config.training.lr == pytest.approx(3e-4) and config.training.max_steps == 7
    assert config.model.channels == [8, 16, 16]
    assert config.data.cache == "/data/c.h5"


def test_resolved_config_round_trips(tmp_path):
    config = load_config(None, ["training.max_steps=3"])
    save_config(config, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again == config == config_from_dict(config.to_dict())


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [unclosed", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_are_valid(path):
    load_config(path)


@pytest.mark.parametrize("name, memory, volume", [
    ("slice_interpolation_full_medium.yaml", "80GB", "300x512x512"),
    ("gpu_40gb.yaml", "40GB", "300x512x512"),
    ("gpu_24gb.yaml", "24GB", "300x256x256"),  # preprocessed with --size 256, as the config says
])
def test_gpu_configs_fit_their_gpu(name, memory, volume):
    """What the configs promise, by the memory model of `ctslice inspect-memory` (a 50 -> 300 slice scan)."""
    from ctslice.commands.inspect_memory import parse_device_memory, parse_volume
    from ctslice.memory import inspect

    inspection = inspect(load_config(CONFIG_DIR / name), device="cuda", device_memory=parse_device_memory(memory),
                         ratio=5, volume=parse_volume(volume))
    [verdict] = inspection.verdicts
    assert verdict.training_fits and verdict.inference_fits


def test_the_full_config_does_not_fit_40gb():
    """The 40 GB config exists for a reason: the reference setup's decode peak is above 40 GB usable."""
    from ctslice.memory import inspect

    inspection = inspect(load_config(CONFIG_DIR / "slice_interpolation_full_medium.yaml"), device="cuda",
                         device_memory=[40 * 2**30], ratio=5, volume=(300, 512, 512))
    assert not inspection.verdicts[0].inference_fits
