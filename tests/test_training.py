"""The trainer on tiny shapes: it learns, validates when it should, saves loadable checkpoints, resumes exactly."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch

from ctslice.errors import Preempted
from ctslice.models import build_model
from ctslice.training.optim import build_optimizer
from ctslice.training.run_log import read_log
from ctslice.training.state import Saver
from ctslice.training.trainer import train
from tests.tiny import tiny_config


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
    """Validation loss (fixed patches, fixed noise) after 60 steps is clearly below its value after 1."""
    final_loss = {}
    for steps in (1, 60):
        config = tiny_config(dataset, f"training.max_steps={steps}", "training.val_interval=1000",
                             "training.checkpoint_interval=1000", "training.lr=2e-3")
        train(config, tmp_path / f"run{steps}")
        final_loss[steps] = [r["val_loss"] for r in read_log(tmp_path / f"run{steps}") if "val_loss" in r][-1]
    assert final_loss[60] < 0.93 * final_loss[1]


def test_resume_after_sigterm_reproduces_an_uninterrupted_run_exactly(dataset, tmp_path, monkeypatch):
    settings = ["training.max_steps=6", "training.val_interval=100", "training.checkpoint_interval=2"]
    train(tiny_config(dataset, *settings), tmp_path / "straight")

    save = Saver.save

    def save_then_sigterm(self, step, best, periodic):  # preemption right after the step-4 checkpoint
        save(self, step, best, periodic)
        if step == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Saver, "save", save_then_sigterm)
    with pytest.raises(Preempted) as stopped:
        train(tiny_config(dataset, *settings), tmp_path / "resumed")
    assert stopped.value.exit_code == 143
    assert (tmp_path / "resumed" / "checkpoints" / "step_4.pt").exists()
    monkeypatch.setattr(Saver, "save", save)
    train(tiny_config(dataset, *settings), tmp_path / "resumed", resume="latest")
    straight = [r["loss"] for r in read_log(tmp_path / "straight") if r["kind"] == "train"]
    resumed = [r["loss"] for r in read_log(tmp_path / "resumed") if r["kind"] == "train"]
    assert len(resumed) == 6 and resumed == straight
    a = torch.load(tmp_path / "straight" / "checkpoints" / "final.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "final.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_path_runs_on_cpu(dataset, tmp_path):
    config = tiny_config(dataset, "training.max_steps=2", "training.precision=bf16", "validation.val_samples=0")
    train(config, tmp_path / "run")
    assert len([r for r in read_log(tmp_path / "run") if r["kind"] == "train"]) == 2


def test_log_records_are_json_objects(dataset, tmp_path):
    train(tiny_config(dataset, "training.max_steps=2", "validation.val_samples=0"), tmp_path / "run")
    for line in (tmp_path / "run" / "log.jsonl").read_text(encoding="utf-8").splitlines():
        assert isinstance(json.loads(line), dict)


def test_accumulation_equals_a_larger_batch(dataset, tmp_path, monkeypatch):
    """Batch 1 x 2 accumulated micro-batches gives the gradient of one batch of 2 (same patches).

    ``diffusion.mean_fraction=1`` makes the loss deterministic given the patches (every example at the
    last timestep with a zero noisy input), so the two gradients must agree to float rounding.
    """
    gradients = {}
    step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        gradients[current] = [p.grad.clone() for group in self.param_groups for p in group["params"]]
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    for current, (batch, accumulation) in {"batch": (2, 1), "accumulated": (1, 2)}.items():
        config = tiny_config(dataset, "training.max_steps=1", "validation.val_samples=0", "diffusion.mean_fraction=1",
                             f"training.batch_size={batch}", f"training.grad_accumulation={accumulation}")
        train(config, tmp_path / current)
    assert len(gradients["batch"]) == len(gradients["accumulated"]) > 10
    assert any(g.abs().max() > 0 for g in gradients["batch"])
    for a, b in zip(gradients["accumulated"], gradients["batch"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_optimizer_holds_only_trainable_unet_parameters(dataset):
    config = tiny_config(dataset)
    model = build_model(config, 1)
    frozen = next(iter(model.unet.parameters()))
    frozen.requires_grad_(False)
    optimizer = build_optimizer({"unet": model.unet}, config.training)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in model.unet.parameters() if p.requires_grad}
    assert id(frozen) not in held
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["name"] == "unet"


def test_unknown_config_key_fails_before_any_work(dataset, tmp_path, cli):
    cache, splits = dataset
    config = tmp_path / "config.yaml"
    text = f"data: {{cache: {cache}, splits: {splits}}}\ntraining: {{validate_every: 10}}\n"
    config.write_text(text, encoding="utf-8")
    result = cli("train", "--config", config, "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert "did you mean 'training.val_interval'" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("loss, reduce", [("mse", lambda d: (d**2).mean()), ("l1", lambda d: d.abs().mean())])
def test_the_loss_key_chooses_the_distance_to_the_training_target(dataset, loss, reduce):
    """With every row a mean row (x_t = 0, last timestep) the target is the v that gives x0 back, so the
    loss is the chosen distance between the U-Net's output and that target."""
    config = tiny_config(dataset, "diffusion.mean_fraction=1", f"diffusion.loss={loss}",
                         "diffusion.prediction_type=v_prediction")
    model = build_model(config, latent_channels=1)
    thin, cond = torch.randn(2, 1, 8, 8, 8), torch.randn(2, 1, 8, 8, 8)
    torch.manual_seed(0)
    value = model.loss(thin, cond)
    x0 = model.diffused(thin, cond)
    last = torch.full((2,), model.last_timestep)
    output = model(torch.zeros_like(x0), model.condition(cond), last)
    beta = (1 - model.scheduler.alphas_cumprod[model.last_timestep]) ** 0.5
    torch.testing.assert_close(value, reduce(output - (-x0 / beta)), rtol=1e-4, atol=1e-6)
