"""Real scanner exports: media with a DICOMDIR, index files and litter; tilted and unevenly spaced series.

Every series is sampled from one known volume, an analytic HU field ``truth(x, y, z)`` in patient
coordinates (mm), at the exact physical position of each pixel its headers declare. So whatever
geometry the export has (sheared slices, uneven steps), the volume ctslice reads can be checked
voxel by voxel against the truth at the physical point where ctslice puts that voxel.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from ctslice.data.cache import Cache
from ctslice.errors import InputError
from ctslice.io import ReadOptions, Volume, find_series, read_scan, read_volume, scan_series
from ctslice.io.geometry import thin_grid
from tests.dicom_utils import (
    LITTER,
    dicomdir_export,
    litter,
    make_uid,
    write_pixelless,
    write_slices,
)

PATIENT_ID = "PAT-SECRET-0815"
PATIENT_NAME = "Secretname^Otto"
SIZE, PIXEL = 64, 0.8
AXES = np.asarray(sitk.VersorTransform((0.3, 0.2, 1.0), 0.35).GetMatrix()).reshape(3, 3)  # a mildly oblique frame
ROW, COLUMN, NORMAL = AXES[:, 0], AXES[:, 1], AXES[:, 2]
ORIGIN = np.array([-25.0, -20.0, 60.0])
TOLERANCE_HU = 3.0  # linear interpolation of the smooth field (plus rounding to integer HU)


def truth(points: np.ndarray) -> np.ndarray:
    """The known volume: smooth in-plane structure and a ramp along z, about -700 to +500 HU."""
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    return -150.0 + 350.0 * np.sin(x / 9.0) * np.cos(y / 11.0) + 6.0 * (z - ORIGIN[2])


def pixel_points(position: np.ndarray, shape: tuple[int, int] = (SIZE, SIZE)) -> np.ndarray:
    """(rows, columns, 3) physical points of the pixels of a slice at ``position`` in the oblique frame."""
    j, i = np.mgrid[: shape[0], : shape[1]]
    return position + (i[..., None] * ROW + j[..., None] * COLUMN) * PIXEL


def sampled(position: np.ndarray, shape: tuple[int, int] = (SIZE, SIZE)) -> sitk.Image:
    image = sitk.GetImageFromArray(np.rint(truth(pixel_points(position, shape))).astype(np.int16))
    image.SetSpacing((PIXEL, PIXEL))
    return image


def write_series(folder: Path, heights, *, shear_mm_per_mm: float = 0.0, study: str = "study", **tags) -> list[Path]:
    """A CT series whose slice k lies ``heights[k]`` mm along the normal, sheared along the column."""
    slices = []
    for h in heights:
        position = ORIGIN + h * NORMAL + h * shear_mm_per_mm * COLUMN
        slices.append((sampled(position), position, (*ROW, *COLUMN)))
    names = [f"IM{(7 * k) % 101:05d}" for k in range(len(slices))]  # file order is not slice order
    return write_slices(slices, folder, names=names, patient_id=PATIENT_ID, patient_name=PATIENT_NAME,
                        study_uid=make_uid(study), series_uid=make_uid(folder), **tags)


def voxel_points(volume: Volume) -> np.ndarray:
    """(z, y, x, 3) physical points of every voxel of ``volume``."""
    k, j, i = np.mgrid[: volume.depth, : volume.array.shape[1], : volume.array.shape[2]]
    axes = np.asarray(volume.direction).reshape(3, 3)
    index = np.stack([i, j, k], axis=-1) * np.asarray(volume.spacing)
    return np.asarray(volume.origin) + index @ axes.T


def flat(output: str) -> str:
    """Printed output with Rich's line wrapping undone."""
    return " ".join(output.split())


def assert_private(*texts: str) -> None:
    for text in texts:
        assert PATIENT_ID not in text and "Secretname" not in text, text


# --- media: DICOMDIR, index files, litter, pixel-less DICOM ---------------------------------------------------------

THICK = 5.0 * np.arange(8)  # 8 slices at 5 mm
THIN = -2.0 + np.arange(40)  # 40 slices at 1 mm covering the 8 thick slabs exactly


