"""DICOM series: finding them under a folder, checking that one is a usable CT volume, reading it.

Real exports are messy: file names in random order, several series per folder (scouts, other
reconstructions, other modalities), a slice missing or exported twice, tilted-gantry acquisitions,
truncated copies. SimpleITK reads whatever file list it is given and at most prints a warning, so
every such problem is caught here from the headers, before pixel data is read, and reported as one
``InputError`` that names the series folder and says what to do.

Slices are ordered by their position along the slice normal (ImagePositionPatient projected on the
cross product of the ImageOrientationPatient row and column vectors), never by file name or
InstanceNumber, so the volume's third direction column is that normal and its spacing is positive.

Identifiers never leave this module: StudyInstanceUID, SeriesInstanceUID and PatientID are kept only
as pseudonyms (``pseudonym``), and patient names are never read.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ctslice.errors import InputError
from ctslice.io.failures import sitk_reason
from ctslice.io.intensity import cast_rounded
from ctslice.io.volume import Volume

_MODALITY = "0008|0060"
_IMAGE_TYPE = "0008|0008"
_PATIENT_ID = "0010|0020"
_TILT = "0018|1120"
_STUDY_UID = "0020|000d"
_SERIES_UID = "0020|000e"
_POSITION = "0020|0032"
_ORIENTATION = "0020|0037"
_FRAMES = "0028|0008"

MAX_TILT_DEGREES = 0.1
"""Largest shear accepted between the slice normal and the line through the slice positions: over a
300 mm scan it moves the last slice by 0.5 mm, under one voxel."""

SPACING_TOLERANCE = 0.1
"""Largest distance of any slice from the uniform grid through the first and last, as a fraction of
the spacing: a missing or duplicate slice is off by about half a spacing or more."""


def pseudonym(value: str | None) -> str | None:
    """A short, stable stand-in for an identifier (12 hex digits of sha256 of ``"ctslice:" + value``).

    Equal identifiers give equal pseudonyms, so series of one study or patient can still be grouped
    (and kept in one split) without the identifier itself being stored anywhere.
    """
    if not value:
        return None
    return hashlib.sha256(f"ctslice:{value}".encode()).hexdigest()[:12]


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series in one folder, described from its headers; ``read()`` loads the pixels.

    ``files`` are in physical order along the slice normal. ``positions`` (mm, x/y/z per file, same
    order) and ``orientation`` (the six ImageOrientationPatient cosines) are None where a header
    lacks them; ``unreadable`` lists DICOM files in the same folder that no header could be read
    from. ``label`` is how messages name the series (the folder, or ``scan.zip/folder`` for a zip).
    """

    directory: Path
    files: tuple[Path, ...] = field(repr=False)
    modality: str
    slice_spacing: float
    study_key: str | None
    patient_key: str | None
    series_key: str | None
    label: str
    positions: tuple[tuple[float, float, float], ...] | None = field(default=None, repr=False)
    orientation: tuple[float, ...] | None = field(default=None, repr=False)
    gantry_tilt: float = field(default=0.0, repr=False)
    frames: int = field(default=1, repr=False)
    localizer: bool = field(default=False, repr=False)
    unreadable: tuple[Path, ...] = field(default=(), repr=False)

    @property
    def n_slices(self) -> int:
        return len(self.files)

    def describe(self) -> str:
        """A summary without identifiers, for listing several series to a user."""
        return f"{self.modality or 'unknown modality'}, {self.n_slices} slices at {self.slice_spacing:.2f} mm"

    def check(self) -> None:
        """Raise ``InputError`` if this series is not a complete, untilted 3D CT volume (headers only)."""
        if self.unreadable:
            raise InputError(f"{self.label}: {self.unreadable[0].name} is an unreadable DICOM file (truncated or "
                             "corrupt); re-export the series, or move that file away if it is not part of it")
        if not self.modality:
            raise InputError(f"{self.label} has no Modality tag, so it cannot be taken for CT; pass a CT series")
        if self.modality != "CT":
            raise InputError(f"{self.label} is {_with_article(self.modality)} series, not CT; pass a CT series")
        if self.frames > 1:
            raise InputError(f"{self.label}: {self.files[0].name} is a multi-frame DICOM file, which ctslice does "
                             "not read; convert the series to NIfTI (for example with dcm2niix) and pass that")
        if self.n_slices < 2:
            raise InputError(f"{self.label} holds a single 2D slice, not a 3D volume; pass a series of slices")
        self._check_headers()
        self._check_spacing()
        self._check_tilt()

    def read(self) -> Volume:
        """The series as int16 HU (rescale slope/intercept applied) with its geometry; checks first."""
        self.check()
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(f) for f in self.files])
        reader.SetOutputPixelType(sitk.sitkFloat32)  # slices may rescale differently; round once at the end
        try:
            image = reader.Execute()
        except RuntimeError as error:
            culprit = _first_unreadable(self.files)
            where = f"{culprit.name} is unreadable" if culprit else f"cannot be read ({sitk_reason(error)})"
            raise InputError(f"{self.label}: {where}; re-export the series") from None
        volume = Volume.from_image(image)
        return volume.with_array(cast_rounded(volume.array, np.int16))

    def _check_headers(self) -> None:
        if self.positions is None or self.orientation is None:
            raise InputError(f"{self.label}: some slices lack ImagePositionPatient or ImageOrientationPatient, so "
                             "they cannot be placed in space; re-export the series with full geometry")

    def _check_spacing(self) -> None:
        z = np.asarray(self.positions) @ _normal(self.orientation)
        steps = np.diff(z)
        typical = float(np.median(steps))
        duplicate = np.flatnonzero(steps <= max(1e-3, 0.01 * typical))
        if duplicate.size:
            i = int(duplicate[0])
            raise InputError(f"{self.label} has a duplicate slice: {self.files[i].name} and {self.files[i + 1].name} "
                             f"are both at z = {z[i]:.2f} mm; remove one of them")
        uniform = z[0] + (z[-1] - z[0]) / (len(z) - 1) * np.arange(len(z))
        if np.max(np.abs(z - uniform)) <= SPACING_TOLERANCE * typical:
            return
        gap = int(np.argmax(steps))
        if steps[gap] > 1.5 * typical:
            missing = round(steps[gap] / typical) - 1
            raise InputError(f"{self.label} is missing {missing} slice(s): a {steps[gap]:.2f} mm gap between "
                             f"{self.files[gap].name} (z = {z[gap]:.2f} mm) and {self.files[gap + 1].name} "
                             f"(z = {z[gap + 1]:.2f} mm) where the spacing is {typical:.2f} mm; "
                             "re-export the complete series")
        raise InputError(f"{self.label} has non-uniform slice spacing ({steps.min():.2f} to {steps.max():.2f} mm); "
                         "resample it to uniform spacing and pass the result as a NIfTI file")

    def _check_tilt(self) -> None:
        span = np.subtract(self.positions[-1], self.positions[0])
        along = float(np.dot(span, _normal(self.orientation)))
        across = float(np.linalg.norm(span - along * _normal(self.orientation)))
        angle = math.degrees(math.atan2(across, abs(along)))
        if angle > MAX_TILT_DEGREES:
            raise InputError(f"{self.label} is tilted: the slices are sheared by {angle:.1f} degrees (gantry tilt); "
                             "correct the tilt (for example with dcm2niix) and pass the result as NIfTI")
        if abs(self.gantry_tilt) > 1e-3:
            raise InputError(f"{self.label} was acquired with a gantry tilt of {self.gantry_tilt:g} degrees "
                             "(GantryDetectorTilt); correct the tilt (for example with dcm2niix) and pass the result "
                             "as NIfTI")


