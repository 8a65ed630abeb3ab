"""Reading and writing volumes: formats, DICOM series and zips, and every rejection a user can hit."""

from __future__ import annotations

import dataclasses
import math
import re
import stat
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from dicom_utils import write_dicom_series, write_malicious_zip, zip_folder

from ctslice.errors import CtsliceError, InputError
from ctslice.io import (
    SUPPORTED_SUFFIXES,
    DicomSeries,
    ReadOptions,
    Volume,
    extracted,
    find_series,
    is_volume_file,
    read_volume,
    write_volume,
)
from ctslice.io.archive import LIMIT_ENV

PATIENT_ID = "PAT-SECRET-4711"
PATIENT_NAME = "Secretname^Jane"
NO_TILT_CORRECTION = ReadOptions(tilt_correction=False)


def rotation(z_degrees: float, x_degrees: float) -> np.ndarray:
    a, b = math.radians(z_degrees), math.radians(x_degrees)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return rz @ rx


def phantom(depth: int = 12, size: int = 32, direction: np.ndarray | None = None) -> Volume:
    """A volume whose every voxel value says where it is, so any reordering or shift shows."""
    z, y, x = np.mgrid[:depth, :size, :size]
    array = (-1000 + 150 * z + 7 * y + 3 * x).astype(np.int16)
    direction = rotation(30, 10) if direction is None else direction
    return Volume(array, (0.8, 0.7, 2.5), (-20.0, 15.0, 40.0), tuple(float(d) for d in direction.ravel()))


def assert_same(read: Volume, expected: Volume) -> None:
    assert read.array.dtype == np.int16
    np.testing.assert_array_equal(read.array, expected.array)
    np.testing.assert_allclose(read.spacing, expected.spacing, atol=1e-5)
    np.testing.assert_allclose(read.origin, expected.origin, atol=1e-4)
    np.testing.assert_allclose(read.direction, expected.direction, atol=1e-5)


def assert_private(*texts: str) -> None:
    for text in texts:
        assert PATIENT_ID not in text and "Secretname" not in text, text


# --- files -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha", ".mhd"])
def test_file_round_trip_keeps_array_and_oblique_geometry(tmp_path, suffix):
    volume = phantom()
    path = write_volume(volume, tmp_path / "out" / f"scan{suffix}")
    assert_same(read_volume(path), volume)
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_mhd_writes_header_and_data_side_by_side(tmp_path):
    write_volume(phantom(), tmp_path / "scan.mhd")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.mhd", "scan.zraw"]
    assert "ElementDataFile = scan.zraw" in (tmp_path / "scan.mhd").read_text(encoding="utf-8")


