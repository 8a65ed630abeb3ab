"""The HDF5 cache: one file, one group per case, int16 HU with geometry and provenance.

Layout (open it with h5py or HDFView)::

    /                       attrs: format_version, ctslice_version
    /cases/<case_id>/       attrs: source, content_hash, pair_kind, patient, ratio, options (JSON),
                            slice_thickness, slice_spacing, slice_overlap (mm), thickness_source, thin_spacing,
                            series (JSON, DICOM studies only: the series paired, why, what was left out)
        thin                int16 (z, y, x), attrs spacing/origin/direction (SimpleITK x, y, z order)
        thick               int16 (z, y, x), same attrs
    /failures/<case_id>     attrs: source, reason (a case that could not be used, and why)

``pair_kind`` is ``real``, ``simulated`` or ``self-supervised`` (a thick-only scan: no ``thin`` volume,
so no through-plane truth; it trains through in-plane pairs only). The slice profile of the thick side
(``slice_*``, ``thickness_source``: ``dicom``, ``spacing`` or ``simulated``) and the target
``thin_spacing`` (``ratio`` = thick spacing / thin spacing) were added later: a case without them is read
as slab averaging at its thick spacing, onto its thin volume's spacing.

Datasets are chunked in small z slabs and gzip-compressed (readable everywhere, unlike LZF) so that a
random training patch decompresses only the chunks it touches.

Crash safety: HDF5 files are not journalled, so a process killed while appending could corrupt the
whole file. The writer therefore never appends to the cache in place. Each finished case is written to
its own small file in ``<cache>.parts/`` (temporary name, then an atomic rename); at the end of a run
the parts and the previous cache are copied (raw chunks, no recompression) into a new file that
atomically replaces the cache. A kill at any moment leaves the previous cache intact and the finished
parts on disk, and the next run reuses both. A failed write (a full disk) removes its temporary file
and raises ``CtsliceError``, with the same guarantee: previous cache intact, finished parts kept.

Reading: ``Cache`` checks the whole layout when it opens a file (cheap: metadata only), so a foreign,
truncated or damaged file is one line naming what is wrong, never a ``KeyError`` deep in training.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ctslice.data.pairs import SELF_SUPERVISED, Pair, SliceProfile
from ctslice.errors import CtsliceError, InputError, first_line
from ctslice.io.paths import check_regular_file, printable
from ctslice.io.volume import Grid, Volume
from ctslice.parsing import load_json
from ctslice.version import __version__

FORMAT_VERSION = 1
CHUNK_SLICES = 8
CHUNK_PIXELS = 32  # 8 x 32 x 32 read 1.5x faster than 8 x 64 x 64 at the same size (benchmarks/)
CASE_ATTRS = ("source", "content_hash", "pair_kind", "patient", "ratio", "options")
VOLUME_ATTRS = ("spacing", "origin", "direction")


@dataclass(frozen=True)
class CaseInfo:
    """Provenance of a cached case (everything but the voxels)."""

    case_id: str
    source: str
    content_hash: str
    pair_kind: str
    patient: str
    ratio: float
    thin_shape: tuple[int, int, int] | None  # None: a self-supervised case (no thin volume)
    thick_shape: tuple[int, int, int]
    profile: SliceProfile  # the thick side's slice profile
    thin_spacing: float  # the thin (target) slice spacing, mm

    @property
    def has_truth(self) -> bool:
        """Whether the case has a thin volume: through-plane pairs and scores need one."""
        return self.thin_shape is not None


@dataclass(frozen=True)
class Failure:
    """A case that could not be used: where it came from and why."""

    case_id: str
    source: str
    reason: str


def parts_dir(cache_path: Path) -> Path:
    """Where finished cases of a run wait until they are merged into the cache."""
    return cache_path.with_name(cache_path.name + ".parts")


def part_files(cache_path: Path) -> list[Path]:
    """The finished cases waiting in the parts folder of ``cache_path``, in name order.

    Only regular files that open as HDF5 with a ``cases`` group count: anything else put there (a FIFO,
    whose opening would block; a link to ``/dev/zero``; a foreign or damaged file, which would make every
    later merge fail) is left out, and goes with the folder once the cache is written.
    """
    found = []
    for path in sorted(parts_dir(cache_path).glob("*.h5")):
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            with h5py.File(path, "r") as file:
                if isinstance(file.get("cases"), h5py.Group):
                    found.append(path)
        except (OSError, RuntimeError):
            continue
    return found


def write_part(folder: Path, case_id: str, pair: Pair, *, source: str, content_hash: str, patient: str,
               options: dict) -> Path:
    """Write one finished case as ``folder/<case_id>.h5`` atomically (temporary file, then rename).

    The HDF5 file is built in memory (a compressed case: a fraction of the pair's own size) and written
    with plain file calls: a full disk is then one clean ``OSError``, where HDF5 writing to a full disk
    itself spews errors from its object destructors and can crash the interpreter at exit.
    """
    image = io.BytesIO()
    with h5py.File(image, "w") as file:
        group = file.create_group(f"cases/{case_id}")
        group.attrs.update({"source": printable(source), "content_hash": content_hash, "pair_kind": pair.kind,
                            "patient": patient, "ratio": pair.ratio, "options": json.dumps(options),
                            "slice_thickness": pair.profile.thickness, "slice_spacing": pair.profile.spacing,
                            "slice_overlap": pair.profile.overlap, "thickness_source": pair.profile.source,
                            "thin_spacing": pair.thin_spacing})
        if pair.series is not None:  # which DICOM series of the study were paired, and why
            group.attrs["series"] = json.dumps(pair.series)
        if pair.thin is not None:
            _write_volume(group, "thin", pair.thin)
        _write_volume(group, "thick", pair.thick)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{case_id}.h5"
    temporary = folder / f".{case_id}.h5.tmp"
    temporary.unlink(missing_ok=True)  # left by a killed run; were it a FIFO, opening it would block
    try:
        with open(temporary, "wb") as handle:
            handle.write(image.getbuffer())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return final


def _write_volume(group: h5py.Group, name: str, volume: Volume) -> None:
    depth, height, width = volume.array.shape
    chunks = (min(CHUNK_SLICES, depth), min(CHUNK_PIXELS, height), min(CHUNK_PIXELS, width))
    dataset = group.create_dataset(name, data=volume.array.astype(np.int16), chunks=chunks,
                                   compression="gzip", compression_opts=1, shuffle=True)
    dataset.attrs.update({"spacing": volume.spacing, "origin": volume.origin, "direction": volume.direction})


def write_error(error: BaseException) -> str:
    """The reason of a failed write in a few words: ``No space left on device`` rather than HDF5's wording."""
    if isinstance(error, OSError) and error.errno:
        return os.strerror(error.errno)
    found = re.search(r"error message = '([^']+)'", str(error))
    return found.group(1) if found else first_line(error)


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def consolidate(cache_path: Path, sources: Iterable[Path], failures: Iterable[Failure] = (),
                drop_failures: Iterable[str] = (), drop_cases: Iterable[str] = ()) -> None:
    """Write a new cache from the cases of ``sources`` (earlier files win on a clash: list the newest first).

    ``sources`` are HDF5 files with the cache layout: the previous cache, part files, shard caches.
    ``failures`` replace any earlier record of the same case; earlier failure records are kept unless
    the case now succeeds or is listed in ``drop_failures``. Cases in ``drop_cases`` (damaged entries)
    are copied from none of the sources. The result replaces ``cache_path`` atomically.
    """
    temporary = cache_path.with_name(f".{cache_path.name}.tmp")
    try:
        _consolidate(temporary, list(sources), failures, drop_failures, set(drop_cases))
        _fsync(temporary)
        os.replace(temporary, cache_path)
    except (OSError, RuntimeError) as error:  # h5py raises either for a failed write
        _remove(temporary)
        raise CtsliceError(f"could not write the cache {cache_path} ({write_error(error)}); "
                           "the previous cache is unchanged") from None
    except BaseException:
        _remove(temporary)
        raise


def _remove(path: Path) -> None:
    """Remove a temporary file if there is one; something else in its place (a folder) is left as it is."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _consolidate(temporary: Path, sources: list[Path], failures: Iterable[Failure],
                 drop_failures: Iterable[str], drop_cases: set[str]) -> None:
    new_failures = {f.case_id: f for f in failures}
    written: set[str] = set()
    with h5py.File(temporary, "w") as out:
        out.attrs.update({"format_version": FORMAT_VERSION, "ctslice_version": __version__})
        cases = out.create_group("cases")
        old_failures: dict[str, Failure] = {}
        for source in sources:
            with h5py.File(source, "r") as file:
                for case_id in file.get("cases", {}):
                    if case_id not in written and case_id not in new_failures and case_id not in drop_cases:
                        file.copy(file[f"cases/{case_id}"], cases, name=case_id)
                        written.add(case_id)
                for case_id, group in file.get("failures", {}).items():
                    old_failures.setdefault(case_id, Failure(case_id, group.attrs["source"], group.attrs["reason"]))
        kept = {k: v for k, v in old_failures.items() if k not in written and k not in set(drop_failures)}
        kept.update(new_failures)
        failed = out.create_group("failures")
        for case_id, failure in sorted(kept.items()):
            # names may not be UTF-8
            record = {"source": printable(failure.source), "reason": printable(failure.reason)}
            failed.create_group(case_id).attrs.update(record)


def remove_parts(cache_path: Path) -> None:
    shutil.rmtree(parts_dir(cache_path), ignore_errors=True)


def consolidate_parts(cache_path: Path) -> None:
    """The cache at ``cache_path`` made from every part written under ``parts_dir(cache_path)``, then the parts
    removed: a cache built in one go by a caller that writes its own cases (``adapt``, benchmarks, tests),
    without ``preprocess``'s previous cache, failures and shards."""
    consolidate(cache_path, sorted(parts_dir(cache_path).glob("*.h5")))
    remove_parts(cache_path)


class Cache:
    """Read access to a cache file; use as a context manager or call ``close()``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"{self.path}: no such cache (create it with `ctslice preprocess`)")
        check_regular_file(self.path, "a cache")  # HDF5 would block opening a FIFO
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as error:
            raise InputError(f"{self.path}: not a readable HDF5 cache ({error})") from None
        self._grids: dict[tuple[str, str], Grid] = {}
        try:
            problem = layout_problem(self.file)
        except (OSError, RuntimeError, KeyError) as error:  # h5py's errors for damaged metadata
            problem = f"its layout cannot be read ({error})"
        if problem:
            self.file.close()
            raise InputError(f"{self.path}: {problem}")

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.file.close()

    def case_ids(self) -> list[str]:
        return sorted(self.file["cases"])

    def info(self, case_id: str) -> CaseInfo:
        group = self._group(case_id)
        attrs = group.attrs
        thin = tuple(group["thin"].shape) if "thin" in group else None
        thick_spacing = self.grid(case_id, "thick").spacing[2]
        profile = SliceProfile(float(attrs.get("slice_thickness", thick_spacing)),
                               float(attrs.get("slice_spacing", thick_spacing)),
                               str(attrs.get("thickness_source", "simulated" if attrs["pair_kind"] == "simulated"
                                             else "spacing")))
        if "thin_spacing" in attrs:
            thin_spacing = float(attrs["thin_spacing"])
        else:  # a case cached before the attribute existed always has a thin volume
            thin_spacing = self.grid(case_id, "thin").spacing[2]
        return CaseInfo(case_id, str(attrs["source"]), str(attrs["content_hash"]), str(attrs["pair_kind"]),
                        str(attrs["patient"]), float(attrs["ratio"]), thin, tuple(group["thick"].shape), profile,
                        thin_spacing)

    def options(self, case_id: str) -> dict:
        """The preprocessing options the case was built with (thick/thin spacing, size, profile)."""
        return load_json(self._group(case_id).attrs["options"], f"{self.path}: case {case_id!r} options")

    def series(self, case_id: str) -> dict | None:
        """The DICOM series the case was made of (numbers, descriptions, kernels, why that pair, what was
        left out); None for a volume file or a case cached before this was recorded."""
        attrs = self._group(case_id).attrs
        return load_json(attrs["series"], f"{self.path}: case {case_id!r} series") if "series" in attrs else None

    def failures(self) -> list[Failure]:
        return [Failure(k, str(g.attrs["source"]), str(g.attrs["reason"])) for k, g in self.file["failures"].items()]

    def dataset(self, case_id: str, which: str) -> h5py.Dataset:
        """The ``thin`` or ``thick`` dataset, for reading patches by slicing."""
        group = self._group(case_id)
        if which not in group:  # only a self-supervised case lacks one (layout_problem checked the rest)
            raise InputError(f"{self.path}: case {case_id!r} is self-supervised (a thick-only scan): it has no "
                             f"{which} volume")
        return group[which]

    def volume(self, case_id: str, which: str) -> Volume:
        """A whole ``thin`` or ``thick`` volume with its geometry."""
        dataset = self.dataset(case_id, which)
        return self.region(case_id, which, (0, dataset.shape[0]), (0, dataset.shape[1]), (0, dataset.shape[2]))

    def region(self, case_id: str, which: str, z: tuple[int, int], y: tuple[int, int], x: tuple[int, int]) -> Volume:
        """Only the voxels [z0:z1, y0:y1, x0:x1] of a volume (reads just the chunks they touch), in place."""
        grid = self.grid(case_id, which)
        corner = grid.index_to_physical((x[0], y[0], z[0]))
        return Volume(self.dataset(case_id, which)[z[0]:z[1], y[0]:y[1], x[0]:x[1]], grid.spacing, corner,
                      grid.direction)

    def grid(self, case_id: str, which: str) -> Grid:
        """The sampling grid of a ``thin`` or ``thick`` volume (from its attributes; remembered)."""
        key = (case_id, which)
        if key not in self._grids:
            dataset = self.dataset(case_id, which)
            spacing, origin, direction = (tuple(map(float, dataset.attrs[k])) for k in ("spacing", "origin",
                                                                                        "direction"))
            self._grids[key] = Grid(dataset.shape[::-1], spacing, origin, direction)
        return self._grids[key]

    def _group(self, case_id: str) -> h5py.Group:
        try:
            return self.file["cases"][case_id]
        except KeyError:
            raise InputError(f"{self.path}: no case {case_id!r}") from None


def layout_problem(file: h5py.File) -> str | None:
    """What makes ``file`` unusable as a cache (foreign file, other format, a damaged case), or None."""
    problem = format_problem(file)
    if problem:
        return problem
    for case_id, missing in damaged_cases(file).items():
        return (f"damaged cache: case {case_id!r} has no {missing}; re-run `ctslice preprocess` on its scan "
                "into this cache to rebuild it")
    return None


def format_problem(file: h5py.File) -> str | None:
    """Why ``file`` is not a cache this ctslice can read at all (foreign file, other format), or None."""
    if "format_version" not in file.attrs:
        return "not a ctslice cache (no format_version attribute); give a cache written by `ctslice preprocess`"
    version = file.attrs["format_version"]
    if version != FORMAT_VERSION:
        return f"cache format {version}, this ctslice reads format {FORMAT_VERSION}; re-run `ctslice preprocess`"
    for name in ("cases", "failures"):
        if not isinstance(file.get(name), h5py.Group):
            return f"damaged cache: the group /{name} is missing; re-run `ctslice preprocess` into a new file"
    return None


def damaged_cases(file: h5py.File) -> dict[str, str]:
    """case_id -> what its entry lacks (an attribute, a volume, a volume's geometry), for damaged entries."""
    damaged = {}
    for case_id, group in file["cases"].items():
        if not isinstance(group, h5py.Group):
            damaged[case_id] = "group (it is a dataset)"
            continue
        missing = [f"attribute {a!r}" for a in CASE_ATTRS if a not in group.attrs]
        volumes = ("thick",) if group.attrs.get("pair_kind") == SELF_SUPERVISED else ("thin", "thick")
        for which in volumes:
            dataset = group.get(which)
            if not isinstance(dataset, h5py.Dataset) or dataset.ndim != 3:
                missing.append(f"{which!r} volume")
            else:
                missing += [f"{which} attribute {a!r}" for a in VOLUME_ATTRS if a not in dataset.attrs]
        if missing:
            damaged[case_id] = ", ".join(missing)
    return damaged


def existing_kinds(path: Path) -> dict[str, str]:
    """case_id -> pair_kind of the cases in a cache file or part file (empty if unreadable)."""
    try:
        with h5py.File(path, "r") as file:
            return {k: str(g.attrs["pair_kind"]) for k, g in file.get("cases", {}).items()
                    if isinstance(g, h5py.Group) and "pair_kind" in g.attrs}
    except OSError:
        return {}


def existing_hashes(path: Path) -> dict[str, str]:
    """case_id -> content_hash of the cases already in a cache file or part file (empty if unreadable)."""
    try:
        with h5py.File(path, "r") as file:
            return {k: str(g.attrs["content_hash"]) for k, g in file.get("cases", {}).items()
                    if isinstance(g, h5py.Group) and "content_hash" in g.attrs}
    except OSError:
        return {}
