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
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or make_uid(folder, "study")
    series_uid = series_uid or make_uid(folder, "series", modality)
    image = volume.to_image()
    direction = np.asarray(volume.direction, dtype=float).reshape(3, 3)
    row, column = direction[:, 0], direction[:, 1]
    shear = math.tan(math.radians(tilt_degrees)) * volume.spacing[2]
    depth = volume.depth
    names = _file_names(depth, scramble_names)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")
    written = []
    for k in range(depth):
        if k in drop_slices:
            continue
        position = np.asarray(image.TransformIndexToPhysicalPoint((0, 0, k))) + k * shear * column
        tags = {
            "0008|0060": modality,
            "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
            "0010|0010": patient_name,
            "0010|0020": patient_id,
            "0020|000d": study_uid,
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{p:.6f}" for p in position),
            "0020|0037": "\\".join(f"{v:.8f}" for v in (*row, *column)),
            "0028|0030": f"{volume.spacing[1]:.6f}\\{volume.spacing[0]:.6f}",
            "0018|0050": f"{volume.spacing[2]:.6f}",
            "0028|1052": "-1024",
            "0028|1053": "1",
        }
        if gantry_tilt_tag is not None:
            tags["0018|1120"] = f"{gantry_tilt_tag:g}"
        copies = [names[k], names[k] + "_copy"] if k in duplicate_slices else [names[k]]
        for name in copies:
            piece = image[:, :, k]
            for tag, value in tags.items():
                piece.SetMetaData(tag, value)
            piece.SetMetaData("0008|0018", make_uid(folder, series_uid, name))
            writer.SetFileName(str(folder / name))
            writer.Execute(piece)
            written.append(folder / name)
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
