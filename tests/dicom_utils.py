"""Writing synthetic DICOM series (and zips of them) the way scanners and PACS exports lay them out.

Shared by the io, preprocessing and reliability tests. Every file is written by SimpleITK's GDCM
writer, one slice per file, with the tags a reader relies on; the defects a real export can have
(scrambled names, a dropped or duplicated slice, a tilted gantry, a non-CT modality) are switches.
"""

from __future__ import annotations

import hashlib
import math
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ctslice.io import Volume


def make_uid(*parts: object) -> str:
    """A valid, deterministic DICOM UID (the ``2.25.`` UUID-derived root) made from ``parts``."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()
    return f"2.25.{int(digest[:30], 16)}"


def write_dicom_series(volume: Volume, folder: Path, *, modality: str = "CT", patient_id: str = "PAT-0001",
                       patient_name: str = "Doe^Jane", study_uid: str | None = None, series_uid: str | None = None,
                       scramble_names: bool = True, drop_slices=(), duplicate_slices=(), tilt_degrees: float = 0.0,
                       gantry_tilt_tag: float | None = None) -> list[Path]:
    """Write ``volume`` (int16 HU) as one DICOM file per slice in ``folder``; return the files written.

    Pixels are stored as HU + 1024 with RescaleIntercept -1024, as most CT scanners do, so a reader
    that ignores the rescale tags is caught. ``scramble_names`` gives the files extension-less names
    whose order matches neither the slice order nor its reverse. ``drop_slices`` leaves those slice
    indices out; ``duplicate_slices`` writes those slices twice under two names. ``tilt_degrees``
    shears the slice positions along the column direction (what a tilted gantry produces) while the
    orientation stays axial; ``gantry_tilt_tag`` writes GantryDetectorTilt (0018,1120).
    """
    image = volume.to_image()
    direction = np.asarray(volume.direction, dtype=float).reshape(3, 3)
    row, column = direction[:, 0], direction[:, 1]
    shear = math.tan(math.radians(tilt_degrees)) * volume.spacing[2]
    kept = [k for k in range(volume.depth) if k not in drop_slices]
    slices = [(image[:, :, k], np.asarray(image.TransformIndexToPhysicalPoint((0, 0, k))) + k * shear * column,
               (*row, *column)) for k in kept]
    names = _file_names(volume.depth, scramble_names)
    copies = {names[k]: [names[k], names[k] + "_copy"] for k in duplicate_slices}
    return write_slices(slices, folder, names=[names[k] for k in kept], copies=copies, modality=modality,
                        patient_id=patient_id, patient_name=patient_name, study_uid=study_uid, series_uid=series_uid,
                        thickness=volume.spacing[2], gantry_tilt_tag=gantry_tilt_tag)


def write_slices(slices, folder: Path, *, names: list[str] | None = None, copies: dict[str, list[str]] | None = None,
                 modality: str = "CT", patient_id: str = "PAT-0001", patient_name: str = "Doe^Jane",
                 study_uid: str | None = None, series_uid: str | None = None, thickness: float = 1.0,
                 gantry_tilt_tag: float | None = None) -> list[Path]:
    """Write one DICOM file per ``(image, position, orientation)`` of ``slices``; return the files written.

    ``image`` is a 2D int16 HU SimpleITK image (its spacing is the pixel spacing), ``position`` the
    ImagePositionPatient and ``orientation`` the six ImageOrientationPatient cosines of that slice, so
    any geometry a scanner can produce (tilt, uneven spacing, mixed orientations or sizes) can be
    written. ``copies`` maps a name to the names it is written under (a duplicated slice).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or make_uid(folder, "study")
    series_uid = series_uid or make_uid(folder, "series", modality)
    names = names or [f"slice_{k:04d}.dcm" for k in range(len(slices))]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")
    written = []
    for k, ((piece, position, orientation), name) in enumerate(zip(slices, names, strict=True)):
        spacing = piece.GetSpacing()
        tags = {
            "0008|0060": modality,
            "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
            "0008|0020": "20240101",
            "0008|0030": "120000",
            "0010|0010": patient_name,
            "0010|0020": patient_id,
            "0020|000d": study_uid,
            "0020|000e": series_uid,
            "0020|0010": "1",
            "0020|0011": "1",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{p:.6f}" for p in position),
            "0020|0037": "\\".join(f"{v:.8f}" for v in orientation),
            "0028|0030": f"{spacing[1]:.6f}\\{spacing[0]:.6f}",
            "0018|0050": f"{thickness:.6f}",
            "0028|1052": "-1024",
            "0028|1053": "1",
        }
        if gantry_tilt_tag is not None:
            tags["0018|1120"] = f"{gantry_tilt_tag:g}"
        for copy in (copies or {}).get(name, [name]):
            for tag, value in tags.items():
                piece.SetMetaData(tag, value)
            piece.SetMetaData("0008|0018", make_uid(folder, series_uid, copy))
            writer.SetFileName(str(folder / copy))
            writer.Execute(piece)
            written.append(folder / copy)
    return written


