"""``ctslice infer`` and ``ctslice validate``: geometry for every input kind, baselines on the same grid,
seamless windows, samples with their spread, and a report whose numbers can be recomputed."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import SimpleITK as sitk

from ctslice.data.cache import Cache
from ctslice.data.pairs import simulate_pair, slab_average
from ctslice.data.phantom import make_phantom
from ctslice.evaluation import metrics
from ctslice.inference.loading import load_model
from ctslice.io import read_volume, write_volume
from ctslice.io.geometry import interpolate, resample, thin_grid
from ctslice.io.volume import Volume
from ctslice.training.trainer import train
from tests.dicom_utils import write_dicom_series, zip_folder
from tests.tiny import make_phantom_cache, tiny_config

OBLIQUE = tuple(sitk.VersorTransform((0.3, 0.2, 1.0), 0.5).GetMatrix())
FLIPPED = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained for a few steps on phantoms, its cache and splits."""
    folder = tmp_path_factory.mktemp("model")
    cache, splits = make_phantom_cache(folder, val=0.25, test=0.25)
    train(tiny_config((cache, splits), "training.max_steps=20", "training.val_interval=100",
                      "validation.val_samples=0"), folder / "run")
    return folder / "run" / "checkpoints" / "final.pt", cache, splits


def thick_scan(direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), seed=7):
    truth = make_phantom(shape=(40, 32, 32), spacing=(12.0, 12.0, 1.0), seed=seed)
    truth = truth.with_array(truth.array, direction=tuple(float(d) for d in direction), origin=(-50.0, 20.0, 300.0))
    return simulate_pair(truth, 5.0, 1.0)


def write_input(kind, volume, folder):
    if kind in ("nii.gz", "nrrd", "mha"):
        return write_volume(volume, folder / f"scan.{kind}")
    write_dicom_series(volume, folder / "dicom")
    return zip_folder(folder / "dicom", folder / "scan.zip") if kind == "zip" else folder / "dicom"


def assert_overlays(output: Volume, thick: Volume, thin_spacing: float = 1.0):
    """The output sits on the documented thin grid, and resampled back onto the input it matches it."""
    expected = thin_grid(thick.grid, thin_spacing)
    assert output.grid.size == expected.size
    np.testing.assert_allclose(output.spacing, expected.spacing, atol=1e-4)
    np.testing.assert_allclose(output.origin, expected.origin, atol=1e-3)
    np.testing.assert_allclose(output.direction, thick.direction, atol=1e-5)
    back = resample(output, thick.grid, "linear").array[1:-1]
    error = np.abs(back - thick.array[1:-1]).mean()
    # a misplacement of one thin slice would already cost more than this
    shifted = output.with_array(output.array, origin=output.grid.shifted_along_slices(thin_spacing * 2))
    shifted_error = np.abs(resample(shifted, thick.grid, "linear").array[1:-1] - thick.array[1:-1]).mean()
    assert error < shifted_error
    assert error < 40


@pytest.mark.parametrize("kind", ["nii.gz", "nrrd", "mha", "dicom", "zip"])
def test_infer_geometry_for_each_input_kind(kind, trained, tmp_path, cli):
    checkpoint = trained[0]
    pair = thick_scan()
    source = write_input(kind, pair.thick, tmp_path)
    result = cli("infer", source, "-o", tmp_path / "thin.nii.gz", "--checkpoint", checkpoint)
    assert result.exit_code == 0, result.output
    output = read_volume(tmp_path / "thin.nii.gz")
    assert output.array.dtype == np.int16
    assert_overlays(output, read_volume(source))


@pytest.mark.parametrize("direction", [OBLIQUE, FLIPPED], ids=["oblique", "flipped"])
def test_model_and_baselines_write_the_same_grid_for_non_identity_directions(direction, trained, tmp_path, cli):
    pair = thick_scan(direction)
    source = write_volume(pair.thick, tmp_path / "scan.nii.gz")
    outputs = {}
    for name, args in {"model": ["--checkpoint", trained[0]], "linear": ["--method", "linear"],
                       "cubic": ["--method", "cubic"], "lanczos": ["--method", "lanczos"]}.items():
        result = cli("infer", source, "-o", tmp_path / f"{name}.nii.gz", "--thin-spacing", "1.0", *args)
        assert result.exit_code == 0, result.output
        outputs[name] = read_volume(tmp_path / f"{name}.nii.gz")
    for output in outputs.values():
        assert output.grid == outputs["model"].grid
        assert_overlays(output, pair.thick)
    # and the thin truth is on that grid too: the cubic output scores like the metric protocol says
    assert metrics.psnr(outputs["cubic"].array, pair.thin.array) > 25


def test_windows_stitch_without_seams(trained):
    """One window over the whole volume and many small overlapping windows agree closely."""
    loaded = load_model(trained[0], "cpu")
    interpolator = loaded.interpolator
    thick = thick_scan().thick
    config = interpolator.config
    config.inference.window_slices, config.inference.window_size = 64, 64  # one window
    whole = interpolator.predict(thick, 1.0).volume.array
    config.inference.window_slices, config.inference.window_size = 8, 16  # 9 x 3 x 3 windows
    windowed = interpolator.predict(thick, 1.0).volume.array
    assert metrics.psnr(windowed, whole) > 40  # stated tolerance: within 40 dB PSNR of each other
    # and no seam: the error is not concentrated at window borders
    per_slice = np.abs(windowed - whole).mean(axis=(1, 2))
    assert per_slice.max() < 5 * np.median(per_slice) + 1.0


