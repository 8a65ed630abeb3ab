"""``ctslice infer`` on a folder of scans and with DICOM output, ``validate --window``, and the windows progress:
files on disk, exit codes, the summary, and what SimpleITK reads back."""

from __future__ import annotations

import re

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from ctslice.io import read_volume, write_volume
from tests.dicom_utils import write_dicom_series as write_input_series
from tests.tiny import thick_phantom


def flat(text: str) -> str:
    return " ".join(text.replace("│", " ").replace("┃", " ").split())


def test_a_folder_is_inferred_case_by_case_and_a_broken_case_fails_alone(scan_folder, tmp_path, cli):
    out = tmp_path / "thin"
    result = cli("infer", scan_folder, "-o", out, "--method", "cubic")
    assert result.exit_code == 1, result.output
    assert sorted(p.name for p in out.iterdir()) == ["alpha.nii.gz", "beta.nii.gz", "gamma.nii.gz"]
    for name, source in (("alpha", scan_folder / "alpha.nii.gz"), ("gamma", scan_folder / "gamma")):
        written, alone = read_volume(out / f"{name}.nii.gz"), tmp_path / f"{name}-alone.nii.gz"
        assert cli("infer", source, "-o", alone, "--method", "cubic").exit_code == 0  # one scan: as before
        np.testing.assert_array_equal(written.array, read_volume(alone).array)
        assert written.grid == read_volume(alone).grid
    failed = [line for line in result.stderr.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 1 and failed[0].startswith("failed: broken: ") and "broken.nii.gz" in failed[0]
    summary = flat(result.stdout)
    assert re.search(r"alpha done .*alpha\.nii\.gz", summary) and "broken failed" in summary
    assert "done 3, skipped 0, failed 1" in summary
    assert result.stderr.strip().splitlines()[-1] == ("error: 1 of 4 case(s) failed: broken (reasons above); the "
                                                      "others were written")
    # a rerun skips what exists and redoes nothing; without the broken file it succeeds
    (scan_folder / "broken.nii.gz").unlink()
    before = (out / "alpha.nii.gz").stat().st_mtime_ns
    again = cli("infer", scan_folder, "-o", out, "--method", "cubic")
    assert again.exit_code == 0, again.output
    assert "done 0, skipped 3, failed 0" in flat(again.stdout)
    assert (out / "alpha.nii.gz").stat().st_mtime_ns == before
    redo = cli("infer", scan_folder, "-o", out, "--method", "cubic", "--overwrite")
    assert redo.exit_code == 0 and "done 3, skipped 0, failed 0" in flat(redo.stdout)


def test_ext_and_shards_partition_the_folder(scan_folder, tmp_path, cli):
    (scan_folder / "broken.nii.gz").unlink()
    out = tmp_path / "thin"
    for shard in ("0/2", "1/2"):
        result = cli("infer", scan_folder, "-o", out, "--method", "linear", "--ext", ".nrrd", "--shard", shard)
        assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["alpha.nrrd", "beta.nrrd", "gamma.nrrd"]
    result = cli("infer", scan_folder, "-o", out, "--method", "linear", "--ext", ".nrrd", "--shard", "2/2")
    assert result.exit_code == 2 and "--shard '2/2': need 0 <= I < N" in result.output


def test_the_model_is_loaded_once_for_a_folder(scan_folder, tmp_path, cli, monkeypatch):
    from ctslice.inference import loading

    (scan_folder / "broken.nii.gz").unlink()
    real, calls = loading.load_model, []
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: calls.append(a) or real(*a, **k))
    result = cli("infer", scan_folder, "-o", tmp_path / "thin", "--device", "cpu", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert len(calls) == 1 and len(list((tmp_path / "thin").iterdir())) == 3
    assert result.output.count("Precision: ") == 1 and result.output.count("Stages: read") == 3


def test_a_folder_is_searched_once(scan_folder, tmp_path, cli, monkeypatch):
    """Deciding "one scan or a folder of scans" and planning the folder share one search (DICOM headers
    are read in it)."""
    from ctslice.commands import infer
    from ctslice.data import discover
    from ctslice.inference import batch

    searches = []
    counting = lambda inputs: searches.append(inputs) or discover.find_cases(inputs)  # noqa: E731
    for module in (infer, batch):
        monkeypatch.setattr(module, "find_cases", counting)
    result = cli("infer", scan_folder, "-o", tmp_path / "thin", "--method", "cubic")
    assert result.exit_code == 1 and "done 3, skipped 0, failed 1" in " ".join(result.stdout.split()), result.output
    assert searches == [[scan_folder]]


@pytest.mark.parametrize("args, message", [
    (["-o", "{tmp}/thin.nii.gz"], "is a folder of scans, written one output per case into a folder"),
    (["-o", "{tmp}/thin", "--std-out", "{tmp}/std.nii.gz", "--samples", "2"], "--std-out is for one scan"),
    (["-o", "{tmp}/thin", "--ext", ".nrrd", "--output-type", "dicom"], "--ext .nrrd and --output-type dicom disagree"),
    (["-o", "{tmp}/scans/thin"], "the output would overwrite the input"),
])
def test_a_bad_folder_command_is_one_line_before_any_work(scan_folder, tmp_path, cli, args, message):
    result = cli("infer", scan_folder, "--method", "cubic", *(a.format(tmp=tmp_path) for a in args))
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "thin").exists() and not (tmp_path / "thin.nii.gz").exists()


