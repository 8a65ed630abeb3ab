"""Find the cases in what the user passed to ``preprocess``: files, zips, DICOM studies, folders of them.

A case is one scan: a volume file (NIfTI/NRRD/MHA), a zip (one study), or the DICOM series of one study
found in a folder tree. A study with two CT series of different slice spacing becomes a real pair; a
single thin series becomes a simulated pair.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ctslice.errors import InputError
from ctslice.io import DicomSeries, find_series
from ctslice.io.reader import is_volume_file


@dataclass(frozen=True)
class CaseSource:
    """Where one case comes from: a file, a zip, or the DICOM series of one study."""

    case_id: str
    path: Path
    series: tuple[DicomSeries, ...] = field(default=(), compare=False)

    @property
    def files(self) -> list[Path]:
        """Every file whose bytes define the case (for the content hash)."""
        if self.series:
            return sorted(f for s in self.series for f in map(Path, s.files))
        return [self.path]

    def content_hash(self, options: dict) -> str:
        """sha256 of the case's file contents and of the options that shape its cache entry."""
        digest = hashlib.sha256(repr(sorted(options.items())).encode())
        for file in self.files:
            digest.update(os.fsencode(file.name))  # the bytes of the name, UTF-8 or not
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()


def discover(inputs: list[Path]) -> list[CaseSource]:
    """All cases under ``inputs``, with unique ids, in a stable order."""
    sources: list[CaseSource] = []
    for path in inputs:
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
        if path.is_file():
            sources.append(CaseSource(case_name(path), path))
        else:
            sources.extend(_discover_folder(path))
    return _unique_ids(sources)


def _discover_folder(folder: Path) -> list[CaseSource]:
    found: list[CaseSource] = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            file = Path(root) / name
            if is_volume_file(file) or file.suffix.lower() == ".zip":
                found.append(CaseSource(case_name(file), file))
    studies: dict[str, list[DicomSeries]] = {}
    for series in find_series(folder):
        # series without a StudyInstanceUID are studies of their own
        studies.setdefault(series.study_key or f"folder:{series.directory}", []).append(series)
    for members in studies.values():
        study_dir = Path(os.path.commonpath([str(s.directory) for s in members]))
        found.append(CaseSource(case_name(study_dir), study_dir, tuple(members)))
    return found


def case_name(path: Path) -> str:
    """A case id from a path: the file name without volume suffixes, made safe for HDF5 and file names."""
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".zip"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "case"


def _unique_ids(sources: list[CaseSource]) -> list[CaseSource]:
    seen: dict[str, int] = {}
    unique = []
    for source in sources:
        count = seen.get(source.case_id, 0)
        seen[source.case_id] = count + 1
        case_id = source.case_id if count == 0 else f"{source.case_id}-{count + 1}"
        unique.append(CaseSource(case_id, source.path, source.series))
    return unique
