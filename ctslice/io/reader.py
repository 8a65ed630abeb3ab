"""``read_volume``: any scan a user may hand over, as int16 HU with its geometry, or one clear error.

Accepted: a volume file (NIfTI, NRRD, MetaImage), a folder holding a DICOM series (possibly among
other series and files), or a zip of such a folder. Whatever the stored type (int32, float, scaled),
the result is int16 HU rounded to nearest, because that is what the cache and every output store.
Anything unusable raises ``InputError`` naming the file, never a SimpleITK traceback, and is refused
before ITK allocates memory for it where the file says enough (a name that is not UTF-8, a header that
declares more voxels than the file holds). What ITK prints on stderr is kept out of the output; its first
error line, if any, is the reason given.
"""

from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ctslice.errors import CtsliceError, InputError
from ctslice.io.archive import extracted
from ctslice.io.dicom import DicomSeries, ReadOptions, SeriesReport, scan_series
from ctslice.io.dicom_choice import is_volume
from ctslice.io.failures import captured_stderr, first_error, sitk_reason
from ctslice.io.intensity import cast_rounded
from ctslice.io.paths import check_name, check_regular_file
from ctslice.io.volume import Volume

SUPPORTED_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")

AIR_HU = -1024
"""Value given to non-finite (NaN, infinite) voxels of a float scan: no measurement, typically outside the
field of view of a resampled scan."""

_NIFTI_FLOATS = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 and float64 voxels
_DEFLATE_RATIO = 1032  # the most deflate (gzip, zlib) can expand: a bound on what compressed data can hold
_HEADER_LIMIT = 64 * 1024  # NRRD and MetaImage text headers are a few hundred bytes


def is_volume_file(path: Path) -> bool:
    """Whether ``path`` has the name of a volume file ``read_volume`` reads (not a DICOM folder or zip)."""
    return Path(path).name.lower().endswith(SUPPORTED_SUFFIXES)


@dataclass(frozen=True)
class Scan:
    """A scan as read, with what reading it skipped (non-image files) and corrected (tilt, spacing)."""

    volume: Volume
    report: SeriesReport = SeriesReport()
    skipped: int = 0  # files beside a DICOM series that are not images (DICOMDIR, index files, litter...)


def read_volume(path: Path, options: ReadOptions | None = None) -> Volume:
    """The scan at ``path`` (file, DICOM folder or zip) as an int16 HU ``Volume``; ``InputError`` if unusable."""
    return read_scan(path, options).volume


def read_scan(path: Path, options: ReadOptions | None = None) -> Scan:
    """``read_volume`` with its ``Scan`` report; ``options`` shape how a DICOM series is read."""
    path = check_name(Path(path))
    if not path.exists():
        raise InputError(f"{path} does not exist")
    if not path.is_dir():
        check_regular_file(path)  # a FIFO would block the read, a device never end
    if path.is_dir() or path.name.lower().endswith(".zip"):
        with captured_stderr():  # GDCM's warnings; the series checks give the reasons
            return _read_dicom(path, options)
    if is_volume_file(path):
        return Scan(_read_file(path))
    if path.suffix.lower() in (".dcm", ".ima"):
        raise InputError(f"{path} is a single DICOM slice; pass the folder (or a zip of the folder) that holds "
                         "the whole series")
    raise InputError(f"{path} is not a supported input; pass a volume file ({', '.join(SUPPORTED_SUFFIXES)}), "
                     "a DICOM series folder or a zip of one")


def _read_dicom(path: Path, options: ReadOptions | None) -> Scan:
    with extracted(path) as folder:
        scan = scan_series(folder, shown_as=path if folder != path else None)
        volume, report = _select_ct(scan.series, path).load(options)
        return Scan(volume, report, len(scan.skipped))


def _select_ct(series: list[DicomSeries], source: Path) -> DicomSeries:
    """The one CT volume among ``series``; screenshots, localizers and other series that are not volumes
    (``dicom_choice.skip_reason``) do not count.

    With no CT volume and a single series, that series is returned so that its own check explains
    what is wrong with it (an MR series, a missing slice...).
    """
    if not series:
        raise InputError(f"{source} contains no DICOM series; pass a DICOM series folder, a zip of one, "
                         "or a volume file")
    volumes = [s for s in series if is_volume(s)]
    if len(volumes) == 1:
        return volumes[0]
    if len(series) == 1:
        return series[0]
    listing = "; ".join(f"{i}) {s.describe()}" for i, s in enumerate(volumes or series, start=1))
    if volumes:
        raise InputError(f"{source} holds {len(volumes)} CT series ({listing}); pass the folder of one series")
    raise InputError(f"{source} holds no CT volume among its {len(series)} series ({listing}); pass a CT series")


def _read_file(path: Path) -> Volume:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with captured_stderr() as chatter:
            reader.ReadImageInformation()
    except RuntimeError as error:
        raise _unreadable(path, error, chatter) from None
    _check_shape(path, reader)
    nifti = path.name.lower().endswith((".nii", ".nii.gz"))
    if nifti:
        _check_nifti_complete(path, reader)
    else:
        _check_data_size(path, reader)
    try:
        return _load(path, reader, nifti)
    except MemoryError:  # a valid scan, larger than this machine: not "truncated or corrupt"
        raise _too_large(path, reader) from None


