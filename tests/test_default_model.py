"""The bundled default model: it loads safely, runs in both modes, and writes an output on the right grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctslice.data.pairs import simulate_pair
from ctslice.data.phantom import make_phantom
from ctslice.inference.loading import default_model_path
from ctslice.io import read_volume, write_volume
from ctslice.io.geometry import thin_grid

MAX_BUNDLE_MB = 25


def test_the_bundled_model_is_small_and_loads_with_weights_only():
    path = default_model_path()
    assert path.stat().st_size < MAX_BUNDLE_MB * 2**20
    state = torch.load(path, weights_only=True)
    assert state["codec"]["name"] == "identity"  # needs no separately licensed weights
    assert "optimizer" not in state  # an inference checkpoint


@pytest.mark.parametrize("args", [[], ["--mode", "sample", "--steps", "2"]], ids=["mean", "sample"])
def test_infer_without_checkpoint_uses_the_bundled_model(args, tmp_path, cli):
    truth = make_phantom(shape=(30, 48, 48), spacing=(8.0, 8.0, 1.5), seed=3)
    thick = simulate_pair(truth, 7.5, 1.5).thick
    source = write_volume(thick, tmp_path / "scan.nii.gz")
    result = cli("infer", source, "-o", tmp_path / "thin.nii.gz", *args)
    assert result.exit_code == 0, result.output
    assert result.output.count("bundled default model") == 1
    output = read_volume(tmp_path / "thin.nii.gz")
    expected = thin_grid(thick.grid, 1.5)  # trained at x5: the default thin spacing is the input's / 5
    assert output.grid.size == expected.size
    np.testing.assert_allclose(output.origin, expected.origin, atol=1e-3)
    np.testing.assert_allclose(output.spacing, expected.spacing, atol=1e-5)
    assert np.abs(output.array.astype(float) - truth.array[: output.depth]).mean() < 60  # HU, a sane volume
