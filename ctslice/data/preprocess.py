"""``ctslice preprocess``: raw scans into (thick, thin) pairs in the HDF5 cache.

Workers (processes) each load one case, validate it, build its pair and write it as a part file;
the main process is the one writer of the cache, which it rebuilds from the previous cache and the
parts at the end (see ``ctslice.data.cache`` for why this survives kill -9). A case whose content
hash (file bytes + options) matches the cache is reused, not redone; a failed case is recorded with
its reason and the others carry on.

A scan with only a thick series (no thin partner, nothing to simulate from) is kept as a
self-supervised case (``ctslice.data.pairs.self_supervised_case``): its thick volume and slice profile,
for in-plane training pairs. ``self_supervised=False`` excludes such scans as before; it is not part of
a case's content hash (it does not change any entry it keeps), so a rerun with it drops the
self-supervised cases already cached instead of reusing them.

A run never degrades the cache: only a failure caused by the case's input (``InputError``) replaces
its previous entry. A case that fails for any other reason (an ``OSError`` reading it, a
``MemoryError``, a bug) keeps its previous entry, and the run ends with exit 1 naming it. A part or
the cache that cannot be written (a full disk) stops the run at once: the previous cache is left as it
was and the finished parts are kept for the next run. One run at a time writes a cache (``lock``).
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import h5py

from ctslice.data import cache as cache_files
from ctslice.data.checks import check_ct_volume
from ctslice.data.discover import CaseSource, find_cases
from ctslice.data.lock import writer_lock
from ctslice.data.pairs import SELF_SUPERVISED, Pair, SliceProfile, real_pair, self_supervised_case, simulate_pair
from ctslice.data.shards import select_shard
from ctslice.errors import CtsliceError, InputError, first_line, shown
from ctslice.io import ReadOptions, extracted, find_series, read_volume
from ctslice.io.dicom import check_series_names, check_z_spacing
from ctslice.io.dicom_choice import SeriesChoice, choose_series
from ctslice.io.geometry import resample_inplane
from ctslice.io.paths import check_output
from ctslice.io.volume import Volume
from ctslice.reporting import NOTE, OnProgress, no_progress

log = logging.getLogger(__name__)


def _note(message: str) -> None:
    log.info(message, extra=NOTE)


@dataclass(frozen=True)
class PreprocessOptions:
    """Everything that shapes a case's cache entry (part of its content hash)."""

    thick_spacing: float = 5.0
    thin_spacing: float = 1.0
    size: int = 0
    profile: str = "slab"
    min_slices: int = 8
    tilt_correction: bool = True
    z_spacing: float | None = None
    series: tuple[str, ...] = ()  # series to prefer when a study holds several (number or description)
    self_supervised: bool = True  # keep thick-only scans for in-plane pairs (not part of the content hash)

    @property
    def read_options(self) -> ReadOptions:
        return ReadOptions(tilt_correction=self.tilt_correction, z_spacing=self.z_spacing, series=self.series)

    def as_dict(self) -> dict:
        """The options that shape a cache entry; the DICOM reading ones only when set, so that caches
        made before they existed stay valid for every case they do not change."""
        options = asdict(self)
        del options["self_supervised"]
        for key, default in (("tilt_correction", True), ("z_spacing", None), ("series", ())):
            if options[key] == default:
                del options[key]
        return options

    def check(self) -> None:
        if self.thin_spacing <= 0 or self.thick_spacing <= self.thin_spacing:
            raise InputError(f"thick spacing {self.thick_spacing} mm must be larger than the thin spacing "
                             f"{self.thin_spacing} mm and both positive")
        if self.size < 0 or self.size in (1, 2, 3):
            raise InputError(f"size {self.size}: give 0 (keep the matrix) or a matrix size such as 512")
        if self.profile not in ("slab", "gaussian"):
            raise InputError(f"profile {shown(self.profile)}: use slab or gaussian")
        check_z_spacing(self.z_spacing)
        check_series_names(self.series)


