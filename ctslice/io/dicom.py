"""DICOM series: finding them under a folder, checking that one is a usable CT volume, reading it.

Real exports are messy: file names in random order, several series per folder (scouts, other
reconstructions, other modalities), index files and OS litter beside the slices (see
``ctslice.io.dicom_files``), a DICOMDIR that lists the series of a whole CD, a slice missing or
exported twice, tilted-gantry acquisitions, uneven spacing, truncated copies. SimpleITK reads whatever
file list it is given and at most prints a warning, so every such problem is caught here from the
headers, before pixel data is read, and reported as one ``InputError`` that names the series folder
(and the files concerned) and says what to do. Tilt and uneven spacing within ``MAX_GAP_RATIO`` are
exact geometry, not defects: the series is resampled onto a uniform, untilted grid
(``ctslice.io.slices``) and the correction is reported back (``SeriesReport``).

Slices are ordered by their position along the slice normal (ImagePositionPatient projected on the
cross product of the ImageOrientationPatient row and column vectors), never by file name or
InstanceNumber, so the volume's third direction column is that normal and its spacing is positive.

Identifiers never leave ``dicom_files``: StudyInstanceUID, SeriesInstanceUID and PatientID are kept only
as pseudonyms, and patient names are never read.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ctslice.errors import InputError, one_line, shown
from ctslice.io.dicom_files import (
    INVALID_MODALITY,
    NOT_AN_IMAGE,
    UNREADABLE,
    SliceHeader,
    dicomdir_series,
    pseudonym,
    read_slice,
)
from ctslice.io.failures import captured_stderr, sitk_reason
from ctslice.io.intensity import cast_rounded
from ctslice.io.paths import check_name
from ctslice.io.slices import (
    MAX_AREA_GROWTH,
    MAX_GAP_RATIO,
    MAX_SLICE_GROWTH,
    SliceLayout,
    frame_axes,
    regular_size,
    regularise,
)
from ctslice.io.volume import Volume

__all__ = ["DicomSeries", "ReadOptions", "SeriesReport", "SeriesScan", "check_series_names", "check_z_spacing",
           "find_series", "pseudonym", "scan_series"]


@dataclass(frozen=True)
class ReadOptions:
    """Which series of a study are read, and how a series that is not a uniform orthogonal grid is read.

    ``tilt_correction`` False refuses a tilted series (``--no-tilt-correction``); ``z_spacing`` is the
    slice spacing (mm) a resampled series gets (``--z-spacing``; default: its smallest step); ``series``
    names series to prefer when a study holds several (``--series``; see ``ctslice.io.dicom_choice``).
    """

    tilt_correction: bool = True
    z_spacing: float | None = None
    series: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_z_spacing(self.z_spacing)
        check_series_names(self.series)


Z_SPACING_RANGE = (0.05, 20.0)
"""Accepted ``--z-spacing`` (mm): finer than any CT reconstruction would multiply the slices past use."""


def check_z_spacing(value: float | None) -> None:
    """``InputError`` unless ``value`` is None or a finite spacing within ``Z_SPACING_RANGE``."""
    if value is not None and not (math.isfinite(value) and Z_SPACING_RANGE[0] <= value <= Z_SPACING_RANGE[1]):
        raise InputError(f"z spacing {value}: give a slice spacing between {Z_SPACING_RANGE[0]:g} and "
                         f"{Z_SPACING_RANGE[1]:g} mm")


SERIES_NAME_LIMIT = 64
"""Characters of a series name: a SeriesDescription (a DICOM LO value) holds at most 64."""


def check_series_names(names: tuple[str, ...]) -> None:
    """``InputError`` unless every name could be a SeriesNumber or a SeriesDescription: not blank, at most
    ``SERIES_NAME_LIMIT`` characters, no control characters or backslash (neither can be in a description),
    so that a name that can never match is refused before any work instead of matching nothing."""
    for name in names:
        if not name.strip() or len(name) > SERIES_NAME_LIMIT or "\\" in name or one_line(name) != name:
            raise InputError(f"series {shown(name)}: give a series number (such as 4) or a series description "
                             f"(such as 'STD BRAIN 1MM', at most {SERIES_NAME_LIMIT} characters)")


@dataclass(frozen=True)
class SeriesReport:
    """What reading a series corrected, for the command layer to tell the user."""

    tilt_degrees: float = 0.0  # gantry tilt resampled away (0: none)
    spacing_range: tuple[float, float] | None = None  # (smallest, largest) step of an uneven series
    z_spacing: float | None = None  # spacing of the resampled volume (None: read as is)

    def lines(self) -> list[str]:
        """One line per correction, without identifiers."""
        lines = []
        if self.tilt_degrees:
            lines.append(f"gantry tilt of {self.tilt_degrees:.1f} degrees corrected: resampled onto an untilted "
                         f"grid at {self.z_spacing:.3g} mm")
        if self.spacing_range:
            lines.append(f"uneven slice spacing ({self.spacing_range[0]:.2f} to {self.spacing_range[1]:.2f} mm) "
                         f"resampled to a uniform {self.z_spacing:.3g} mm")
        return lines


@dataclass(frozen=True)
class DicomSeries:
    """One DICOM series, described from its headers; ``read()`` loads the pixels.

    ``files`` are in physical order along the slice normal when every slice can be placed (else in
    the order found). ``positions`` (mm, x/y/z per file, same order) and ``orientation`` (the six
    ImageOrientationPatient cosines shared by every slice) are None where that is not so;
    ``orientations`` and ``sizes`` are per file (None where absent), ``unplaced`` the first file without a
    position. ``unreadable`` lists damaged image files of the series or its folder. ``label`` is how
    messages name the series (the folder, or ``scan.zip/folder`` for a zip).
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
    orientations: tuple[tuple[float, ...] | None, ...] = field(default=(), repr=False)
    sizes: tuple[tuple[int, int] | None, ...] = field(default=(), repr=False)
    gantry_tilt: float = field(default=0.0, repr=False)
    frames: int = field(default=1, repr=False)
    localizer: bool = field(default=False, repr=False)
    unreadable: tuple[Path, ...] = field(default=(), repr=False)
    unplaced: Path | None = field(default=None, repr=False)  # the first file without ImagePositionPatient
    defect: tuple[Path, str] | None = field(default=None, repr=False)  # the first slice not readable as HU, why
    number: int | None = None  # SeriesNumber
    description: str = ""  # SeriesDescription (control characters escaped)
    kernel: str = ""  # ConvolutionKernel ("" when the tag is missing)
    sop_class: str = field(default="", repr=False)  # the SOP class's name ("" when the files do not say)
    image_type: tuple[str, ...] = field(default=(), repr=False)  # ImageType of its first slice
    colour: bool = field(default=False, repr=False)  # some slice holds colour pixels (a screenshot)
    fov: float | None = field(default=None, repr=False)  # field of view (mm), see ``SliceHeader.fov``
    thickness: float | None = None  # SliceThickness (mm) of its first slice, None when the files do not say

    @property
    def n_slices(self) -> int:
        return len(self.files)

    def named(self) -> str:
        """How a user finds the series in a viewer: ``series 3 (STD BRAIN 5MM)``, else its label (the folder)."""
        if self.number is None and not self.description:
            return self.label
        number = "series" if self.number is None else f"series {self.number}"
        return f"{number} ({self.description})" if self.description else number

    def matches(self, name: str) -> bool:
        """Whether ``name`` (as a user typed it) is this series' SeriesNumber or SeriesDescription (any case)."""
        name = name.strip()
        if name.isdigit() and self.number is not None and int(name) == self.number:
            return True
        return bool(self.description) and name.casefold() == self.description.strip().casefold()

    def describe(self) -> str:
        """A summary without identifiers, for listing several series to a user."""
        return f"{self.modality or 'unknown modality'}, {self.n_slices} slices at {self.slice_spacing:.2f} mm"

    def check(self, options: ReadOptions | None = None) -> None:
        """Raise ``InputError`` if this series cannot be read as a 3D CT volume (headers only)."""
        options = options or ReadOptions()
        if self.unreadable:
            file = self.unreadable[0]
            if not os.access(file, os.R_OK):
                raise InputError(f"{self.label}: {file.name} cannot be read (permission denied); make it readable, "
                                 "or move it away if it is not part of the series")
            raise InputError(f"{self.label}: {file.name} is an unreadable DICOM file (truncated or "
                             "corrupt); re-export the series, or move that file away if it is not part of it")
        if not self.modality:
            raise InputError(f"{self.label} has no Modality tag, so it cannot be taken for CT; pass a CT series")
        if self.modality == INVALID_MODALITY:  # not a code: free text, never shown (it could be a name)
            raise InputError(f"{self.label} has a Modality that is not a valid code, so it cannot be taken for CT; "
                             "pass a CT series")
        if self.modality != "CT":
            raise InputError(f"{self.label} is {_with_article(self.modality)} series, not CT; pass a CT series")
        if self.frames > 1:
            raise InputError(f"{self.label}: {self.files[0].name} is a multi-frame DICOM file, which ctslice does "
                             "not read; convert the series to NIfTI (for example with dcm2niix) and pass that")
        for file in self.files:
            check_name(file)  # SimpleITK cannot open a name that is not UTF-8
        if self.defect is not None:
            raise InputError(f"{self.label}: {self.defect[0].name} {self.defect[1]}; re-export the series")
        if self.n_slices < 2:
            raise InputError(f"{self.label} holds a single 2D slice, not a 3D volume; pass a series of slices")
        self._check_sizes()
        self._check_orientation()
        if self.positions is None:
            raise InputError(f"{self.label}: {self.unplaced.name} lacks ImagePositionPatient, so it cannot be "
                             "placed in space; re-export the series with full geometry")
        layout = self.layout
        self._check_spacing(layout)
        if not options.tilt_correction:
            self._check_tilt(layout)

    @property
    def layout(self) -> SliceLayout:
        return SliceLayout.from_positions(self.positions, self.orientation)

    def read(self, options: ReadOptions | None = None) -> Volume:
        """The series as int16 HU (rescale slope/intercept applied) with its geometry; checks first."""
        return self.load(options)[0]

    def load(self, options: ReadOptions | None = None) -> tuple[Volume, SeriesReport]:
        """``read()``, and what was corrected on the way (tilt, uneven spacing)."""
        options = options or ReadOptions()
        self.check(options)
        image = self._read_pixels()
        self._check_range(image)
        layout = self.layout
        if not (layout.tilted or layout.uneven):
            volume = Volume.from_image(image)
            return volume.with_array(cast_rounded(volume.array, np.int16)), SeriesReport()
        self._check_growth(layout, image, options.z_spacing)
        volume = regularise(sitk.GetArrayFromImage(image), image.GetSpacing()[:2], self.positions[0],
                            self.orientation, layout, options.z_spacing)
        steps = layout.steps
        report = SeriesReport(tilt_degrees=layout.tilt_degrees if layout.tilted else 0.0,
                              spacing_range=(float(steps.min()), float(steps.max())) if layout.uneven else None,
                              z_spacing=volume.spacing[2])
        return volume.with_array(cast_rounded(volume.array, np.int16)), report

    def _read_pixels(self) -> sitk.Image:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(f) for f in self.files])
        reader.SetOutputPixelType(sitk.sitkFloat32)  # slices may rescale differently; round once at the end
        warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK warns on stderr about tilt and uneven spacing
        try:
            with captured_stderr():  # ITK's own warnings (VNL on odd geometry); the checks give the reasons
                return reader.Execute()
        except RuntimeError as error:
            culprit = _first_unreadable(self.files)
            where = f"{culprit.name} is unreadable" if culprit else f"cannot be read ({sitk_reason(error)})"
            raise InputError(f"{self.label}: {where}; re-export the series") from None
        finally:
            sitk.ProcessObject.SetGlobalWarningDisplay(warnings)

    def _check_range(self, image: sitk.Image) -> None:
        """Refuse values that int16 HU cannot hold (a RescaleIntercept of 1e30): rounding would clip them."""
        extremes = sitk.MinimumMaximumImageFilter()
        extremes.Execute(image)
        low, high = extremes.GetMinimum(), extremes.GetMaximum()
        if not (-32768 <= low and high <= 32767):
            raise InputError(f"{self.label}: its values reach {low:.6g} to {high:.6g} HU after RescaleSlope and "
                             "RescaleIntercept, beyond what CT stores (-32768 to 32767); check those tags or "
                             "re-export the series")

    def _check_growth(self, layout: SliceLayout, image: sitk.Image, z_spacing: float | None) -> None:
        """Refuse a resampling grid far larger than the stack (``MAX_SLICE_GROWTH`` times its slices, or
        ``MAX_AREA_GROWTH`` times its area), before it is made."""
        columns, rows, depth = image.GetSize()
        size = regular_size((depth, rows, columns), image.GetSpacing()[:2], layout, z_spacing)
        if z_spacing is None and size[2] > MAX_SLICE_GROWTH * depth:
            raise InputError(f"{self.label}: its slice spacing ({layout.steps.min():.3g} to {layout.steps.max():.3g} "
                             f"mm) would be resampled to its smallest step, {size[2]} slices from {depth}; give the "
                             "z spacing to resample it to, or re-export the series")
        if size[0] * size[1] > MAX_AREA_GROWTH * rows * columns:
            raise InputError(f"{self.label}: its slices are sheared by {layout.tilt_degrees:.1f} degrees, so the "
                             f"untilted grid that holds them would be {size[0]} x {size[1]} pixels for {columns} x "
                             f"{rows} slices; check their ImagePositionPatient, or re-export the series")

    def _check_sizes(self) -> None:
        sizes = [s for s in self.sizes if s is not None]
        if len(set(sizes)) <= 1:
            return
        common = max(set(sizes), key=sizes.count)
        odd = next(i for i, s in enumerate(self.sizes) if s != common)
        rows, columns = self.sizes[odd]
        others = sizes.count(common)
        raise InputError(f"{self.label}: {self.files[odd].name} is {columns} x {rows} pixels where {others} other "
                         f"slice(s) are {common[1]} x {common[0]}; remove it if it is not part of the series, or "
                         "re-export the series")

    def _check_orientation(self) -> None:
        for file, cosines in zip(self.files, self.orientations, strict=True):
            if cosines is None:
                raise InputError(f"{self.label}: {file.name} lacks ImageOrientationPatient, so it cannot be placed "
                                 "in space; re-export the series with full geometry")
            if not _valid_orientation(cosines):
                raise InputError(f"{self.label}: {file.name} has a degenerate orientation (ImageOrientationPatient "
                                 "row and column directions are zero, parallel or not perpendicular); re-export "
                                 "the series")
        if self.orientation is None:
            first = self.orientations[0]
            odd = next(i for i, c in enumerate(self.orientations) if not np.allclose(c, first, atol=1e-4))
            count = sum(not np.allclose(c, first, atol=1e-4) for c in self.orientations)
            raise InputError(f"{self.label}: the slices differ in ImageOrientationPatient ({self.files[0].name} and "
                             f"{self.files[odd].name}, {count} of {self.n_slices} slices unlike the first): they are "
                             "not one stack of parallel slices; pass one series or re-export it")

    def _check_spacing(self, layout: SliceLayout) -> None:
        z = np.asarray(self.positions) @ frame_axes(self.orientation)[:, 2]
        steps = layout.steps
        typical = layout.typical_step
        duplicate = np.flatnonzero(steps <= max(1e-3, 0.01 * typical))
        if duplicate.size:
            i = int(duplicate[0])
            raise InputError(f"{self.label} has a duplicate slice: {self.files[i].name} and {self.files[i + 1].name} "
                             f"are both at z = {z[i]:.2f} mm; remove one of them")
        gap = int(np.argmax(steps))
        if steps[gap] > MAX_GAP_RATIO * typical:
            missing = round(steps[gap] / typical) - 1
            raise InputError(f"{self.label} is missing {missing} slice(s): a {steps[gap]:.2f} mm gap between "
                             f"{self.files[gap].name} (z = {z[gap]:.2f} mm) and {self.files[gap + 1].name} "
                             f"(z = {z[gap + 1]:.2f} mm) where the spacing is {typical:.2f} mm, more than "
                             f"{MAX_GAP_RATIO:g} steps to interpolate across; re-export the complete series")

    def _check_tilt(self, layout: SliceLayout) -> None:
        if layout.tilted:
            raise InputError(f"{self.label} is tilted: the slices are sheared by {layout.tilt_degrees:.1f} degrees "
                             "(gantry tilt); turn tilt correction on to resample it, or correct the tilt (for "
                             "example with dcm2niix) and pass the result as NIfTI")
        if abs(self.gantry_tilt) > 1e-3:
            raise InputError(f"{self.label} was acquired with a gantry tilt of {self.gantry_tilt:g} degrees "
                             "(GantryDetectorTilt); turn tilt correction on to read it as its slice positions "
                             "place it, or correct the tilt (for example with dcm2niix) and pass the result as NIfTI")


