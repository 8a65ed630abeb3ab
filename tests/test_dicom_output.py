"""``write_dicom_series``: one CT series that SimpleITK reads back exactly as the NIfTI output, the input's
study carried over, new valid UIDs, an atomic write, and no identifying value in any message."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import CTImageStorage

from ctslice.errors import CtsliceError, InputError
from ctslice.io import read_volume, write_volume
from ctslice.io.dicom_output import StudyTags, study_tags, write_dicom_series
from ctslice.io.volume import Volume
from tests.dicom_utils import write_dicom_series as write_input_series

OBLIQUE = tuple(sitk.VersorTransform((0.3, 0.2, 1.0), 0.5).GetMatrix())
IDENTIFYING = {"PatientName": "Sensitive^Patient", "PatientID": "MRN-998877"}


def volume(direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), depth=7) -> Volume:
    rng = np.random.default_rng(3)
    array = rng.integers(-1024, 3000, size=(depth, 12, 10)).astype(np.int16)
    return Volume(array, (0.7, 0.8, 1.25), (-100.123456, 20.5, 300.25), tuple(float(d) for d in direction))


def read_series(folder) -> sitk.Image:
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    assert len(series) == 1, series
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))
    return reader.Execute()


def assert_same_image(image: sitk.Image, expected: sitk.Image):
    assert image.GetSize() == expected.GetSize()
    np.testing.assert_allclose(image.GetSpacing(), expected.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(image.GetOrigin(), expected.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), expected.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(expected))


@pytest.mark.parametrize("direction", [(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), OBLIQUE], ids=["axial", "oblique"])
def test_series_reads_back_as_the_nifti_output(direction, tmp_path):
    thin = volume(direction)
    write_volume(thin, tmp_path / "x.nii.gz")
    folder = write_dicom_series(thin, tmp_path / "dicom", description="ctslice cubic 5 mm -> 1.25 mm")
    assert len(list(folder.iterdir())) == thin.depth  # one file per slice, nothing else
    assert_same_image(read_series(folder), sitk.ReadImage(str(tmp_path / "x.nii.gz")))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_a_left_handed_grid_reads_back_with_the_same_voxels_at_the_same_places(tmp_path):
    thin = volume((1.0, 0, 0, 0, 1.0, 0, 0, 0, -1.0))
    image = read_series(write_dicom_series(thin, tmp_path / "dicom", description="flipped"))
    np.testing.assert_allclose(image.GetDirection(), (1, 0, 0, 0, 1, 0, 0, 0, 1), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), thin.array[::-1])
    last = thin.grid.index_to_physical((0, 0, thin.depth - 1))
    np.testing.assert_allclose(image.GetOrigin(), last, atol=1e-4)


def test_tags_uids_and_pixel_module(tmp_path):
    thin = volume(OBLIQUE)
    folder = write_dicom_series(thin, tmp_path / "dicom", description="ctslice model (mean)")
    datasets = [pydicom.dcmread(f) for f in sorted(folder.iterdir())]
    first = datasets[0]
    assert first.SOPClassUID == CTImageStorage and first.Modality == "CT"
    assert list(first.ImageType) == ["DERIVED", "SECONDARY"]
    assert first.SeriesDescription == "ctslice model (mean)"
    assert first.BitsAllocated == 16 and first.PixelRepresentation == 1
    assert float(first.RescaleSlope) == 1 and float(first.RescaleIntercept) == 0
    assert float(first.SliceThickness) == float(first.SpacingBetweenSlices) == 1.25
    np.testing.assert_allclose([float(v) for v in first.PixelSpacing], [0.8, 0.7])
    np.testing.assert_allclose([float(v) for v in first.ImageOrientationPatient],
                               np.asarray(OBLIQUE).reshape(3, 3)[:, :2].T.ravel(), atol=1e-9)
    assert sorted(d.InstanceNumber for d in datasets) == list(range(1, thin.depth + 1))
    uids = {d.SOPInstanceUID for d in datasets}
    assert len(uids) == thin.depth and len({d.SeriesInstanceUID for d in datasets}) == 1
    for uid in [*uids, first.SeriesInstanceUID, first.StudyInstanceUID, first.FrameOfReferenceUID]:
        assert pydicom.uid.UID(uid).is_valid
    assert first.PatientName == "Anonymous" and first.PatientID == "ANONYMOUS"
    again = pydicom.dcmread(next(write_dicom_series(thin, tmp_path / "b", description="x").iterdir()))
    assert again.StudyInstanceUID != first.StudyInstanceUID and again.SeriesInstanceUID != first.SeriesInstanceUID
    np.testing.assert_array_equal(np.stack([d.pixel_array for d in sorted(datasets, key=lambda d: d.InstanceNumber)]),
                                  thin.array)


def test_study_tags_are_carried_from_a_dicom_input(tmp_path):
    files = write_input_series(volume(), tmp_path / "input", patient_name=IDENTIFYING["PatientName"],
                               patient_id=IDENTIFYING["PatientID"], study_uid="1.2.3.4.5")
    source = study_tags(files)
    assert "Sensitive" not in repr(source) and "MRN" not in repr(source)
    assert source.PatientID == IDENTIFYING["PatientID"] and source.StudyInstanceUID == "1.2.3.4.5"
    original = pydicom.dcmread(files[0])
    folder = write_dicom_series(volume(depth=9), tmp_path / "out", description="thin", source=source)
    for file in folder.iterdir():
        written = pydicom.dcmread(file)
        assert str(written.PatientName) == IDENTIFYING["PatientName"] and written.PatientID == IDENTIFYING["PatientID"]
        assert written.StudyInstanceUID == "1.2.3.4.5" and written.StudyDate == original.StudyDate
        assert written.SeriesInstanceUID != original.SeriesInstanceUID
        assert written.SOPInstanceUID != original.SOPInstanceUID


def test_an_existing_folder_is_kept_unless_overwrite(tmp_path):
    first = write_dicom_series(volume(depth=5), tmp_path / "out", description="first")
    with pytest.raises(InputError, match="exists"):
        write_dicom_series(volume(depth=6), first, description="second")
    assert len(list(first.iterdir())) == 5
    write_dicom_series(volume(depth=6), first, description="second", overwrite=True)
    assert len(list(first.iterdir())) == 6
    assert {pydicom.dcmread(f).SeriesDescription for f in first.iterdir()} == {"second"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_no_identifying_value_in_any_error(tmp_path, monkeypatch, caplog, recwarn):
    files = write_input_series(volume(), tmp_path / "input", patient_name=IDENTIFYING["PatientName"],
                               patient_id=IDENTIFYING["PatientID"])
    source = StudyTags(**{**vars(study_tags(files)), "PatientBirthDate": "not a date 19450101"})
    messages = []
    for call in (
        lambda: write_dicom_series(volume(), tmp_path / "x", description="a\\b", source=source),
        lambda: write_dicom_series(volume((1.0, 0.5, 0, 0, 1.0, 0, 0, 0, 1.0)), tmp_path / "x", description="d",
                                   source=source),
        lambda: write_dicom_series(volume(), files[0], description="d", source=source),
    ):
        with pytest.raises(InputError) as error:
            call()
        messages.append(str(error.value))
    import ctslice.io.dicom_output as module

    monkeypatch.setattr(module, "_unlike_written", lambda *args: "2 of 7 slices read back")
    with pytest.raises(CtsliceError) as error:
        write_dicom_series(volume(), tmp_path / "y", description="d", source=source)
    messages.append(str(error.value))
    assert not (tmp_path / "y").exists()
    monkeypatch.undo()
    write_dicom_series(volume(), tmp_path / "z", description="d", source=source)  # odd value: kept, no warning
    shown = "\n".join(messages + [r.getMessage() for r in caplog.records] + [str(w.message) for w in recwarn])
    for value in [*IDENTIFYING.values(), "Sensitive", "MRN", "19450101", source.StudyInstanceUID]:
        assert value not in shown


def test_study_tags_of_a_file_that_is_not_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(InputError, match="study tags"):
        study_tags([tmp_path / "notes.txt"])


def test_series_reads_back_through_ctslice(tmp_path):
    thin = volume(OBLIQUE, depth=6)
    back = read_volume(write_dicom_series(thin, tmp_path / "dicom", description="d"))
    np.testing.assert_array_equal(back.array, thin.array)
    np.testing.assert_allclose(back.origin, thin.origin, atol=1e-4)


def test_input_study_tags_are_those_of_the_series_that_is_read(tmp_path):
    from ctslice.io.dicom_output import input_study_tags
    from tests.dicom_utils import zip_folder

    write_input_series(volume(), tmp_path / "study" / "ct", patient_id="CT-PATIENT")
    write_input_series(volume(), tmp_path / "study" / "a_mr", modality="MR", patient_id="OTHER-PATIENT")
    assert input_study_tags(tmp_path / "study").PatientID == "CT-PATIENT"
    assert input_study_tags(zip_folder(tmp_path / "study", tmp_path / "study.zip")).PatientID == "CT-PATIENT"
    assert input_study_tags(write_volume(volume(), tmp_path / "x.nii.gz")) is None