@dataclass(frozen=True)
class CaseResult:
    case_id: str
    source: str
    status: str  # "processed", "reused", "failed" (recorded in the cache) or "kept" (previous entry kept)
    reason: str = ""
    kind: str = ""  # the pair kind of a processed or reused case
    input_caused: bool = True  # a failure the case's input explains (else the run's environment or a bug)
    notes: tuple[str, ...] = ()  # corrections made while reading (gantry tilt, uneven spacing)
    series: dict | None = None  # the DICOM series paired (``SeriesChoice.record``)


class PartNotWritten(CtsliceError):
    """A finished case could not be written to the parts folder (a full disk): the run stops."""


def build_pair(source: CaseSource, options: PreprocessOptions) -> tuple[Pair, str, tuple[str, ...]]:
    """Load, validate and pair one case; returns the pair, the patient pseudonym and notes on corrections."""
    series_volumes, patient, notes, choice = _load(source, options.read_options)
    for volume, _ in series_volumes:
        check_ct_volume(volume, "source")
    if len(series_volumes) == 1:
        volume = series_volumes[0][0]
        if volume.spacing[2] <= options.thick_spacing / 2 + 1e-6:
            pair = simulate_pair(volume, options.thick_spacing, options.thin_spacing, options.profile)
        elif options.self_supervised:
            pair = self_supervised_case(volume, options.thin_spacing, _thickness(choice, 0))
        else:
            raise InputError(f"only a {volume.spacing[2]:.2f} mm series: no thin ground truth for "
                             f"{options.thick_spacing} mm thick slices (use such scans with `ctslice infer`)")
    else:
        order = sorted(range(len(series_volumes)), key=lambda k: series_volumes[k][1])
        ordered = [series_volumes[k] for k in order]
        (thin, thin_spacing), (thick, thick_spacing) = ordered[0], ordered[-1]
        if thick_spacing - thin_spacing < 1e-3:
            raise InputError(f"{len(ordered)} CT series with the same slice spacing ({thin_spacing:.2f} mm): "
                             "cannot tell the thick series from the thin one")
        pair = real_pair(thick, thin, options.thin_spacing, options.min_slices)
        thickness = _thickness(choice, order[-1])
        if thickness is not None:
            pair = replace(pair, profile=SliceProfile(thickness, pair.thick.spacing[2], "dicom"))
    if options.size:
        thin = resample_inplane(pair.thin, options.size) if pair.thin is not None else None
        pair = replace(pair, thick=resample_inplane(pair.thick, options.size), thin=thin)
    if pair.thick.depth < options.min_slices:
        raise InputError(f"{pair.thick.depth} thick slices, fewer than the minimum {options.min_slices}")
    if pair.thin is not None:
        check_ct_volume(pair.thin, "thin")
    if choice is not None:  # the one series of a self-supervised case is its thick one
        pair = replace(pair, series=choice.record(single="thick" if pair.kind == SELF_SUPERVISED else "thin"))
    return pair, patient, notes


def _thickness(choice: SeriesChoice | None, index: int) -> float | None:
    """The DICOM SliceThickness of the ``index``-th chosen series (None: a volume file, or the tag is missing)."""
    return choice.chosen[index].thickness if choice is not None else None


def _load(source: CaseSource, options: ReadOptions) -> tuple[list[tuple[Volume, float]], str, tuple[str, ...],
                                                             SeriesChoice | None]:
    """(volume, slice spacing) of each CT series the case is made of, its patient pseudonym, notes, and
    which DICOM series those are (None for a volume file)."""
    if source.series:
        return _read_series(list(source.series), source, options)
    if source.path.suffix.lower() == ".zip":
        with extracted(source.path) as folder:
            return _read_series(find_series(folder, shown_as=source.path), source, options)
    volume = read_volume(source.path, options)
    return [(volume, volume.spacing[2])], source.case_id, (), None


