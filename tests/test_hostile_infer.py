"""Hostile inputs to ``ctslice infer`` and ``ctslice.interpolate``: each is one line, the right exit code or
``InputError``, before any work, and nothing on disk lost. One test per shortfall found and fixed."""

from __future__ import annotations

import os
import shutil
import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import ctslice
from ctslice.checkpoint import bundled_model_path, write_checkpoint
from ctslice.errors import InputError

CUBIC = ("--method", "cubic")


def scan(path, depth=8, spacing=(1.0, 1.0, 5.0)):
    """A small plausible CT (air and tissue) at ``path``; returns the path."""
    array = (np.random.RandomState(0).rand(depth, 16, 16) * 1500 - 1000).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def error_line(result, code=2) -> str:
    """The one stderr line of a refused command (asserting its exit code and that it is the only line)."""
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def mha_header(path, old: bytes, new: bytes):
    """``path`` (a MetaImage written by ``scan``) with one header field replaced."""
    data = path.read_bytes()
    assert old in data
    path.write_bytes(data.replace(old, new))
    return path


def test_a_fifo_named_like_a_scan_is_refused_without_blocking(tmp_path, cli):
    os.mkfifo(tmp_path / "scan.nii.gz")
    line = error_line(cli("infer", tmp_path / "scan.nii.gz", "-o", tmp_path / "thin.nii.gz", *CUBIC))
    assert line == (f"error: {tmp_path / 'scan.nii.gz'} is a named pipe (FIFO), not a file that holds a scan; "
                    "pass a regular file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii.gz"]


def test_a_fifo_in_a_folder_is_one_failed_case(tmp_path, cli):
    (tmp_path / "in").mkdir()
    scan(tmp_path / "in" / "a.nii.gz")
    os.mkfifo(tmp_path / "in" / "b.nii.gz")
    result = cli("infer", tmp_path / "in", "-o", tmp_path / "out", *CUBIC)
    assert result.exit_code == 1, result.output
    assert "failed: b: " in result.stderr and "is a named pipe (FIFO)" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.nii.gz"]


@pytest.mark.parametrize("role", ["input", "output"])
def test_a_symlink_loop_is_one_line(tmp_path, cli, role):
    scan(tmp_path / "a.nii.gz")
    os.symlink("loop.nii.gz", tmp_path / "loop.nii.gz")
    source, target = ("loop.nii.gz", "o.nii.gz") if role == "input" else ("a.nii.gz", "loop.nii.gz")
    line = error_line(cli("infer", tmp_path / source, "-o", tmp_path / target, *CUBIC))
    assert line == (f"error: {tmp_path / 'loop.nii.gz'}: a symbolic link that leads back to itself (a loop); "
                    "remove it or point it at a file")


def test_an_output_name_too_long_for_the_file_system_is_one_line(tmp_path, cli):
    scan(tmp_path / "a.nii.gz")
    name = "x" * 240 + ".nii.gz"
    line = error_line(cli("infer", tmp_path / "a.nii.gz", "-o", tmp_path / name, *CUBIC))
    assert line.endswith(": the name is 247 bytes long; at most 235 fit (the file system's 255, less the staging "
                         "name it is written under)")


@pytest.mark.parametrize("target", ["ser", "."])
def test_dicom_overwrite_never_empties_a_folder_of_other_files(tmp_path, cli, monkeypatch, target):
    monkeypatch.chdir(tmp_path)
    scan(tmp_path / "a.nii.gz")
    (tmp_path / "ser").mkdir()
    (tmp_path / "ser" / "thesis.docx").write_text("precious")
    line = error_line(cli("infer", "a.nii.gz", "-o", target, "--output-type", "dicom", "--overwrite", *CUBIC))
    foreign = "thesis.docx" if target == "ser" else "a.nii.gz"
    assert line == (f"error: {target} holds other files than a ctslice DICOM series (such as {foreign}); "
                    "overwriting would delete them: choose another folder")
    assert (tmp_path / "ser" / "thesis.docx").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "ser"]


def test_dicom_overwrite_replaces_a_series_it_wrote(tmp_path, cli):
    scan(tmp_path / "a.nii.gz")
    for depth in (8, 4):  # the second run replaces the first series whole
        scan(tmp_path / "a.nii.gz", depth=depth)
        result = cli("infer", tmp_path / "a.nii.gz", "-o", tmp_path / "ser", "--output-type", "dicom", "--overwrite",
                     *CUBIC)
        assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "ser").iterdir())) == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "ser"]  # no aside folder left


