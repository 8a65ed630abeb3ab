"""Find the cases in what the user passed to ``preprocess``: files, zips, DICOM studies, folders of them.

A case is one scan: a volume file (NIfTI/NRRD/MHA), a zip (one study), or the DICOM series of one study
found in a folder tree. A study with two CT series of different slice spacing becomes a real pair; a
single thin series becomes a simulated pair.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ctslice.errors import InputError
from ctslice.io import DicomSeries, scan_series
from ctslice.io.paths import check_regular_file, printable
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
            check_regular_file(file)  # a FIFO or device named scan.nii.gz would block or never end
            digest.update(os.fsencode(file.name))  # the bytes of the name, UTF-8 or not
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()


@dataclass(frozen=True)
class Discovery:
    """The cases found, and how many files beside DICOM series were skipped as not images."""

    sources: list[CaseSource]
    skipped: int = 0


def discover(inputs: list[Path]) -> list[CaseSource]:
    """All cases under ``inputs``, with unique ids, in a stable order (a case found twice counts once)."""
    return find_cases(inputs).sources


def find_cases(inputs: list[Path]) -> Discovery:
    """``discover``, with the count of non-image files skipped (DICOMDIR, index files, litter...)."""
    found: list[tuple[CaseSource, str]] = []
    skipped = 0
    for path in inputs:
        if not path.exists():
            raise InputError(f"{printable(path)}: no such file or folder")
        if not path.is_dir():
            check_regular_file(path)
            found.append((CaseSource(case_name(path), path), path.name))
        else:
            found_here, skipped_here = _discover_folder(path)
            found.extend(found_here)
            skipped += skipped_here
    return Discovery(_unique_ids(found), skipped)


def _discover_folder(folder: Path) -> tuple[list[tuple[CaseSource, str]], int]:
    """The cases in ``folder``, each with its key (its path inside the folder, and study for DICOM),
    and the count of non-image files skipped."""
    found: list[tuple[CaseSource, str]] = []

    def unreadable(error: OSError) -> None:  # a folder that cannot be listed is a case that fails, not nothing
        path = Path(error.filename)
        found.append((CaseSource(case_name(path), path), path.relative_to(folder).as_posix()))

    for root, dirs, files in os.walk(folder, onerror=unreadable):
        dirs.sort()
        for name in sorted(files):
            file = Path(root) / name
            if is_volume_file(file) or file.suffix.lower() == ".zip":
                found.append((CaseSource(case_name(file), file), file.relative_to(folder).as_posix()))
    studies: dict[str, list[DicomSeries]] = {}
    scan = scan_series(folder)
    for series in scan.series:
        # series without a StudyInstanceUID are studies of their own
        studies.setdefault(series.study_key or f"folder:{series.directory}", []).append(series)
    for study, members in studies.items():
        study_dir = Path(os.path.commonpath([str(s.directory) for s in members]))
        key = f"{study_dir.relative_to(folder).as_posix()}#{study}" if study_dir != folder else f"{folder.name}#{study}"
        found.append((CaseSource(case_name(study_dir), study_dir, tuple(members)), key))
    volumes = {source.path for source, _ in found}
    return found, sum(file not in volumes for file in scan.skipped)  # a NIfTI file is not a skipped file


def case_name(path: Path) -> str:
    """A case id from a path: the file name without volume suffixes, made safe for HDF5 and file names."""
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".zip"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "case"


def _unique_ids(found: list[tuple[CaseSource, str]]) -> list[CaseSource]:
    """Give every case an id no other case has, the same in every run over the same inputs.

    A case whose name (``case_name``) no other case shares keeps it, so the ids of existing caches
    stay valid. Cases that share a name (compared without case, for case-insensitive file systems) all
    get ``name-<hash>``, the hash taken from the case's key (its path inside the input folder; its
    absolute path when two inputs give the same key), lengthened until the id is taken by nobody else.
    Ids therefore never depend on discovery order, and two inputs never write the same cache entry.
    """
    unique: dict[tuple[str, ...], tuple[CaseSource, str]] = {}
    for source, key in found:  # the same file or study reached through two inputs is one case
        identity = (str(source.path.resolve()), *sorted(str(f) for s in source.series for f in s.files[:1]))
        unique.setdefault(identity, (source, key))
    cases = list(unique.values())
    sharing = Counter(source.case_id.lower() for source, _ in cases)
    keys = Counter(key for _, key in cases)
    taken = {source.case_id.lower() for source, _ in cases if sharing[source.case_id.lower()] == 1}
    result = []
    for source, key in cases:
        case_id = source.case_id
        if sharing[case_id.lower()] > 1:
            text = key if keys[key] == 1 else f"{key}@{source.path.resolve()}"
            digest = hashlib.sha256(os.fsencode(text)).hexdigest()
            length = 8
            while f"{case_id}-{digest[:length]}".lower() in taken and length < len(digest):
                length += 4
            case_id = f"{case_id}-{digest[:length]}"
            if case_id.lower() in taken:
                raise InputError(f"cannot give {source.path} a case id of its own; rename it")
        taken.add(case_id.lower())
        result.append(CaseSource(case_id, source.path, source.series))
    return result