def _read_series(series: list, source: CaseSource, options: ReadOptions
                 ) -> tuple[list[tuple[Volume, float]], str, tuple[str, ...], SeriesChoice]:
    """The series of a study that make its case (``choose_series``: not-volumes skipped, like paired with like)."""
    choice = choose_series(series, source.path, options.series)
    patient = choice.chosen[0].patient_key or source.case_id
    loaded = choice.load(options)
    notes = tuple(choice.notes()) + tuple(f"{s.label}: {line}" for s, (_, report) in
                                          zip(choice.chosen, loaded, strict=True) for line in report.lines())
    return [(volume, volume.spacing[2]) for volume, _ in loaded], patient, notes, choice


def process_case(source: CaseSource, options: PreprocessOptions, parts: Path, known_hash: str | None) -> CaseResult:
    """Worker body: one case from source to part file, or a failure record. Never raises for a bad case.

    ``known_hash`` is the content hash of the case's entry in the cache (None: no entry). Raises
    ``PartNotWritten`` when the part cannot be written, which stops the run.
    """
    options_dict = options.as_dict()
    try:
        content_hash = source.content_hash(options_dict)
        if content_hash == known_hash:
            return CaseResult(source.case_id, str(source.path), "reused")
        pair, patient, notes = build_pair(source, options)
    except InputError as error:
        return CaseResult(source.case_id, str(source.path), "failed", str(error))
    except Exception as error:  # noqa: BLE001 (not the input's fault: keep what the cache has, say why)
        reason = str(error) if isinstance(error, CtsliceError) else f"{type(error).__name__}: {first_line(error)}"
        status = "failed" if known_hash is None else "kept"
        return CaseResult(source.case_id, str(source.path), status, reason, input_caused=False)
    try:
        cache_files.write_part(parts, source.case_id, pair, source=str(source.path), content_hash=content_hash,
                               patient=patient, options=options_dict)
    except (OSError, RuntimeError) as error:  # h5py raises either for a failed write
        raise PartNotWritten(f"could not write case {source.case_id} to {parts} "
                             f"({cache_files.write_error(error)})") from None
    return CaseResult(source.case_id, str(source.path), "processed", kind=pair.kind, notes=notes,
                      series=pair.series)


def run_preprocess(inputs: list[Path], output: Path, options: PreprocessOptions, workers: int = 1,
                   shard: tuple[int, int] | None = None, on_progress: OnProgress | None = None) -> list[CaseResult]:
    """Preprocess every case under ``inputs`` into the cache ``output``; returns one result per case.

    Raises ``CtsliceError`` (after writing the cache) when a case failed for a reason other than its input.
    """
    results = preprocess_cases(inputs, output, options, workers=workers, shard=shard, on_progress=on_progress)
    raise_for_environment(results)
    return results


def preprocess_cases(inputs: list[Path], output: Path, options: PreprocessOptions, workers: int = 1,
                     shard: tuple[int, int] | None = None,
                     on_progress: OnProgress | None = None) -> list[CaseResult]:
    """``run_preprocess`` without the final check: the command layer shows the results (the excluded cases
    and the summary) before ``raise_for_environment`` ends the run. ``on_progress("Preprocessing", done,
    total)`` is told after each case."""
    options.check()
    if output.suffix.lower() not in (".h5", ".hdf5"):
        raise InputError(f"{output}: the cache must be an .h5 file")
    check_output(output, inputs=[p for p in inputs if not p.is_dir()])  # a cache beside the scans is no harm
    output.parent.mkdir(parents=True, exist_ok=True)
    with writer_lock(output, on_takeover=_note):
        damaged = _check_existing(output)
        found = find_cases(inputs)
        sources = found.sources
        sources = select_shard(sources, shard)
        if not sources:
            raise InputError("no scans found in the inputs")
        parts = cache_files.parts_dir(output)
        known = cache_files.existing_hashes(output) if output.exists() else {}
        for part in cache_files.part_files(output):
            known.update(cache_files.existing_hashes(part))
        for case_id in damaged:
            known.pop(case_id, None)
        kinds = _cached_kinds(output)
        if not options.self_supervised:  # rebuilt, so excluded with the reason, rather than reused
            for case_id, kind in kinds.items():
                if kind == SELF_SUPERVISED:
                    known.pop(case_id, None)
        log.info(f"Preprocessing {len(sources)} case(s) -> {output} (thick {options.thick_spacing} mm, "
                 f"thin {options.thin_spacing} mm, {workers} worker(s))")
        if found.skipped:
            _note(f"skipped {found.skipped} file(s) that are not images (DICOMDIR, index "
                  "files, OS litter, DICOM objects without pixels)")
        try:
            results = _run_cases(sources, options, parts, known, workers, on_progress or no_progress)
        except PartNotWritten as error:
            raise CtsliceError(f"{error}; {output} is unchanged{_kept_parts(output)}") from None
        except BaseException:
            _write_cache(output, parts, [], damaged)  # Ctrl-C, a dead worker: keep the finished cases
            raise
        _write_cache(output, parts, results, damaged)
    results = [replace(r, kind=kinds.get(r.case_id, "")) if r.status == "reused" else r for r in results]
    for result in results:
        for line in result.notes:
            _note(f"{result.case_id}: {line}")
    return results



