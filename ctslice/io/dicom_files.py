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
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.fileset import FileSet
from pydicom.tag import Tag
from pydicom.uid import UID

from ctslice.errors import one_line

NOT_AN_IMAGE = "not an image"
UNREADABLE = "unreadable"

_TAGS = ["SOPClassUID", "Modality", "ImageType", "PatientID", "StudyInstanceUID", "SeriesInstanceUID",
         "ImagePositionPatient", "ImageOrientationPatient", "Rows", "Columns",
         "NumberOfFrames", "GantryDetectorTilt", "SamplesPerPixel", "BitsAllocated", "PhotometricInterpretation",
         "RescaleSlope", "PixelSpacing", "SeriesNumber", "SeriesDescription", "ConvolutionKernel",
         "ReconstructionDiameter", "SliceThickness", 0x7FE00010]
_PIXEL_DATA = 0x7FE00010
BARE_PREFIX = 64 * 1024  # bytes parsed to tell a bare DICOM data set from other binary files
MODALITY_CODE = r"[A-Z0-9_ ]{1,16}"  # a Modality value (code string); anything else is never shown
INVALID_MODALITY = "?"
DESCRIPTION_LIMIT = 64  # characters of a SeriesDescription or ConvolutionKernel kept (a LO value holds 64)
MAX_FRAGMENTS = 1 << 16  # items of encapsulated pixel data: a slice has a handful (one or a few per frame)
HEADER_LIMIT = TRAILING_LIMIT = 1024 * 1024
"""Bytes of a file in which its header must end (the Pixel Data element start): a CT slice header is a
few kB to a few hundred. Nothing beyond it is parsed, so a file of gigabytes of anything (zeros after a
valid header, a sparse file) costs what parsing this much costs, not hours. ``TRAILING_LIMIT``: bytes a
slice may hold behind its pixel data (trailing padding is a few bytes; more is junk GDCM would parse)."""


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
    defect: str | None = None  # why its pixels cannot be read as HU on their grid (words after the file name)
    sop_class: str = ""  # the SOP class's name ("CT Image Storage"), "" when the file does not say
    image_type: tuple[str, ...] = ()  # ImageType values, upper case ("ORIGINAL", "PRIMARY", "AXIAL")
    colour: bool = False  # colour pixels (a screenshot), not grey values
    number: int | None = None  # SeriesNumber
    description: str = ""  # SeriesDescription (control characters escaped)
    kernel: str = ""  # ConvolutionKernel, its values joined by "/" ("B30f", "STANDARD", "I26f/3")
    fov: float | None = None  # field of view (mm): ReconstructionDiameter, else PixelSpacing x the larger side
    thickness: float | None = None  # SliceThickness (mm), None when missing or not a positive number


def read_slice(file: Path) -> SliceHeader | str:
    """The header of an image file, or ``NOT_AN_IMAGE`` / ``UNREADABLE`` (see the module docstring).

    Files without the Part 10 preamble (older exports: the data set from its first byte) are read too
    when they are bare image data sets (``_is_bare_image``).
    """
    try:
        ds = _read_header(file, force=False)
    except InvalidDicomError:  # no DICM signature: a bare data set, or not DICOM at all
        if not _is_bare_image(file):
            return NOT_AN_IMAGE
        try:
            ds = _read_header(file, force=True)
        except Exception:  # noqa: BLE001 -- an image by its first bytes, damaged further on
            return UNREADABLE
    except PermissionError:  # it may be a slice: skipping it would turn it into a missing one
        return UNREADABLE
    except Exception:  # noqa: BLE001 -- pydicom raises many kinds on a damaged file; all mean the same here
        return UNREADABLE if _has_dicom_signature(file) else NOT_AN_IMAGE
    image_class = "Image Storage" in _sop_class_name(ds)
    if not image_class and _get(ds, "Rows") is None:
        return NOT_AN_IMAGE
    header = _header(file, ds)
    if header.size is None or not _pixels_complete(file, ds):
        return UNREADABLE
    return header


def _read_header(file: Path, *, force: bool) -> pydicom.Dataset:
    """The ``_TAGS`` of ``file``; of the pixels only their position and length.

    Parsing ends where the data set does: behind the pixels at the first top-level tag that does not
    follow the one before it (``_tags_stop_ascending``), and at ``HEADER_LIMIT`` bytes. So a file of
    gigabytes costs what its header costs.
    """
    with open(file, "rb") as handle, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about values that break the standard's rules
        stream = io.BufferedReader(_Prefix(handle, HEADER_LIMIT))
        return read_partial(stream, _tags_stop_ascending(), defer_size=1024, force=force,
                            specific_tags=[Tag(t) for t in _TAGS])