def write_export(root: Path, layout: str) -> tuple[Path, int]:
    """A study with a thick and a thin series of one scan, as real media carry it; (folder, non-image files).

    ``dicomdir``: a pydicom file-set (PT*/ST*/SE*/IM*) found through its DICOMDIR; ``siblings``: the
    series in ``study/1`` and ``study/2``. Either way every folder holds a DIRFILE index and OS litter,
    and the series folders a presentation state and a dose report (DICOM without pixels).
    """
    staging = root / "staging" if layout == "dicomdir" else root / "study"
    thick = write_series(staging / "1", THICK, thickness=5.0)
    write_series(staging / "2", THIN, thickness=1.0)
    top, thick_folder, thin_folder = staging, staging / "1", staging / "2"
    if layout == "dicomdir":
        top = root / "export"
        dicomdir_export(staging, top)
        thick_folder, thin_folder = sorted({p.parent for p in top.rglob("IM*")},
                                           key=lambda folder: len(list(folder.iterdir())))
        assert len(list(thick_folder.iterdir())) == len(thick)
    study = make_uid("study")
    write_pixelless(thick_folder / "PR0001", "PR", study_uid=study, patient_id=PATIENT_ID)
    write_pixelless(thin_folder / "SR0001", "SR", study_uid=study, series_uid=make_uid(staging / "2"),
                    patient_id=PATIENT_ID)  # a dose report that shares the CT series' UID
    folders = [top, *(p for p in top.rglob("*") if p.is_dir())]
    extra = sum(len(litter(folder)) for folder in folders)
    pixelless = 2 + (1 if layout == "dicomdir" else 0)  # PR, SR (and the DICOMDIR itself)
    return top, extra + pixelless


@pytest.mark.parametrize("layout", ["dicomdir", "siblings"])
def test_media_export_is_found_with_its_non_image_files_skipped(tmp_path, layout):
    top, non_images = write_export(tmp_path, layout)
    scan = scan_series(top)
    assert len(scan.skipped) == non_images
    assert sorted((s.n_slices, round(s.slice_spacing, 3)) for s in scan.series) == [(8, 5.0), (40, 1.0)]
    assert all(not s.unreadable for s in scan.series)
    names = {p.name for p in scan.skipped}
    assert {"DIRFILE", "PR0001", "SR0001", *LITTER} <= names


@pytest.mark.parametrize("layout", ["dicomdir", "siblings"])
def test_media_export_preprocesses_into_one_real_pair_on_the_known_geometry(tmp_path, layout, cli):
    top, non_images = write_export(tmp_path, layout)
    output = tmp_path / "cache.h5"
    result = cli("preprocess", top, "-o", output, "--min-slices", "4")
    assert result.exit_code == 0, result.output
    assert f"skipped {non_images} file(s)" in flat(result.output)
    assert_private(result.output)
    with Cache(output) as cache:
        [case] = cache.case_ids()
        assert cache.failures() == []
        assert cache.info(case).pair_kind == "real"
        thick, thin = cache.volume(case, "thick"), cache.volume(case, "thin")
    assert thick.depth == 8 and thin.depth == 40
    np.testing.assert_allclose(thick.spacing, (PIXEL, PIXEL, 5.0), atol=1e-5)
    np.testing.assert_allclose(thick.origin, ORIGIN, atol=1e-4)
    np.testing.assert_allclose(np.asarray(thick.direction).reshape(3, 3), AXES, atol=1e-5)
    expected = thin_grid(thick.grid, 1.0)
    np.testing.assert_allclose(thin.origin, expected.origin, atol=1e-4)
    np.testing.assert_allclose(thin.origin, ORIGIN + THIN[0] * NORMAL, atol=1e-4)
    for volume in (thick, thin):
        assert np.abs(volume.array - truth(voxel_points(volume))).max() <= TOLERANCE_HU


def test_infer_on_an_export_with_two_ct_series_lists_them_in_one_line(tmp_path, cli):
    top, _ = write_export(tmp_path, "dicomdir")
    result = cli("infer", top, "-o", tmp_path / "out.nii.gz", "--method", "cubic")
    assert result.exit_code == 2
    [line] = result.output.splitlines()
    assert re.search(r"holds 2 CT series \(1\) CT, (8|40) slices at (5|1)\.00 mm; 2\) CT, (40|8) slices", line)
    assert "pass the folder of one series" in line
    assert_private(line)
    assert not (tmp_path / "out.nii.gz").exists()