def test_a_dicom_series_folder_is_one_scan_not_a_batch(tmp_path, cli):
    from ctslice.commands.infer import batch_cases

    write_input_series(thick_phantom(3), tmp_path / "series")
    assert batch_cases(tmp_path / "series") is None
    write_volume(thick_phantom(1), tmp_path / "one" / "scan.nii.gz")
    found = batch_cases(tmp_path / "one")  # a folder holding one volume file is a folder of (one) scan
    assert [source.path for source in found.sources] == [tmp_path / "one" / "scan.nii.gz"]
    assert batch_cases(tmp_path / "one" / "scan.nii.gz") is None
    result = cli("infer", tmp_path / "series", "-o", tmp_path / "thin.nii.gz", "--method", "cubic", "--ext", ".nrrd")
    assert result.exit_code == 2 and "--ext is for a folder of scans" in result.output


# ---- DICOM output


def read_series(folder):
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
    return sitk.ReadImage(files), [pydicom.dcmread(f, stop_before_pixels=True) for f in files]


def assert_same_image(dicom: sitk.Image, nifti: sitk.Image):
    assert dicom.GetSize() == nifti.GetSize()
    np.testing.assert_allclose(dicom.GetSpacing(), nifti.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(dicom.GetOrigin(), nifti.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(dicom.GetDirection(), nifti.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(dicom), sitk.GetArrayFromImage(nifti))


@pytest.mark.parametrize("method", ["cubic", None], ids=["cubic", "model"])
def test_dicom_output_reads_back_as_the_nifti_output(method, tmp_path, cli):
    scan = write_volume(thick_phantom(4, shape=(20, 24, 24)), tmp_path / "scan.nii.gz")
    how = ["--method", method] if method else ["--device", "cpu", "--threads", "1"]
    nifti = cli("infer", scan, "-o", tmp_path / "thin.nii.gz", *how)
    assert nifti.exit_code == 0, nifti.output
    result = cli("infer", scan, "-o", tmp_path / "thin_dicom", "--output-type", "dicom", *how)
    assert result.exit_code == 0, result.output
    image, headers = read_series(tmp_path / "thin_dicom")
    assert_same_image(image, sitk.ReadImage(str(tmp_path / "thin.nii.gz")))
    assert len(list((tmp_path / "thin_dicom").iterdir())) == image.GetSize()[2]  # one file per slice
    description = headers[0].SeriesDescription
    assert description.startswith("ctslice ") and ("(cubic)" if method else "(model mean)") in description
    assert list(headers[0].ImageType) == ["DERIVED", "SECONDARY"] and headers[0].Modality == "CT"
    # an existing series is replaced only on request
    again = cli("infer", scan, "-o", tmp_path / "thin_dicom", "--output-type", "dicom", *how)
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert cli("infer", scan, "-o", tmp_path / "thin_dicom", "--output-type", "dicom", "--overwrite",
               *how).exit_code == 0


def test_dicom_output_of_a_dicom_input_keeps_its_study_and_never_shows_the_patient(tmp_path, cli):
    files = write_input_series(thick_phantom(5), tmp_path / "input", patient_id="PAT-0042", patient_name="Doe^Jane")
    result = cli("infer", tmp_path / "input", "-o", tmp_path / "out", "--output-type", "dicom", "--method", "cubic")
    assert result.exit_code == 0, result.output
    _, headers = read_series(tmp_path / "out")
    original = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert {h.PatientID for h in headers} == {"PAT-0042"}
    assert {h.StudyInstanceUID for h in headers} == {original.StudyInstanceUID}
    assert {h.SeriesInstanceUID for h in headers} != {original.SeriesInstanceUID}
    assert "PAT-0042" not in result.output and "Doe" not in result.output


def test_a_folder_of_scans_to_dicom_series(scan_folder, tmp_path, cli):
    (scan_folder / "broken.nii.gz").unlink()
    result = cli("infer", scan_folder, "-o", tmp_path / "thin", "--method", "cubic", "--output-type", "dicom")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "thin").iterdir()) == ["alpha", "beta", "gamma"]
    image, headers = read_series(tmp_path / "thin" / "gamma")
    assert {h.PatientID for h in headers} == {"PAT-0042"}
    assert image.GetSize()[2] == len(headers) > 1