def test_write_replaces_old_file_only_when_complete(tmp_path, monkeypatch):
    path = tmp_path / "scan.nii.gz"
    write_volume(phantom(), path)
    before = path.read_bytes()

    def crash(image, name, useCompression=False):
        Path(name).write_bytes(b"half a file")
        raise RuntimeError("ITK ERROR: NiftiImageIO(0x1234): disk full")

    monkeypatch.setattr(sitk, "WriteImage", crash)
    with pytest.raises(CtsliceError, match="could not write .*scan.nii.gz: disk full"):
        write_volume(phantom(depth=4), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["scan.nii.gz"]


def test_write_rejects_unknown_extension(tmp_path):
    with pytest.raises(InputError, match=r"scan\.png: unknown extension"):
        write_volume(phantom(), tmp_path / "scan.png")


def test_write_rounds_and_clips_to_the_requested_type(tmp_path):
    values = np.array([[[-0.7, 0.5, 1.5, 40000.0]], [[-40000.0, 2.4, -2.6, 0.0]]], dtype=np.float32)
    volume = Volume(values, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    as_int = sitk.GetArrayFromImage(sitk.ReadImage(str(write_volume(volume, tmp_path / "a.nrrd"))))
    np.testing.assert_array_equal(as_int, [[[-1, 0, 2, 32767]], [[-32768, 2, -3, 0]]])
    as_float = sitk.GetArrayFromImage(sitk.ReadImage(str(write_volume(volume, tmp_path / "b.nrrd", np.float32))))
    np.testing.assert_array_equal(as_float, values)


def test_float_and_int32_files_become_int16_hu(tmp_path):
    values = np.full((3, 4, 4), 12.6, dtype=np.float32)
    values[0, 0, 0], values[1, 0, 0], values[2, 0, 0] = np.nan, 50000.0, -13.5
    sitk.WriteImage(sitk.GetImageFromArray(values), str(tmp_path / "float.nrrd"))  # NIfTI readers zero NaNs
    read = read_volume(tmp_path / "float.nrrd")
    assert read.array.dtype == np.int16
    corners = (read.array[0, 0, 0], read.array[1, 0, 0], read.array[2, 0, 0], read.array[0, 1, 1])
    assert corners == (-1024, 32767, -14, 13)  # NaN is air, then clipped, rounded half to even, rounded

    wide = (np.arange(48, dtype=np.int32).reshape(3, 4, 4) * 1000) - 24000
    sitk.WriteImage(sitk.GetImageFromArray(wide), str(tmp_path / "int32.nii.gz"))
    np.testing.assert_array_equal(read_volume(tmp_path / "int32.nii.gz").array, np.clip(wide, -32768, 32767))


def test_supported_suffixes():
    assert set(SUPPORTED_SUFFIXES) == {".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"}
    assert is_volume_file(Path("a/SCAN.NII.GZ")) and is_volume_file(Path("b.nhdr"))
    assert not is_volume_file(Path("scan.zip")) and not is_volume_file(Path("slice.dcm"))


def _truncate(path: Path, keep: float = 0.6) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_truncated_file_is_rejected(tmp_path, suffix):
    path = _truncate(write_volume(phantom(), tmp_path / f"scan{suffix}"))
    with pytest.raises(InputError, match=re.escape(str(path)) + " (is truncated|cannot be read: it is truncated)"):
        read_volume(path)


def test_corrupt_gzip_is_rejected(tmp_path):
    path = write_volume(phantom(), tmp_path / "scan.nii.gz")
    data = bytearray(path.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
    path.write_bytes(bytes(data))
    with pytest.raises(InputError, match=re.escape(str(path))):
        read_volume(path)


@pytest.mark.parametrize("name, content, message", [
    ("empty.nii.gz", b"", "is empty"),
    ("notes.nrrd", b"these are my notes, not an image\n" * 20, "cannot be read"),
    ("notes.txt", b"hello", "not a supported input"),
    ("slice.dcm", b"hello", "single DICOM slice; pass the folder"),
])
def test_non_image_files_are_rejected(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as error:
        read_volume(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_missing_path_is_rejected(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_volume(tmp_path / "nope.nii.gz")


@pytest.mark.parametrize("shape, message", [((32, 32), "single 2D slice"), ((1, 32, 32), "single 2D slice"),
                                            ((2, 3, 8, 8), "4D image")])
def test_wrong_dimension_files_are_rejected(tmp_path, shape, message):
    path = tmp_path / "image.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros(shape, np.int16), isVector=False), str(path))
    with pytest.raises(InputError, match=message):
        read_volume(path)


def test_vector_image_is_rejected(tmp_path):
    path = tmp_path / "colour.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 8, 8, 3), np.uint8), isVector=True), str(path))
    with pytest.raises(InputError, match="3 values per voxel"):
        read_volume(path)


# --- DICOM -----------------------------------------------------------------------------------------------------

def test_dicom_series_is_read_in_physical_order_with_its_geometry(tmp_path):
    volume = phantom()
    files = write_dicom_series(volume, tmp_path / "series", patient_id=PATIENT_ID, patient_name=PATIENT_NAME)
    assert sorted(files) != files  # names do not follow slice order
    assert_same(read_volume(tmp_path / "series"), volume)


def test_dicom_series_stored_head_first_reads_in_ascending_normal_order(tmp_path):
    volume = phantom(direction=rotation(30, 10) @ np.diag([1.0, 1.0, -1.0]))
    write_dicom_series(volume, tmp_path / "series")
    read = read_volume(tmp_path / "series")
    # Same physical image, stored along the slice normal (row x column): slice order and axis reversed.
    flipped = sitk.Flip(volume.to_image(), [False, False, True])
    assert_same(read, Volume.from_image(flipped))


def test_find_series_describes_series_with_pseudonyms_only(tmp_path):
    write_dicom_series(phantom(), tmp_path / "a" / "ct", patient_id=PATIENT_ID, patient_name=PATIENT_NAME,
                       study_uid="1.2.3.999")
    (tmp_path / "a" / "notes.txt").write_text("not DICOM", encoding="utf-8")
    [series] = find_series(tmp_path)
    assert series.directory == tmp_path / "a" / "ct"
    assert (series.modality, series.n_slices) == ("CT", 12)
    assert series.slice_spacing == pytest.approx(2.5)
    z = np.asarray(series.positions) @ np.cross(series.orientation[:3], series.orientation[3:])
    assert np.all(np.diff(z) > 0)
    for key in (series.study_key, series.patient_key, series.series_key):
        assert re.fullmatch(r"[0-9a-f]{12}", key)
    fields = " ".join(str(getattr(series, f.name)) for f in dataclasses.fields(DicomSeries))
    assert_private(fields, repr(series))
    assert "1.2.3.999" not in fields


def test_series_of_one_patient_share_keys(tmp_path):
    write_dicom_series(phantom(), tmp_path / "s1", patient_id=PATIENT_ID, study_uid="1.2.3")
    write_dicom_series(phantom(depth=4), tmp_path / "s2", patient_id=PATIENT_ID, study_uid="1.2.3")
    write_dicom_series(phantom(depth=4), tmp_path / "s3", patient_id="OTHER", study_uid="1.2.4")
    one, two, three = find_series(tmp_path)
    assert one.patient_key == two.patient_key != three.patient_key
    assert one.study_key == two.study_key != three.study_key
    assert one.series_key != two.series_key


@pytest.mark.parametrize("layout", ["same folder", "sibling folders"])
def test_ct_is_picked_among_other_series(tmp_path, layout):
    volume = phantom()
    mr_folder = tmp_path / "study" if layout == "same folder" else tmp_path / "study" / "mr"
    ct_folder = tmp_path / "study" if layout == "same folder" else tmp_path / "study" / "ct"
    write_dicom_series(phantom(depth=20), mr_folder, modality="MR", series_uid="1.2.3.1")
    write_dicom_series(phantom(depth=1), ct_folder / "scout", series_uid="1.2.3.2")
    write_dicom_series(volume, ct_folder, series_uid="1.2.3.3")
    assert_same(read_volume(tmp_path / "study"), volume)


def test_several_ct_series_are_listed_without_identifiers(tmp_path):
    write_dicom_series(phantom(), tmp_path / "study" / "1", patient_id=PATIENT_ID, patient_name=PATIENT_NAME)
    write_dicom_series(phantom(depth=4), tmp_path / "study" / "2", patient_id=PATIENT_ID, patient_name=PATIENT_NAME)
    listing = r"holds 2 CT series \(1\) CT, 12 slices at 2.50 mm; 2\) CT, 4 slices at 2.50 mm\)"
    with pytest.raises(InputError, match=listing) as error:
        read_volume(tmp_path / "study")
    assert "pass the folder of one series" in str(error.value)
    assert_private(str(error.value))


def test_folder_without_ct_lists_what_it_holds(tmp_path):
    write_dicom_series(phantom(), tmp_path / "study" / "mr", modality="MR")
    write_dicom_series(phantom(depth=6), tmp_path / "study" / "pet", modality="PT")
    listing = r"holds no CT volume among its 2 series \(1\) MR, 12 slices.*2\) PT, 6 slices"
    with pytest.raises(InputError, match=listing):
        read_volume(tmp_path / "study")


def test_folder_without_dicom_is_rejected(tmp_path):
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    with pytest.raises(InputError, match="contains no DICOM series"):
        read_volume(tmp_path)


def _rejection(tmp_path: Path, options: ReadOptions | None = None, **defects) -> str:
    folder = tmp_path / "series"
    write_dicom_series(phantom(depth=defects.pop("depth", 12)), folder, patient_id=PATIENT_ID,
                       patient_name=PATIENT_NAME, **defects)
    [series] = find_series(folder)
    with pytest.raises(InputError) as checked:
        series.check(options)
    with pytest.raises(InputError) as read:
        read_volume(folder, options)
    message = str(read.value)
    assert str(checked.value) == message
    assert str(folder) in message and "\n" not in message
    assert_private(message)
    return message


@pytest.mark.parametrize("defects, expected", [
    ({"modality": "MR"}, "is an MR series, not CT"),
    ({"depth": 1}, "holds a single 2D slice, not a 3D volume"),
    ({"drop_slices": (5, 6)}, r"is missing 2 slice\(s\): a 7.50 mm gap between .* where the spacing is 2.50 mm"),
    ({"drop_slices": (5, 6, 7)}, r"is missing 3 slice\(s\)"),
    ({"duplicate_slices": (3,)}, r"has a duplicate slice: IM\d+ and IM\d+_copy|IM\d+_copy and IM\d+"),
    ({"tilt_degrees": 12.0, "options": NO_TILT_CORRECTION}, r"is tilted: the slices are sheared by 12.0 degrees"),
    ({"gantry_tilt_tag": 15.0, "options": NO_TILT_CORRECTION}, r"was acquired with a gantry tilt of 15 degrees"),
])
def test_defective_series_are_rejected_with_the_reason(tmp_path, defects, expected):
    assert re.search(expected, _rejection(tmp_path, **defects))


def test_truncated_dicom_file_is_named(tmp_path):
    files = write_dicom_series(phantom(), tmp_path / "series")
    _truncate(files[4], keep=0.7)
    with pytest.raises(InputError, match=f"{files[4].name} is an unreadable DICOM file"):
        read_volume(tmp_path / "series")


def test_multi_frame_dicom_is_rejected_with_advice(tmp_path):
    (tmp_path / "series").mkdir()
    image = phantom().to_image()
    image.SetMetaData("0008|0060", "CT")
    sitk.WriteImage(image, str(tmp_path / "series" / "volume.dcm"))  # GDCM writes a 3D image as one multi-frame file
    with pytest.raises(InputError, match="volume.dcm is a multi-frame DICOM file.*dcm2niix"):
        read_volume(tmp_path / "series")


# --- zips ------------------------------------------------------------------------------------------------------

def test_zip_of_a_series_is_read_and_cleaned_up(tmp_path):
    volume = phantom()
    write_dicom_series(volume, tmp_path / "scan")
    archive = zip_folder(tmp_path / "scan", tmp_path / "scan.zip")
    assert_same(read_volume(archive), volume)
    with extracted(archive) as folder:
        assert (folder / "scan").is_dir()
        [series] = find_series(folder, shown_as=archive)
        assert series.label == str(archive / "scan")
    assert not folder.exists()


def test_series_error_in_a_zip_names_the_zip(tmp_path):
    write_dicom_series(phantom(), tmp_path / "scan", modality="MR")
    archive = zip_folder(tmp_path / "scan", tmp_path / "scan.zip")
    with pytest.raises(InputError, match=re.escape(f"{archive / 'scan'} is an MR series")) as error:
        read_volume(archive)
    assert "ctslice-unzip" not in str(error.value)


def test_folder_is_yielded_unchanged(tmp_path):
    with extracted(tmp_path) as folder:
        assert folder == tmp_path


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Point the temporary folder into ``tmp_path/tmp`` so that anything written above it shows."""
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    return tmp_path


@pytest.mark.parametrize("member", ["../evil.txt", "series/../../evil.txt", "/tmp/evil.txt", "..\\evil.txt",
                                    "C:/evil.txt"])
def test_path_traversal_zip_is_rejected_before_writing(private_tmp, member):
    archive = write_malicious_zip(private_tmp / "bad.zip", member)
    with pytest.raises(InputError, match=f"{re.escape(str(archive))} is unsafe: member {re.escape(repr(member))}"):
        read_volume(archive)
    assert sorted(p.name for p in private_tmp.iterdir()) == ["bad.zip", "tmp"]
    assert list((private_tmp / "tmp").iterdir()) == []


def _zip_with_link(path: Path, name: str, target: str) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        link = zipfile.ZipInfo(name)
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, target)
        zf.writestr("scan/readme.txt", "hello")
    return path


def test_symlink_out_of_the_zip_is_rejected(tmp_path):
    archive = _zip_with_link(tmp_path / "link.zip", "scan/passwd", "../../etc/passwd")
    with pytest.raises(InputError, match="is a symbolic link to '../../etc/passwd', outside the archive"):
        with extracted(archive):
            pass


def test_symlink_inside_the_zip_is_skipped(tmp_path):
    archive = _zip_with_link(tmp_path / "link.zip", "scan/alias.txt", "readme.txt")
    with extracted(archive) as folder:
        assert sorted(p.name for p in (folder / "scan").iterdir()) == ["readme.txt"]


def test_zip_bomb_is_stopped(private_tmp, monkeypatch):
    archive = private_tmp / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("scan/zeros.bin", bytes(200_000))
    with pytest.raises(InputError, match="may be a zip bomb"):
        with extracted(archive, max_bytes=100_000):
            pass
    monkeypatch.setenv(LIMIT_ENV, "0.0001")  # about 107 kB
    with pytest.raises(InputError, match=f"raise the limit with {LIMIT_ENV}"):
        read_volume(archive)
    assert list((private_tmp / "tmp").iterdir()) == []


def test_corrupt_zip_is_rejected(tmp_path):
    archive = tmp_path / "broken.zip"
    archive.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(InputError, match=r"broken.zip is neither a folder nor a valid zip archive"):
        read_volume(archive)


# --- real scans ------------------------------------------------------------------------------------------------

def _manifest_rows(folder: Path) -> list[tuple[str, tuple[int, ...], tuple[float, ...]]]:
    """(file, size, spacing) for each small volume in the MANIFEST.md table (the ``large/`` ones are not for tests)."""
    rows = []
    for line in (folder / "MANIFEST.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip().strip("`") for c in line.split("|")[1:-1]]
        if len(cells) >= 4 and cells[0].endswith(".nii.gz") and not cells[0].startswith("large/"):
            rows.append((cells[0], tuple(map(int, cells[2].split(","))), tuple(map(float, cells[3].split(",")))))
    return rows


def test_real_volumes_read_with_their_manifest_geometry(shared_ct):
    rows = _manifest_rows(shared_ct)
    assert len(rows) == 5
    for name, size, spacing in rows:
        volume = read_volume(shared_ct / name)
        assert volume.array.dtype == np.int16, name
        assert volume.grid.size == size, name
        np.testing.assert_allclose(volume.spacing, spacing, atol=1e-3, err_msg=name)
        assert volume.array.min() < -900 and volume.array.max() > 300, name  # air and bone survive the cast


def test_int32_ras_volume_keeps_its_values_and_orientation(shared_ct):
    path = shared_ct / "ts_abdomen_pelvis_3mm.nii.gz"
    raw = sitk.ReadImage(str(path))
    assert raw.GetPixelID() == sitk.sitkInt32
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.array, np.clip(sitk.GetArrayFromImage(raw), -32768, 32767))
    np.testing.assert_allclose(volume.direction, raw.GetDirection())
