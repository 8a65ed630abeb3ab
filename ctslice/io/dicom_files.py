"""Telling DICOM slices from everything else on real media, and reading the few header fields ctslice needs.

Scanner and PACS exports carry files beside the slices: the DICOMDIR and vendor index files (DIRFILE),
VERSION and LOCKFILE, OS litter (.DS_Store, Thumbs.db), and DICOM objects without pixels (presentation
states, dose reports, key object selections). Those are *not images*: skipped and counted, never a
reason to refuse a series. A file that is an image but whose header or pixels are cut short is
*unreadable*: it belongs to the series, and skipping it would turn it into a missing slice.

Headers are read with pydicom, only the tags listed here (``specific_tags``): patient names are never
read, and the identifiers that group slices (patient, study, series) are turned into pseudonyms before
they leave this module.
"""

from __future__ import annotations

import hashlib
import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.fileset import FileSet
from pydicom.uid import UID

NOT_AN_IMAGE = "not an image"
UNREADABLE = "unreadable"

_TAGS = ["SOPClassUID", "Modality", "ImageType", "PatientID", "StudyInstanceUID", "SeriesInstanceUID",
         "ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns",
         "NumberOfFrames", "GantryDetectorTilt", 0x7FE00010]
_PIXEL_DATA = 0x7FE00010
BARE_PREFIX = 64 * 1024  # bytes parsed to tell a bare DICOM data set from other binary files


