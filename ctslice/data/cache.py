"""The HDF5 cache: one file, one group per case, int16 HU with geometry and provenance.

Layout (open it with h5py or HDFView)::

    /                       attrs: format_version, ctslice_version
    /cases/<case_id>/       attrs: source, content_hash, pair_kind, patient, ratio, options (JSON)
        thin                int16 (z, y, x), attrs spacing/origin/direction (SimpleITK x, y, z order)
        thick               int16 (z, y, x), same attrs
    /failures/<case_id>     attrs: source, reason (a case that could not be used, and why)

Datasets are chunked in small z slabs and gzip-compressed (readable everywhere, unlike LZF) so that a
random training patch decompresses only the chunks it touches.

Crash safety: HDF5 files are not journalled, so a process killed while appending could corrupt the
whole file. The writer therefore never appends to the cache in place. Each finished case is written to
its own small file in ``<cache>.parts/`` (temporary name, then an atomic rename); at the end of a run
the parts and the previous cache are copied (raw chunks, no recompression) into a new file that
atomically replaces the cache. A kill at any moment leaves the previous cache intact and the finished
parts on disk, and the next run reuses both.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ctslice import __version__
from ctslice.data.pairs import Pair
from ctslice.errors import InputError
from ctslice.io.volume import Grid, Volume
from ctslice.parsing import load_json

FORMAT_VERSION = 1
CHUNK_SLICES = 8
CHUNK_PIXELS = 32  # 8 x 32 x 32 read 1.5x faster than 8 x 64 x 64 at the same size (benchmarks/)


@dataclass(frozen=True)
class CaseInfo:
    """Provenance of a cached case (everything but the voxels)."""

    case_id: str
    source: str
    content_hash: str
    pair_kind: str
    patient: str
    ratio: float
    thin_shape: tuple[int, int, int]
    thick_shape: tuple[int, int, int]


@dataclass(frozen=True)
class Failure:
    """A case that could not be used: where it came from and why."""

    case_id: str
    source: str
    reason: str


def parts_dir(cache_path: Path) -> Path:
    """Where finished cases of a run wait until they are merged into the cache."""
    return cache_path.with_name(cache_path.name + ".parts")


def write_part(folder: Path, case_id: str, pair: Pair, *, source: str, content_hash: str, patient: str,
               options: dict) -> Path:
    """Write one finished case as ``folder/<case_id>.h5`` atomically (temporary file, then rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{case_id}.h5"
    temporary = folder / f".{case_id}.h5.tmp"
    with h5py.File(temporary, "w") as file:
        group = file.create_group(f"cases/{case_id}")
        group.attrs.update({"source": source, "content_hash": content_hash, "pair_kind": pair.kind,
                            "patient": patient, "ratio": pair.ratio, "options": json.dumps(options)})
        _write_volume(group, "thin", pair.thin)
        _write_volume(group, "thick", pair.thick)
    _fsync(temporary)
    os.replace(temporary, final)
    return final


def _write_volume(group: h5py.Group, name: str, volume: Volume) -> None:
    depth, height, width = volume.array.shape
    chunks = (min(CHUNK_SLICES, depth), min(CHUNK_PIXELS, height), min(CHUNK_PIXELS, width))
    dataset = group.create_dataset(name, data=volume.array.astype(np.int16), chunks=chunks,
                                   compression="gzip", compression_opts=1, shuffle=True)
    dataset.attrs.update({"spacing": volume.spacing, "origin": volume.origin, "direction": volume.direction})


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def consolidate(cache_path: Path, sources: Iterable[Path], failures: Iterable[Failure] = (),
                drop_failures: Iterable[str] = ()) -> None:
    """Write a new cache from the cases of ``sources`` (earlier files win on a clash: list the newest first).

    ``sources`` are HDF5 files with the cache layout: the previous cache, part files, shard caches.
    ``failures`` replace any earlier record of the same case; earlier failure records are kept unless
    the case now succeeds or is listed in ``drop_failures``. The result replaces ``cache_path``
    atomically.
    """
    temporary = cache_path.with_name(f".{cache_path.name}.tmp")
    new_failures = {f.case_id: f for f in failures}
    written: set[str] = set()
    with h5py.File(temporary, "w") as out:
        out.attrs.update({"format_version": FORMAT_VERSION, "ctslice_version": __version__})
        cases = out.create_group("cases")
        old_failures: dict[str, Failure] = {}
        for source in sources:
            with h5py.File(source, "r") as file:
                for case_id in file.get("cases", {}):
                    if case_id not in written and case_id not in new_failures:
                        file.copy(file[f"cases/{case_id}"], cases, name=case_id)
                        written.add(case_id)
                for case_id, group in file.get("failures", {}).items():
                    old_failures.setdefault(case_id, Failure(case_id, group.attrs["source"], group.attrs["reason"]))
        kept = {k: v for k, v in old_failures.items() if k not in written and k not in set(drop_failures)}
        kept.update(new_failures)
        failed = out.create_group("failures")
        for case_id, failure in sorted(kept.items()):
            failed.create_group(case_id).attrs.update({"source": failure.source, "reason": failure.reason})
    _fsync(temporary)
    os.replace(temporary, cache_path)


def remove_parts(cache_path: Path) -> None:
    shutil.rmtree(parts_dir(cache_path), ignore_errors=True)


class Cache:
    """Read access to a cache file; use as a context manager or call ``close()``."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"{self.path}: no such cache (create it with `ctslice preprocess`)")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as error:
            raise InputError(f"{self.path}: not a readable HDF5 cache ({error})") from None
        self._grids: dict[tuple[str, str], Grid] = {}
        version = self.file.attrs.get("format_version")
        if version != FORMAT_VERSION:
            self.file.close()
            raise InputError(f"{self.path}: cache format {version}, this ctslice reads format {FORMAT_VERSION}; "
                             "re-run `ctslice preprocess`")

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
        return CaseInfo(case_id, str(attrs["source"]), str(attrs["content_hash"]), str(attrs["pair_kind"]),
                        str(attrs["patient"]), float(attrs["ratio"]), tuple(group["thin"].shape),
                        tuple(group["thick"].shape))

    def options(self, case_id: str) -> dict:
        """The preprocessing options the case was built with (thick/thin spacing, size, profile)."""
        return load_json(self._group(case_id).attrs["options"], f"{self.path}: case {case_id!r} options")

    def failures(self) -> list[Failure]:
        return [Failure(k, str(g.attrs["source"]), str(g.attrs["reason"])) for k, g in self.file["failures"].items()]

    def dataset(self, case_id: str, which: str) -> h5py.Dataset:
        """The ``thin`` or ``thick`` dataset, for reading patches by slicing."""
        return self._group(case_id)[which]

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


def existing_hashes(path: Path) -> dict[str, str]:
    """case_id -> content_hash of the cases already in a cache file or part file (empty if unreadable)."""
    try:
        with h5py.File(path, "r") as file:
            return {k: str(g.attrs["content_hash"]) for k, g in file.get("cases", {}).items()}
    except OSError:
        return {}
