"""Folder inference: every case ``preprocess`` would find in a folder, one output per case, one model.

``plan_batch`` decides before any work what will happen to each case (its output path; skipped when that
output exists), so a rerun after a crash or a preemption picks up where the last one stopped, and
parallel workers split the folder with ``--shard I/N`` exactly as ``preprocess`` does. ``run_batch`` runs
a caller's ``infer_one`` on each pending case: a case that fails for a reason of its own (a bad file,
out of memory on one huge scan, a full disk) is recorded with its one-line reason and the others go on;
Ctrl-C and SIGTERM stop the run, as everywhere in ctslice. Each output is written atomically by the
writers (``write_volume``, ``write_dicom_series``), so an output that exists is complete.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ctslice.data.discover import Discovery, find_cases
from ctslice.data.shards import select_shard
from ctslice.errors import CtsliceError, InputError, Interrupted, Preempted, first_line
from ctslice.io.paths import check_output, printable

OUTPUT_TYPES = (".nii.gz", ".nii", ".nrrd", ".mha", "dicom")
"""``ext`` choices: a volume file per case, or ``dicom``: a folder holding one DICOM series per case."""


@dataclass(frozen=True)
class BatchCase:
    """One case of a folder: where it comes from, where its output goes, and whether that exists already."""

    case_id: str
    source: Path
    output: Path
    skip: bool


@dataclass(frozen=True)
class BatchPlan:
    """The cases of a folder (of one shard) in order, and the non-image files skipped beside DICOM series."""

    cases: tuple[BatchCase, ...]
    output_dir: Path
    skipped_files: int = 0

    @property
    def pending(self) -> list[BatchCase]:
        return [case for case in self.cases if not case.skip]


@dataclass(frozen=True)
class CaseResult:
    """What happened to one case: ``status`` done, skipped or failed (with its one-line ``reason``)."""

    case: BatchCase
    status: str
    reason: str | None = None


def plan_batch(input_dir: Path, output_dir: Path, *, ext: str = ".nii.gz", overwrite: bool = False,
               shard: tuple[int, int] | None = None, found: Discovery | None = None) -> BatchPlan:
    """The plan for every case in ``input_dir`` (of ``shard`` (I, N) if given) -> ``output_dir/<case id><ext>``.

    ``ext`` is one of ``OUTPUT_TYPES``. A case whose output exists is skipped unless ``overwrite`` (an output of
    the wrong kind, a folder where a file goes or the reverse, is not one: the case runs and fails on it).
    ``InputError`` for a missing input folder, an output folder that is (or is inside) the input
    folder, an unknown ``ext``, or a folder (or shard) without cases. ``found``: the cases of ``input_dir``
    when the caller has found them already (``find_cases``), so that DICOM headers are read once.
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if ext not in OUTPUT_TYPES:
        raise InputError(f"output type {ext!r}: choose one of {', '.join(OUTPUT_TYPES)}")
    if not input_dir.is_dir():
        raise InputError(f"{printable(input_dir)}: not a folder; folder inference takes a folder of scans")
    check_output(output_dir, inputs=[input_dir], folder=True)
    found = found or find_cases([input_dir])
    sources = select_shard(found.sources, shard)
    if not sources:
        where = f" for shard {shard[0]}/{shard[1]}" if shard and found.sources else ""
        raise InputError(f"{printable(input_dir)}: no scans found{where} (volume files, DICOM series folders or zips)")
    cases = []
    for source in sources:
        output = output_dir / (source.case_id if ext == "dicom" else f"{source.case_id}{ext}")
        done = output.is_dir() if ext == "dicom" else output.is_file()  # a folder named a.nii.gz is no output
        cases.append(BatchCase(source.case_id, source.path, output, done and not overwrite))
    return BatchPlan(tuple(cases), output_dir, found.skipped)


def run_batch(plan: BatchPlan, infer_one: Callable[[Path, Path], object],
              on_case: Callable[[CaseResult], None] | None = None) -> list[CaseResult]:
    """``infer_one(source, output)`` for every pending case of ``plan``; one ``CaseResult`` per case, in order.

    A ``CtsliceError``, ``OSError`` or ``MemoryError`` of one case is that case's failure; ``Preempted``
    (SIGTERM), ``Interrupted`` and ``KeyboardInterrupt`` (Ctrl-C) stop the run. ``on_case`` receives each
    result as it is known (to report progress).
    """
    results = []
    for case in plan.cases:
        if case.skip:
            result = CaseResult(case, "skipped", "output exists")
        else:
            try:
                infer_one(case.source, case.output)
                result = CaseResult(case, "done")
            except (Preempted, Interrupted):
                raise
            except (CtsliceError, OSError, MemoryError) as error:
                result = CaseResult(case, "failed", first_line(error, 300))
        results.append(result)
        if on_case is not None:
            on_case(result)
    return results