def test_std_out_equal_to_the_output_is_refused(tmp_path, cli):
    scan(tmp_path / "a.nii.gz")
    line = error_line(cli("infer", tmp_path / "a.nii.gz", "-o", tmp_path / "o.nii.gz", "--samples", "2",
                          "--std-out", tmp_path / "." / "o.nii.gz"))
    assert line == (f"error: --std-out {tmp_path / '.' / 'o.nii.gz'} is the -o file; the spread would replace the "
                    "thin volume: give it another name")
    assert not (tmp_path / "o.nii.gz").exists()


@pytest.mark.parametrize("flags, line", [
    (("--samples", "3", "--std-out", "s.nii.gz"), "--samples 3: for a model"),
    (("--steps", "7"), "--steps 7: for a model"),
    (("--mode", "sample"), "--mode 'sample': for a model"),
])
def test_sampling_flags_with_a_method_are_refused(tmp_path, cli, monkeypatch, flags, line):
    monkeypatch.chdir(tmp_path)
    scan(tmp_path / "a.nii.gz")
    assert error_line(cli("infer", "a.nii.gz", "-o", "o.nii.gz", *CUBIC, *flags)) == (
        f"error: {line}; the method cubic (a classical baseline) is deterministic")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz"]


def test_steps_beyond_the_models_timesteps_are_refused(tmp_path, cli, one_thread):
    scan(tmp_path / "a.nii.gz")
    line = error_line(cli("infer", tmp_path / "a.nii.gz", "-o", tmp_path / "o.nii.gz", "--mode", "sample",
                          "--steps", "5000", "--device", "cpu"))
    assert line == "error: --steps 5000: this model was trained with 1000 diffusion timesteps; ask for at most 1000"
    assert not (tmp_path / "o.nii.gz").exists()


def test_a_thin_spacing_that_leaves_under_two_slices_is_refused(tmp_path, cli):
    scan(tmp_path / "a.nii.gz", depth=2)
    line = error_line(cli("infer", tmp_path / "a.nii.gz", "-o", tmp_path / "o.nii.gz", "--thin-spacing", "20",
                          *CUBIC))
    assert line == (f"error: {tmp_path / 'a.nii.gz'}: a thin spacing of 20 mm over this scan's 10 mm makes 0 "
                    "slice(s); a thin volume needs at least 2: choose a smaller thin spacing")


def test_a_vanishing_thin_spacing_is_refused_in_a_short_line(tmp_path, cli):
    scan(tmp_path / "a.nii.gz")
    line = error_line(cli("infer", tmp_path / "a.nii.gz", "-o", tmp_path / "o.nii.gz", "--thin-spacing", "1e-300",
                          *CUBIC))
    assert "makes 4.00e+301 slices of 16 x 16 (1.91e+295 GiB as int16)" in line and len(line) < 300


@pytest.mark.parametrize("field, value, message", [
    (b"ElementSpacing = 1 1 5", b"ElementSpacing = 1 1 1e-9",
     "a voxel spacing of (1, 1, 1e-09) mm; each must be from 0.001 to 100 mm"),
    (b"ElementSpacing = 1 1 5", b"ElementSpacing = 1 1 1e9",
     "a voxel spacing of (1, 1, 1e+09) mm; each must be from 0.001 to 100 mm"),
    (b"ElementSpacing = 1 1 5", b"ElementSpacing = 1e9 1e9 5",
     "a voxel spacing of (1e+09, 1e+09, 5) mm; each must be from 0.001 to 100 mm"),
    (b"Offset = 0 0 0", b"Offset = 0 0 1e300", "its origin at (0, 0, 1e+300) mm, not finite numbers within 1e+06 mm"),
    (b"TransformMatrix = 1 0 0 0 1 0 0 0 1", b"TransformMatrix = 1 0.5 0 0 1 0 0 0 1",
     "a direction matrix (1, 0, 0, 0.5, 1, 0, 0, 0, 1) whose axes are not perpendicular unit vectors"),
], ids=["tiny spacing", "huge spacing", "huge in-plane spacing", "far origin", "sheared axes"])
def test_absurd_header_geometry_is_refused_before_any_work(tmp_path, cli, field, value, message):
    source = mha_header(scan(tmp_path / "a.mha"), field, value)
    line = error_line(cli("infer", source, "-o", tmp_path / "o.nii.gz", *CUBIC))
    assert line == f"error: {source}: the input series has {message} (is the header damaged?)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mha"]