def find_series(folder: Path, *, shown_as: Path | str | None = None) -> list[DicomSeries]:
    """Every DICOM series under ``folder`` (recursively, one per folder and SeriesInstanceUID).

    Non-DICOM files are ignored. Nothing is validated here, so one bad series does not hide the good
    ones: call ``check()`` or ``read()`` on the series you want. ``shown_as`` replaces ``folder`` in
    messages (pass the zip a temporary folder was extracted from).
    """
    folder = Path(folder)
    found: list[DicomSeries] = []
    for directory, subdirs, names in os.walk(folder):
        subdirs.sort()
        if not names:
            continue
        directory = Path(directory)
        label = str(Path(shown_as) / directory.relative_to(folder)) if shown_as is not None else str(directory)
        found.extend(_scan_directory(directory, label))
    return found


def _scan_directory(directory: Path, label: str) -> list[DicomSeries]:
    # ITK warns on stderr for every folder without DICOM files (a folder of NIfTI files, say): silence it
    warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        series_ids = sorted(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(directory)))
    except RuntimeError:
        return []
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings)
    listed = {uid: tuple(Path(f) for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(directory), uid))
              for uid in series_ids}
    in_series = {f.name for files in listed.values() for f in files}
    # GDCM silently leaves out files whose header it cannot parse; a truncated slice would then look
    # like a missing one. Files that carry the DICOM signature but no readable header are reported.
    stray = tuple(sorted(p for p in directory.iterdir()
                         if p.is_file() and p.name not in in_series and _has_dicom_signature(p)))
    return [_describe(directory, files, label, stray) for files in listed.values() if files]


