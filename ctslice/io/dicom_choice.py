"""Which series of a study make its pair: the CT volumes among them, and of those the two reconstructed alike.

A scanner export holds more than the scan. Screenshots (exam summaries, dose screens, saved views:
Secondary Capture, often colour, often with Modality CT), localizers and other derived images sit beside
the CT series; they are *not volumes*: skipped and counted (``skip_reason``), never a reason to refuse the
study. And one scan is often reconstructed several ways: a 5 mm series, a 1 mm series of the same kernel,
a 1 mm series of a bone kernel. Pairing the 5 mm standard-kernel series with the bone one would teach the
model to change the kernel, so the thick series pairs with the thin series reconstructed like it
(``choose_series``): same orientation, same field of view, same ConvolutionKernel (or, where a kernel tag is
missing, the nearest SeriesDescription), in that order. When that cannot decide, the user names the series
(``ReadOptions.series``) and the error says so; nothing is picked at random.

Only headers are looked at here; the chosen series are read (and checked) by the caller, and a failure of
a chosen series names it (number and description) when the study holds more than one.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctslice.errors import InputError
from ctslice.io.dicom import DicomSeries, ReadOptions, SeriesReport
from ctslice.io.dicom_files import INVALID_MODALITY
from ctslice.io.volume import Volume

CT_IMAGE_CLASSES = ("CT Image Storage", "Enhanced CT Image Storage", "Legacy Converted Enhanced CT Image Storage")
MIN_VOLUME_SLICES = 3
"""Fewer images are not a volume: a localizer pair (frontal and lateral), a couple of saved views."""
SAME_SPACING_MM = 1e-3  # slice spacings closer than this are one spacing (a thick or a thin series)
FOV_TOLERANCE = 0.02  # relative: fields of view within 2% are one reconstruction's
ORIENTATION_TOLERANCE = 1e-3  # direction cosines closer than this are one orientation
NAME_THEM = "name the series to use (by number or description)"
_THICKNESS = re.compile(r"\b\d+(?:[.,]\d+)?\s*(?:mm\b)?")  # "5MM", "1.0 mm", "0,625": differ by design


def skip_reason(series: DicomSeries) -> str | None:
    """Why ``series`` is not a CT volume (a kind of series, in a few words), or None when it is one.

    These are skipped, not failed: a study is judged by its CT volumes. Defects of a CT series (a
    missing slice, inverted grey values) are not reasons here; they fail the series when it is read.
    """
    if not series.files:
        return "unreadable images"  # every image damaged; named by ``check`` when it is the only series
    if series.modality != "CT":
        return "not CT" if series.modality and series.modality != INVALID_MODALITY else "no valid modality"
    if series.sop_class and series.sop_class not in CT_IMAGE_CLASSES:
        return "secondary capture" if "Secondary Capture" in series.sop_class else "not a CT image"
    if series.image_type[:2] == ("DERIVED", "SECONDARY"):
        return "derived secondary image"
    if series.localizer:
        return "localizer"
    if series.colour:
        return "colour image"
    if series.n_slices * max(series.frames, 1) < MIN_VOLUME_SLICES:
        return f"fewer than {MIN_VOLUME_SLICES} slices"
    return None


def is_volume(series: DicomSeries) -> bool:
    """Whether ``series`` is a CT volume (``skip_reason`` has nothing against it)."""
    return skip_reason(series) is None


@dataclass(frozen=True)
class SeriesChoice:
    """The series a study's case is made of, and what was left out.

    ``chosen`` is ``(thick, thin)``, or one volume: the thin source of a simulated pair or the thick scan of
    a self-supervised case (the caller tells ``summary`` and ``record`` which); ``basis`` says why this pair
    (``same kernel``, ``nearest description``, ``named``...; "" when there was nothing to choose);
    ``skipped`` the series that are not CT volumes with their kind; ``unused`` the CT volumes left out;
    ``unmatched`` the names given that matched none of the study's CT volumes.
    """

    chosen: tuple[DicomSeries, ...]
    basis: str = ""
    skipped: tuple[tuple[DicomSeries, str], ...] = ()
    unused: tuple[DicomSeries, ...] = ()
    unmatched: tuple[str, ...] = ()

    @property
    def several(self) -> bool:
        """Whether the study held more than the chosen series (then messages name the series)."""
        return bool(self.skipped or self.unused)

    def load(self, options: ReadOptions | None = None) -> list[tuple[Volume, SeriesReport]]:
        """Read the chosen series; a failure names the series (number and description) among several."""
        loaded = []
        for series in self.chosen:
            try:
                loaded.append(series.load(options))
            except InputError as error:
                if not self.several and len(self.chosen) == 1:
                    raise
                raise InputError(f"{series.named()}: {error}") from None
        return loaded

    def notes(self) -> list[str]:
        """What was skipped, and names given that matched nothing, in lines without identifiers (the pair
        chosen is in ``record``, which the command shows as a table)."""
        lines = []
        if self.skipped:
            kinds = Counter(reason for _, reason in self.skipped)
            listed = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
            lines.append(f"skipped {len(self.skipped)} series that are not CT volumes ({listed})")
        if len(self.chosen) == 2 and all(s.kernel for s in self.chosen) and (
                self.chosen[0].kernel.casefold() != self.chosen[1].kernel.casefold()):
            thick, thin = self.chosen
            lines.append(f"the thick and thin series were reconstructed with different kernels ({thick.kernel} and "
                         f"{thin.kernel}): the pair teaches a change of kernel too")
        if self.unmatched:
            rule = "" if self.basis == "named" else "; chosen by kernel and description instead"
            lines.append(f"no CT series here is named {', '.join(map(repr, self.unmatched))}{rule}")
        return lines

    def summary(self, single: str = "thin") -> str:
        """``thick series 3 (STD BRAIN 5MM, kernel UB) with thin series 4 (...): same kernel``; ``single`` is the
        role of a lone chosen series (``thin``, or ``thick`` for a self-supervised case)."""
        if len(self.chosen) == 1:
            return f"{single} {_about(self.chosen[0])}" + (f": {self.basis}" if self.basis else "")
        thick, thin = self.chosen
        return f"thick {_about(thick)} with thin {_about(thin)}" + (f": {self.basis}" if self.basis else "")

    def record(self, single: str = "thin") -> dict:
        """What the cache keeps about the choice (JSON): each chosen series by its role (``single`` for a lone
        one, as in ``summary``), the basis, ``summary`` and ``left_out`` in words, the CT volumes left out and
        the kinds of series skipped."""
        roles = (single,) if len(self.chosen) == 1 else ("thick", "thin")
        return {**{role: _record(s) for role, s in zip(roles, self.chosen, strict=True)}, "basis": self.basis,
                "summary": self.summary(single), "left_out": "; ".join(_about(s) for s in self.unused),
                "unused": [_record(s) for s in self.unused],
                "skipped": dict(Counter(reason for _, reason in self.skipped))}


def choose_series(series: list[DicomSeries], source: Path | str, names: tuple[str, ...] = ()) -> SeriesChoice:
    """The CT volumes of one study to make its case from (see the module docstring); ``InputError`` when it
    holds none, or when several series are equally like the others and ``names`` does not settle it."""
    skipped = tuple((s, reason) for s in series if (reason := skip_reason(s)))
    volumes = [s for s in series if is_volume(s)]
    if not volumes:
        if len(series) == 1:
            series[0].check()  # says what that one series is instead (an MR series, a single slice...)
        found = "; ".join(f"{i}) {_listed(s)}" for i, s in enumerate(series, start=1)) or "no DICOM series at all"
        raise InputError(f"{source} holds no CT volume ({found}); pass CT scans")
    candidates, named, unmatched = _named(volumes, names)
    thins = [s for s in candidates if s.slice_spacing - min(c.slice_spacing for c in candidates) < SAME_SPACING_MM]
    thicks = [s for s in candidates if max(c.slice_spacing for c in candidates) - s.slice_spacing < SAME_SPACING_MM]
    if len(candidates) == 1 or thins == thicks:
        if len(candidates) > 1:
            spacing = candidates[0].slice_spacing
            raise InputError(f"{len(candidates)} CT series with the same slice spacing ({spacing:.2f} mm): cannot tell "
                             f"the thick series from the thin one ({_choices(candidates)}); {NAME_THEM}")
        chosen = candidates[0]
        return SeriesChoice((chosen,), "named" if named else "", skipped,
                            tuple(s for s in volumes if s is not chosen), unmatched)
    ranked = sorted(((_likeness(thick, thin), thick, thin) for thick, thin in itertools.product(thicks, thins)),
                    key=lambda item: item[0], reverse=True)
    best = ranked[0]
    if len(ranked) > 1 and ranked[1][0] == best[0]:
        tied = [item for item in ranked if item[0] == best[0]]
        pairs = "; ".join(f"{_about(thick)} with {_about(thin)}" for _, thick, thin in tied)
        raise InputError(f"{source}: cannot tell which series to pair, {len(tied)} pairs are reconstructed equally "
                         f"alike ({pairs}); {NAME_THEM}")
    basis = "named" if named else _basis(best[0], ranked[1][0] if len(ranked) > 1 else None)
    chosen = (best[1], best[2])
    return SeriesChoice(chosen, basis, skipped, tuple(s for s in volumes if s not in chosen), unmatched)


def _named(volumes: list[DicomSeries], names: tuple[str, ...]) -> tuple[list[DicomSeries], bool, tuple[str, ...]]:
    """The candidates once the named series are preferred: naming a series rules out the others of its
    slice spacing (name the thin one, and the thick is still chosen by the rule); naming a thick and a thin
    one leaves only those. Returns (candidates, whether a name matched, the names that matched nothing)."""
    if not names:
        return volumes, False, ()
    named = [s for s in volumes if any(s.matches(name) for name in names)]
    unmatched = tuple(name for name in names if not any(s.matches(name) for s in volumes))
    if not named:
        return volumes, False, unmatched
    kept = [s for s in volumes if s in named or all(
        abs(s.slice_spacing - n.slice_spacing) >= SAME_SPACING_MM for n in named)]
    return kept, True, unmatched


def _likeness(thick: DicomSeries, thin: DicomSeries) -> tuple[int, int, int, float]:
    """How alike two series were reconstructed, to sort pairs by (larger is more alike), in order of weight:
    same orientation (a pair must overlay), same field of view, same kernel (1; -1 when both tags are there
    and differ, 0 when one is missing), then how near their descriptions are once thicknesses are removed."""
    orientation = int(thick.orientation is not None and thin.orientation is not None and
                      bool(np.allclose(thick.orientation, thin.orientation, atol=ORIENTATION_TOLERANCE)))
    fov = int(thick.fov is not None and thin.fov is not None and
              abs(thick.fov - thin.fov) <= FOV_TOLERANCE * max(thick.fov, thin.fov))
    kernel = 0 if not (thick.kernel and thin.kernel) else (1 if thick.kernel.casefold() == thin.kernel.casefold()
                                                           else -1)
    return orientation, fov, kernel, round(_description_likeness(thick.description, thin.description), 3)


def _description_likeness(a: str, b: str) -> float:
    """Shared words of two descriptions over all their words (Jaccard), numbers and thicknesses left out:
    ``STD BRAIN 5MM`` is nearer ``STD BRAIN 1MM, iDose`` (2 of 3) than ``BONE BRAIN 1MM`` (1 of 3)."""
    words_a, words_b = _words(a), _words(b)
    if not (words_a or words_b):
        return 0.0
    return len(words_a & words_b) / len(words_a | words_b)


def _words(description: str) -> set[str]:
    """The words of a description without its numbers (``5MM``, ``1.0 mm``, ``0,625``): what stays when only
    the thickness differs. A number inside a word (a kernel such as ``H30s``) stays."""
    return set(re.findall(r"[a-z0-9]+", _THICKNESS.sub(" ", description.casefold())))


def _basis(best: tuple, runner_up: tuple | None) -> str:
    """What set the chosen pair above the next one, in words."""
    if runner_up is None:
        return ""
    words = ("same orientation", "same field of view", "same kernel", "nearest description")
    decided = next(i for i, (a, b) in enumerate(zip(best, runner_up, strict=True)) if a != b)
    if decided == 2 and best[2] == 0:
        return "no other series has the same kernel"
    return words[decided]


def _about(series: DicomSeries) -> str:
    """``series 4 (STD BRAIN 1MM, kernel UB, 1.00 mm)``: what tells reconstructions apart, no identifiers."""
    kernel = f"kernel {series.kernel}" if series.kernel else "no kernel tag"
    details = ", ".join(filter(None, (series.description, kernel, f"{series.slice_spacing:.2f} mm")))
    if series.number is None and not series.description:
        return f"{series.label} ({details})"
    return f"series {series.number} ({details})" if series.number is not None else f"series ({details})"


def _listed(series: DicomSeries) -> str:
    """A series in a list of what a study holds: what it is, and why it is not a CT volume."""
    reason = skip_reason(series)
    name = f"{series.named()}: " if series.number is not None or series.description else ""
    return name + series.describe() + (f", {reason}" if reason and reason != "not CT" else "")


def _choices(series: list[DicomSeries]) -> str:
    return "; ".join(_about(s) for s in series)


def _record(series: DicomSeries) -> dict:
    return {"number": series.number, "description": series.description, "kernel": series.kernel,
            "slice_spacing": round(series.slice_spacing, 4), "slices": series.n_slices}
