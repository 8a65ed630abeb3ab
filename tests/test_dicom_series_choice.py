"""Real exports, round two (issue 22): series that are not volumes are skipped, thick pairs with thin of its kernel.

Each export is built with pydicom the way a Philips CD carries a head CT: an "Exam Summary" screenshot
(Secondary Capture, Modality CT, ``DERIVED\\SECONDARY\\PATIENT_INFO``, RGB), a two-image localizer, a 5 mm
series and two 1 mm series of the same scan reconstructed with different kernels, under a DICOMDIR (with
DIRFILE indexes beside it) or under DIRFILE indexes alone. Every CT slice samples one analytic HU field at
the physical points its headers declare; the bone-kernel series adds ``BONE_OFFSET`` HU to it, so a pair
made with the wrong series fails the voxel check. 16 x 16 pixels, so each export costs milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from ctslice.data.cache import Cache
from ctslice.data.preprocess import PreprocessOptions, run_preprocess
from ctslice.errors import InputError
from ctslice.io import Volume, read_volume, scan_series
from ctslice.io.dicom_choice import choose_series, skip_reason
from ctslice.io.geometry import thin_grid
from tests.dicom_utils import dicomdir_export, litter, make_uid

SECRET_ID, SECRET_NAME = "PAT-SECRET-2210", "Geheim^Erika"
CT_IMAGE, SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.7"
N, PIXEL = 16, 1.5
ORIGIN = np.array([-12.0, -10.0, 40.0])
THICK = 5.0 * np.arange(8)  # 8 slices at 5 mm
THIN = -2.0 + np.arange(40)  # 40 slices at 1 mm covering the 8 thick slabs exactly
BONE_OFFSET = 200  # HU the bone-kernel series adds: a pair made with it is caught voxel by voxel
STD, BONE = "STD BRAIN 1MM, iDose", "BONE BRAIN 1MM"


def truth(points: np.ndarray) -> np.ndarray:
    """The scan: smooth in-plane structure and a ramp along z, in HU, at physical points (mm)."""
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    return -200.0 + 300.0 * np.sin(x / 7.0) * np.cos(y / 5.0) + 8.0 * (z - ORIGIN[2])


def dataset(sop_class: str, study: str, series: str, number: int, description: str, k: int) -> Dataset:
    """The header every image of the export shares (patient secrets included, to check they never leak)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, make_uid(series, k)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta, ds.preamble = meta, b"\0" * 128
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName, ds.PatientID = "CT", SECRET_NAME, SECRET_ID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20240101", "120000", "1"
    ds.SeriesNumber, ds.SeriesDescription, ds.InstanceNumber = number, description, k + 1
    return ds