def test_infer_picks_the_one_ct_series_of_an_export_among_litter(tmp_path, cli):
    top, _ = write_export(tmp_path, "siblings")
    output = tmp_path / "thin.nii.gz"
    result = cli("infer", top / "1", "-o", output, "--method", "cubic")
    assert result.exit_code == 0, result.output
    assert "skipped 6 file(s)" in flat(result.output)  # DIRFILE, 4 litter files, the presentation state
    thin = read_volume(output)
    np.testing.assert_allclose(thin.origin, ORIGIN - 2.0 * NORMAL, atol=1e-3)
    assert thin.depth == 40


def test_dicomdir_joins_a_series_split_over_two_folders(tmp_path):
    """Only the DICOMDIR knows that the files of SE000009 continue a series of another folder."""
    top, _ = write_export(tmp_path, "dicomdir")
    dicomdir = pydicom.dcmread(top / "DICOMDIR")
    moved = 0
    for record in dicomdir.DirectoryRecordSequence:
        path = list(record.get("ReferencedFileID") or [])
        if record.DirectoryRecordType == "IMAGE" and path[2] == "SE000001" and int(path[3][2:]) >= 20:
            (top.joinpath(*path[:2]) / "SE000009").mkdir(exist_ok=True)
            top.joinpath(*path).rename(top.joinpath(*path[:2], "SE000009", path[3]))
            record.ReferencedFileID = [*path[:2], "SE000009", path[3]]  # same length: record offsets hold
            moved += 1
    dicomdir.save_as(top / "DICOMDIR")
    assert moved == 20
    assert sorted(s.n_slices for s in find_series(top)) == [8, 40]
    shutil.move(top / "DICOMDIR", tmp_path / "DICOMDIR")  # without it, the folders hold two 20-slice halves
    assert sorted(s.n_slices for s in find_series(top)) == [8, 20, 20]


def test_truncated_slice_listed_in_a_dicomdir_is_named_not_interpolated(tmp_path):
    top, _ = write_export(tmp_path, "dicomdir")
    victim = sorted(top.rglob("IM*"))[5]
    victim.write_bytes(victim.read_bytes()[:-300])
    [bad] = [s for s in find_series(top) if s.unreadable]
    with pytest.raises(InputError, match=f"{victim.name} is an unreadable DICOM file"):
        bad.read()


def test_damaged_dicomdir_falls_back_to_the_folders(tmp_path):
    top, _ = write_export(tmp_path, "dicomdir")
    (top / "DICOMDIR").write_bytes((top / "DICOMDIR").read_bytes()[:400])
    assert sorted(s.n_slices for s in find_series(top)) == [8, 40]


def test_truncated_image_beside_litter_is_still_named(tmp_path):
    files = write_series(tmp_path / "s", THICK)
    litter(tmp_path / "s")
    files[3].write_bytes(files[3].read_bytes()[:-500])
    with pytest.raises(InputError, match=f"{files[3].name} is an unreadable DICOM file"):
        read_volume(tmp_path / "s")


# --- gantry tilt -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tag", [None, 12.0])
def test_tilted_series_is_resampled_onto_the_untilted_box_that_holds_it(tmp_path, tag):
    heights = 2.5 * np.arange(10)
    shear = math.tan(math.radians(12.0))
    write_series(tmp_path / "tilted", heights, shear_mm_per_mm=shear, gantry_tilt_tag=tag)
    scan = read_scan(tmp_path / "tilted")
    volume = scan.volume
    assert scan.report.tilt_degrees == pytest.approx(12.0, abs=0.01)
    assert scan.report.spacing_range is None
    [line] = scan.report.lines()
    assert "gantry tilt of 12.0 degrees corrected" in line
    # the axis-aligned box of the slice-plane frame that holds every sheared slice
    np.testing.assert_allclose(np.asarray(volume.direction).reshape(3, 3), AXES, atol=1e-6)
    np.testing.assert_allclose(volume.spacing, (PIXEL, PIXEL, 2.5), atol=1e-6)
    np.testing.assert_allclose(volume.origin, ORIGIN, atol=1e-4)
    shift = heights[-1] * shear
    assert volume.array.shape == (10, SIZE + round(shift / PIXEL), SIZE)
    # every voxel inside a slice's footprint holds the truth at its physical point; outside, air
    points = voxel_points(volume)
    row_mm = np.arange(volume.array.shape[1])[None, :] * PIXEL - heights[:, None] * shear  # in the slice's own rows
    inside = (row_mm >= PIXEL) & (row_mm <= (SIZE - 2) * PIXEL)
    outside = (row_mm < -PIXEL) | (row_mm > SIZE * PIXEL)
    error = np.abs(volume.array - truth(points))
    assert error[inside].max() <= TOLERANCE_HU
    assert np.all(volume.array[outside] == -1024)
    # read as today (the sheared slices stacked as if untilted), the error would be tens of HU
    sheared = truth(points[:, : SIZE, :] + heights[:, None, None, None] * shear * COLUMN)
    assert np.abs(sheared - truth(points[:, : SIZE, :])).max() > 50


