"""``ctslice.interpolate``: the same volume as ``ctslice infer`` writes, from a SimpleITK image or a NumPy
array; the bundled model in mean mode; one-line errors; and ``import ctslice`` stays light."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

import ctslice
from ctslice.data.pairs import simulate_pair
from ctslice.data.phantom import make_phantom
from ctslice.errors import InputError
from ctslice.io import write_volume
from ctslice.io.geometry import thin_grid

OBLIQUE = tuple(sitk.VersorTransform((0.3, 0.2, 1.0), 0.5).GetMatrix())


def thick_volume(depth=12, side=32, direction=OBLIQUE):
    truth = make_phantom(shape=(depth * 5, side, side), spacing=(384 / side, 384 / side, 1.0), seed=4)
    truth = truth.with_array(truth.array, direction=direction, origin=(-50.0, 20.0, 300.0))
    return simulate_pair(truth, 5.0, 1.0).thick


def assert_same(image: sitk.Image, expected: sitk.Image):
    assert image.GetPixelID() == expected.GetPixelID() == sitk.sitkInt16
    assert image.GetSize() == expected.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), expected.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), expected.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), expected.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(expected))


def test_a_simpleitk_image_gives_what_infer_writes(tmp_path, cli):
    thick = thick_volume()
    write_volume(thick, tmp_path / "thick.nii.gz")
    result = cli("infer", tmp_path / "thick.nii.gz", "-o", tmp_path / "thin.nii.gz", "--method", "cubic",
                 "--thin-spacing", "1.25")
    assert result.exit_code == 0, result.output
    image = ctslice.interpolate(thick.to_image(), method="cubic", thin_spacing=1.25)
    assert_same(image, sitk.ReadImage(str(tmp_path / "thin.nii.gz")))
    assert image.GetSize()[2] == thin_grid(thick.grid, 1.25).size[2] == 48


def test_a_numpy_array_with_its_geometry(tmp_path):
    thick = thick_volume(direction=(0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0))
    expected = ctslice.interpolate(thick.to_image(), method="linear")
    image = ctslice.interpolate(thick.array.astype(np.float32), method="linear", spacing=list(thick.spacing),
                                origin=np.asarray(thick.origin), direction=thick.direction)
    assert_same(image, expected)
    assert image.GetSpacing()[2] == 1.0  # a baseline's default thin spacing
    at_origin = ctslice.interpolate(thick.array, method="linear", spacing=thick.spacing)
    np.testing.assert_allclose(at_origin.GetDirection(), np.eye(3).ravel())
    np.testing.assert_allclose(at_origin.GetOrigin()[:2], (0.0, 0.0))


def test_the_bundled_model_in_mean_mode(tmp_path, cli, one_thread):
    thick = thick_volume(depth=24, side=64, direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    image = ctslice.interpolate(thick.to_image(), device="cpu")
    write_volume(thick, tmp_path / "thick.nii.gz")
    result = cli("infer", tmp_path / "thick.nii.gz", "-o", tmp_path / "thin.nii.gz", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert_same(image, sitk.ReadImage(str(tmp_path / "thin.nii.gz")))
    assert image.GetSize() == (64, 64, 120)  # the bundled model divides slices by 5
    cubic = ctslice.interpolate(thick.to_image(), method="cubic")
    assert not np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(cubic))


@pytest.mark.parametrize("call, message", [
    (lambda v: ctslice.interpolate([[1, 2]], method="cubic"), "expected a SimpleITK.Image or a NumPy array"),
    (lambda v: ctslice.interpolate(v.to_image()[:, :, 0], method="cubic"), "2D image"),
    (lambda v: ctslice.interpolate(v.array[0], method="cubic", spacing=(1, 1, 1)), "2D array"),
    (lambda v: ctslice.interpolate(v.array, method="cubic"), "needs spacing="),
    (lambda v: ctslice.interpolate(v.array, method="cubic", spacing=(1, float("nan"), 5)), "finite numbers"),
    (lambda v: ctslice.interpolate(v.array, method="cubic", spacing=(1, 1)), "expected 3 finite numbers"),
    (lambda v: ctslice.interpolate(v.array, method="cubic", spacing=(1, 0, 5)), "positive"),
    (lambda v: ctslice.interpolate(v.to_image(), method="cubic", spacing=(1, 1, 5)), "SimpleITK image carries"),
    (lambda v: ctslice.interpolate(v.to_image(), method="cubic", checkpoint="model.pt"), "not both"),
    (lambda v: ctslice.interpolate(v.to_image(), method="spline"), "choose one of linear, cubic, lanczos"),
    (lambda v: ctslice.interpolate(v.to_image(), mode="best"), "choose mean or sample"),
    (lambda v: ctslice.interpolate(v.to_image(), samples=0), "at least 1"),
    (lambda v: ctslice.interpolate(v.to_image(), method="cubic", thin_spacing=float("nan")), "positive number"),
    (lambda v: ctslice.interpolate(v.to_image(), precision="fp8"), "choose one of auto, bf16, fp32"),
    (lambda v: ctslice.interpolate(v.to_image(), device="tpu"), "expected auto, cpu, cuda"),
    (lambda v: ctslice.interpolate(np.full((8, 16, 16), np.nan), method="cubic", spacing=(1, 1, 5)), "NaN"),
    (lambda v: ctslice.interpolate(np.zeros((8, 16, 16)), method="cubic", spacing=(1, 1, 5)), "constant"),
], ids=["list", "2D image", "2D array", "no spacing", "NaN spacing", "short spacing", "zero spacing",
        "geometry twice", "method and checkpoint", "method", "mode", "samples", "NaN thin spacing", "precision",
        "device", "NaN voxels", "blank"])
def test_bad_input_is_one_input_error_line(call, message):
    with pytest.raises(InputError, match=message) as error:
        call(thick_volume(depth=4, side=16))
    assert "\n" not in str(error.value)


def test_import_ctslice_imports_no_heavy_module():
    code = ("import sys, json, ctslice; assert 'interpolate' in dir(ctslice); "
            "print(json.dumps([m for m in ('torch', 'numpy', 'SimpleITK') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []
    with pytest.raises(AttributeError):
        ctslice.no_such_name  # noqa: B018


def test_the_readme_example_runs(tmp_path, monkeypatch, one_thread):
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    write_volume(thick_volume(depth=12, side=48, direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)),
                 tmp_path / "scan.nii.gz")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    assert namespace["thin"].GetSize() == (48, 48, 60) == namespace["cubic"].GetSize()
    assert sitk.ReadImage("thin.nii.gz").GetSize() == (48, 48, 60)
    assert namespace["linear"].GetSpacing()[2] == 1.0