def write_ct(folder: Path, study: str, number: int, description: str, heights, kernel: str | None, *,
             offset: int = 0, image_type=("ORIGINAL", "PRIMARY", "AXIAL"), orientations=None,
             thickness: float | None = None) -> list[Path]:
    """A CT series sampling ``truth`` (+ ``offset``) at ``heights`` mm along z; ``kernel`` None: no tag;
    SliceThickness ``thickness`` (default 5 mm for the thick heights, else 1 mm)."""
    folder.mkdir(parents=True, exist_ok=True)
    series = make_uid(study, number)
    files = []
    for k, height in enumerate(heights):
        orientation = orientations[k] if orientations else (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
        row, column = np.asarray(orientation[:3]), np.asarray(orientation[3:])
        position = ORIGIN + height * np.cross(row, column)
        j, i = np.mgrid[:N, :N]
        points = position + (i[..., None] * row + j[..., None] * column) * PIXEL
        ds = dataset(CT_IMAGE, study, series, number, description, k)
        ds.ImageType = list(image_type)
        if kernel is not None:
            ds.ConvolutionKernel = kernel
        ds.ImagePositionPatient, ds.ImageOrientationPatient = list(position), list(orientation)
        ds.PixelSpacing = [PIXEL, PIXEL]
        ds.SliceThickness = thickness or (5.0 if len(heights) == len(THICK) else 1.0)
        ds.Rows = ds.Columns = N
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (np.rint(truth(points)).astype(np.int16) + offset + 1024).astype(np.int16).tobytes()
        files.append(folder / f"I{10 * (k + 1)}")
        ds.save_as(files[-1], enforce_file_format=True)
    return files


def write_screenshot(folder: Path, study: str, count: int = 2) -> list[Path]:
    """The scanner's "Exam Summary": Secondary Capture, Modality CT, DERIVED\\SECONDARY, RGB, no geometry."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(count):
        ds = dataset(SECONDARY_CAPTURE, study, make_uid(study, 4010), 4010, "Exam Summary", k)
        ds.ImageType = ["DERIVED", "SECONDARY", "PATIENT_INFO"]
        ds.ConversionType = "WSD"
        ds.Rows, ds.Columns = 13, 15  # 741 x 650 on the real CD
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
        ds.PixelData = np.full((13, 15, 3), 90 + k, np.uint8).tobytes()
        files.append(folder / f"I{40 + 10 * k}")
        ds.save_as(files[-1], enforce_file_format=True)
    return files


def write_study(folder: Path, *, thick_kernel: str | None = "UB", std_kernel: str | None = "UB",
                bone_kernel: str | None = "YC", bone_description: str = BONE) -> str:
    """A Philips-like study in ``folder/S*``: screenshot, localizer, 5 mm, 1 mm standard, 1 mm bone."""
    study = make_uid(folder, "study")
    write_screenshot(folder / "S4010", study)
    write_ct(folder / "S1", study, 1, "Surview", [0.0, 0.0], None, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
             orientations=[(1.0, 0.0, 0.0, 0.0, 0.0, -1.0), (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)])
    write_ct(folder / "S3", study, 3, "STD BRAIN 5MM", THICK, thick_kernel)
    write_ct(folder / "S4", study, 4, STD, THIN, std_kernel)
    write_ct(folder / "S5", study, 5, bone_description, THIN, bone_kernel, offset=BONE_OFFSET)
    return study


def write_export(root: Path, layout: str, **kernels) -> tuple[Path, int]:
    """Two studies (``S21570`` and ``S21610``) as a CD carries them; returns (top folder, non-image files).

    ``dicomdir``: a pydicom file-set (PT*/ST*/SE*/I*) found through its DICOMDIR, with a DIRFILE and OS
    litter in every folder; ``dirfile``: ``DICOM/S21570/S3/I10``... with a DIRFILE and litter in every
    folder and no DICOMDIR, as the Philips export of the issue once its DICOMDIR is lost.
    """
    staging = root / ("staging" if layout == "dicomdir" else "export") / "DICOM"
    for name in ("S21570", "S21610"):
        write_study(staging / name, **kernels)
    top = staging.parent
    if layout == "dicomdir":
        top = root / "export"
        dicomdir_export(staging, top)
    folders = [top, *(p for p in top.rglob("*") if p.is_dir())]
    return top, sum(len(litter(folder)) for folder in folders) + (layout == "dicomdir")


def voxel_points(volume: Volume) -> np.ndarray:
    """(z, y, x, 3) physical points of every voxel of ``volume``."""
    k, j, i = np.mgrid[: volume.depth, : volume.array.shape[1], : volume.array.shape[2]]
    index = np.stack([i, j, k], axis=-1) * np.asarray(volume.spacing)
    return np.asarray(volume.origin) + index @ np.asarray(volume.direction).reshape(3, 3).T


def flat(output: str) -> str:
    return " ".join(output.split())


def assert_private(*texts: str) -> None:
    for text in texts:
        assert SECRET_ID not in text and "Geheim" not in text, text


def assert_on_truth(thick: Volume, thin: Volume) -> None:
    """Both volumes on the grids the headers declare, every voxel the analytic field (not the bone offset)."""
    assert thick.depth == 8 and thin.depth == 40
    np.testing.assert_allclose(thick.spacing, (PIXEL, PIXEL, 5.0), atol=1e-5)
    np.testing.assert_allclose(thick.origin, ORIGIN, atol=1e-4)
    np.testing.assert_allclose(thick.direction, np.eye(3).ravel(), atol=1e-6)
    np.testing.assert_allclose(thin.origin, thin_grid(thick.grid, 1.0).origin, atol=1e-4)
    np.testing.assert_allclose(thin.origin, ORIGIN + (0, 0, THIN[0]), atol=1e-4)
    for volume in (thick, thin):
        assert np.abs(volume.array - truth(voxel_points(volume))).max() <= 1.0


# --- the export, end to end -----------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["dicomdir", "dirfile"])
def test_export_skips_the_screenshot_and_localizer_and_pairs_the_same_kernel(tmp_path, cli, layout):
    """Before: both studies excluded ("I40 is a colour image (RGB)"), exit 1."""
    top, non_images = write_export(tmp_path, layout)
    output = tmp_path / "cache.h5"
    result = cli("preprocess", top, "-o", output, "--min-slices", "4")
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    assert f"skipped {non_images} file(s)" in text
    assert text.count("skipped 2 series that are not CT volumes (1 localizer, 1 secondary capture)") == 2
    assert "Series paired" in text
    assert text.count("thick series 3 (STD BRAIN 5MM, kernel UB, 5.00 mm) with thin series 4 (STD BRAIN 1MM, "
                      "iDose, kernel UB, 1.00 mm): same kernel") == 2
    assert_private(result.output)
    with Cache(output) as cache:
        assert cache.failures() == []
        assert len(cache.case_ids()) == 2  # S21570 and S21610 (ST000000 and ST000001 under the DICOMDIR)
        for case in cache.case_ids():
            assert cache.info(case).pair_kind == "real"
            record = cache.series(case)
            assert (record["thick"]["number"], record["thin"]["number"]) == (3, 4)
            assert (record["thick"]["kernel"], record["thin"]["kernel"]) == ("UB", "UB")
            assert record["basis"] == "same kernel"
            assert [s["number"] for s in record["unused"]] == [5]
            assert record["left_out"] == "series 5 (BONE BRAIN 1MM, kernel YC, 1.00 mm)"
            assert record["skipped"] == {"localizer": 1, "secondary capture": 1}
            assert_on_truth(cache.volume(case, "thick"), cache.volume(case, "thin"))
        assert_private(json.dumps([cache.series(c) for c in cache.case_ids()]))


@pytest.mark.parametrize("kernels, basis", [
    ({"std_kernel": None}, "no other series has the same kernel"),  # the right thin series lacks its kernel tag
    ({"thick_kernel": None}, "nearest description"),  # the thick one does: descriptions decide
    ({"thick_kernel": None, "std_kernel": None, "bone_kernel": None}, "nearest description"),
])
def test_a_missing_kernel_tag_falls_back_to_the_description(tmp_path, kernels, basis):
    write_study(tmp_path / "study", **kernels)
    choice = choose_series(scan_series(tmp_path / "study").series, tmp_path / "study")
    thick, thin = choice.chosen
    assert (thick.number, thin.number) == (3, 4)
    assert choice.basis == basis
    assert [s.number for s in choice.unused] == [5]
    assert sorted(reason for _, reason in choice.skipped) == ["localizer", "secondary capture"]
    volumes = [volume for volume, _ in choice.load()]
    assert np.abs(volumes[1].array - truth(voxel_points(volumes[1]))).max() <= 1.0  # the standard kernel's voxels


def test_a_lone_thin_series_of_another_kernel_is_paired_with_a_note(tmp_path):
    study = make_uid("lone")
    write_ct(tmp_path / "S3", study, 3, "STD BRAIN 5MM", THICK, "UB")
    write_ct(tmp_path / "S5", study, 5, BONE, THIN, "YC")
    choice = choose_series(scan_series(tmp_path).series, tmp_path)
    assert [s.number for s in choice.chosen] == [3, 5] and choice.basis == "" and not choice.unused
    assert choice.notes() == ["the thick and thin series were reconstructed with different kernels (UB and YC): the "
                              "pair teaches a change of kernel too"]


def test_what_is_not_a_volume_is_told_by_its_kind(tmp_path):
    study = make_uid("kinds")
    write_screenshot(tmp_path / "sc", study)
    write_ct(tmp_path / "scout", study, 1, "Surview", [0.0, 0.0], None,
             image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    write_ct(tmp_path / "derived", study, 7, "Saved view", THICK, "UB", image_type=("DERIVED", "SECONDARY", "AXIAL"))
    write_ct(tmp_path / "two", study, 8, "Two images", [0.0, 5.0], "UB")
    write_ct(tmp_path / "volume", study, 3, "STD BRAIN 5MM", THICK, "UB")
    kinds = {s.number: skip_reason(s) for s in scan_series(tmp_path).series}
    assert kinds == {4010: "secondary capture", 1: "localizer", 7: "derived secondary image",
                     8: "fewer than 3 slices", 3: None}


# --- when the rule cannot decide, and naming the series ---------------------------------------------------------------

def test_equally_alike_thin_series_are_refused_until_one_is_named(tmp_path, cli):
    """Two 1 mm series of the kernel of the 5 mm one, descriptions equally near: the user names one."""
    write_study(tmp_path / "in" / "study", bone_kernel="UB", bone_description="STD BRAIN 1MM, iDose")
    refused = cli("preprocess", tmp_path / "in", "-o", tmp_path / "refused.h5", "--min-slices", "4")
    assert refused.exit_code == 1, refused.output
    with Cache(tmp_path / "refused.h5") as cache:
        [failure] = cache.failures()
    thick = "series 3 (STD BRAIN 5MM, kernel UB, 5.00 mm)"
    assert failure.reason == (f"{tmp_path / 'in' / 'study'}: cannot tell which series to pair, 2 pairs are "
                              f"reconstructed equally alike ({thick} with series 4 (STD BRAIN 1MM, iDose, kernel UB, "
                              f"1.00 mm); {thick} with series 5 (STD BRAIN 1MM, iDose, kernel UB, 1.00 mm)); name the "
                              "series to use (by number or description)")
    for name in ("5", "std brain 5mm"):  # the thin one by number; the thick one alone does not settle it
        output = tmp_path / f"named-{name.replace(' ', '_')}.h5"
        result = cli("preprocess", tmp_path / "in", "-o", output, "--min-slices", "4", "--series", name)
        if name == "5":
            assert result.exit_code == 0, result.output
            assert "with thin series 5 (STD BRAIN 1MM, iDose, kernel UB, 1.00 mm): named" in flat(result.output)
            with Cache(output) as cache:
                record = cache.series("study")
                thin = cache.volume("study", "thin")
            assert (record["thick"]["number"], record["thin"]["number"], record["basis"]) == (3, 5, "named")
            assert np.abs(thin.array - BONE_OFFSET - truth(voxel_points(thin))).max() <= 1.0  # series 5's voxels
        else:
            assert result.exit_code == 1 and "cannot tell which series to pair" in flat(result.output)


def test_series_named_by_description_overrides_the_kernel_rule_and_a_name_matching_nothing_is_a_note(tmp_path, cli):
    write_study(tmp_path / "in" / "study")
    output = tmp_path / "cache.h5"
    result = cli("preprocess", tmp_path / "in", "-o", output, "--min-slices", "4", "--series", "bone brain 1mm")
    assert result.exit_code == 0, result.output
    with Cache(output) as cache:
        assert cache.series("study")["thin"]["number"] == 5
        assert cache.options("study")["series"] == ["bone brain 1mm"]  # part of the content hash: redone when changed
    again = cli("preprocess", tmp_path / "in", "-o", output, "--min-slices", "4", "--series", "42")
    assert again.exit_code == 0, again.output
    assert "no CT series here is named '42'; chosen by kernel and description instead" in flat(again.output)
    with Cache(output) as cache:
        assert cache.series("study")["thin"]["number"] == 4


@pytest.mark.parametrize("value", ["", "   ", "x" * 65, "STD\\BRAIN", "STD\nBRAIN"])
def test_a_series_name_that_can_match_nothing_is_one_line_before_any_work(tmp_path, cli, value):
    write_study(tmp_path / "in" / "study")
    result = cli("preprocess", tmp_path / "in", "-o", tmp_path / "cache.h5", "--series", value)
    assert result.exit_code == 2, result.output
    [line] = result.output.splitlines()
    assert line.startswith("error: --series ") and "give a series number (such as 4) or a series description" in line
    assert not (tmp_path / "cache.h5").exists()


# --- failures name the series; series that are not used cannot fail the study -----------------------------------------

def test_a_chosen_series_that_fails_is_named_and_an_unused_one_cannot_fail_the_study(tmp_path, cli):
    write_study(tmp_path / "in" / "bad_thin")
    (tmp_path / "in" / "bad_thin" / "S4" / "I200").unlink()  # the standard 1 mm series loses slices 19 and 20
    (tmp_path / "in" / "bad_thin" / "S4" / "I190").unlink()
    write_study(tmp_path / "in" / "bad_bone")
    (tmp_path / "in" / "bad_bone" / "S5" / "I200").unlink()  # only the bone series, which is not paired
    (tmp_path / "in" / "bad_bone" / "S5" / "I190").unlink()
    output = tmp_path / "cache.h5"
    result = cli("preprocess", tmp_path / "in", "-o", output, "--min-slices", "4")
    assert result.exit_code == 0, result.output
    with Cache(output) as cache:
        assert cache.case_ids() == ["bad_bone"]
        [failure] = cache.failures()
        assert_on_truth(cache.volume("bad_bone", "thick"), cache.volume("bad_bone", "thin"))
    assert failure.case_id == "bad_thin"
    assert failure.reason.startswith(f"series 4 (STD BRAIN 1MM, iDose): {tmp_path / 'in' / 'bad_thin' / 'S4'} is "
                                     "missing 2 slice(s)")
    assert_private(result.output, failure.reason)


def test_a_study_of_screenshots_and_a_localizer_only_is_excluded_listing_what_it_holds(tmp_path, cli):
    study = make_uid("only")
    write_screenshot(tmp_path / "in" / "only" / "S4010", study)
    write_ct(tmp_path / "in" / "only" / "S1", study, 1, "Surview", [0.0, 0.0], None,
             image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    result = cli("preprocess", tmp_path / "in", "-o", tmp_path / "cache.h5")
    assert result.exit_code == 1, result.output
    with Cache(tmp_path / "cache.h5") as cache:
        [failure] = cache.failures()
    assert failure.reason == (f"{tmp_path / 'in' / 'only'} holds no CT volume (1) series 1 (Surview): CT, 2 slices at "
                              "0.00 mm, localizer; 2) series 4010 (Exam Summary): CT, 2 slices at 0.00 mm, secondary "
                              "capture); pass CT scans")


def test_infer_reads_the_one_ct_volume_beside_a_screenshot_and_a_localizer(tmp_path, cli):
    """Before: "holds 2 CT series" (the screenshot counted as one)."""
    study = make_uid("infer")
    write_screenshot(tmp_path / "study" / "S4010", study)
    write_ct(tmp_path / "study" / "S1", study, 1, "Surview", [0.0, 0.0], None,
             image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    write_ct(tmp_path / "study" / "S3", study, 3, "STD BRAIN 5MM", THICK, "UB")
    volume = read_volume(tmp_path / "study")
    assert volume.depth == 8 and np.abs(volume.array - truth(voxel_points(volume))).max() <= 1.0
    write_ct(tmp_path / "study" / "S4", study, 4, STD, THIN, "UB")
    with pytest.raises(InputError, match=r"holds 2 CT series \(1\) CT, 8 slices"):  # which one to infer from?
        read_volume(tmp_path / "study")


def test_the_localizer_orientations_never_reach_a_reason(tmp_path):
    """A two-image localizer (frontal and lateral) is skipped by its ImageType before its orientations are judged."""
    write_study(tmp_path / "study")
    [localizer] = [s for s in scan_series(tmp_path / "study").series if s.number == 1]
    assert localizer.orientation is None  # two orientations: would fail "the slices differ in orientation"
    assert skip_reason(localizer) == "localizer"
    assert pydicom.dcmread(localizer.files[0]).ImageType[2] == "LOCALIZER"


def test_a_study_whose_one_ct_volume_is_thick_is_a_self_supervised_case_recorded_as_thick(tmp_path, cli):
    """Issue 21 beside issue 22: the screenshot and localizer skipped, the lone 5 mm series is the case's thick
    side (not a "thin" series in its record); two 5 mm series need naming, and --no-self-supervised excludes it."""
    study, folder = make_uid("thick_only"), tmp_path / "in" / "thick_only"
    write_screenshot(folder / "S4010", study)
    write_ct(folder / "S1", study, 1, "Surview", [0.0, 0.0], None, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    write_ct(folder / "S3", study, 3, "STD BRAIN 5MM", THICK, "UB")
    output = tmp_path / "cache.h5"
    result = cli("preprocess", tmp_path / "in", "-o", output, "--min-slices", "4")
    assert result.exit_code == 0, result.output
    assert "skipped 2 series that are not CT volumes (1 localizer, 1 secondary capture)" in flat(result.output)
    with Cache(output) as cache:
        info, record, thick = cache.info("thick_only"), cache.series("thick_only"), cache.volume("thick_only", "thick")
    assert (info.pair_kind, info.has_truth, info.ratio) == ("self-supervised", False, 5.0)
    assert (info.profile.thickness, info.profile.spacing, info.profile.source) == (5.0, 5.0, "dicom")
    assert "thin" not in record and record["thick"]["number"] == 3
    assert record["summary"] == "thick series 3 (STD BRAIN 5MM, kernel UB, 5.00 mm)"
    assert record["skipped"] == {"localizer": 1, "secondary capture": 1}
    assert np.abs(thick.array - truth(voxel_points(thick))).max() <= 1.0

    write_ct(folder / "S5", study, 5, "BONE BRAIN 5MM", THICK, "YC", offset=BONE_OFFSET)
    refused = cli("preprocess", tmp_path / "in", "-o", tmp_path / "refused.h5", "--min-slices", "4")
    assert refused.exit_code == 1 and "cannot tell the thick series from the thin one" in flat(refused.output)
    named = cli("preprocess", tmp_path / "in", "-o", output, "--min-slices", "4", "--series", "3")
    assert named.exit_code == 0, named.output
    assert "thick series 3 (STD BRAIN 5MM, kernel UB, 5.00 mm): named" in flat(named.output)
    with Cache(output) as cache:
        record = cache.series("thick_only")
    assert (record["thick"]["number"], record["basis"], [s["number"] for s in record["unused"]]) == (3, "named", [5])
    excluded = cli("preprocess", tmp_path / "in", "-o", output, "--min-slices", "4", "--series", "3",
                   "--no-self-supervised")
    assert excluded.exit_code == 1 and "no thin ground truth" in flat(excluded.output)
    assert_private(result.output, named.output, json.dumps(record))


@pytest.mark.parametrize("thickness, profile", [
    (6.0, (6.0, 5.0, 1.0, "dicom")),  # 6 mm slices 5 mm apart overlap by 1 mm: in-plane pairs average 6 mm slabs
    (-3.0, (5.0, 5.0, 0.0, "spacing")),  # no thickness at all: the spacing stands in
    (1e6, (5.0, 5.0, 0.0, "spacing")),
])
def test_a_thick_series_records_its_dicom_slice_thickness_as_its_profile(tmp_path, thickness, profile):
    write_ct(tmp_path / "in" / "overlap" / "S3", make_uid("overlap"), 3, "CHEST", THICK, "B30f", thickness=thickness)
    output = tmp_path / "cache.h5"
    run_preprocess([tmp_path / "in"], output, PreprocessOptions(5.0, 1.0, min_slices=4))
    with Cache(output) as cache:
        recorded = cache.info("S3").profile
    assert (recorded.thickness, recorded.spacing, recorded.overlap, recorded.source) == profile