def _load(path: Path, reader: sitk.ImageFileReader, nifti: bool) -> Volume:
    """The voxels of a file whose header passed the checks, as int16 HU (NaN and infinity become air)."""
    try:
        with captured_stderr() as chatter:
            image = reader.Execute()
    except RuntimeError as error:
        if "alloc" in str(error).lower() or not _fits_in_memory(reader):  # the NIfTI library just says "failed"
            raise MemoryError from None
        raise _unreadable(path, error, chatter) from None
    if first_error(chatter):  # read "successfully" after a failure it only printed (corrupt MetaImage data)
        raise _unreadable(path, RuntimeError(), chatter)
    volume = Volume.from_image(image)
    array = volume.array
    if array.dtype.kind == "f":
        missing = ~np.isfinite(array)
        if nifti:
            missing |= _nifti_non_finite(path, reader, array.shape)
        if missing.all():
            raise InputError(f"{path} holds no measurement: every voxel is NaN or infinite; export it again")
        if missing.any():
            array = np.where(missing, AIR_HU, array)
    return volume.with_array(cast_rounded(array, np.int16))


def _check_shape(path: Path, reader: sitk.ImageFileReader) -> None:
    components = reader.GetNumberOfComponents()
    if components != 1:
        raise InputError(f"{path} has {components} values per voxel (a colour or vector image), not a "
                         "grayscale CT volume")
    size = reader.GetSize()
    if reader.GetDimension() == 2 or (reader.GetDimension() == 3 and size[2] < 2):
        raise InputError(f"{path} holds a single 2D slice, not a 3D volume; pass a volume with several slices")
    if reader.GetDimension() != 3:
        raise InputError(f"{path} is a {reader.GetDimension()}D image ({' x '.join(map(str, size))}); "
                         "pass a single 3D volume")


def _check_data_size(path: Path, reader: sitk.ImageFileReader) -> None:
    """Refuse a NRRD or MetaImage whose header declares more voxel bytes than its data can hold.

    ITK allocates the declared size before it reads a byte, so a 1 kB header declaring 4 GiB would cost
    4 GiB of memory before the short read is noticed. Raw data must hold every byte; deflated data
    (gzip, zlib) at least 1/1032 of them. Other encodings (bzip2, text) and unusual layouts are left to ITK.
    """
    layout = _data_layout(path)
    if layout is None:
        return
    data, offset, encoding = layout
    if not data.is_file():
        raise InputError(f"{path}: its data file {data.name} is missing (or not a file); copy it beside the header")
    available = data.stat().st_size - offset
    declared = _voxel_bytes(reader)
    if encoding in ("raw", "false") and available < declared:
        raise InputError(f"{path} declares {declared} bytes of voxels ({_described(reader)}) but its data holds "
                         f"{max(available, 0)}; it is truncated or its header is wrong")
    if encoding in ("gzip", "gz", "true") and available * _DEFLATE_RATIO < declared:
        raise InputError(f"{path} declares {declared} bytes of voxels ({_described(reader)}), more than its "
                         f"{max(available, 0)} bytes of compressed data can hold; its header is wrong")


def data_files(path: Path) -> list[Path]:
    """The files besides ``path`` that reading it reads: the data file of a NRRD or MetaImage header that
    keeps its voxels apart (``a.mhd`` -> ``a.zraw``), so that no output is written over it."""
    path = Path(path)
    if not (path.is_file() and path.name.lower().endswith((".nrrd", ".nhdr", ".mha", ".mhd"))):
        return []
    try:
        layout = _data_layout(path)
    except OSError:
        return []  # reading it will say why
    return [layout[0]] if layout is not None and layout[0] != path else []


def _data_layout(path: Path) -> tuple[Path, int, str] | None:
    """Where a NRRD's or MetaImage's voxels are (file, byte offset) and how they are encoded, from its text header.

    The encoding is NRRD's ``encoding`` field, or MetaImage's ``CompressedData`` value (``true``/``false``).
    None when the header cannot be parsed here (too long, a list of data files), which leaves it to ITK.
    """
    with open(path, "rb") as stream:
        head = stream.read(_HEADER_LIMIT)
    fields, offset = {}, 0
    nrrd = head.startswith(b"NRRD")
    for raw_line in head.splitlines(keepends=True):
        offset += len(raw_line)
        line = raw_line.decode("latin-1").strip()
        if nrrd and not line:
            break
        key, _, value = line.partition(":" if nrrd else "=")
        fields[key.strip().lower().replace(" ", "")] = value.lstrip("=").strip()
        if not nrrd and key.strip().lower() == "elementdatafile":
            break
    else:
        return None  # the header did not end within the limit
    name = fields.get("datafile" if nrrd else "elementdatafile", "LOCAL")
    if (nrrd and "datafile" not in fields) or (not nrrd and name.upper() == "LOCAL"):
        data = path
    elif " " in name or "%" in name or name.upper() == "LIST":
        return None  # a list or pattern of data files
    else:
        data, offset = path.parent / name, 0
    encoding = fields.get("encoding", "raw") if nrrd else fields.get("compresseddata", "false").lower()
    return data, offset, encoding


