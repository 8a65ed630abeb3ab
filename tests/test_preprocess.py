"""``ctslice preprocess``: every input kind into the cache, failures recorded, resume after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from ctslice.data.cache import Cache, parts_dir
from ctslice.data.pairs import simulate_pair
from ctslice.data.phantom import make_phantom
from ctslice.data.preprocess import PreprocessOptions, run_preprocess
from ctslice.errors import InputError
from tests.dicom_utils import make_uid, write_dicom_series, zip_folder

SMALL = PreprocessOptions(thick_spacing=5.0, thin_spacing=1.0, min_slices=4)


def phantom(seed=0, depth=40, spacing_z=1.0):
    return make_phantom(shape=(depth, 48, 48), spacing=(4.0, 4.0, spacing_z), seed=seed)


def write_nifti(volume, path):
    from ctslice.io import write_volume

    return write_volume(volume, path)


def write_study(folder, seed=0, patient_id="PAT-0001"):
    """A study folder holding a thin (1 mm) and a thick (5 mm) DICOM series of the same scan."""
    truth = phantom(seed, depth=40)
    thick = simulate_pair(truth, 5.0, 1.0).thick
    study = make_uid("study", seed)
    write_dicom_series(truth, folder / "2", study_uid=study, series_uid=make_uid("thin", seed), patient_id=patient_id)
    write_dicom_series(thick, folder / "1", study_uid=study, series_uid=make_uid("thick", seed), patient_id=patient_id)
    return truth, thick


def test_every_input_kind(tmp_path):
    inputs = tmp_path / "in"
    write_nifti(phantom(1), inputs / "volumes" / "nifti_case.nii.gz")
    write_nifti(phantom(2, spacing_z=0.5, depth=80), inputs / "volumes" / "nrrd_case.nrrd")
    write_nifti(phantom(3), inputs / "mha_case.mha")
    truth, thick = write_study(inputs / "study_dicom")
    write_study(tmp_path / "zipped", seed=5, patient_id="PAT-0002")
    zip_folder(tmp_path / "zipped", inputs / "study_zip.zip")
    output = tmp_path / "cache.h5"
    results = run_preprocess([inputs / "volumes", inputs / "mha_case.mha", inputs / "study_dicom",
                              inputs / "study_zip.zip"], output, SMALL)
    assert {r.case_id: r.status for r in results} == dict.fromkeys(
        ["mha_case", "nifti_case", "nrrd_case", "study_dicom", "study_zip"], "processed")
    with Cache(output) as cache:
        kinds = {c: cache.info(c).pair_kind for c in cache.case_ids()}
        assert kinds == {"mha_case": "simulated", "nifti_case": "simulated", "nrrd_case": "simulated",
                         "study_dicom": "real", "study_zip": "real"}
        # the real pair holds the scanner's thick series, at the thick series' own positions
        real_thick = cache.volume("study_dicom", "thick")
        np.testing.assert_allclose(real_thick.grid.slice_positions(), thick.grid.slice_positions(), atol=1e-3)
        assert np.abs(real_thick.array.astype(int) - thick.array).max() <= 1
        real_thin = cache.volume("study_dicom", "thin")
        assert real_thin.depth == 40 and np.abs(real_thin.array.astype(int) - truth.array).max() <= 1
        # the 0.5 mm NRRD was resampled to the 1 mm thin spacing
        assert cache.volume("nrrd_case", "thin").spacing[2] == 1.0
        assert cache.info("nrrd_case").thin_shape[0] == 40
        # DICOM patients get pseudonyms; file cases are their own patient
        assert cache.info("study_dicom").patient != cache.info("study_zip").patient
        assert cache.info("mha_case").patient == "mha_case"


def test_patient_identifiers_never_reach_the_cache(tmp_path):
    write_study(tmp_path / "study", patient_id="SECRET-12345")
    output = tmp_path / "cache.h5"
    run_preprocess([tmp_path / "study"], output, SMALL)
    text = output.read_bytes()
    assert b"SECRET-12345" not in text and b"Doe^Jane" not in text and b"Doe" not in text


def test_failures_are_recorded_and_the_rest_continues(tmp_path):
    inputs = tmp_path / "in"
    write_nifti(phantom(1), inputs / "good.nii.gz")
    write_nifti(phantom(1).with_array(np.full((40, 48, 48), 40, np.int16)), inputs / "constant.nii.gz")
    write_nifti(phantom(1).with_array(phantom(1).array + 1024), inputs / "no_rescale.nii.gz")
    write_nifti(phantom(1, depth=12), inputs / "short.nii.gz")
    write_nifti(phantom(1, depth=10, spacing_z=5.0), inputs / "thick_only.nii.gz")
    (inputs / "truncated.nii.gz").write_bytes((inputs / "good.nii.gz").read_bytes()[:2000])
    output = tmp_path / "cache.h5"
    results = {r.case_id: r for r in run_preprocess([inputs], output, SMALL)}
    assert results["good"].status == "processed"
    assert (results["thick_only"].status, results["thick_only"].kind) == ("processed", "self-supervised")
    reasons = {case: r.reason for case, r in results.items() if r.status == "failed"}
    assert set(reasons) == {"constant", "no_rescale", "short", "truncated"}
    assert "constant" in reasons["constant"]
    assert "HU" in reasons["no_rescale"]
    assert "fewer than the minimum" in reasons["short"]
    assert "truncated.nii.gz" in reasons["truncated"]
    with Cache(output) as cache:
        assert cache.case_ids() == ["good", "thick_only"]
        assert {f.case_id for f in cache.failures()} == set(reasons)


def test_rerun_reuses_unchanged_cases_and_redoes_changed_ones(tmp_path):
    inputs = tmp_path / "in"
    write_nifti(phantom(1), inputs / "a.nii.gz")
    write_nifti(phantom(2), inputs / "b.nii.gz")
    output = tmp_path / "cache.h5"
    run_preprocess([inputs], output, SMALL)
    write_nifti(phantom(3), inputs / "b.nii.gz")
    write_nifti(phantom(4), inputs / "c.nii.gz")
    statuses = {r.case_id: r.status for r in run_preprocess([inputs], output, SMALL)}
    assert statuses == {"a": "reused", "b": "processed", "c": "processed"}
    with Cache(output) as cache:
        expected = simulate_pair(phantom(3), 5.0, 1.0).thin.array
        np.testing.assert_array_equal(cache.volume("b", "thin").array, expected)
    # other options are other content: nothing is reused
    statuses = {r.case_id: r.status for r in run_preprocess([inputs], output, PreprocessOptions(4.0, 1.0, 0,
                                                                                            "slab", 4))}
    assert set(statuses.values()) == {"processed"}


def test_parallel_workers_give_the_same_cache(tmp_path):
    inputs = tmp_path / "in"
    for seed in range(3):
        write_nifti(phantom(seed), inputs / f"case{seed}.nii.gz")
    run_preprocess([inputs], tmp_path / "serial.h5", SMALL, workers=1)
    run_preprocess([inputs], tmp_path / "parallel.h5", SMALL, workers=2)
    with Cache(tmp_path / "serial.h5") as serial, Cache(tmp_path / "parallel.h5") as parallel:
        assert serial.case_ids() == parallel.case_ids()
        for case_id in serial.case_ids():
            np.testing.assert_array_equal(serial.volume(case_id, "thick").array,
                                          parallel.volume(case_id, "thick").array)


def test_shards_merge_into_the_same_cache(tmp_path, cli):
    inputs = tmp_path / "in"
    for seed in range(4):
        write_nifti(phantom(seed), inputs / f"case{seed}.nii.gz")
    shards = []
    for index in range(2):
        shard = tmp_path / f"shard{index}.h5"
        result = cli("preprocess", inputs, "-o", shard, "--shard", f"{index}/2", "--min-slices", "4")
        assert result.exit_code == 0, result.output
        shards.append(shard)
    with Cache(shards[0]) as first, Cache(shards[1]) as second:
        assert not set(first.case_ids()) & set(second.case_ids())
        assert len(first.case_ids()) + len(second.case_ids()) == 4
    result = cli("preprocess", "--merge", *shards, "-o", tmp_path / "merged.h5")
    assert result.exit_code == 0, result.output
    with Cache(tmp_path / "merged.h5") as merged:
        assert merged.case_ids() == [f"case{k}" for k in range(4)]


def test_bad_arguments_are_one_line_errors(tmp_path, cli):
    result = cli("preprocess", tmp_path / "missing.nii.gz", "-o", tmp_path / "c.h5")
    assert result.exit_code == 2 and "no such file" in result.output
    result = cli("preprocess", tmp_path, "-o", tmp_path / "c.h5", "--shard", "3/2")
    assert result.exit_code == 2 and "--shard" in result.output
    result = cli("preprocess", tmp_path, "-o", tmp_path / "c.h5", "--thick-spacing", "1", "--thin-spacing", "2")
    assert result.exit_code == 2 and "Traceback" not in result.output


@pytest.mark.slow
def test_kill_during_preprocess_then_rerun_resumes(tmp_path):
    """kill -9 mid-run: the cache stays valid, finished cases are reused, nothing is duplicated."""
    inputs = tmp_path / "in"
    for seed in range(8):
        write_nifti(make_phantom(shape=(200, 96, 96), spacing=(2.0, 2.0, 0.5), seed=seed),
                    inputs / f"case{seed}.nii.gz")
    output = tmp_path / "cache.h5"
    run_preprocess([inputs / "case0.nii.gz"], output, SMALL)  # an earlier run's cache
    command = [sys.executable, "-m", "ctslice", "preprocess", str(inputs), "-o", str(output), "--min-slices", "4"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.time() + 120
    while len(list(parts_dir(output).glob("*.h5"))) < 3 and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = {p.stem for p in parts_dir(output).glob("*.h5")}
    assert len(finished) >= 3
    with Cache(output) as cache:  # the earlier cache is intact
        assert cache.case_ids() == ["case0"]
    results = {r.case_id: r.status for r in run_preprocess([inputs], output, SMALL)}
    assert all(results[case] == "reused" for case in finished | {"case0"})
    assert sorted(results) == [f"case{k}" for k in range(8)]
    with Cache(output) as cache, h5py.File(output) as file:
        assert cache.case_ids() == [f"case{k}" for k in range(8)]
        assert not any(name.startswith(".") for name in file["cases"])
    assert not parts_dir(output).exists()


def test_a_thick_only_scan_is_a_self_supervised_case_with_its_slice_profile(tmp_path):
    thick = phantom(1, depth=10, spacing_z=5.0)
    write_nifti(thick, tmp_path / "in" / "thick_only.nii.gz")
    write_nifti(phantom(2), tmp_path / "in" / "thin.nii.gz")
    output = tmp_path / "cache.h5"
    results = {r.case_id: r for r in run_preprocess([tmp_path / "in"], output, SMALL)}
    assert results["thick_only"].kind == "self-supervised" and results["thin"].kind == "simulated"
    with Cache(output) as cache:
        info = cache.info("thick_only")
        assert (info.pair_kind, info.has_truth, info.thin_shape, info.thick_shape) == (
            "self-supervised", False, None, (10, 48, 48))
        # no SliceThickness in a NIfTI: the thickness is the spacing (no overlap, no gap)
        assert (info.profile.thickness, info.profile.spacing, info.profile.overlap, info.profile.source) == (
            5.0, 5.0, 0.0, "spacing")
        assert (info.thin_spacing, info.ratio) == (1.0, 5.0)  # trains for 5 mm -> 1 mm
        np.testing.assert_array_equal(cache.volume("thick_only", "thick").array, thick.array)
        with pytest.raises(InputError, match="self-supervised"):
            cache.volume("thick_only", "thin")
        simulated = cache.info("thin")  # a simulated pair's profile is its slab averaging
        assert (simulated.has_truth, simulated.profile.thickness, simulated.profile.source) == (True, 5.0, "simulated")
    with h5py.File(output) as file:  # the profile is readable with plain h5py
        attrs = file["cases/thick_only"].attrs
        assert (attrs["slice_thickness"], attrs["slice_spacing"], attrs["slice_overlap"]) == (5.0, 5.0, 0.0)
        assert "thin" not in file["cases/thick_only"]
    # --no-self-supervised: excluded with today's reason, the cached entry dropped rather than reused
    excluded = PreprocessOptions(thick_spacing=5.0, thin_spacing=1.0, min_slices=4, self_supervised=False)
    results = {r.case_id: r for r in run_preprocess([tmp_path / "in"], output, excluded)}
    assert results["thin"].status == "reused"
    assert results["thick_only"].status == "failed" and "no thin ground truth" in results["thick_only"].reason
    with Cache(output) as cache:
        assert cache.case_ids() == ["thin"]


def test_the_summary_counts_self_supervised_cases_and_the_flag_excludes_them(tmp_path, cli):
    write_nifti(phantom(1, depth=10, spacing_z=5.0), tmp_path / "in" / "thick_only.nii.gz")
    write_nifti(phantom(2), tmp_path / "in" / "thin.nii.gz")
    result = cli("preprocess", tmp_path / "in", "-o", tmp_path / "cache.h5", "--min-slices", "4")
    assert result.exit_code == 0, result.output
    header, row = _summary(result.stdout)
    assert dict(zip(header, row, strict=True)) == {"processed": "2", "reused": "0", "of them self-supervised": "1",
                                                   "excluded": "0", "kept from before": "0"}
    result = cli("preprocess", tmp_path / "in", "-o", tmp_path / "cache.h5", "--min-slices", "4",
                 "--no-self-supervised")
    assert result.exit_code == 0, result.output
    assert "no thin ground truth" in result.stdout
    assert _summary(result.stdout)[1] == ["0", "1", "0", "1", "0"]


def _summary(stdout: str) -> tuple[list[str], list[str]]:
    """The header and row of the "Preprocessing summary" table."""
    lines = [line.strip() for line in stdout[stdout.index("Preprocessing summary"):].splitlines()]
    header = next(line for line in lines if line.startswith("┃"))
    row = next(line for line in lines if line.startswith("│"))
    return [cell.strip() for cell in header.strip("┃").split("┃")], [cell.strip() for cell in row.strip("│").split("│")]
