"""Hostile DICOM trees: files that only look like slices, file-system oddities, DICOMDIRs that lie.

Each case is run through ``ctslice preprocess`` beside a good series: the bad case is excluded with
its one-line reason, the good one cached, nothing hangs. Series are written with pydicom, 16 x 16
pixels, one file per slice; patient name and ID are marked secrets that must never be printed or stored.
"""

from __future__ import annotations

import os
import signal
import struct
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from ctslice.data.cache import Cache
from ctslice.io import read_volume
from ctslice.io.dicom_files import NOT_AN_IMAGE, UNREADABLE, SliceHeader, read_slice
from tests.dicom_utils import dicomdir_export

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR")  # the hostile values written

SECRET_ID, SECRET_NAME = "PAT-SECRET-4711", "Geheimname^Otto"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
N = 16
UNREADABLE_TAIL = "is an unreadable DICOM file (truncated or corrupt); re-export the series, or move that file away " \
                  "if it is not part of it"


def pixels(k: int) -> np.ndarray:
    """A disc of soft tissue in air, a little brighter on every slice (HU)."""
    y, x = np.mgrid[:N, :N]
    return np.where((x - N / 2) ** 2 + (y - N / 2) ** 2 < (N / 3) ** 2, 40 + 10 * k, -1000).astype(np.int16)