@dataclass(frozen=True)
class SeriesScan:
    """The series found under a folder, and the files skipped as not images (index files, litter...)."""

    series: list[DicomSeries]
    skipped: tuple[Path, ...]


def find_series(folder: Path, *, shown_as: Path | str | None = None) -> list[DicomSeries]:
    """Every DICOM series under ``folder`` (see ``scan_series``)."""
    return scan_series(folder, shown_as=shown_as).series


def scan_series(folder: Path, *, shown_as: Path | str | None = None) -> SeriesScan:
    """Every DICOM series under ``folder`` (recursively), and the non-image files skipped on the way.

    A DICOMDIR names the series of the folders below it (a series may span several folders there);
    files it does not list, and folders without one, are grouped one series per folder and
    SeriesInstanceUID. Nothing is validated here, so one bad series does not hide the good ones: call
    ``check()`` or ``read()`` on the series you want. ``shown_as`` replaces ``folder`` in messages
    (pass the zip a temporary folder was extracted from).
    """
    folder = Path(folder)

    def label(directory: Path) -> str:
        return str(Path(shown_as) / directory.relative_to(folder)) if shown_as is not None else str(directory)

    found: list[DicomSeries | str] = []  # a str is the key of a DICOMDIR series, described once complete
    listed_headers: dict[str, list[SliceHeader]] = {}
    listed_unreadable: dict[str, list[Path]] = {}
    skipped: list[Path] = []
    covered: set[Path] = set()
    for directory, subdirs, names in os.walk(folder):
        subdirs.sort()
        directory = Path(directory)
        files = [directory / name for name in sorted(names)]
        dicomdir = next((f for f in files if f.name.upper() == "DICOMDIR"), None)
        listed = dicomdir_series(dicomdir) if dicomdir is not None else None
        for key, paths in (listed or {}).items():
            fresh = [p for p in paths if p not in covered]
            covered.update(fresh)
            headers, unreadable, not_images = _read_headers(fresh)
            skipped.extend(not_images)
            if key not in listed_headers:
                found.append(key)
            listed_headers.setdefault(key, []).extend(headers)
            listed_unreadable.setdefault(key, []).extend(unreadable)
        rest = [f for f in files if f not in covered]
        headers, unreadable, not_images = _read_headers([f for f in rest if f.is_file()])
        skipped.extend(not_images + [f for f in rest if not f.is_file()])  # FIFOs, devices, broken links
        groups: dict[str | None, list[SliceHeader]] = {}
        for header in headers:
            groups.setdefault(header.series_key, []).append(header)
        if unreadable and not headers:  # only damaged images here: a series that fails with its reason
            found.append(_describe(directory, [], label(directory), tuple(unreadable)))
        for key in sorted(groups, key=str):
            if key in listed_headers:  # slices of a DICOMDIR series that it does not list (a stale DICOMDIR)
                listed_headers[key].extend(groups[key])
                listed_unreadable[key].extend(f for f in unreadable if f not in listed_unreadable[key])
            else:
                found.append(_describe(directory, groups[key], label(directory), tuple(unreadable)))
    series = []
    for item in found:
        if isinstance(item, DicomSeries):
            series.append(item)
        elif listed_headers[item] or listed_unreadable[item]:
            where = Path(os.path.commonpath([str(f.parent) for f in [h.file for h in listed_headers[item]]
                                             + listed_unreadable[item]]))
            series.append(_describe(where, listed_headers[item], label(where), tuple(listed_unreadable[item])))
    return SeriesScan(series, tuple(skipped))


