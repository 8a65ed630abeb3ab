"""Folder inference: every case of a folder planned and written (NIfTI, NRRD, a DICOM series folder), a
broken case recorded while the others finish, skip on rerun, overwrite, shards that partition the folder,
and Ctrl-C / SIGTERM that stop the run."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from ctslice.commands.options import parse_shard
from ctslice.errors import InputError, Preempted
from ctslice.inference.batch import plan_batch, run_batch
from ctslice.io import read_volume, write_volume
from ctslice.io.dicom_output import input_study_tags, write_dicom_series
from ctslice.io.geometry import interpolate, thin_grid


def cubic_writer(source, output):
    """What ``infer --method cubic`` does with one case, writing NIfTI/NRRD or a DICOM series folder."""
    thin = interpolate(read_volume(source), 1.0, "cubic")
    if output.suffix:
        write_volume(thin, output)
    else:
        write_dicom_series(thin, output, description="ctslice cubic 5 -> 1 mm", source=input_study_tags(source))


def test_every_case_written_and_a_broken_one_recorded(scan_folder, tmp_path):
    plan = plan_batch(scan_folder, tmp_path / "out")
    assert [c.case_id for c in plan.cases] == ["alpha", "beta", "broken", "gamma"]
    seen = []
    results = run_batch(plan, cubic_writer, on_case=seen.append)
    assert seen == results
    status = {r.case.case_id: (r.status, r.reason) for r in results}
    assert status["broken"][0] == "failed" and "broken.nii.gz" in status["broken"][1]
    assert "\n" not in status["broken"][1]
    assert {k: v[0] for k, v in status.items() if k != "broken"} == {"alpha": "done", "beta": "done", "gamma": "done"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["alpha.nii.gz", "beta.nii.gz", "gamma.nii.gz"]
    for name, source in (("alpha", scan_folder / "alpha.nii.gz"), ("gamma", scan_folder / "gamma")):
        written, scan = read_volume(tmp_path / "out" / f"{name}.nii.gz"), read_volume(source)
        assert written.grid.size == thin_grid(scan.grid, 1.0).size
        np.testing.assert_array_equal(written.array, np.rint(interpolate(scan, 1.0, "cubic").array))


def test_rerun_skips_finished_cases_and_overwrite_redoes_them(scan_folder, tmp_path):
    run_batch(plan_batch(scan_folder, tmp_path / "out"), cubic_writer)
    before = (tmp_path / "out" / "alpha.nii.gz").stat().st_mtime_ns
    calls = []

    def counting(source, output):
        calls.append(source.name)
        cubic_writer(source, output)

    results = run_batch(plan_batch(scan_folder, tmp_path / "out"), counting)
    assert {r.case.case_id: r.status for r in results} == {"alpha": "skipped", "beta": "skipped",
                                                           "broken": "failed", "gamma": "skipped"}
    assert calls == ["broken.nii.gz"]
    assert (tmp_path / "out" / "alpha.nii.gz").stat().st_mtime_ns == before
    calls.clear()
    results = run_batch(plan_batch(scan_folder, tmp_path / "out", overwrite=True), counting)
    assert sorted(calls) == ["alpha.nii.gz", "beta.nrrd", "broken.nii.gz", "gamma"]
    assert [r.status for r in results].count("done") == 3


def test_dicom_output_folders_carry_the_dicom_input_study(scan_folder, tmp_path):
    plan = plan_batch(scan_folder, tmp_path / "out", ext="dicom")
    assert all(c.output.parent == tmp_path / "out" and not c.output.suffix for c in plan.cases)
    results = run_batch(plan, cubic_writer)
    assert [r.status for r in results] == ["done", "done", "failed", "done"]
    gamma = [pydicom.dcmread(f) for f in (tmp_path / "out" / "gamma").iterdir()]
    assert len(gamma) == read_volume(tmp_path / "out" / "gamma").depth == 30
    assert {d.PatientID for d in gamma} == {"PAT-0042"}
    alpha = pydicom.dcmread(next((tmp_path / "out" / "alpha").iterdir()))
    assert alpha.PatientID == "ANONYMOUS"
    assert [c.skip for c in plan_batch(scan_folder, tmp_path / "out", ext="dicom").cases] == [True, True, False, True]


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_shards_partition_the_cases(scan_folder, tmp_path, count):
    everything = [c.case_id for c in plan_batch(scan_folder, tmp_path / "out").cases]
    shards = []
    for index in range(count):
        try:
            shards.append([c.case_id for c in plan_batch(scan_folder, tmp_path / "out",
                                                         shard=parse_shard(f"{index}/{count}")).cases])
        except InputError as error:  # more shards than cases: that shard has none
            assert count > len(everything) and "no scans found for shard" in str(error)
    merged = [case for shard in shards for case in shard]
    assert sorted(merged) == sorted(everything) and len(merged) == len(set(merged))


def test_ctrl_c_and_sigterm_stop_the_run(scan_folder, tmp_path):
    for stop in (KeyboardInterrupt(), Preempted("stopped by SIGTERM")):
        done = []

        def stopping(source, output, stop=stop, done=done):
            if done:
                raise stop
            cubic_writer(source, output)
            done.append(source)

        with pytest.raises(type(stop)):
            run_batch(plan_batch(scan_folder, tmp_path / "out", overwrite=True), stopping)
        assert len(done) == 1


def test_memory_and_disk_failures_are_a_case_failure(scan_folder, tmp_path):
    def failing(source, output):
        raise MemoryError() if source.name == "alpha.nii.gz" else OSError(28, "No space left on device")

    results = run_batch(plan_batch(scan_folder, tmp_path / "out"), failing)
    assert [(r.status, r.reason) for r in results][:2] == [("failed", "MemoryError"),
                                                           ("failed", "[Errno 28] No space left on device")]


@pytest.mark.parametrize("case, message", [
    ("ext", "choose one of .nii.gz, .nii, .nrrd, .mha, dicom"),
    ("file", "not a folder"),
    ("inside", "would overwrite the input"),
    ("empty", "no scans found"),
])
def test_bad_plans_are_refused(scan_folder, tmp_path, case, message):
    (tmp_path / "empty").mkdir()
    folder, out = scan_folder, tmp_path / "out"
    args = {"ext": (folder, out, ".dcm"), "file": (folder / "alpha.nii.gz", out, ".nii"),
            "inside": (folder, folder / "out", ".nii"), "empty": (tmp_path / "empty", out, ".nii")}[case]
    with pytest.raises(InputError, match=message):
        plan_batch(args[0], args[1], ext=args[2])