def test_tilt_correction_can_be_refused(tmp_path, cli):
    write_series(tmp_path / "tilted", 2.5 * np.arange(10), shear_mm_per_mm=math.tan(math.radians(12.0)))
    with pytest.raises(InputError, match="is tilted: the slices are sheared by 12.0 degrees"):
        read_volume(tmp_path / "tilted", ReadOptions(tilt_correction=False))
    result = cli("infer", tmp_path / "tilted", "-o", tmp_path / "out.nii.gz", "--method", "cubic",
                 "--no-tilt-correction")
    assert result.exit_code == 2 and len(result.output.splitlines()) == 1
    assert "is tilted" in result.output and "turn tilt correction on" in result.output


def test_preprocess_corrects_a_tilted_series_with_a_note_unless_told_not_to(tmp_path, cli):
    write_series(tmp_path / "in" / "tilted", np.arange(40.0), shear_mm_per_mm=math.tan(math.radians(10.0)))
    result = cli("preprocess", tmp_path / "in", "-o", tmp_path / "cache.h5", "--min-slices", "4")
    assert result.exit_code == 0, result.output
    assert re.search(r"note: tilted: \S+tilted: gantry tilt of 10.0 degrees corrected", flat(result.output))
    with Cache(tmp_path / "cache.h5") as cache:
        [case] = cache.case_ids()
        thin = cache.volume(case, "thin")
    np.testing.assert_allclose(np.asarray(thin.direction).reshape(3, 3), AXES, atol=1e-5)
    assert thin.array.shape[1] == SIZE + round(39 * math.tan(math.radians(10.0)) / PIXEL)
    refused = cli("preprocess", tmp_path / "in", "-o", tmp_path / "refused.h5", "--no-tilt-correction")
    assert refused.exit_code == 1, refused.output  # every case excluded: the run fails, the reason is kept
    with Cache(tmp_path / "refused.h5") as cache:
        assert cache.case_ids() == [] and "is tilted" in cache.failures()[0].reason


def test_tilted_series_infers_to_the_physical_extent_of_the_input(tmp_path, cli):
    heights = 5.0 * np.arange(8)
    write_series(tmp_path / "tilted", heights, shear_mm_per_mm=math.tan(math.radians(15.0)), gantry_tilt_tag=15.0)
    output = tmp_path / "thin.nii.gz"
    result = cli("infer", tmp_path / "tilted", "-o", output, "--method", "cubic")
    assert result.exit_code == 0, result.output
    assert "note: gantry tilt of 15.0 degrees corrected" in flat(result.output)
    thin = read_volume(output)
    np.testing.assert_allclose(np.asarray(thin.direction).reshape(3, 3), AXES, atol=1e-5)
    # along the normal: the 8 slabs of 5 mm, from 2.5 mm before the first slice to 2.5 mm after the last
    positions = thin.grid.slice_positions() - ORIGIN @ NORMAL
    assert thin.depth == 40
    assert positions[0] - 0.5 == pytest.approx(-2.5, abs=1e-3)
    assert positions[-1] + 0.5 == pytest.approx(heights[-1] + 2.5, abs=1e-3)
    # in-plane: every sheared slice's footprint
    assert thin.array.shape[1] * PIXEL == pytest.approx(SIZE * PIXEL + heights[-1] * math.tan(math.radians(15.0)),
                                                        abs=PIXEL)