def _read_headers(files: list[Path]) -> tuple[list[SliceHeader], list[Path], list[Path]]:
    """(image headers, unreadable files, files that are not images) of ``files``."""
    headers, unreadable, not_images = [], [], []
    for file in files:
        result = read_slice(file)
        if result == NOT_AN_IMAGE:
            not_images.append(file)
        elif result == UNREADABLE:
            unreadable.append(file)
        else:
            headers.append(result)
    return headers, unreadable, not_images


def _describe(directory: Path, headers: list[SliceHeader], label: str, unreadable: tuple[Path, ...]) -> DicomSeries:
    """One series from the headers of its files, sorted along the slice normal when they can be placed.

    Without headers (every image file damaged) it is a series of no slices whose ``check`` names the first.
    """
    if not headers:
        return DicomSeries(directory=directory, files=(), modality="", slice_spacing=0.0, study_key=None,
                           patient_key=None, series_key=None, label=label, unreadable=unreadable)
    first = headers[0]
    orientations = [h.orientation for h in headers]
    shared = orientations[0] if all(o is not None and _valid_orientation(o) for o in orientations) and all(
        np.allclose(o, orientations[0], atol=1e-4) for o in orientations) else None
    spacing, positions = 0.0, None
    if shared is not None and all(h.position is not None for h in headers):
        normal = frame_axes(shared)[:, 2]
        order = np.argsort(np.asarray([h.position for h in headers]) @ normal, kind="stable")
        headers = [headers[i] for i in order]
        positions = tuple(h.position for h in headers)
        z = np.asarray(positions) @ normal
        spacing = float(np.median(np.diff(z))) if len(z) > 1 else 0.0
    return DicomSeries(
        directory=directory,
        files=tuple(h.file for h in headers),
        modality=first.modality,
        slice_spacing=spacing,
        study_key=first.study_key,
        patient_key=first.patient_key,
        series_key=first.series_key,
        label=label,
        positions=positions,
        orientation=shared,
        orientations=tuple(h.orientation for h in headers),
        sizes=tuple(h.size for h in headers),
        gantry_tilt=first.tilt,
        frames=first.frames,
        localizer=first.localizer,
        unreadable=unreadable,
        unplaced=next((h.file for h in headers if h.position is None), None),
        defect=next(((h.file, h.defect) for h in headers if h.defect is not None), None),
        number=first.number,
        description=first.description,
        kernel=first.kernel,
        sop_class=first.sop_class,
        image_type=first.image_type,
        colour=any(h.colour for h in headers),
        fov=first.fov,
        thickness=first.thickness,
    )


def _valid_orientation(cosines: tuple[float, ...]) -> bool:
    """Row and column directions of unit length (within 1%) and perpendicular (within about 0.6 degrees)."""
    row, column = np.asarray(cosines[:3]), np.asarray(cosines[3:])
    return bool(abs(np.linalg.norm(row) - 1) < 0.01 and abs(np.linalg.norm(column) - 1) < 0.01
                and abs(np.dot(row, column)) < 0.01)


def _first_unreadable(files: tuple[Path, ...]) -> Path | None:
    for file in files:
        try:
            sitk.ReadImage(str(file))
        except RuntimeError:
            return file
    return None


def _with_article(word: str) -> str:
    """``an MR``, ``a PT``: the article follows the sound of the first letter, as modalities are spelled out."""
    return f"{'an' if word[0] in 'AEFHILMNORSX' else 'a'} {word}"