def _describe(directory: Path, files: tuple[Path, ...], label: str, stray: tuple[Path, ...]) -> DicomSeries:
    """Read every header of one series and sort its files along the slice normal."""
    headers, unreadable = [], list(stray)
    for file in files:
        header = _read_header(file)
        if header is None:
            unreadable.append(file)
        else:
            headers.append((file, header))
    first = headers[0][1] if headers else {}
    positions = [_floats(h.get(_POSITION), 3) for _, h in headers]
    orientations = {_orientation(h.get(_ORIENTATION)) for _, h in headers}
    orientation = next(iter(orientations)) if len(orientations) == 1 else None
    if orientation is not None and all(p is not None for p in positions):
        order = np.argsort(np.asarray(positions) @ _normal(orientation), kind="stable")
        headers = [headers[i] for i in order]
        positions = [positions[i] for i in order]
        z = np.asarray(positions) @ _normal(orientation)
        spacing = float(np.median(np.diff(z))) if len(z) > 1 else 0.0
    else:
        positions, spacing = None, 0.0
    image_type = first.get(_IMAGE_TYPE, "").upper()
    return DicomSeries(
        directory=directory,
        files=tuple(file for file, _ in headers),
        modality=first.get(_MODALITY, ""),
        slice_spacing=spacing,
        study_key=pseudonym(first.get(_STUDY_UID)),
        patient_key=pseudonym(first.get(_PATIENT_ID)),
        series_key=pseudonym(first.get(_SERIES_UID)),
        label=label,
        positions=tuple(positions) if positions is not None else None,
        orientation=orientation,
        gantry_tilt=_float(first.get(_TILT)),
        frames=int(_float(first.get(_FRAMES), default=1.0)),
        localizer="LOCALIZER" in image_type,
        unreadable=tuple(unreadable),
    )


def _read_header(file: Path) -> dict[str, str] | None:
    """The tags this module needs, or None for a file GDCM cannot parse."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(file))
    reader.LoadPrivateTagsOff()
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    header = {}
    for key in (_MODALITY, _IMAGE_TYPE, _PATIENT_ID, _TILT, _STUDY_UID, _SERIES_UID, _POSITION, _ORIENTATION,
                _FRAMES):
        if reader.HasMetaDataKey(key):
            try:
                header[key] = reader.GetMetaData(key).strip(" \x00")
            except UnicodeDecodeError:  # a value in a character set SimpleITK cannot decode: treat as absent
                continue
    return header


def _has_dicom_signature(path: Path) -> bool:
    """Whether a file starts like a DICOM Part 10 file (128-byte preamble, then ``DICM``)."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _first_unreadable(files: tuple[Path, ...]) -> Path | None:
    for file in files:
        try:
            sitk.ReadImage(str(file))
        except RuntimeError:
            return file
    return None


def _normal(orientation: tuple[float, ...]) -> np.ndarray:
    """The slice normal: row direction x column direction, normalised."""
    normal = np.cross(orientation[:3], orientation[3:])
    return normal / np.linalg.norm(normal)


def _orientation(value: str | None) -> tuple[float, ...] | None:
    """The six direction cosines, or None when absent or degenerate (parallel rows and columns)."""
    cosines = _floats(value, 6)
    if cosines is None or np.linalg.norm(np.cross(cosines[:3], cosines[3:])) < 1e-6:
        return None
    return cosines


def _floats(value: str | None, count: int) -> tuple[float, ...] | None:
    try:
        numbers = tuple(float(v) for v in (value or "").split("\\"))
    except ValueError:
        return None
    return numbers if len(numbers) == count and all(math.isfinite(v) for v in numbers) else None


def _float(value: str | None, default: float = 0.0) -> float:
    try:
        return float(value) if value else default
    except ValueError:
        return default


def _with_article(word: str) -> str:
    """``an MR``, ``a PT``: the article follows the sound of the first letter, as modalities are spelled out."""
    return f"{'an' if word[0] in 'AEFHILMNORSX' else 'a'} {word}"