@pytest.mark.parametrize("contents", ["", "readme.txt"])
def test_a_folder_without_scans_says_so(tmp_path, cli, contents):
    (tmp_path / "in").mkdir()
    if contents:
        (tmp_path / "in" / contents).write_text("x")
    line = error_line(cli("infer", tmp_path / "in", "-o", tmp_path / "out", *CUBIC))
    assert line.startswith(f"error: {tmp_path / 'in'}: no scans found (volume files, DICOM series folders or zips)")
    assert not (tmp_path / "out").exists()


def edited_checkpoint(path, edit):
    """The bundled model with ``edit(state)`` applied, written as ``ctslice train`` writes checkpoints."""
    state = torch.load(bundled_model_path(), weights_only=True)
    for key in ("checksum", "format", "version", "ctslice_version"):
        state.pop(key, None)
    edit(state)
    write_checkpoint(state, path)
    return path


def _set(section, key, value):
    def edit(state):
        state[section][key] = value
    return edit


def _nan_weight(state):
    next(t for t in state["model"].values() if t.is_floating_point()).fill_(float("nan"))


@pytest.mark.parametrize("edit, message", [
    (_set("data", "ratio", 0), "its ratio entry is 0, not a number from 1 to 100; the file is damaged or was not "
                               "written by `ctslice train`"),
    (_set("data", "ratio", "five"), "its ratio entry is 'five', not a number from 1 to 100"),
    (_set("data", "ratio", None), "its ratio entry is None, not a number from 1 to 100"),
    (_set("data", "thin_spacing", -1.0), "its thin_spacing entry is -1.0, not a number from 0.001 to 100"),
    (_set("data", "inplane_size", 10**7), "its inplane_size entry is 10000000, not an integer from 0 to 4096"),
    (lambda state: state.update(codec="identity"), "its data and codec entries are not mappings"),
    (_nan_weight, "holds NaN or infinite values (a diverged run?); use an earlier checkpoint"),
    (lambda state: state.update(step="many"), "its step entry is 'many', not a whole number of steps"),
], ids=["ratio 0", "ratio text", "ratio missing", "negative thin spacing", "huge matrix", "codec text", "NaN weight",
        "step text"])
def test_a_checkpoint_with_entries_out_of_domain_is_one_line(tmp_path, cli, edit, message):
    scan(tmp_path / "a.nii.gz")
    checkpoint = edited_checkpoint(tmp_path / "c.pt", edit)
    line = error_line(cli("infer", tmp_path / "a.nii.gz", "-o", tmp_path / "o.nii.gz", "--checkpoint", checkpoint,
                          "--device", "cpu"))
    assert line.startswith(f"error: {checkpoint}: ") and message in line
    assert not (tmp_path / "o.nii.gz").exists()


def test_a_folder_or_fifo_as_checkpoint_is_named_as_such(tmp_path, cli):
    scan(tmp_path / "a.nii.gz")
    (tmp_path / "runs").mkdir()
    os.mkfifo(tmp_path / "c.pt")
    line = error_line(cli("infer", tmp_path / "a.nii.gz", "-o", tmp_path / "o.nii.gz", "--checkpoint",
                          tmp_path / "runs"))
    assert line == f"error: {tmp_path / 'runs'} is a folder; give the checkpoint file in it (for example " \
                   "checkpoints/best.pt)"
    line = error_line(cli("infer", tmp_path / "a.nii.gz", "-o", tmp_path / "o.nii.gz", "--checkpoint",
                          tmp_path / "c.pt"))
    assert line == (f"error: {tmp_path / 'c.pt'} is a named pipe (FIFO), not a file that holds a checkpoint; "
                    "pass a regular file")


def test_a_foreign_pickle_checkpoint_is_one_line_and_never_run(tmp_path, cli):
    import pickle

    class Payload:
        def __reduce__(self):
            return (shutil.rmtree, (str(tmp_path / "victim"),))

    (tmp_path / "victim").mkdir()
    (tmp_path / "c.pt").write_bytes(pickle.dumps(Payload(), protocol=4))
    scan(tmp_path / "a.nii.gz")
    with warnings.catch_warnings(record=True) as warned:  # torch's pickle-protocol warning reached stderr
        warnings.simplefilter("always")
        line = error_line(cli("infer", tmp_path / "a.nii.gz", "-o", tmp_path / "o.nii.gz", "--checkpoint",
                              tmp_path / "c.pt"))
    assert line == f"error: {tmp_path / 'c.pt'}: damaged or not a checkpoint (it does not unpickle)"
    assert [str(w.message) for w in warned if "pickle" in str(w.message)] == []
    assert (tmp_path / "victim").is_dir()


