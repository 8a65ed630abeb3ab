"""``ctslice demo`` end to end on three small scans: every stage runs and every promised file is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import yaml

from ctslice.checkpoint import bundled_model_path, read_checkpoint
from ctslice.data.phantom import make_phantom
from ctslice.io import read_volume, write_volume
from ctslice.io.geometry import thin_grid


def test_demo_preprocesses_splits_trains_validates_and_infers(tmp_path, cli, one_thread):
    scans = [write_volume(make_phantom((60, 56, 56), (6.0, 6.0, 1.0), seed=seed), tmp_path / "raw" / f"p{seed}.nii.gz")
             for seed in range(3)]
    inputs = [part for scan in scans for part in ("--input", scan)]
    out = tmp_path / "demo"

    result = cli("demo", "--out", out, *inputs, "--minutes", "0.05")

    assert result.exit_code == 0, result.output
    splits = json.loads((out / "splits.json").read_text(encoding="utf-8"))
    assert [len(splits[name]) for name in ("train", "val", "test")] == [1, 1, 1]
    assert (out / "run" / "checkpoints" / "final.pt").exists()
    report = json.loads((out / "run" / "validation_test" / "report.json").read_text(encoding="utf-8"))
    assert set(report["mean"]) == {"model", "linear", "cubic", "lanczos"}
    assert all(np.isfinite(scores["psnr"]) and scores["psnr"] > 20 for scores in report["mean"].values())
    figure = Path(report["cases"][0]["figure"])
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    test_case = splits["test"][0]
    thick = read_volume(out / f"{test_case}_thick.nii.gz")
    thin = read_volume(out / f"{test_case}_thin.nii.gz")
    expected = thin_grid(thick.grid, 1.0)
    assert thin.grid.size == expected.size
    np.testing.assert_allclose(thin.origin, expected.origin, atol=1e-3)
    assert "Thin volume:" in result.output and "Case figure:" in result.output
    curves = out / "run" / "progress.png"
    assert "Training curves:" in result.output and str(curves) in result.output.replace("\n", "")  # however wrapped
    assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_fine_tuned_from_the_bundled_model(out / "run")


def flat(weights: dict) -> torch.Tensor:
    return torch.cat([tensor.float().flatten() for name, tensor in sorted(weights.items()) if name.startswith("unet.")])


def assert_fine_tuned_from_the_bundled_model(run: Path) -> None:
    """The run asked for the bundled weights and its model is still close to them after a few small steps (a
    U-Net trained from a random start would be about as far from them as they are from zero)."""
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert config["training"]["init_from"] == "bundled" and config["training"]["lr"] <= 1e-4
    bundled = flat(read_checkpoint(bundled_model_path())["model"])
    tuned = flat(read_checkpoint(run / "checkpoints" / "final.pt")["model"])
    assert tuned.shape == bundled.shape
    assert float((tuned - bundled).norm() / bundled.norm()) < 0.02
