"""``ctslice preprocess``: raw scans into (thick, thin) pairs in the HDF5 cache.

Workers (processes) each load one case, validate it, build its pair and write it as a part file;
the main process is the one writer of the cache, which it rebuilds from the previous cache and the
parts at the end (see ``ctslice.data.cache`` for why this survives kill -9). A case whose content
hash (file bytes + options) matches the cache is reused, not redone; a failed case is recorded with
its reason and the others carry on.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from ctslice.console import console, progress, stdout
from ctslice.data import cache as cache_files
from ctslice.data.checks import check_ct_volume
from ctslice.data.discover import CaseSource, discover
from ctslice.data.pairs import Pair, real_pair, resample_inplane, simulate_pair
from ctslice.errors import CtsliceError, InputError, shown
from ctslice.io import extracted, find_series, read_volume
from ctslice.io.volume import Volume


@dataclass(frozen=True)
class PreprocessOptions:
    """Everything that shapes a case's cache entry (part of its content hash)."""

    thick_spacing: float = 5.0
    thin_spacing: float = 1.0
    size: int = 0
    profile: str = "slab"
    min_slices: int = 8

    def check(self) -> None:
        if self.thin_spacing <= 0 or self.thick_spacing <= self.thin_spacing:
            raise InputError(f"--thick-spacing ({self.thick_spacing}) must be larger than --thin-spacing "
                             f"({self.thin_spacing}) and both positive")
        if self.size < 0 or self.size in (1, 2, 3):
            raise InputError(f"--size {self.size}: give 0 (keep the matrix) or a matrix size such as 512")
        if self.profile not in ("slab", "gaussian"):
            raise InputError(f"--profile {shown(self.profile)}: use slab or gaussian")


@dataclass(frozen=True)
class CaseResult:
    case_id: str
    source: str
    status: str  # "processed", "reused" or "failed"
    reason: str = ""
    kind: str = ""


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"I/N"`` -> (I, N) with 0 <= I < N."""
    if not text:
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise InputError(f"--shard {shown(text)}: expected I/N, e.g. 0/4") from None
    if not 0 <= index < count:
        raise InputError(f"--shard {shown(text)}: need 0 <= I < N")
    return index, count


def build_pair(source: CaseSource, options: PreprocessOptions) -> tuple[Pair, str]:
    """Load, validate and pair one case; returns the pair and the patient pseudonym."""
    series_volumes, patient = _load(source)
    for volume, _ in series_volumes:
        check_ct_volume(volume, "source")
    if len(series_volumes) == 1:
        volume = series_volumes[0][0]
        if volume.spacing[2] > options.thick_spacing / 2 + 1e-6:
            raise InputError(f"only a {volume.spacing[2]:.2f} mm series: no thin ground truth for "
                             f"{options.thick_spacing} mm thick slices (use such scans with `ctslice infer`)")
        pair = simulate_pair(volume, options.thick_spacing, options.thin_spacing, options.profile)
    else:
        ordered = sorted(series_volumes, key=lambda item: item[1])
        (thin, thin_spacing), (thick, thick_spacing) = ordered[0], ordered[-1]
        if thick_spacing - thin_spacing < 1e-3:
            raise InputError(f"{len(ordered)} CT series with the same slice spacing ({thin_spacing:.2f} mm): "
                             "cannot tell the thick series from the thin one")
        pair = real_pair(thick, thin, options.thin_spacing, options.min_slices)
    if options.size:
        pair = Pair(resample_inplane(pair.thick, options.size), resample_inplane(pair.thin, options.size), pair.kind)
    if pair.thick.depth < options.min_slices:
        raise InputError(f"{pair.thick.depth} thick slices, fewer than the minimum {options.min_slices}")
    check_ct_volume(pair.thin, "thin")
    return pair, patient


def _load(source: CaseSource) -> tuple[list[tuple[Volume, float]], str]:
    """(volume, slice spacing) of each CT series of the case, and its patient pseudonym."""
    if source.series:
        return _read_series(list(source.series), source)
    if source.path.suffix.lower() == ".zip":
        with extracted(source.path) as folder:
            return _read_series(find_series(folder, shown_as=source.path), source)
    volume = read_volume(source.path)
    return [(volume, volume.spacing[2])], source.case_id


def _read_series(series: list, source: CaseSource) -> tuple[list[tuple[Volume, float]], str]:
    ct = [s for s in series if s.modality == "CT" and not s.localizer and s.n_slices > 1]
    if not ct:
        if len(series) == 1:
            series[0].check()  # says what that one series is instead (an MR series, a single slice...)
        found = "; ".join(f"{i}) {s.describe()}" for i, s in enumerate(series, start=1)) or "no DICOM series at all"
        raise InputError(f"{source.path} holds no CT volume ({found}); pass CT scans")
    patient = ct[0].patient_key or source.case_id
    return [(s.read(), s.slice_spacing) for s in ct], patient


def process_case(source: CaseSource, options: PreprocessOptions, parts: Path, known_hash: str | None) -> CaseResult:
    """Worker body: one case from source to part file, or a failure record. Never raises for a bad case."""
    options_dict = asdict(options)
    try:
        content_hash = source.content_hash(options_dict)
        if content_hash == known_hash:
            return CaseResult(source.case_id, str(source.path), "reused")
        pair, patient = build_pair(source, options)
        cache_files.write_part(parts, source.case_id, pair, source=str(source.path), content_hash=content_hash,
                               patient=patient, options=options_dict)
        return CaseResult(source.case_id, str(source.path), "processed", kind=pair.kind)
    except CtsliceError as error:
        return CaseResult(source.case_id, str(source.path), "failed", str(error))
    except (OSError, ValueError, RuntimeError, MemoryError) as error:
        return CaseResult(source.case_id, str(source.path), "failed", f"{type(error).__name__}: {error}")


def run_preprocess(inputs: list[Path], output: Path, options: PreprocessOptions, workers: int = 1,
                   shard: tuple[int, int] | None = None) -> list[CaseResult]:
    """Preprocess every case under ``inputs`` into the cache ``output``; returns one result per case."""
    options.check()
    if output.suffix.lower() not in (".h5", ".hdf5"):
        raise InputError(f"{output}: the cache must be an .h5 file")
    output.parent.mkdir(parents=True, exist_ok=True)
    sources = discover(inputs)
    if shard:
        sources = [s for k, s in enumerate(sorted(sources, key=lambda s: s.case_id)) if k % shard[1] == shard[0]]
    if not sources:
        raise InputError("no scans found in the inputs")
    parts = cache_files.parts_dir(output)
    known = cache_files.existing_hashes(output) if output.exists() else {}
    for part in sorted(parts.glob("*.h5")):
        known.update(cache_files.existing_hashes(part))
    console.print(f"Preprocessing {len(sources)} case(s) -> {output} (thick {options.thick_spacing} mm, "
                  f"thin {options.thin_spacing} mm, {workers} worker(s))")
    results: list[CaseResult] = []
    try:
        results = _run_cases(sources, options, parts, known, workers)
    finally:
        _write_cache(output, parts, results)
    _print_summary(results)
    return results


def _run_cases(sources: list[CaseSource], options: PreprocessOptions, parts: Path, known: dict[str, str],
               workers: int) -> list[CaseResult]:
    results: list[CaseResult] = []
    with progress() as bar:
        task = bar.add_task("Preprocessing", total=len(sources))
        if workers <= 1:
            for source in sources:
                results.append(process_case(source, options, parts, known.get(source.case_id)))
                bar.advance(task)
            return results
        with ProcessPoolExecutor(max_workers=workers, initializer=_limit_threads, initargs=(workers,)) as pool:
            futures = [pool.submit(process_case, s, options, parts, known.get(s.case_id)) for s in sources]
            for future in as_completed(futures):
                results.append(future.result())
                bar.advance(task)
    return sorted(results, key=lambda r: r.case_id)


def _limit_threads(workers: int) -> None:
    """Share the cores between worker processes instead of every worker using all of them."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, (os.cpu_count() or 1) // workers))


