"""``ctslice preprocess`` (and ``--merge``): the library's results as the tables and lines a user reads."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.table import Table

from ctslice.commands.options import flag_wording, parse_shard
from ctslice.console import progress_callback, stdout
from ctslice.data.pairs import SELF_SUPERVISED
from ctslice.data.preprocess import CaseResult, PreprocessOptions, preprocess_cases, raise_for_environment, run_merge
from ctslice.errors import CtsliceError


def run(inputs: list[Path], output: Path, options: PreprocessOptions, workers: int, shard: str | None) -> None:
    """Preprocess ``inputs`` into ``output``, print the excluded cases and the summary, and end with exit 1
    when a case failed for a reason other than its input or when no case could be used."""
    chosen = parse_shard(shard)
    with flag_wording(thick_spacing="--thick-spacing", size="--size", profile="--profile", z_spacing="--z-spacing",
                      series="--series"):
        options.check()  # the settings as the flags the user typed, before any work
    with progress_callback() as on_progress:
        results = preprocess_cases(inputs, output, options, workers=workers, shard=chosen, on_progress=on_progress)
    print_summary(results)
    raise_for_environment(results)
    if results and all(result.status == "failed" for result in results):
        raise CtsliceError(f"every case was excluded ({len(results)} of {len(results)}): {output} holds no pairs to "
                           "train on; the reasons are in the table above")


def merge(shards: list[Path], output: Path) -> None:
    cases, failures = run_merge(shards, output)
    stdout.print(f"Merged {len(shards)} shard(s) into {output}: {cases} case(s), {failures} failure record(s)",
                 markup=False)


def print_summary(results: list[CaseResult]) -> None:
    """The excluded cases (with their reasons) and the counts per status, on stdout."""
    counts = {status: sum(r.status == status for r in results) for status in ("processed", "reused", "failed", "kept")}
    failed = [r for r in results if r.status in ("failed", "kept")]
    if failed:
        table = Table(title="Excluded cases", title_justify="left")
        table.add_column("case")
        table.add_column("reason", overflow="fold")
        for result in failed:
            kept = " (its previous cache entry is kept)" if result.status == "kept" else ""
            table.add_row(escape(result.case_id), escape(result.reason + kept))  # paths may hold [brackets]
        stdout.print(table)
    print_series_choices(results)
    self_supervised = sum(r.kind == SELF_SUPERVISED for r in results if r.status in ("processed", "reused"))
    summary = Table(title="Preprocessing summary", title_justify="left")
    for column in ("processed", "reused", "of them self-supervised", "excluded", "kept from before"):
        summary.add_column(column, justify="right")
    summary.add_row(str(counts["processed"]), str(counts["reused"]), str(self_supervised),
                    *(str(counts[status]) for status in ("failed", "kept")))
    stdout.print(summary)


def print_series_choices(results: list[CaseResult]) -> None:
    """The series paired in each study that held other CT series too (other kernels, other thicknesses) or
    whose series were named, so that a user sees which reconstructions train the model."""
    chosen = [r for r in results if r.series and (r.series.get("unused") or r.series.get("basis") == "named")]
    if not chosen:
        return
    table = Table(title="Series paired (studies with several CT series)", title_justify="left")
    table.add_column("case")
    table.add_column("series paired", overflow="fold")
    table.add_column("CT series left out", overflow="fold")
    for result in chosen:
        table.add_row(escape(result.case_id), escape(str(result.series.get("summary", ""))),
                      escape(str(result.series.get("left_out", ""))))
    stdout.print(table)
