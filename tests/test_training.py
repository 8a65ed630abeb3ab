"""The trainer on tiny shapes: it learns, validates when it should, saves loadable checkpoints, resumes exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ctslice.config import load_config
from ctslice.data.phantom import make_phantom
from ctslice.data.preprocess import PreprocessOptions, run_preprocess
from ctslice.data.splits import run_split
from ctslice.io import write_volume
from ctslice.training.run_log import read_log
from ctslice.training.trainer import train

TINY = ["model.channels=[8, 16]", "model.attention_levels=[false, false]", "model.norm_num_groups=4",
        "model.attention_heads=2", "data.patch_size=16", "data.patch_thick_slices=2", "training.batch_size=2",
        "training.log_interval=1", "inference.window_slices=16", "inference.window_size=32",
        "validation.val_steps=2", "training.warmup_steps=0", "training.lr=1e-3"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A cache of 4 small phantom cases (3 train, 1 val) and its splits."""
    folder = tmp_path_factory.mktemp("data")
    for seed in range(4):
        volume = make_phantom(shape=(40, 32, 32), spacing=(12.0, 12.0, 1.0), seed=seed)
        write_volume(volume, folder / "raw" / f"case{seed}.nii.gz")
    cache = folder / "cache.h5"
    run_preprocess([folder / "raw"], cache, PreprocessOptions(5.0, 1.0, min_slices=4))
    splits = folder / "splits.json"
    run_split(cache, splits, val=0.25, test=0.0, seed=0)
    return cache, splits


def tiny_config(dataset, *extra):
    cache, splits = dataset
    return load_config(None, [*TINY, f"data.cache={cache}", f"data.splits={splits}", "hardware.device=cpu", *extra])


def test_training_runs_validates_at_the_interval_and_at_the_end(dataset, tmp_path):
    config = tiny_config(dataset, "training.max_steps=6", "training.val_interval=4", "training.checkpoint_interval=3")
    result = train(config, tmp_path / "run")
    records = read_log(tmp_path / "run")
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if r["kind"] == "validation"] == [4]
    assert [r["step"] for r in records if r["kind"] == "final_validation"] == [6]
    assert all(np.isfinite(r["psnr"]) for r in records if "psnr" in r)
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["best.pt", "final.pt", "latest.pt", "step_3.pt", "step_6.pt"]
    state = torch.load(tmp_path / "run" / "checkpoints" / "final.pt", weights_only=True)
    assert state["step"] == 6 and state["codec"]["name"] == "identity"
    assert (tmp_path / "run" / "config.yaml").exists()
    assert list((tmp_path / "run" / "tensorboard").iterdir())
    assert result.step == 6


def test_loss_falls(dataset, tmp_path):
    """Validation loss (fixed patches, fixed noise) after 60 steps is well below its value after 5."""
    config = tiny_config(dataset, "training.max_steps=60", "training.val_interval=5",
                         "training.checkpoint_interval=1000", "inference.window_slices=40",
                         "inference.window_size=32")
    train(config, tmp_path / "run")
    losses = {r["step"]: r["val_loss"] for r in read_log(tmp_path / "run") if "val_loss" in r}
    assert losses[60] < 0.8 * losses[5]


def test_resume_reproduces_an_uninterrupted_run_exactly(dataset, tmp_path):
    settings = ["training.max_steps=6", "training.val_interval=100", "training.checkpoint_interval=3"]
    train(tiny_config(dataset, *settings), tmp_path / "straight")
    train(tiny_config(dataset, "training.max_steps=3", "training.val_interval=100",
                      "training.checkpoint_interval=3"), tmp_path / "resumed")
    train(tiny_config(dataset, *settings), tmp_path / "resumed", resume="latest")
    straight = [r["loss"] for r in read_log(tmp_path / "straight") if r["kind"] == "train"]
    resumed = [r["loss"] for r in read_log(tmp_path / "resumed") if r["kind"] == "train"]
    assert resumed == straight
    a = torch.load(tmp_path / "straight" / "checkpoints" / "final.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "final.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_path_runs_on_cpu(dataset, tmp_path):
    config = tiny_config(dataset, "training.max_steps=2", "training.precision=bf16", "validation.val_samples=0")
    train(config, tmp_path / "run")
    assert len([r for r in read_log(tmp_path / "run") if r["kind"] == "train"]) == 2


def test_log_records_are_json_objects(dataset, tmp_path):
    train(tiny_config(dataset, "training.max_steps=2", "validation.val_samples=0"), tmp_path / "run")
    for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines():
        assert isinstance(json.loads(line), dict)