# --- uneven spacing --------------------------------------------------------------------------------------------------

UNEVEN = np.cumsum([0.0, 2.5, 2.5, 1.25, 1.25, 2.5, 3.75, 2.5, 2.5])  # steps 1.25 to 3.75 mm, extent 18.75 mm


@pytest.mark.parametrize("z_spacing, depth", [(None, 16), (1.0, 19)])
def test_unevenly_spaced_series_is_resampled_to_uniform_spacing(tmp_path, z_spacing, depth):
    write_series(tmp_path / "uneven", UNEVEN)
    scan = read_scan(tmp_path / "uneven", ReadOptions(z_spacing=z_spacing))
    volume = scan.volume
    assert scan.report.spacing_range == pytest.approx((1.25, 3.75))
    assert scan.report.tilt_degrees == 0.0
    assert scan.report.lines() == [f"uneven slice spacing (1.25 to 3.75 mm) resampled to a uniform "
                                   f"{z_spacing or 1.25:.3g} mm"]
    np.testing.assert_allclose(volume.spacing, (PIXEL, PIXEL, z_spacing or 1.25), atol=1e-6)
    np.testing.assert_allclose(volume.origin, ORIGIN, atol=1e-4)
    np.testing.assert_allclose(np.asarray(volume.direction).reshape(3, 3), AXES, atol=1e-6)
    assert volume.array.shape == (depth, SIZE, SIZE)
    assert np.abs(volume.array - truth(voxel_points(volume))).max() <= TOLERANCE_HU


def test_unevenly_spaced_series_infers_with_z_spacing(tmp_path, cli):
    write_series(tmp_path / "uneven", UNEVEN)
    output = tmp_path / "thin.nii.gz"
    result = cli("infer", tmp_path / "uneven", "-o", output, "--method", "cubic", "--z-spacing", "2.5",
                 "--thin-spacing", "0.5")
    assert result.exit_code == 0, result.output
    assert "uneven slice spacing (1.25 to 3.75 mm) resampled to a uniform 2.5 mm" in flat(result.output)
    thin = read_volume(output)
    positions = thin.grid.slice_positions() - ORIGIN @ NORMAL
    assert positions[0] - 0.25 == pytest.approx(-1.25, abs=1e-3)  # the thick grid: 0 to 17.5 mm at 2.5 mm
    assert positions[-1] + 0.25 == pytest.approx(17.5 + 1.25, abs=1e-3)


def test_gap_too_wide_to_interpolate_is_refused_with_its_location(tmp_path, cli):
    heights = np.cumsum([0.0, 2.5, 2.5, 7.0, 2.5, 2.5])  # a 7 mm gap: 2.8 typical steps
    files = write_series(tmp_path / "gap", heights)
    with pytest.raises(InputError) as error:
        read_volume(tmp_path / "gap")
    message = str(error.value)
    assert f"a 7.00 mm gap between {files[2].name} (z = " in message and f"and {files[3].name} (z = " in message
    assert "where the spacing is 2.50 mm, more than 2.5 steps to interpolate across" in message
    result = cli("infer", tmp_path / "gap", "-o", tmp_path / "out.nii.gz", "--method", "cubic")
    assert result.exit_code == 2 and result.output.splitlines() == [f"error: {message}"]


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "1e-5", "500"])
def test_z_spacing_outside_its_domain_is_refused_before_any_work(tmp_path, cli, value):
    write_series(tmp_path / "uneven", UNEVEN)
    result = cli("infer", tmp_path / "uneven", "-o", tmp_path / "out.nii.gz", "--method", "cubic",
                 "--z-spacing", value)
    assert result.exit_code == 2 and "--z-spacing" in result.output and len(result.output.splitlines()) == 1
    assert not (tmp_path / "out.nii.gz").exists()


# --- reasons that name the files (issue 16) --------------------------------------------------------------------------