def _voxel_bytes(reader: sitk.ImageFileReader) -> int:
    """Bytes of voxel data the header of ``reader``'s file declares."""
    component = sitk.Image([1, 1], reader.GetPixelID()).GetSizeOfPixelComponent()
    return math.prod(reader.GetSize()) * reader.GetNumberOfComponents() * component


def _described(reader: sitk.ImageFileReader) -> str:
    return f"{' x '.join(map(str, reader.GetSize()))} {sitk.GetPixelIDValueAsString(reader.GetPixelID())}"


def _fits_in_memory(reader: sitk.ImageFileReader) -> bool:
    """Whether the buffers ITK needs for the file (the image and the reader's own copy) can be allocated.

    Tried, not touched: the allocation is lazy, so it costs nothing when it succeeds and fails at once
    where the address space or the kernel's overcommit limit says it would.
    """
    try:
        np.empty(2 * _voxel_bytes(reader), np.uint8)
    except (MemoryError, ValueError):
        return False
    return True


def _too_large(path: Path, reader: sitk.ImageFileReader) -> CtsliceError:
    return CtsliceError(f"{path} is too large for the memory of this machine ({_voxel_bytes(reader) / 1024**3:.1f} GB "
                        f"of voxels, {_described(reader)}); read it on a machine with more memory")


def _check_nifti_complete(path: Path, reader: sitk.ImageFileReader) -> None:
    """Reject a truncated NIfTI, which SimpleITK would read without complaint, padding it with zeros."""
    try:
        dims = [int(reader.GetMetaData(f"dim[{i}]")) for i in range(1, int(reader.GetMetaData("dim[0]")) + 1)]
        voxel_bytes = int(reader.GetMetaData("bitpix")) // 8
        expected = int(float(reader.GetMetaData("vox_offset"))) + math.prod(dims) * voxel_bytes
    except (RuntimeError, ValueError):
        return  # header fields missing: nothing to compare against, let the reader decide
    if path.name.lower().endswith(".gz"):
        available = _gunzipped_size(path, expected)
    else:
        available = path.stat().st_size
    if available < expected:
        raise InputError(f"{path} is truncated ({available} of {expected} bytes); copy or export it again")


def _gunzipped_size(path: Path, enough: float) -> int:
    """Bytes that decompress from ``path``, counting up to ``enough``; ``InputError`` if the gzip is damaged.

    Reading goes on past ``enough`` to the end of the stream, where gzip checks its CRC: damaged bytes
    in the middle often still inflate, and only the checksum tells them from the scan.
    """
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while total <= enough and (chunk := stream.read(1 << 20)):
                total += len(chunk)
    except EOFError:
        raise InputError(f"{path} is truncated (its compressed data ends early); copy or export it again") from None
    except (OSError, zlib.error) as error:
        raise InputError(f"{path} is a corrupt gzip file ({error}); copy or export it again") from None
    return total


def _nifti_non_finite(path: Path, reader: sitk.ImageFileReader, shape: tuple[int, ...]) -> np.ndarray:
    """Where a float NIfTI file stores NaN or infinity, as a (z, y, x) mask (all False for other types).

    ITK's NIfTI reader (up to ITK 5) turns every non-finite voxel into 0 without a word, and 0 HU is
    water: the NaN a resampling tool writes outside the field of view would become tissue. So the raw
    voxels are scanned here, one slice at a time, to find them.
    """
    missing = np.zeros(shape, dtype=bool)
    try:
        kind = _NIFTI_FLOATS.get(int(reader.GetMetaData("datatype")))
        offset = int(float(reader.GetMetaData("vox_offset")))
    except (RuntimeError, ValueError):
        return missing
    if kind is None:
        return missing
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as stream:
        header = stream.read(offset)
        order = "<" if int.from_bytes(header[:4], "little") in (348, 540) else ">"  # sizeof_hdr, NIfTI-1 or 2
        dtype = np.dtype(order + kind)
        for z in range(shape[0]):
            voxels = np.frombuffer(stream.read(dtype.itemsize * shape[1] * shape[2]), dtype=dtype)
            missing[z] = ~np.isfinite(voxels.reshape(shape[1:]))
    return missing


def _unreadable(path: Path, error: RuntimeError, chatter: list[str]) -> InputError:
    if path.stat().st_size == 0:
        return InputError(f"{path} is empty (0 bytes); copy or export it again")
    if path.name.lower().endswith(".gz"):
        try:  # a damaged compression layer is the more precise diagnosis
            _gunzipped_size(path, math.inf)
        except InputError as damaged:
            return damaged
    kind = next(s for s in SUPPORTED_SUFFIXES if path.name.lower().endswith(s))
    reason = first_error(chatter) or sitk_reason(error)
    detail = "" if path.name in reason or "Unable to determine ImageIO" in reason else f" ({reason})"
    return InputError(f"{path} cannot be read: it is truncated, corrupt or not a {kind} file{detail}")