def _tags_stop_ascending():
    """A ``stop_when`` for pydicom that ends the data set behind the pixel data at the first tag not above the
    one before (what follows there, zeros or other junk, is not part of it). Before the pixels, tags out of
    order are tolerated as readers do (some exports write them so); ``HEADER_LIMIT`` bounds that part."""
    last, pixels_seen = -1, False

    def stop(tag, vr, length) -> bool:
        nonlocal last, pixels_seen
        ended = pixels_seen and tag <= last
        last, pixels_seen = tag, pixels_seen or tag == _PIXEL_DATA
        return ended

    return stop


class _Prefix(io.RawIOBase):
    """A binary file that seems to end after ``limit`` bytes (its real size is still known to the caller).

    pydicom parses elements until the data ends and skips a deferred value (the pixels) by seeking, so
    the elements behind the pixels, or a header that never ends, are cut off at ``limit``.
    """

    def __init__(self, handle, limit: int) -> None:
        super().__init__()
        self._handle, self._limit = handle, limit

    @property
    def name(self) -> str:  # pydicom records where a data set came from
        return self._handle.name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        room = max(0, min(len(buffer), self._limit - self._handle.tell()))
        data = self._handle.read(room)
        buffer[: len(data)] = data
        return len(data)

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()


def _header(file: Path, ds: pydicom.Dataset) -> SliceHeader:
    rows, columns = _float(_get(ds, "Rows"), 0.0), _float(_get(ds, "Columns"), 0.0)
    modality = _text(ds, "Modality")
    return SliceHeader(
        file=file,
        modality=modality if not modality or re.fullmatch(MODALITY_CODE, modality) else INVALID_MODALITY,
        localizer="LOCALIZER" in "\\".join(_strings(_get(ds, "ImageType"))).upper(),
        patient_key=pseudonym(_text(ds, "PatientID")),
        study_key=pseudonym(_text(ds, "StudyInstanceUID")),
        series_key=pseudonym(_text(ds, "SeriesInstanceUID")),
        position=_floats(_get(ds, "ImagePositionPatient"), 3),
        orientation=_floats(_get(ds, "ImageOrientationPatient"), 6),
        size=(int(rows), int(columns)) if rows >= 1 and columns >= 1 else None,
        tilt=_float(_get(ds, "GantryDetectorTilt"), 0.0),
        frames=int(_float(_get(ds, "NumberOfFrames"), 1.0)),
        defect=_defect(ds),
        sop_class=_sop_class_name(ds),
        image_type=tuple(v.strip().upper() for v in _strings(_get(ds, "ImageType"))),
        colour=_is_colour(ds),
        number=_integer(_get(ds, "SeriesNumber")),
        description=one_line(_text(ds, "SeriesDescription"))[:DESCRIPTION_LIMIT],
        kernel=one_line("/".join(filter(None, (v.strip() for v in _strings(_get(ds, "ConvolutionKernel"))))))[
            :DESCRIPTION_LIMIT],
        fov=_field_of_view(ds, rows, columns),
        thickness=_thickness(_float(_get(ds, "SliceThickness"), 0.0)),
    )


def _sop_class_name(ds: pydicom.Dataset) -> str:
    """The SOP class's name from the data set or its file meta ("" when neither says or it is unknown)."""
    meta = getattr(ds, "file_meta", None)  # a bare data set has none
    uid = _text(ds, "SOPClassUID") or str(getattr(meta, "MediaStorageSOPClassUID", "") or "").strip(" \x00")
    name = UID(uid).name if uid else ""
    return "" if name == uid else name  # pydicom names an unknown UID by the UID itself


def _is_colour(ds: pydicom.Dataset) -> bool:
    """Colour pixels (several samples, or a photometric interpretation other than MONOCHROME1/2)."""
    photometric = _text(ds, "PhotometricInterpretation").upper()
    return _float(_get(ds, "SamplesPerPixel"), 1.0) != 1 or photometric not in ("", "MONOCHROME1", "MONOCHROME2")


def _field_of_view(ds: pydicom.Dataset, rows: float, columns: float) -> float | None:
    """The reconstruction's field of view (mm): ReconstructionDiameter when present, else the pixel spacing
    times the larger side; None when neither is known. Two series of one scan reconstructed alike share it."""
    diameter = _float(_get(ds, "ReconstructionDiameter"), 0.0)
    if diameter > 0:
        return diameter
    spacing = _floats(_get(ds, "PixelSpacing"), 2)
    return max(spacing[0] * rows, spacing[1] * columns) if spacing and min(spacing) > 0 and rows and columns else None