@pytest.mark.parametrize("mode", ["mean", "sample"])
def test_the_output_slab_averaged_gives_back_the_input(mode, trained):
    """``inference.consistency`` (the default): the thin output, averaged over each 5 mm slab, is the thick
    input; switched off, the network's raw output is not."""
    interpolator = load_model(trained[0], "cpu").interpolator
    thick = thick_scan().thick
    outputs = {}
    for consistency in (True, False):
        interpolator.config.inference.consistency = consistency
        outputs[consistency] = interpolator.predict(thick, 1.0, mode=mode, steps=2).volume.array
    expected = thick.array.astype(np.float32)
    np.testing.assert_allclose(slab_average(outputs[True], 5, 5), expected, atol=0.05)
    assert np.abs(slab_average(outputs[False], 5, 5) - expected).mean() > 1.0


def test_samples_write_mean_and_std(trained, tmp_path, cli):
    source = write_volume(thick_scan().thick, tmp_path / "scan.nii.gz")
    result = cli("infer", source, "-o", tmp_path / "mean.nii.gz", "--checkpoint", trained[0], "--samples", "3",
                 "--steps", "2", "--std-out", tmp_path / "std.nii.gz", "--seed", "1")
    assert result.exit_code == 0, result.output
    stages = re.search(r"^Stages: read (\S+) s, encode (\S+) s, denoise (\S+) s, decode (\S+) s, write (\S+) s; "
                       r"peak RSS \d+\.\d+ GiB$", result.output, re.MULTILINE)
    assert stages and all(float(s) >= 0 for s in stages.groups())
    mean, std = read_volume(tmp_path / "mean.nii.gz"), read_volume(tmp_path / "std.nii.gz")
    assert mean.grid == std.grid
    assert std.array.min() >= 0 and std.array.max() > 0
    # deterministic for a seed
    cli("infer", source, "-o", tmp_path / "again.nii.gz", "--checkpoint", trained[0], "--samples", "3",
        "--steps", "2", "--seed", "1")
    np.testing.assert_array_equal(read_volume(tmp_path / "again.nii.gz").array, mean.array)


@pytest.mark.parametrize("args, message", [
    (["--method", "bicubic"], "'bicubic' is not one of 'linear', 'cubic', 'lanczos'"),
    (["--method", "cubic", "--checkpoint", "x.pt"], "not both"),
    (["--std-out", "std.nii.gz"], "needs --samples 2"),
    (["--checkpoint", "missing.pt"], "no such checkpoint"),
])
def test_infer_rejects_bad_options_in_one_line(args, message, tmp_path, cli):
    source = write_volume(thick_scan().thick, tmp_path / "scan.nii.gz")
    result = cli("infer", source, "-o", tmp_path / "out.nii.gz", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "out.nii.gz").exists()


def test_infer_rejects_an_unknown_output_format(tmp_path, cli):
    source = write_volume(thick_scan().thick, tmp_path / "scan.nii.gz")
    result = cli("infer", source, "-o", tmp_path / "out.png", "--method", "cubic")
    assert result.exit_code == 2 and "unknown output format" in result.output


def test_validate_json_matches_independent_recomputation(trained, tmp_path, cli):
    checkpoint, cache_path, splits = trained
    result = cli("validate", "--checkpoint", checkpoint, "--cache", cache_path, "--splits", splits,
                 "--split", "test", "--out", tmp_path / "report", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["methods"] == ["model", "linear", "cubic", "lanczos"]
    loaded = load_model(checkpoint, "cpu")
    with Cache(cache_path) as cache:
        for case in report["cases"]:
            thick, truth = cache.volume(case["case"], "thick"), cache.volume(case["case"], "thin")
            cubic = interpolate(thick, 1.0, "cubic").array
            model = loaded.interpolator.predict(thick, 1.0).volume.array
            for name, prediction in (("cubic", cubic), ("model", model)):
                clip = lambda a: (np.clip(a.astype(np.float64), -1024, 2048) + 1024) / 3072  # noqa: E731
                a, b = clip(prediction)[5:-5], clip(truth.array)[5:-5]
                assert case["scores"][name]["psnr"] == pytest.approx(10 * np.log10(1 / np.mean((a - b) ** 2)), abs=1e-4)
                assert case["scores"][name]["hu_mae"] == pytest.approx(
                    np.mean(np.abs(a - b)) * 3072, abs=1e-2)
            assert (tmp_path / "report" / "figures" / f"{case['case']}.png").stat().st_size > 1000
    mean_cubic = np.mean([c["scores"]["cubic"]["psnr"] for c in report["cases"]])
    assert report["mean"]["cubic"]["psnr"] == pytest.approx(mean_cubic)
    assert json.loads((tmp_path / "report" / "report.json").read_text(encoding="utf-8"))["split"] == "test"