GOOD = (np.random.RandomState(0).rand(8, 16, 16) * 1500 - 1000).astype(np.int16)


@pytest.mark.parametrize("keywords, message", [
    ({"samples": 10**12, "steps": 1}, "samples 1000000000000: must be a whole number, at least 1 and at most 100"),
    ({"mode": "sample", "steps": 10**6}, "steps 1000000: must be a whole number, at least 1 and at most 10,000"),
    ({"mode": "sample", "seed": -1}, "seed -1: must be a whole number from 0 to 4,294,967,295"),
    ({"method": "cubic", "samples": 3}, "samples 3: for a model; the method cubic (a classical baseline) is "
                                        "deterministic"),
    ({"checkpoint": 5}, "checkpoint=5: expected the path of a checkpoint file"),
    ({"method": "cubic", "spacing": (1, 1, 10**400)}, "spacing=(1, 1, 1000000000"),
    ({"method": "cubic", "spacing": (1, 1, 1e-300)}, "the input series has a voxel spacing of (1, 1, 1e-300) mm"),
    ({"method": "cubic", "origin": (0, 0, 1e300)}, "the input series has its origin at (0, 0, 1e+300) mm"),
    ({"method": "cubic", "direction": (2, 0, 0, 0, 2, 0, 0, 0, 2)}, "whose axes are not perpendicular unit vectors"),
    ({"method": "cubic", "thin_spacing": 1e300}, "makes 0 slice(s); a thin volume needs at least 2"),
], ids=["huge samples", "huge steps", "negative seed", "samples with method", "checkpoint not a path",
        "huge int spacing", "tiny spacing", "far origin", "scaled axes", "huge thin spacing"])
def test_api_refuses_out_of_domain_keywords_in_one_short_line(keywords, message):
    keywords = {"spacing": (1, 1, 5), **keywords}
    with pytest.raises(InputError) as error:
        ctslice.interpolate(GOOD, **keywords)
    assert message in str(error.value)
    assert "\n" not in str(error.value) and len(str(error.value)) < 300


def test_api_refuses_a_masked_array():
    with pytest.raises(InputError, match=r"^image: a masked array; fill the masked voxels first "
                                         r"\(image.filled\(-1024\) for air\)$"):
        ctslice.interpolate(np.ma.masked_array(GOOD, GOOD > 100), method="cubic", spacing=(1, 1, 5))


def test_an_output_whose_data_file_is_the_inputs_is_refused(tmp_path, cli):
    """``a.mhd`` keeps its voxels in ``o.zraw``; ``-o o.mhd`` would write its own voxels over them."""
    image = sitk.ReadImage(str(scan(tmp_path / "a.nii.gz")))
    sitk.WriteImage(image, str(tmp_path / "a.mhd"), useCompression=True)
    (tmp_path / "a.zraw").rename(tmp_path / "o.zraw")
    header = tmp_path / "a.mhd"
    header.write_text(header.read_text().replace("a.zraw", "o.zraw"))
    data = (tmp_path / "o.zraw").read_bytes()
    line = error_line(cli("infer", header, "-o", tmp_path / "o.mhd", *CUBIC))
    assert line == (f"error: {tmp_path / 'o.mhd'}: the output would overwrite the input {tmp_path / 'o.zraw'}; "
                    "choose another output path")
    assert (tmp_path / "o.zraw").read_bytes() == data and not (tmp_path / "o.mhd").exists()


def test_a_folder_named_like_a_cases_output_is_not_taken_for_it(tmp_path, cli):
    (tmp_path / "in").mkdir()
    for name in ("a", "b"):
        scan(tmp_path / "in" / f"{name}.nii.gz")
    (tmp_path / "out" / "a.nii.gz").mkdir(parents=True)
    (tmp_path / "out" / "a.nii.gz" / "keep").write_text("kept")
    result = cli("infer", tmp_path / "in", "-o", tmp_path / "out", *CUBIC)
    assert result.exit_code == 1, result.output
    assert "failed: a: could not write " in result.stderr  # not "skipped (exists)"
    assert (tmp_path / "out" / "a.nii.gz" / "keep").read_text() == "kept"
    assert (tmp_path / "out" / "b.nii.gz").is_file()