def pseudonym(value: str | None) -> str | None:
    """A short, stable stand-in for an identifier (12 hex digits of sha256 of ``"ctslice:" + value``).

    Equal identifiers give equal pseudonyms, so series of one study or patient can still be grouped
    (and kept in one split) without the identifier itself being stored anywhere.
    """
    if not value:
        return None
    return hashlib.sha256(f"ctslice:{value}".encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SliceHeader:
    """What ctslice needs from one image file; identifiers as pseudonyms only."""

    file: Path
    modality: str
    localizer: bool
    patient_key: str | None
    study_key: str | None
    series_key: str | None
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None  # the six cosines as stored (possibly degenerate)
    size: tuple[int, int] | None  # (rows, columns)
    tilt: float
    frames: int


def read_slice(file: Path) -> SliceHeader | str:
    """The header of an image file, or ``NOT_AN_IMAGE`` / ``UNREADABLE`` (see the module docstring).

    Files without the Part 10 preamble (older exports: the data set from its first byte) are read too
    when they are bare image data sets (``_is_bare_image``).
    """
    try:
        ds = pydicom.dcmread(file, specific_tags=_TAGS, defer_size=1024)  # pixels: position and length only
    except InvalidDicomError:  # no DICM signature: a bare data set, or not DICOM at all
        if not _is_bare_image(file):
            return NOT_AN_IMAGE
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom warns about values that break the standard's rules
                ds = pydicom.dcmread(file, specific_tags=_TAGS, defer_size=1024, force=True)
        except Exception:  # noqa: BLE001 -- an image by its first bytes, damaged further on
            return UNREADABLE
    except Exception:  # noqa: BLE001 -- pydicom raises many kinds on a damaged file; all mean the same here
        return UNREADABLE if _has_dicom_signature(file) else NOT_AN_IMAGE
    meta = getattr(ds, "file_meta", None)  # a bare data set has none
    sop_class = _text(ds, "SOPClassUID") or str(getattr(meta, "MediaStorageSOPClassUID", "") or "")
    image_class = "Image Storage" in (UID(sop_class).name if sop_class else "")
    if not image_class and _get(ds, "Rows") is None:
        return NOT_AN_IMAGE
    header = _header(file, ds)
    if header.size is None or not _pixels_complete(file, ds):
        return UNREADABLE
    return header


def _header(file: Path, ds: pydicom.Dataset) -> SliceHeader:
    rows, columns = _float(_get(ds, "Rows"), 0.0), _float(_get(ds, "Columns"), 0.0)
    return SliceHeader(
        file=file,
        modality=_text(ds, "Modality"),
        localizer="LOCALIZER" in "\\".join(_strings(_get(ds, "ImageType"))).upper(),
        patient_key=pseudonym(_text(ds, "PatientID")),
        study_key=pseudonym(_text(ds, "StudyInstanceUID")),
        series_key=pseudonym(_text(ds, "SeriesInstanceUID")),
        position=_floats(_get(ds, "ImagePositionPatient"), 3),
        orientation=_floats(_get(ds, "ImageOrientationPatient"), 6),
        size=(int(rows), int(columns)) if rows >= 1 and columns >= 1 else None,
        tilt=_float(_get(ds, "GantryDetectorTilt"), 0.0),
        frames=int(_float(_get(ds, "NumberOfFrames"), 1.0)),
    )


def _get(ds: pydicom.Dataset, keyword: str):
    """A tag's value, or None when absent or not decodable (a malformed value counts as a missing one)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about values that break the standard's rules
            return ds.get(keyword)
    except Exception:  # noqa: BLE001 -- pydicom raises many kinds on malformed values
        return None


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    return str(_get(ds, keyword) or "").strip(" \x00")


def _pixels_complete(file: Path, ds: pydicom.Dataset) -> bool:
    """Whether the file holds all of its pixel data (a copy cut short does not)."""
    element = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    if element is None:
        return False
    length, offset = getattr(element, "length", None), getattr(element, "value_tell", None)
    if length is None or offset is None or length == 0xFFFFFFFF:  # encapsulated (compressed): no length to check
        return True
    return offset + length <= file.stat().st_size


def dicomdir_series(dicomdir: Path) -> dict[str, list[Path]] | None:
    """Files of each series a DICOMDIR lists (by pseudonym), or None when it cannot be used.

    A DICOMDIR that pydicom cannot read, or that names files that are not there (a partial copy of a
    CD), is not trusted: the caller then finds the series by reading the folders.
    """
    try:
        file_set = FileSet(pydicom.dcmread(dicomdir))
        found: dict[str, list[Path]] = {}
        for instance in file_set:
            path = Path(instance.path)
            if not path.is_file():
                return None
            key = pseudonym(str(getattr(instance, "SeriesInstanceUID", "") or "")) or str(path.parent)
            found.setdefault(key, []).append(path)
        return found
    except Exception:  # noqa: BLE001 -- any failure means: fall back to the folders
        return None


def _is_bare_image(path: Path) -> bool:
    """Whether a file without the Part 10 preamble is a bare image data set: it starts with a
    little-endian tag of group 0002 (file meta) or 0008 (identification), and its first ``BARE_PREFIX``
    bytes name an image storage SOP class. Only that prefix is parsed, so a large binary file that
    happens to start with those two bytes (raw voxels, say) costs next to nothing."""
    try:
        with open(path, "rb") as f:
            head = f.read(BARE_PREFIX)
    except OSError:
        return False
    if head[:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # about what force=True makes of bytes that are not DICOM
            ds = pydicom.dcmread(io.BytesIO(head), force=True, specific_tags=["SOPClassUID"], stop_before_pixels=True)
        return "Image Storage" in UID(_text(ds, "SOPClassUID")).name
    except Exception:  # noqa: BLE001 -- bytes that are not DICOM make pydicom raise many kinds
        return False


def _has_dicom_signature(path: Path) -> bool:
    """Whether a file starts like a DICOM Part 10 file (128-byte preamble, then ``DICM``)."""
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _strings(value) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list | tuple | pydicom.multival.MultiValue) else [str(value)]


def _floats(value, count: int) -> tuple[float, ...] | None:
    try:
        numbers = tuple(float(v) for v in _strings(value))
    except ValueError:
        return None
    return numbers if len(numbers) == count and all(math.isfinite(v) for v in numbers) else None


def _float(value, default: float) -> float:
    try:
        number = float(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default