@pytest.mark.parametrize("args, message", [
    (["-o", "{tmp}/out.nii.gz", "--output-type", "dicom"], "--output-type dicom writes a folder"),
    (["-o", "{tmp}/out.nii.gz", "--output-type", "nrrd"], "--output-type nrrd: {tmp}/out.nii.gz does not end in .nrrd"),
    (["-o", "{tmp}/out"], "unknown output format"),
    (["-o", "{tmp}/out.nii.gz", "--shard", "0/2"], "--shard is for a folder of scans"),
])
def test_a_bad_output_choice_is_one_line(tmp_path, cli, args, message):
    scan = write_volume(thick_phantom(1), tmp_path / "scan.nii.gz")
    result = cli("infer", scan, "--method", "cubic", *(a.format(tmp=tmp_path) for a in args))
    assert result.exit_code == 2, result.output
    assert message.format(tmp=tmp_path) in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.nii.gz").exists()


# ---- validate --window


def test_validate_passes_the_window_and_refuses_a_bad_one_first(tmp_path, cli, monkeypatch):
    from ctslice.commands import validate

    seen = []
    monkeypatch.setattr(validate, "validate_split", lambda *a, **k: seen.append(k["window"]) or ({}, tmp_path))
    monkeypatch.setattr(validate, "write_json", lambda report, path: path)
    monkeypatch.setattr(validate, "table", lambda report: "")
    args = ["validate", "--checkpoint", tmp_path / "c.pt", "--cache", tmp_path / "c.h5", "--splits",
            tmp_path / "s.json"]
    assert cli(*args, "--window", "lung").exit_code == 0 and seen == ["lung"]
    monkeypatch.undo()
    result = cli(*args, "--window", "wide", "--out", tmp_path / "report")
    assert result.exit_code == 2 and "--window" in result.output and not (tmp_path / "report").exists()


# ---- windows done / total


@pytest.mark.parametrize("mode, samples, steps", [("mean", 1, 1), ("sample", 2, 2)])
def test_progress_counts_every_window_against_a_known_total(mode, samples, steps, one_thread):
    from ctslice.inference.loading import load_model

    loaded = load_model(None, "cpu")
    interpolator = loaded.interpolator
    interpolator.config.inference.window_slices = interpolator.config.inference.window_size = 16  # several windows
    calls = []
    volume = thick_phantom(6, shape=(40, 32, 32))
    plain = interpolator.predict(volume, 1.0, mode=mode, samples=samples, steps=steps).volume.array
    reported = interpolator.predict(volume, 1.0, mode=mode, samples=samples, steps=steps,
                                    on_step=lambda *call: calls.append(call)).volume.array
    np.testing.assert_array_equal(reported, plain)  # reporting changes nothing
    stages, done, totals = zip(*calls, strict=True)
    assert set(stages) == {"denoising" if mode == "mean" else "sampling"}
    assert len(set(totals)) == 1 and done[-1] == totals[0]  # every window counted, and only those
    assert list(done) == sorted(done) and done[0] > 0
    per_pass = totals[0] // (samples * steps if mode == "sample" else 1)
    assert per_pass > 1 and totals[0] == per_pass * (samples * steps if mode == "sample" else 1)