def _file_names(depth: int, scramble: bool) -> list[str]:
    if not scramble:
        return [f"slice_{k:04d}.dcm" for k in range(depth)]
    order = np.random.default_rng(depth).permutation(depth)
    if depth > 2 and (np.all(np.diff(order) > 0) or np.all(np.diff(order) < 0)):
        order = np.roll(order, 1)
    return [f"IM{order[k]:05d}" for k in range(depth)]


def zip_folder(folder: Path, zip_path: Path) -> Path:
    """Zip ``folder`` with paths relative to its parent (``folder.name/...``), as file managers do."""
    folder, zip_path = Path(folder), Path(zip_path)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                zf.write(file, file.relative_to(folder.parent).as_posix())
    return zip_path


def write_malicious_zip(path: Path, member: str = "../evil.txt") -> Path:
    """A zip holding one harmless file and one ``member`` whose name escapes the extraction folder."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("series/readme.txt", "a normal member")
        zf.writestr(member, "written outside the extraction folder")
    return Path(path)


# --- what real media carry beside the slices ----------------------------------------------------------------------

LITTER = {
    "VERSION": b"EXPORT VERSION 3.2\r\n",
    "LOCKFILE": b"",
    ".DS_Store": b"\x00\x00\x00\x01Bud1" + bytes(range(256)) * 4,
    "Thumbs.db": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(512),
}
"""Non-DICOM files an export or a file manager leaves in a folder."""

NO_PIXELS = {
    "PR": "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
    "SR": "1.2.840.10008.5.1.4.1.1.88.67",  # X-Ray Radiation Dose SR (a dose report)
    "DIR": "1.2.840.10008.1.3.10",  # Media Storage Directory: what a vendor's DIRFILE index is
}


def write_pixelless(path: Path, kind: str, *, study_uid: str | None = None, series_uid: str | None = None,
                    patient_id: str = "PAT-0001") -> Path:
    """A valid DICOM Part 10 file without pixel data: a presentation state, a dose report or an index file."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = NO_PIXELS[kind]
    meta.MediaStorageSOPInstanceUID = make_uid(path, kind)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    if kind == "DIR":
        ds.FileSetID = "EXPORT"
        ds.DirectoryRecordSequence = []
    else:
        ds.SOPClassUID, ds.SOPInstanceUID = NO_PIXELS[kind], meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.PatientID = kind, patient_id
        ds.StudyInstanceUID = study_uid or make_uid(path, "study")
        ds.SeriesInstanceUID = series_uid or make_uid(path, "series")
    ds.save_as(path, enforce_file_format=True)
    return path


def litter(folder: Path) -> list[Path]:
    """Put a DIRFILE index (DICOM without pixels) and the ``LITTER`` files into ``folder``; return them."""
    folder = Path(folder)
    files = [write_pixelless(folder / "DIRFILE", "DIR")]
    for name, data in LITTER.items():
        (folder / name).write_bytes(data)
        files.append(folder / name)
    return files


def dicomdir_export(staging: Path, export: Path) -> Path:
    """Copy every DICOM file under ``staging`` into a media file-set at ``export`` with a DICOMDIR (pydicom).

    The layout is what CD exports use: ``PT000000/ST000000/SE00000n/IM00000m``, every file found only
    through the DICOMDIR's records.
    """
    from pydicom.fileset import FileSet

    file_set = FileSet()
    for file in sorted(p for p in Path(staging).rglob("*") if p.is_file()):
        file_set.add(file)
    file_set.write(export)
    return Path(export) / "DICOMDIR"
