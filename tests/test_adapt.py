"""Per-scan adaptation (``ctslice.training.adapt``): a copy of the model fine-tuned on one scan's in-plane pairs."""

from __future__ import annotations

import numpy as np
import torch

from ctslice.checkpoint import read_checkpoint
from ctslice.io import read_volume, write_volume
from ctslice.io.volume import Volume
from ctslice.training.adapt import adapt
from ctslice.training.run_log import read_log
from ctslice.training.trainer import train
from tests.tiny import thick_phantom, tiny_config


def test_adapting_trains_a_copy_on_the_scans_inplane_pairs_and_leaves_the_model_alone(dataset, tmp_path, one_thread):
    train(tiny_config(dataset, "training.max_steps=2", "validation.val_samples=0"), tmp_path / "model")
    model = tmp_path / "model" / "checkpoints" / "final.pt"
    before = {k: v.clone() for k, v in read_checkpoint(model)["model"].items()}
    phantom = thick_phantom(3)  # its pixels relabelled finer than the 1 mm target, as in-plane pairs need
    scan = Volume(phantom.array, (0.8, 0.8, 5.0), phantom.origin, phantom.direction)
    adapted = adapt(model, scan, thin_spacing=1.0, minutes=0.05, workdir=tmp_path / "adapt", threads=1)

    state = read_checkpoint(adapted)
    assert state["step"] >= 1 and state["data"]["thin_spacing"] == 1.0 and state["data"]["ratio"] == 5.0
    assert state["config"]["data"]["inplane_fraction"] == 1.0 and state["config"]["training"]["lr"] == 1e-4
    assert any(not torch.equal(before[k], v) for k, v in state["model"].items() if k.startswith("unet."))
    assert all(torch.equal(before[k], v) for k, v in read_checkpoint(model)["model"].items())  # the original is kept
    records = read_log(tmp_path / "adapt" / "run")
    assert [r["step"] for r in records if r["kind"] == "train"][0] == 1
    assert not [r for r in records if r["kind"] in ("validation", "final_validation") and "psnr" in r]


def test_infer_adapt_writes_the_adapted_models_output_and_refuses_what_it_cannot_adapt(dataset, tmp_path, cli):
    train(tiny_config(dataset, "training.max_steps=2", "validation.val_samples=0"), tmp_path / "model")
    model = tmp_path / "model" / "checkpoints" / "final.pt"
    weights = read_checkpoint(model)["model"]
    phantom = thick_phantom(4)
    scan = tmp_path / "scans" / "scan.nii.gz"
    write_volume(Volume(phantom.array, (0.8, 0.8, 5.0), phantom.origin, phantom.direction), scan)

    result = cli("infer", scan, "-o", tmp_path / "thin.nii.gz", "--checkpoint", model, "--adapt", "0.03")
    assert result.exit_code == 0, result.output
    assert "adapted to this scan" in result.output and "Stages: read" in result.output
    assert "adapt " in result.output.split("Stages:")[1].splitlines()[0]  # its seconds are a stage of their own
    thin, plain = read_volume(tmp_path / "thin.nii.gz"), tmp_path / "plain.nii.gz"
    assert cli("infer", scan, "-o", plain, "--checkpoint", model).exit_code == 0
    assert thin.grid == read_volume(plain).grid and not np.array_equal(thin.array, read_volume(plain).array)
    assert all(torch.equal(weights[k], v) for k, v in read_checkpoint(model)["model"].items())

    for args, message in ((("--method", "cubic"), "--adapt 0.03: fine-tunes a model; the method cubic"),
                          ((), "--adapt fine-tunes the model on one scan; give one scan, not a folder")):
        source = scan if args else scan.parent
        refused = cli("infer", source, "-o", tmp_path / ("out.nii.gz" if args else "out"), "--adapt", "0.03", *args)
        assert refused.exit_code == 2 and message in " ".join(refused.output.split()), refused.output