def _cached_kinds(output: Path) -> dict[str, str]:
    """case_id -> pair kind of every case in the cache and in the parts a stopped run left."""
    kinds = cache_files.existing_kinds(output) if output.exists() else {}
    for part in cache_files.part_files(output):
        kinds.update(cache_files.existing_kinds(part))
    return kinds


def _check_existing(output: Path) -> set[str]:
    """Refuse (one line, before any work) an ``output`` that is not a cache; returns its damaged case ids.

    Damaged entries (a dataset or attribute deleted) are not reused: they are rebuilt if their scan is
    among the inputs, and left out of the new cache either way.
    """
    for path, kind in ((cache_files.parts_dir(output), "folder"), (output.with_name(f".{output.name}.tmp"), "file")):
        if path.is_symlink() or (path.exists() and not (path.is_dir() if kind == "folder" else path.is_file())):
            raise InputError(f"{path} is in the way: ctslice keeps its unfinished work there as a {kind}; move "
                             "it away")
    if not output.exists():
        return set()
    if not output.is_file():
        raise InputError(f"{output} is not a file; give the path of a cache (.h5) to create or update")
    try:
        with h5py.File(output, "r") as file:
            problem = cache_files.format_problem(file)
            damaged = set() if problem else set(cache_files.damaged_cases(file))
    except (OSError, RuntimeError, KeyError) as error:
        problem = f"not a readable HDF5 cache ({first_line(error)})"
    if problem:
        raise InputError(f"{output}: {problem}; move it away or choose another -o")
    if damaged:
        _note(f"{output}: {len(damaged)} damaged case(s) are rebuilt or left out: {', '.join(sorted(damaged)[:5])}")
    return damaged


def _kept_parts(output: Path) -> str:
    """``; the N finished case(s) in PARTS are kept for the next run`` (or nothing, removing an empty folder)."""
    parts = cache_files.parts_dir(output)
    finished = cache_files.part_files(output)
    if not finished:
        cache_files.remove_parts(output)
        return ""
    return f"; the {len(finished)} finished case(s) in {parts} are kept for the next run"


def raise_for_environment(results: list[CaseResult]) -> None:
    """Exit 1 when a case failed for a reason other than its input: the run did not do its job."""
    failed = [r for r in results if not r.input_caused]
    if failed:
        kept = sum(r.status == "kept" for r in failed)
        raise CtsliceError(f"{len(failed)} case(s) failed for a reason other than their input (first: "
                           f"{failed[0].case_id}: {failed[0].reason}); {kept} kept their previous cache entry; "
                           "re-run to retry them")