def _write_cache(output: Path, parts: Path, results: list[CaseResult]) -> None:
    """Merge this run's parts (and any left by an interrupted run) with the previous cache."""
    part_files = sorted(parts.glob("*.h5"))
    if not part_files and output.exists() and all(r.status == "reused" for r in results):
        return
    failures = [cache_files.Failure(r.case_id, r.source, r.reason) for r in results if r.status == "failed"]
    previous = [output] if output.exists() else []
    cache_files.consolidate(output, part_files + previous, failures)
    cache_files.remove_parts(output)


def _print_summary(results: list[CaseResult]) -> None:
    from rich.markup import escape
    from rich.table import Table

    counts = {status: sum(r.status == status for r in results) for status in ("processed", "reused", "failed")}
    failed = [r for r in results if r.status == "failed"]
    if failed:
        table = Table(title="Excluded cases", title_justify="left")
        table.add_column("case")
        table.add_column("reason", overflow="fold")
        for result in failed:
            table.add_row(escape(result.case_id), escape(result.reason))  # paths may hold [brackets]
        stdout.print(table)
    summary = Table(title="Preprocessing summary", title_justify="left")
    for column in ("processed", "reused", "excluded"):
        summary.add_column(column, justify="right")
    summary.add_row(str(counts["processed"]), str(counts["reused"]), str(counts["failed"]))
    stdout.print(summary)


def run_merge(shards: list[Path], output: Path) -> None:
    """Merge shard caches (from ``--shard I/N`` runs) into ``output``."""
    for shard in shards:
        cache_files.Cache(shard).close()  # raises a clear InputError for a missing or foreign file
    previous = [output] if output.exists() and output not in shards else []
    cache_files.consolidate(output, list(shards) + previous)
    with cache_files.Cache(output) as merged:
        stdout.print(f"Merged {len(shards)} shard(s) into {output}: {len(merged.case_ids())} case(s), "
                     f"{len(merged.failures())} failure record(s)", markup=False)