def _series_with(tmp_path: Path, odd: int, **change) -> tuple[Path, list[Path]]:
    slices = []
    for k, h in enumerate(2.5 * np.arange(6)):
        position = ORIGIN + h * NORMAL
        orientation = change.get("orientation", (*ROW, *COLUMN)) if k == odd else (*ROW, *COLUMN)
        shape = change.get("shape", (SIZE, SIZE)) if k == odd else (SIZE, SIZE)
        slices.append((sampled(position, shape), position, orientation if _writable(orientation) else
                       (*ROW, *COLUMN)))
    names = [f"IM{k:05d}" for k in range(6)]
    files = write_slices(slices, tmp_path / "s", names=names, patient_id=PATIENT_ID, patient_name=PATIENT_NAME)
    if "orientation" in change and not _writable(change["orientation"]):  # GDCM refuses to write it: patch it in
        ds = pydicom.dcmread(files[odd])
        ds.ImageOrientationPatient = list(change["orientation"])
        ds.save_as(files[odd])
    return tmp_path / "s", files


def _writable(orientation) -> bool:
    row, column = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    return bool(np.linalg.norm(row) > 0.99 and np.linalg.norm(column) > 0.99 and abs(row @ column) < 1e-6)


@pytest.mark.parametrize("change, expected", [
    ({"shape": (48, 48)}, r"IM00003 is 48 x 48 pixels where 5 other slice\(s\) are 64 x 64"),
    ({"orientation": (1.0, 0.0, 0.0, 0.0, 0.0, 1.0)},
     r"the slices differ in ImageOrientationPatient \(IM00000 and IM00003, 1 of 6 slices unlike the first\)"),
    ({"orientation": (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)}, r"IM00003 has a degenerate orientation"),
    ({"orientation": (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)}, r"IM00003 has a degenerate orientation"),
])
def test_inconsistent_slices_are_named(tmp_path, change, expected):
    folder, _ = _series_with(tmp_path, 3, **change)
    with pytest.raises(InputError) as error:
        read_volume(folder)
    message = str(error.value)
    assert re.search(expected, message), message
    assert "\n" not in message
    assert_private(message)


def test_slices_without_the_part10_preamble_read_as_the_same_series(tmp_path):
    """Older exports write each data set from its first byte (no 128-byte preamble, no ``DICM``, no file
    meta): they are the same slices. A file that only starts like one (group 0008, then garbage) is skipped."""
    files = write_series(tmp_path / "part10", np.arange(6) * 2.0)
    bare = tmp_path / "bare"
    bare.mkdir()
    for file in files:
        dataset = pydicom.dcmread(file)
        dataset.file_meta, dataset.preamble = pydicom.dataset.FileMetaDataset(), None
        pydicom.dcmwrite(bare / file.name, dataset, enforce_file_format=False, implicit_vr=True, little_endian=True)
        assert (bare / file.name).read_bytes()[:2] == b"\x08\x00"
    (bare / "LOOKALIKE").write_bytes(b"\x08\x00\x05\x00" + bytes(range(256)) * 4)
    expected, scan = read_scan(tmp_path / "part10"), read_scan(bare)
    assert scan.skipped == 1
    assert scan.volume.array.shape == (6, SIZE, SIZE)
    np.testing.assert_array_equal(scan.volume.array, expected.volume.array)
    np.testing.assert_allclose(scan.volume.origin, expected.volume.origin, atol=1e-6)
    np.testing.assert_allclose(scan.volume.spacing, expected.volume.spacing, atol=1e-6)


def test_a_series_mixing_1_and_5_mm_steps_is_resampled_not_refused(tmp_path):
    """Steps from 1 to 7 mm around a typical 5 mm (as in the head CT of issue 17) grow the grid about 4x when
    resampled to the smallest step: a real series, read; only far larger growth is refused as a bomb."""
    steps = [5, 5, 5, 1, 5, 5, 5, 5, 1, 5, 5, 7]
    write_series(tmp_path / "mixed", np.cumsum([0.0, *steps]))
    scan = read_scan(tmp_path / "mixed")
    volume = scan.volume
    assert scan.report.spacing_range == pytest.approx((1.0, 7.0))
    assert volume.array.shape == (sum(steps) + 1, SIZE, SIZE)  # 55 slices at 1 mm from 13
    np.testing.assert_allclose(volume.spacing, (PIXEL, PIXEL, 1.0), atol=1e-6)
    np.testing.assert_allclose(volume.origin, ORIGIN, atol=1e-4)
    assert np.abs(volume.array - truth(voxel_points(volume))).max() <= TOLERANCE_HU
