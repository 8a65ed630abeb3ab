"""``write_dicom_series``: a thin volume as one DICOM CT series (one file per slice), for a PACS.

The files are written with pydicom, so every tag is set explicitly: int16 HU pixels (slope 1, intercept
0: exact), the grid as ImagePositionPatient / ImageOrientationPatient / PixelSpacing / SliceThickness /
SpacingBetweenSlices, new Series and SOP Instance UIDs, ImageType DERIVED\\SECONDARY and a
SeriesDescription saying how the series was made. A DICOM input's study and patient tags
(``study_tags``) are carried over so that the series lands in the input's study; without them the
series gets a new study and anonymous patient tags.

Those tags identify a patient: ``StudyTags`` hides them from ``repr``, and no message here contains one.

DICOM readers build the third axis as the cross product of the row and column directions and sort the
slices along it, so a grid whose direction matrix is left-handed (determinant -1, e.g. a NIfTI stored
with a flipped axis) is written with its slice order reversed: the same voxels at the same places, read
back with the right-handed direction every DICOM reader gives.

The series is written into a staging folder beside the target, read back with SimpleITK (one file per
slice, the same size and voxels) and only then renamed into place, so a crash or a full disk never
leaves a half series that a PACS import would take for a result.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.config import disable_value_validation
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from ctslice.errors import CtsliceError, InputError
from ctslice.io.archive import extracted
from ctslice.io.dicom import scan_series
from ctslice.io.failures import captured_stderr, sitk_reason
from ctslice.io.intensity import cast_rounded
from ctslice.io.paths import check_name, printable, staging_folder
from ctslice.io.reader import _select_ct as select_ct  # the reader's choice among a folder's series
from ctslice.io.volume import Volume

MAX_DESCRIPTION = 64  # SeriesDescription is a DICOM LO: at most 64 characters
_ORTHOGONAL_TOLERANCE = 1e-4
SLICE_NAME = re.compile(r"CT\d{6,}\.dcm")  # the files ``_write_slices`` names, one per slice


@dataclass(frozen=True, repr=False)
class StudyTags:
    """The patient and study tags of a DICOM input, carried into a derived series (never shown)."""

    PatientName: str = ""
    PatientID: str = ""
    PatientBirthDate: str = ""
    PatientSex: str = ""
    StudyInstanceUID: str = ""
    StudyDate: str = ""
    StudyTime: str = ""
    StudyID: str = ""
    AccessionNumber: str = ""
    ReferringPhysicianName: str = ""
    FrameOfReferenceUID: str = ""

    def __repr__(self) -> str:
        return "StudyTags(<identifying values hidden>)"


def study_tags(files: Sequence[Path]) -> StudyTags:
    """The ``StudyTags`` of a DICOM series, read (with pydicom, without pixels) from its first file."""
    if not files:
        raise InputError("no DICOM files to read the study tags from")
    first = Path(files[0])
    names = [f.name for f in fields(StudyTags)]
    try:
        with disable_value_validation():  # a warning would print a value
            dataset = pydicom.dcmread(first, stop_before_pixels=True, specific_tags=names + ["SpecificCharacterSet"])
            return StudyTags(**{name: str(dataset.get(name, "") or "") for name in names})
    except (OSError, pydicom.errors.InvalidDicomError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else "not a readable DICOM file"
        raise InputError(f"{printable(first)}: could not read its study tags ({reason})") from None


def input_study_tags(path: Path) -> StudyTags | None:
    """The ``StudyTags`` of the series ``read_scan`` reads from ``path`` (a DICOM folder or zip); None for a file.

    The series is chosen by the reader's own rule, so the tags are those of the scan that was read, never
    of another patient's series in the same folder.
    """
    path = Path(path)
    if not (path.is_dir() or path.name.lower().endswith(".zip")):
        return None
    with captured_stderr(), extracted(path) as folder:
        return study_tags(select_ct(scan_series(folder, shown_as=path if folder != path else None).series,
                                    path).files)


def write_dicom_series(volume: Volume, folder: Path, *, description: str, source: StudyTags | None = None,
                       overwrite: bool = False) -> Path:
    """Write ``volume`` (HU, rounded to int16) into ``folder`` as one DICOM CT series; returns ``folder``.

    ``description`` becomes the SeriesDescription (at most 64 characters); ``source`` carries a DICOM
    input's study into the files. An existing ``folder`` is replaced only with ``overwrite``, and only
    once the new series is complete and checked; a failed write leaves it as it was.
    """
    folder = check_name(Path(folder))
    _check_description(description)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{printable(folder)} is a file; a DICOM series is written as a folder")
    if folder.exists() and not overwrite:
        raise InputError(f"{printable(folder)} exists; choose another folder or overwrite it")
    check_replaceable(folder)
    volume = _right_handed(volume)
    pixels = cast_rounded(volume.array, np.int16)
    staging = staging_folder(folder)
    try:
        with disable_value_validation():  # a carried value pydicom finds odd is kept, not printed in a warning
            series_uid = _write_slices(volume, pixels, staging, description, source or _anonymous())
        problem = _unlike_written(staging, series_uid, pixels)
        if problem:
            raise CtsliceError(f"could not write {printable(folder)}: {problem} (is the disk full?); "
                               "nothing was written")
        _replace(staging, folder)
    except OSError as error:
        raise CtsliceError(f"could not write {printable(folder)}: {error.strerror or error}; "
                           "nothing was written") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def check_replaceable(folder: Path) -> None:
    """``InputError`` unless ``folder`` is missing or holds nothing but a series this module wrote (``CT*.dcm``).

    Replacing a folder removes everything in it: an ``-o`` that names a folder of other files (a home
    folder, a study export, ``.``) must not be emptied by ``--overwrite``.
    """
    if not folder.is_dir():
        return
    foreign = next((entry.name for entry in sorted(folder.iterdir())
                    if not (SLICE_NAME.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink())), None)
    if foreign is not None:
        raise InputError(f"{printable(folder)} holds other files than a ctslice DICOM series (such as "
                         f"{printable(foreign)}); overwriting would delete them: choose another folder")


def _check_description(description: str) -> None:
    if not isinstance(description, str) or not description.strip():
        raise InputError("a DICOM series needs a description (SeriesDescription)")
    if len(description) > MAX_DESCRIPTION or "\\" in description or not description.isprintable():
        raise InputError(f"SeriesDescription {description[:MAX_DESCRIPTION]!r}...: at most {MAX_DESCRIPTION} "
                         "printable characters, no backslash")


def _right_handed(volume: Volume) -> Volume:
    """``volume`` with its slice order reversed if its axes are left-handed (see the module docstring)."""
    axes = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3)
    if not np.allclose(axes.T @ axes, np.eye(3), atol=_ORTHOGONAL_TOLERANCE):
        raise InputError("the volume's axes are not orthonormal; DICOM cannot describe such a grid")
    if np.linalg.det(axes) > 0:
        return volume
    last = volume.grid.index_to_physical((0, 0, volume.depth - 1))
    axes[:, 2] *= -1
    return Volume(volume.array[::-1], volume.spacing, last, tuple(float(v) for v in axes.ravel()))


def _anonymous() -> StudyTags:
    """Tags of a new study for an input that was not DICOM: new UIDs, no patient identity."""
    now = datetime.datetime.now()
    return StudyTags(PatientName="Anonymous", PatientID="ANONYMOUS", StudyInstanceUID=generate_uid(),
                     StudyDate=now.strftime("%Y%m%d"), StudyTime=now.strftime("%H%M%S"), StudyID="1",
                     FrameOfReferenceUID=generate_uid())


def _write_slices(volume: Volume, pixels: np.ndarray, folder: Path, description: str, study: StudyTags) -> str:
    """One file per slice of ``pixels`` in ``folder``; returns the new SeriesInstanceUID."""
    def ds(values) -> list[str]:
        return [format_number_as_ds(float(v)) for v in values]

    axes = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3)
    series_uid = generate_uid()
    frame_uid = study.FrameOfReferenceUID or generate_uid()
    now = datetime.datetime.now()
    sx, sy, sz = volume.spacing
    for k in range(volume.depth):
        position = volume.grid.index_to_physical((0, 0, k))
        instance_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = instance_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        item = Dataset()
        item.file_meta = meta
        item.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: carried names stay as they were
        item.SOPClassUID, item.SOPInstanceUID = CTImageStorage, instance_uid
        item.ImageType = ["DERIVED", "SECONDARY"]
        item.Modality = "CT"
        for tag in fields(StudyTags):
            setattr(item, tag.name, getattr(study, tag.name))
        item.FrameOfReferenceUID = frame_uid
        item.PositionReferenceIndicator = ""
        item.SeriesInstanceUID, item.SeriesNumber = series_uid, 1001
        item.SeriesDescription = description
        item.SeriesDate = item.ContentDate = now.strftime("%Y%m%d")
        item.SeriesTime = item.ContentTime = now.strftime("%H%M%S")
        item.Manufacturer, item.KVP, item.AcquisitionNumber = "", "", ""
        item.InstanceNumber = k + 1
        item.ImagePositionPatient = ds(position)
        item.ImageOrientationPatient = ds([*axes[:, 0], *axes[:, 1]])
        item.PixelSpacing = ds([sy, sx])  # row spacing (between rows), then column spacing
        item.SliceThickness = item.SpacingBetweenSlices = format_number_as_ds(float(sz))
        item.SliceLocation = format_number_as_ds(float(np.dot(position, axes[:, 2])))
        item.SamplesPerPixel, item.PhotometricInterpretation = 1, "MONOCHROME2"
        item.Rows, item.Columns = pixels.shape[1], pixels.shape[2]
        item.BitsAllocated, item.BitsStored, item.HighBit, item.PixelRepresentation = 16, 16, 15, 1
        item.RescaleIntercept, item.RescaleSlope, item.RescaleType = "0", "1", "HU"
        item.PixelData = np.ascontiguousarray(pixels[k], dtype="<i2").tobytes()
        item.save_as(folder / f"CT{k + 1:06d}.dcm", enforce_file_format=True)
    return series_uid


def _unlike_written(folder: Path, series_uid: str, pixels: np.ndarray) -> str | None:
    """Why the series in ``folder`` does not read back as ``pixels`` (None when it does)."""
    try:
        with captured_stderr():
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid)
            if len(files) != pixels.shape[0] or len(os.listdir(folder)) != pixels.shape[0]:
                return f"{len(files)} of {pixels.shape[0]} slices read back"
            image = sitk.ReadImage(files, sitk.sitkInt16)
    except RuntimeError as error:
        return f"the written series does not read back ({sitk_reason(error)})"
    if image.GetSize() != pixels.shape[::-1] or not np.array_equal(sitk.GetArrayViewFromImage(image), pixels):
        return "the written series does not read back as the volume"
    return None


def _replace(staging: Path, folder: Path) -> None:
    """Move the checked ``staging`` folder to ``folder``, the old one (if any) removed only after."""
    if not folder.exists():
        os.replace(staging, folder)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
    try:  # the aside folder goes even when moving the old series aside fails (``-o .`` cannot be moved)
        os.replace(folder, old / "series")
        try:
            os.replace(staging, folder)
        except OSError:
            os.replace(old / "series", folder)
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