def _defect(ds: pydicom.Dataset) -> str | None:
    """What keeps an image's pixels from being read as HU on their grid, in words, or None.

    GDCM reads each of these without a word and gives wrong values or geometry: colour pixels, grey
    values inverted for display (MONOCHROME1: GDCM inverts the stored values, so HU come out negated),
    a RescaleSlope that is not a positive number (it falls back to 1, or negates every HU), and a
    missing or non-positive PixelSpacing (it assumes 1 mm).
    """
    samples = _float(_get(ds, "SamplesPerPixel"), 1.0)
    photometric = _text(ds, "PhotometricInterpretation").upper()
    if _is_colour(ds):
        return f"is a colour image ({photometric or f'{samples:g} samples per pixel'}), not a grey-scale CT slice"
    if photometric == "MONOCHROME1":
        return "stores inverted grey values (MONOCHROME1), which are not read back as HU"
    if "RescaleSlope" in ds:
        slope = _float(_get(ds, "RescaleSlope"), math.nan)
        if not slope > 0:
            return "has a RescaleSlope that is not a positive number, so its pixels do not map to HU"
    spacing = _floats(_get(ds, "PixelSpacing"), 2)
    if spacing is None or min(spacing) <= 0:
        return "lacks a valid PixelSpacing (two positive numbers), so its pixels have no size"
    return None


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
    """Whether the file holds all of its pixel data and nothing much behind it.

    A copy cut short lacks pixels; native pixel data shorter than Rows x Columns declare would make the
    reader allocate what the header claims; gigabytes behind the pixels (a file padded or overwritten
    with junk) would make GDCM parse them for hours. Each is a damaged file.
    """
    element = ds.get_item(_PIXEL_DATA, keep_deferred=True)
    if element is None:
        return False
    length, offset = getattr(element, "length", None), getattr(element, "value_tell", None)
    if length is None or offset is None:
        return False
    size = file.stat().st_size
    if length == 0xFFFFFFFF:  # encapsulated (compressed): the end of its last fragment
        end = _fragments_end(file, offset, size)
    else:
        end = offset + length if length >= _native_bytes(ds) else None
    return end is not None and end <= size <= end + TRAILING_LIMIT


def _native_bytes(ds: pydicom.Dataset) -> int:
    """Bytes of uncompressed pixel data the header declares (rows x columns x samples x bytes x frames)."""
    rows, columns = _float(_get(ds, "Rows"), 0.0), _float(_get(ds, "Columns"), 0.0)
    samples, bits = _float(_get(ds, "SamplesPerPixel"), 1.0), _float(_get(ds, "BitsAllocated"), 16.0)
    frames = max(_float(_get(ds, "NumberOfFrames"), 1.0), 1.0)
    if bits < 8:  # bit-packed (1-bit overlays and the like): no whole-byte size to check
        return 0
    return int(rows * columns * max(samples, 1.0) * (bits // 8) * frames)


def _fragments_end(file: Path, offset: int, size: int) -> int | None:
    """Where encapsulated pixel data ends: after its items (FFFE,E000) and the sequence delimiter
    (FFFE,E0DD); None when an item is malformed, runs past the end of the file, or items go on past
    ``MAX_FRAGMENTS`` (a file of millions of empty items would otherwise be walked 8 bytes at a time)."""
    with open(file, "rb") as handle:
        position = offset
        for _ in range(MAX_FRAGMENTS):
            if position + 8 > size:
                return None
            handle.seek(position)
            group, element, length = struct.unpack("<HHI", handle.read(8))
            if (group, element) == (0xFFFE, 0xE0DD):
                return position + 8
            if (group, element) != (0xFFFE, 0xE000) or length == 0xFFFFFFFF:
                return None
            position += 8 + length
    return None


def dicomdir_series(dicomdir: Path) -> dict[str, list[Path]] | None:
    """Files of each series a DICOMDIR lists (by pseudonym), or None when it cannot be used.

    A DICOMDIR that pydicom cannot read, or that names files that are not there (a partial copy of a
    CD), are not regular files, or lie outside its folder (pydicom refuses ``..`` and absolute paths;
    a symbolic link inside can still lead out), is not trusted: the caller then finds the series by
    reading the folders. A file listed twice counts once.
    """
    if not dicomdir.is_file():  # a FIFO named DICOMDIR would block the read for ever
        return None
    try:
        root = dicomdir.parent.resolve()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about records that break the standard's rules
            file_set = FileSet(pydicom.dcmread(dicomdir))
        found: dict[str, list[Path]] = {}
        seen: set[Path] = set()
        for instance in file_set:
            path = Path(instance.path)
            if not path.is_file() or not path.resolve().is_relative_to(root):
                return None
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
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


def _integer(value) -> int | None:
    """An integer tag (IS) as an int, or None when absent or not a whole number."""
    number = _float(value, math.nan)
    return int(number) if math.isfinite(number) and number == int(number) else None


def _thickness(number: float) -> float | None:
    """``number`` when it is in (0, 100] mm, else None (a missing, zero or absurd value is no thickness)."""
    return number if 0 < number <= 100.0 else None


def _float(value, default: float) -> float:
    try:
        number = float(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default
