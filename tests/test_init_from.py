"""``training.init_from``: a new run starts from another checkpoint's weights; a resume ignores it; a checkpoint
that does not fit the config is one line and exit 2 before the run folder is written."""

from __future__ import annotations

import torch

from ctslice.checkpoint import bundled_model_path, read_checkpoint
from ctslice.training.session import prepare
from ctslice.training.trainer import train
from tests.tiny import tiny_config

STEPS = ["training.val_interval=100", "training.checkpoint_interval=100"]


def weights_of(session) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in session.model.state_dict().items()}


def assert_same_weights(weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert weights.keys() == expected.keys()
    for name, tensor in weights.items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=0, msg=name)


def test_a_new_run_starts_from_the_init_checkpoints_weights_and_statistics(dataset, tmp_path):
    train(tiny_config(dataset, "training.max_steps=3", *STEPS), tmp_path / "donor")
    donor = read_checkpoint(tmp_path / "donor" / "checkpoints" / "final.pt")
    init = f"training.init_from={tmp_path / 'donor' / 'checkpoints' / 'final.pt'}"
    session = prepare(tiny_config(dataset, "training.seed=7", init, *STEPS), tmp_path / "run", None, "cpu")
    try:
        assert session.start_step == 0
        assert_same_weights(weights_of(session), donor["model"])  # U-Net and latent statistics, before any step
        assert not session.optimizer.state  # the optimizer starts fresh
    finally:
        session.close()
    fresh = prepare(tiny_config(dataset, "training.seed=7", *STEPS), tmp_path / "fresh", None, "cpu")
    try:  # without init_from the same config starts elsewhere: the comparison above can fail
        weight = "unet.conv_in.conv.weight"
        assert not torch.equal(fresh.model.state_dict()[weight], donor["model"][weight])
    finally:
        fresh.close()


def test_a_resume_restores_its_own_weights_not_the_init_checkpoints(dataset, tmp_path):
    train(tiny_config(dataset, "training.max_steps=3", *STEPS), tmp_path / "donor")
    init = f"training.init_from={tmp_path / 'donor' / 'checkpoints' / 'final.pt'}"
    train(tiny_config(dataset, "training.max_steps=2", "training.seed=7", init, *STEPS), tmp_path / "run")
    own = read_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    config = tiny_config(dataset, "training.max_steps=4", "training.seed=7", init, *STEPS)
    session = prepare(config, tmp_path / "run", "latest", "cpu")
    try:
        assert session.start_step == 2
        assert_same_weights(weights_of(session), own["model"])
    finally:
        session.close()


def test_a_checkpoint_that_does_not_fit_the_model_is_one_line_before_the_run_folder(dataset, tmp_path, cli):
    cache, splits = dataset
    run = tmp_path / "run"
    # the tiny CPU config's U-Net is [16, 32, 32]; the bundled model's is [16, 32, 64]
    result = cli("train", "--config", "tiny_cpu", "--set", f"data.cache={cache}", "--set", f"data.splits={splits}",
                 "--set", "training.init_from=bundled", "--out", run)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if "init_from" in line or "error" in line.lower()]
    assert len(errors) == 1 and str(bundled_model_path()) in errors[0], result.stderr
    assert "weights do not fit" in errors[0] and "training.init_from" in errors[0]
    assert not run.exists()


def test_a_missing_init_checkpoint_is_one_line_before_any_work(dataset, tmp_path, cli):
    cache, splits = dataset
    run = tmp_path / "run"
    result = cli("train", "--config", "tiny_cpu", "--set", f"data.cache={cache}", "--set", f"data.splits={splits}",
                 "--set", f"training.init_from={tmp_path / 'absent.pt'}", "--out", run)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines()[-1].endswith(f"training.init_from: {tmp_path / 'absent.pt'}: "
                                                           "no such checkpoint"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr  # nothing ran: not even the precision line
    assert not run.exists()