def _run_cases(sources: list[CaseSource], options: PreprocessOptions, parts: Path, known: dict[str, str],
               workers: int, on_progress: OnProgress) -> list[CaseResult]:
    results: list[CaseResult] = []
    on_progress("Preprocessing", 0, len(sources))
    if workers <= 1:
        for source in sources:
            results.append(process_case(source, options, parts, known.get(source.case_id)))
            on_progress("Preprocessing", len(results), len(sources))
        return results
    with ProcessPoolExecutor(max_workers=workers, initializer=_start_worker, initargs=(workers,)) as pool:
        try:
            with _stops_held_back():  # the workers are started here, and take their own handlers first
                futures = [pool.submit(process_case, s, options, parts, known.get(s.case_id)) for s in sources]
            for future in as_completed(futures):
                results.append(future.result())
                on_progress("Preprocessing", len(results), len(sources))
        except BrokenProcessPool:
            raise CtsliceError("a worker process died (killed for memory?); the finished cases are kept, "
                               "re-run with fewer workers") from None
        except BaseException:  # a stop (SIGTERM turned into an exception, Ctrl-C): abandon the cases in flight
            _end_workers(pool)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # stop at the first part that cannot be written
    return sorted(results, key=lambda r: r.case_id)


def _end_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate the workers, so that a stop takes seconds (not the rest of a case) and leaves no orphan;
    a case cut short leaves no part (parts are written atomically). ``terminate_workers`` from Python 3.14."""
    for process in list((pool._processes or {}).values()):
        process.terminate()


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def _stops_held_back() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back while worker processes are forked; a stop that arrives meanwhile is
    delivered when the block ends. A worker inherits the held-back mask, so no stop reaches it before
    ``_start_worker`` has replaced the main process's handlers."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _start_worker(workers: int) -> None:
    """Share the cores between worker processes instead of every worker using all of them.

    Signals: Ctrl-C (sent to the whole process group) is left to the main process, which ends the
    workers; SIGTERM (how the main process ends them) kills a worker on the spot. A forked worker would
    otherwise run the main process's SIGTERM handler, which raises: a traceback, or none of it when the
    exception lands in a finalizer. Stops are held back until these handlers are set (``_stops_held_back``).
    """
    import SimpleITK as sitk

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, (os.cpu_count() or 1) // workers))


def _write_cache(output: Path, parts: Path, results: list[CaseResult], damaged: set[str]) -> None:
    """Merge this run's parts (and any left by an interrupted run) with the previous cache.

    Failure records replace earlier entries; "kept" cases are not failure records, so their previous
    entries are copied. Damaged entries are left out unless a part rebuilt them.
    """
    part_files = cache_files.part_files(output)
    if not part_files and not damaged and output.exists() and all(r.status in ("reused", "kept") for r in results):
        cache_files.remove_parts(output)
        return
    failures = [cache_files.Failure(r.case_id, r.source, r.reason) for r in results if r.status == "failed"]
    previous = [output] if output.exists() else []
    try:
        cache_files.consolidate(output, part_files + previous, failures,
                                drop_cases=damaged - {p.name.removesuffix(".h5") for p in part_files})
    except CtsliceError as error:
        raise CtsliceError(f"{error}{_kept_parts(output)}") from None
    cache_files.remove_parts(output)


def run_merge(shards: list[Path], output: Path) -> tuple[int, int]:
    """Merge shard caches (from ``--shard I/N`` runs) into ``output``; returns its (cases, failure records)."""
    for shard in shards:
        cache_files.Cache(shard).close()  # raises a clear InputError for a missing or foreign file
    output.parent.mkdir(parents=True, exist_ok=True)
    with writer_lock(output, on_takeover=_note):
        damaged = _check_existing(output)
        rebuilt = {case_id for shard in shards for case_id in cache_files.existing_hashes(shard)}
        previous = [output] if output.exists() and output not in shards else []
        cache_files.consolidate(output, list(shards) + previous, drop_cases=damaged - rebuilt)
    with cache_files.Cache(output) as merged:
        return len(merged.case_ids()), len(merged.failures())