def ct_slice(k: int, study: str, series: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CT_IMAGE, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta, ds.preamble = meta, b"\0" * 128
    ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName, ds.PatientID = "CT", SECRET_NAME, SECRET_ID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = study, series, k + 1
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.SeriesNumber = "20240101", "120000", "1", 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, float(k)], [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 1.0
    ds.Rows = ds.Columns = N
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = 0, 1
    ds.PixelData = pixels(k).tobytes()
    return ds


def write_ct(folder: Path, count: int = 40) -> list[Path]:
    """A thin CT series (1 mm) of ``count`` slices, files IM0000... in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    files = [folder / f"IM{k:04d}" for k in range(count)]
    for k, file in enumerate(files):
        ct_slice(k, study, series).save_as(file, enforce_file_format=True)
    return files


class Hung(BaseException):
    """Raised by ``within``; a BaseException, so that no ``except Exception`` in the code under test hides it."""


@contextmanager
def within(seconds: int):
    """Fail a test that would hang (a parser looping over gigabytes) instead of waiting for ever."""
    def expire(*_):
        raise Hung(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def flat(text: str) -> str:
    return " ".join(text.split())


def preprocess(cli, tmp_path: Path, *inputs: Path):
    """``ctslice preprocess GOOD INPUTS... -o cache.h5``; returns (result, case ids, failure reasons by id)."""
    good = tmp_path / "good"
    if not good.exists():
        write_ct(good)
    output = tmp_path / "cache.h5"
    with within(60):
        result = cli("preprocess", good, *inputs, "-o", output)
    assert "Traceback" not in result.output
    assert SECRET_ID not in result.output and "Geheimname" not in result.output
    assert SECRET_ID.encode() not in output.read_bytes() and b"Geheimname" not in output.read_bytes()
    with Cache(output) as cache:
        return result, cache.case_ids(), {f.case_id: f.reason for f in cache.failures()}


# --- files that only start like slices ------------------------------------------------------------------------------

def test_gigabytes_behind_a_slice_make_it_unreadable_instead_of_a_hang(tmp_path, cli):
    """A slice followed by a sparse tail of junk: pydicom would parse every zero as an element, and GDCM
    would too; the header ends where the data set does, and the tail marks the file as damaged."""
    files = write_ct(tmp_path / "padded")
    with open(files[7], "r+b") as handle:
        handle.truncate(256 * 1024**2)  # sparse: costs no disk
    with within(20):
        assert read_slice(files[7]) == UNREADABLE
    result, cases, failures = preprocess(cli, tmp_path, tmp_path / "padded")
    assert result.exit_code == 0, result.output
    assert cases == ["good"]
    assert failures == {"padded": f"{tmp_path / 'padded'}: IM0007 {UNREADABLE_TAIL}"}


@pytest.mark.parametrize("sop_class, expected", [(CT_IMAGE, UNREADABLE), ("1.2.3.4", NOT_AN_IMAGE)])
def test_sparse_bare_file_starting_like_a_data_set_is_told_apart_at_once(tmp_path, sop_class, expected):
    """Bytes 08 00 and an SOP Class UID, then a gigabyte of zeros (no preamble): an image class names a
    damaged slice, any other class a file that is not an image."""
    uid = sop_class.encode() + b"\0" * (len(sop_class) % 2)
    file = tmp_path / "BIG"
    with open(file, "wb") as handle:
        handle.write(b"\x08\x00\x16\x00" + struct.pack("<I", len(uid)) + uid)
        handle.truncate(1024**3)
    with within(20):
        assert read_slice(file) == expected


def test_pixel_data_shorter_than_rows_and_columns_declare_is_unreadable(tmp_path, cli):
    """Rows and Columns 65535 over 512 bytes of pixels: the reader would allocate what the header claims."""
    files = write_ct(tmp_path / "huge")
    dataset = pydicom.dcmread(files[3])
    dataset.Rows = dataset.Columns = 65535
    dataset.save_as(files[3])
    assert read_slice(files[3]) == UNREADABLE
    result, cases, failures = preprocess(cli, tmp_path, tmp_path / "huge")
    assert result.exit_code == 0, result.output
    assert cases == ["good"]
    assert failures == {"huge": f"{tmp_path / 'huge'}: IM0003 {UNREADABLE_TAIL}"}


def test_compressed_slices_read_as_the_native_ones_and_a_broken_fragment_is_named(tmp_path):
    """RLE (encapsulated pixel data): its fragments are walked to find where the pixels end."""
    native = write_ct(tmp_path / "native", 6)
    write_ct(tmp_path / "rle", 6)
    for file in sorted((tmp_path / "rle").iterdir()):
        dataset = pydicom.dcmread(file)
        dataset.compress(RLELossless)
        dataset.save_as(file)
    np.testing.assert_array_equal(read_volume(tmp_path / "rle").array, read_volume(native[0].parent).array)
    broken = tmp_path / "rle" / "IM0002"
    data = bytearray(broken.read_bytes())
    item = data.rindex(b"\xfe\xff\x00\xe0")  # the last fragment's item header: its length now runs past the end
    struct.pack_into("<I", data, item + 4, 1 << 20)
    broken.write_bytes(bytes(data))
    assert read_slice(broken) == UNREADABLE
    endless = tmp_path / "rle" / "IM0003"  # 70,000 empty items before the delimiter: not walked to the end
    data = endless.read_bytes()
    end = data.rindex(b"\xfe\xff\xdd\xe0")
    endless.write_bytes(data[:end] + b"\xfe\xff\x00\xe0\x00\x00\x00\x00" * 70_000 + data[end:])
    assert read_slice(endless) == UNREADABLE
    assert isinstance(read_slice(tmp_path / "rle" / "IM0004"), SliceHeader)


def test_folder_of_damaged_slices_is_a_failed_case_not_nothing(tmp_path, cli):
    """Every slice a DICOM file that does not parse (a Deflate transfer syntax over plain bytes)."""
    for file in write_ct(tmp_path / "deflated"):
        dataset = pydicom.dcmread(file)
        dataset.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1.99"
        dataset.save_as(file, enforce_file_format=False)
    result, cases, failures = preprocess(cli, tmp_path, tmp_path / "deflated")
    assert result.exit_code == 0, result.output
    assert cases == ["good"]
    assert failures == {"deflated": f"{tmp_path / 'deflated'}: IM0000 {UNREADABLE_TAIL}"}


# --- file-system oddities -------------------------------------------------------------------------------------------

def test_fifos_devices_and_broken_links_are_excluded_with_their_reason(tmp_path, cli):
    """A FIFO opened for reading blocks for ever, /dev/zero never ends: each is one excluded case."""
    tree = tmp_path / "tree"
    write_ct(tree / "series")
    os.mkfifo(tree / "scan.nii.gz")
    os.mkfifo(tree / "study.zip")
    os.mkfifo(tree / "series" / "DICOMDIR")
    os.mkfifo(tree / "series" / "IM9999")
    os.symlink("/dev/zero", tree / "zero.nii")
    os.symlink(tmp_path / "nowhere.nii.gz", tree / "gone.nii.gz")
    result, cases, failures = preprocess(cli, tmp_path, tree)
    assert result.exit_code == 0, result.output
    assert cases == ["good", "series"]
    assert failures == {
        "scan": f"{tree / 'scan.nii.gz'} is a named pipe (FIFO), not a file that holds a scan; pass a regular file",
        "study": f"{tree / 'study.zip'} is a named pipe (FIFO), not a file that holds a scan; pass a regular file",
        "zero": f"{tree / 'zero.nii'} is a device, not a file that holds a scan; pass a regular file",
        "gone": f"{tree / 'gone.nii.gz'} is a broken symbolic link; pass an existing, readable file",
    }


@pytest.mark.parametrize("command", ["preprocess", "infer"])
def test_a_fifo_given_as_the_input_is_one_line(tmp_path, cli, command):
    fifo = tmp_path / "scan.nii.gz"
    os.mkfifo(fifo)
    output = tmp_path / ("cache.h5" if command == "preprocess" else "out.nii.gz")
    with within(30):
        result = cli(command, fifo, "-o", output, *(["--method", "cubic"] if command == "infer" else []))
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: {fifo} is a named pipe (FIFO), not a file that holds a scan; pass a regular file"]
    assert not output.exists()


# --- DICOMDIRs that do not tell the truth ---------------------------------------------------------------------------

def test_dicomdir_listing_a_slice_twice_and_missing_one_still_reads_every_slice(tmp_path):
    """A stale DICOMDIR: one record names IM000000 where IM000001 should be. The slice on disk is a
    slice of the listed series, not a 1-slice series of its own, and nothing is interpolated."""
    write_ct(tmp_path / "staging" / "s", 12)
    dicomdir = dicomdir_export(tmp_path / "staging", tmp_path / "export")
    dicomdir.write_bytes(dicomdir.read_bytes().replace(b"SE000000\\IM000001", b"SE000000\\IM000000"))
    volume = read_volume(tmp_path / "export")
    assert volume.depth == 12
    np.testing.assert_array_equal(volume.array, np.stack([pixels(k) for k in range(12)]))


# --- headers whose pixels GDCM would misread without a word ---------------------------------------------------------

def rewrite(files: list[Path], **tags) -> None:
    """Set (value) or delete (None) ``tags`` in every file."""
    for file in files:
        dataset = pydicom.dcmread(file)
        for keyword, value in tags.items():
            if value is None:
                delattr(dataset, keyword)
            else:
                setattr(dataset, keyword, value)
        dataset.save_as(file)


@pytest.mark.parametrize("tags, reason", [
    ({"RescaleSlope": 0}, "has a RescaleSlope that is not a positive number, so its pixels do not map to HU"),
    ({"RescaleSlope": -1}, "has a RescaleSlope that is not a positive number, so its pixels do not map to HU"),
    ({"RescaleSlope": "NaN"}, "has a RescaleSlope that is not a positive number, so its pixels do not map to HU"),
    ({"PhotometricInterpretation": "MONOCHROME1"},
     "stores inverted grey values (MONOCHROME1), which are not read back as HU"),
    ({"PixelSpacing": None}, "lacks a valid PixelSpacing (two positive numbers), so its pixels have no size"),
    ({"PixelSpacing": [0, 0]}, "lacks a valid PixelSpacing (two positive numbers), so its pixels have no size"),
])
def test_slices_gdcm_would_misread_are_excluded_with_the_reason(tmp_path, cli, tags, reason):
    """Before: each was cached (slope -1 and MONOCHROME1 with every HU negated, NaN and 0 as slope 1, no
    PixelSpacing as 1 mm), or gave 37 lines of VNL warnings."""
    rewrite(write_ct(tmp_path / "odd"), **tags)
    result, cases, failures = preprocess(cli, tmp_path, tmp_path / "odd")
    assert result.exit_code == 0, result.output
    assert cases == ["good"]
    assert failures == {"odd": f"{tmp_path / 'odd'}: IM0000 {reason}; re-export the series"}
    assert flat(result.output).count("error") == 0


def test_colour_slices_are_named_as_colour(tmp_path, cli):
    files = write_ct(tmp_path / "rgb")
    grey = pixels(0).clip(0, 255).astype(np.uint8)
    rewrite(files, SamplesPerPixel=3, PhotometricInterpretation="RGB", BitsAllocated=8, BitsStored=8, HighBit=7,
            PixelRepresentation=0, PlanarConfiguration=0, PixelData=np.repeat(grey[..., None], 3, -1).tobytes())
    result, cases, failures = preprocess(cli, tmp_path, tmp_path / "rgb")
    assert failures == {"rgb": f"{tmp_path / 'rgb'}: IM0000 is a colour image (RGB), not a grey-scale CT slice; "
                               "re-export the series"}


def test_values_beyond_int16_after_rescale_are_refused_not_clipped(tmp_path, cli):
    """RescaleIntercept 100000: rounding to int16 clipped every voxel to 32767, then 'a constant series'."""
    rewrite(write_ct(tmp_path / "far"), RescaleIntercept=100000)
    result, cases, failures = preprocess(cli, tmp_path, tmp_path / "far")
    assert failures == {"far": f"{tmp_path / 'far'}: its values reach 99000 to 100430 HU after RescaleSlope and "
                               "RescaleIntercept, beyond what CT stores (-32768 to 32767); check those tags or "
                               "re-export the series"}


def test_a_modality_that_is_not_a_code_is_never_shown(tmp_path, cli):
    """Modality is a code string (CT, MR); free text there (a name, say) must not reach messages or the cache."""
    rewrite(write_ct(tmp_path / "text"), Modality=SECRET_NAME)
    result, cases, failures = preprocess(cli, tmp_path, tmp_path / "text")  # asserts no secret anywhere
    assert failures == {"text": f"{tmp_path / 'text'} has a Modality that is not a valid code, so it cannot be "
                                "taken for CT; pass a CT series"}


def test_a_slice_named_in_bytes_that_are_not_utf8_excludes_its_case_in_one_line(tmp_path, cli):
    """Before: a TypeError from SimpleITK's SetFileNames, exit 1 as if the machine had failed."""
    files = write_ct(tmp_path / "bytes")
    os.rename(files[2], os.fsencode(files[2]) + b"\xff")
    result, cases, failures = preprocess(cli, tmp_path, tmp_path / "bytes")
    assert result.exit_code == 0, result.output
    assert cases == ["good"]
    assert failures == {"bytes": f"{tmp_path / 'bytes'}/IM0002\\xff: the name is not valid UTF-8 (bytes shown as "
                                 "\\x..); rename it with UTF-8 characters"}


# --- geometry that would make a small series a memory bomb ----------------------------------------------------------

def test_a_near_duplicate_step_is_not_resampled_into_a_hundred_times_the_slices(tmp_path, cli):
    """One step of 0.011 mm among 1 mm steps (1.1% of the typical step, so not a duplicate): resampled to
    the smallest step it made 1638 slices of 20 (with 512 x 512 slices, 6.5 GB and 96 s for 10 MB)."""
    files = write_ct(tmp_path / "uneven", 20)
    for k, file in enumerate(files):
        rewrite([file], ImagePositionPatient=[0.0, 0.0, [0.0, 0.011][k] if k < 2 else k - 1.0])
    result, cases, failures = preprocess(cli, tmp_path, tmp_path / "uneven")
    assert failures == {"uneven": f"{tmp_path / 'uneven'}: its slice spacing (0.011 to 1 mm) would be resampled to "
                                  "its smallest step, 1638 slices from 20; give the z spacing to resample it to, "
                                  "or re-export the series"}


def test_a_shear_no_gantry_tilts_is_refused_before_its_grid_is_made(tmp_path, cli):
    """Slices shifted 1000 mm each along y (89.9 degrees): the untilted box was 16 x 39016 pixels per slice."""
    files = write_ct(tmp_path / "sheared")
    for k, file in enumerate(files):
        rewrite([file], ImagePositionPatient=[0.0, 1000.0 * k, float(k)])
    result, cases, failures = preprocess(cli, tmp_path, tmp_path / "sheared")
    assert failures == {"sheared": f"{tmp_path / 'sheared'}: its slices are sheared by 89.9 degrees, so the untilted "
                                   "grid that holds them would be 16 x 39016 pixels for 16 x 16 slices; check their "
                                   "ImagePositionPatient, or re-export the series"}


def test_a_file_this_user_cannot_read_is_excluded_with_the_reason(tmp_path, cli, monkeypatch):
    """chmod 000 cannot be tried as root (the tests may run as root): the permission test is what is stubbed."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "locked.nii.gz").write_bytes(b"\x1f\x8b not read")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: not str(path).endswith("locked.nii.gz")
                        and real_access(path, mode))
    result, cases, failures = preprocess(cli, tmp_path, tree)
    assert result.exit_code == 0, result.output
    assert cases == ["good"]
    assert failures == {"locked": f"{tree / 'locked.nii.gz'} cannot be read (permission denied); make it readable "
                                  "or leave it out"}


# --- what sits where the cache's lock file belongs -----------------------------------------------------------------

@pytest.mark.parametrize("kind, make", [
    ("a named pipe (FIFO)", os.mkfifo),
    ("a symbolic link", lambda path: os.symlink("/dev/zero", path)),  # was read whole: 23 GB and counting
    ("a folder", os.mkdir),
])
def test_a_lock_path_that_is_not_a_plain_file_is_one_line_before_any_work(tmp_path, cli, kind, make):
    write_ct(tmp_path / "good")
    lock = tmp_path / "cache.h5.lock"
    make(lock)
    with within(30):
        result = cli("preprocess", tmp_path / "good", "-o", tmp_path / "cache.h5")
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: {lock} is {kind}, not a ctslice lock file; remove it (no run is using it), then run again"]
    assert not (tmp_path / "cache.h5").exists() and not (tmp_path / "cache.h5.parts").exists()


@pytest.mark.parametrize("junk", ["fifo", "zero", "garbage", "tmp-fifo"])
def test_junk_in_the_parts_folder_neither_hangs_nor_blocks_every_later_merge(tmp_path, cli, junk):
    """A FIFO named x.h5 hung the run (HDF5 opens it); a link to /dev/zero or a foreign file made every
    merge fail with exit 1, for ever, as they were 'kept for the next run'."""
    write_ct(tmp_path / "good")
    parts = tmp_path / "cache.h5.parts"
    parts.mkdir()
    {"fifo": lambda: os.mkfifo(parts / "x.h5"), "zero": lambda: os.symlink("/dev/zero", parts / "x.h5"),
     "garbage": lambda: (parts / "x.h5").write_bytes(b"not HDF5"),
     "tmp-fifo": lambda: os.mkfifo(parts / ".good.h5.tmp")}[junk]()
    with within(30):
        result = cli("preprocess", tmp_path / "good", "-o", tmp_path / "cache.h5")
    assert result.exit_code == 0, result.output
    with Cache(tmp_path / "cache.h5") as cache:
        assert cache.case_ids() == ["good"]
    assert not parts.exists()


@pytest.mark.parametrize("where, make, kind", [
    ("cache.h5.parts", lambda path: path.write_text("x"), "folder"),
    (".cache.h5.tmp", os.mkdir, "file"),
])
def test_something_where_unfinished_work_goes_is_one_line_before_any_work(tmp_path, cli, where, make, kind):
    """Before: a part that could not be written (exit 1 after the work), or a traceback (IsADirectoryError)."""
    write_ct(tmp_path / "good")
    make(tmp_path / where)
    result = cli("preprocess", tmp_path / "good", "-o", tmp_path / "cache.h5")
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: {tmp_path / where} is in the way: ctslice keeps its unfinished work there as a {kind}; move it away"]
    assert not (tmp_path / "cache.h5").exists()


@pytest.mark.parametrize("command", ["merge", "split"])
def test_a_fifo_given_as_a_cache_is_one_line_not_a_hang(tmp_path, cli, command):
    fifo = tmp_path / "shard.h5"
    os.mkfifo(fifo)
    args = (["preprocess", "--merge", fifo, "-o", tmp_path / "cache.h5"] if command == "merge"
            else ["split", fifo, "-o", tmp_path / "splits.json"])
    with within(30):
        result = cli(*args)
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: {fifo} is a named pipe (FIFO), not a file that holds a cache; pass a regular file"]


def test_a_file_name_with_a_newline_keeps_the_error_on_one_line(tmp_path, cli):
    """Linux allows a newline in a name; the message naming such a damaged slice split in two lines."""
    files = write_ct(tmp_path / "series", 6)
    damaged = files[3].rename(tmp_path / "series" / "IM\n0003")
    damaged.write_bytes(damaged.read_bytes()[:-100])
    result = cli("infer", tmp_path / "series", "-o", tmp_path / "out.nii.gz", "--method", "cubic")
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"error: {tmp_path / 'series'}: IM\\n0003 {UNREADABLE_TAIL}"]
