"""Reliability, part 1: a corpus of bad inputs, each costing only itself.

Every bad input a hospital export or a careless copy produces is generated here (no committed
binaries). Given all of them plus two good cases in one ``ctslice preprocess`` run, each bad case is
recorded as failed with the reason that names its defect and the good cases reach the cache. Given
to ``ctslice infer`` one by one, each exits 2 with a single error line and writes nothing: not the
output, not a file elsewhere (the zip with a ``../`` member is the test of "elsewhere").
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import SimpleITK as sitk

from ctslice.data.cache import Cache
from ctslice.data.pairs import simulate_pair
from ctslice.data.phantom import make_phantom
from ctslice.io import Volume, read_volume, write_volume
from ctslice.io.reader import AIR_HU
from tests.dicom_utils import make_uid, write_dicom_series, write_malicious_zip

SHAPE, SPACING = (40, 32, 32), (12.0, 12.0, 1.0)  # 40 thin slices at 1 mm: 8 thick slices at 5 mm


def phantom(seed: int = 0, **kwargs) -> Volume:
    return make_phantom(shape=SHAPE, spacing=SPACING, seed=seed, **kwargs)


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _corrupt_gzip(path: Path, good: Path) -> Path:
    """64 zero bytes in the middle of a good file: it still inflates, only the gzip CRC tells."""
    damaged = bytearray(good.read_bytes())
    damaged[len(damaged) // 2: len(damaged) // 2 + 64] = bytes(64)
    return _write_bytes(path, bytes(damaged))


def _float_volume(path: Path, value: float) -> Path:
    image = sitk.GetImageFromArray(np.full(SHAPE, value, np.float32))
    image.SetSpacing(SPACING)
    sitk.WriteImage(image, str(path))
    return path


def _image_2d(path: Path) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(phantom(0).array[20]), str(path))
    return path


def _dicom(folder: Path, **defects) -> Path:
    write_dicom_series(phantom(2), folder, **defects)
    return folder


def _two_series_one_spacing(folder: Path) -> Path:
    """Two CT reconstructions of one study at one spacing, their files mixed in one folder."""
    study = make_uid(folder, "study")
    for seed, kernel in ((3, "soft"), (4, "bone")):
        for file in write_dicom_series(phantom(seed), folder / kernel, study_uid=study,
                                       series_uid=make_uid(folder, kernel)):
            file.rename(folder / f"{kernel}_{file.name}")
        (folder / kernel).rmdir()
    return folder


def _different_scans(folder: Path) -> Path:
    """A study whose thick series and thin series lie 500 mm apart along z: no common extent."""
    study = make_uid(folder, "study")
    thick = simulate_pair(phantom(5), 5.0, 1.0).thick
    thin = phantom(6)
    thin = thin.with_array(thin.array, origin=(thin.origin[0], thin.origin[1], thin.origin[2] + 500.0))
    write_dicom_series(thick, folder / "1", study_uid=study, series_uid=make_uid(folder, "thick"))
    write_dicom_series(thin, folder / "2", study_uid=study, series_uid=make_uid(folder, "thin"))
    return folder


# case name -> (writer(folder, a good NIfTI file) -> the input, reason in the preprocess record, reason from
# infer where it differs: infer reads one series, preprocess pairs the series of a study)
CORPUS = {
    "truncated": (lambda f, b: _write_bytes(f / "truncated.nii.gz", b.read_bytes()[:2000]),
                  "is truncated (its compressed data ends early)", None),
    "corrupt_gzip": (lambda f, b: _corrupt_gzip(f / "corrupt_gzip.nii.gz", b),
                     "is a corrupt gzip file (CRC check failed", None),
    "corrupt_nifti": (lambda f, b: _write_bytes(f / "corrupt_nifti.nii", np.random.default_rng(0).bytes(4096)),
                      "cannot be read: it is truncated, corrupt or not a .nii file", None),
    "empty": (lambda f, b: _write_bytes(f / "empty.nii.gz", b""), "is empty (0 bytes)", None),
    "notes.txt": (lambda f, b: _write_bytes(f / "notes.txt", b"not an image\n"), "is not a supported input", None),
    "image_2d": (lambda f, b: _image_2d(f / "image_2d.nii.gz"),
                 "holds a single 2D slice, not a 3D volume", None),
    "all_nan": (lambda f, b: _float_volume(f / "all_nan.nii.gz", np.nan), "every voxel is NaN or infinite", None),
    "constant": (lambda f, b: _float_volume(f / "constant.nii.gz", 40.0), "is constant (40 HU everywhere)", None),
    "missing_slice": (lambda f, b: _dicom(f / "missing_slice", drop_slices=(17, 18)),
                      "is missing 2 slice(s): a 3.00 mm gap", None),
    "duplicate_slice": (lambda f, b: _dicom(f / "duplicate_slice", duplicate_slices=(9,)),
                        "has a duplicate slice", None),
    "mixed_series": (lambda f, b: _two_series_one_spacing(f / "mixed_series"),
                     "2 CT series with the same slice spacing (1.00 mm): cannot tell the thick series from the thin",
                     "holds 2 CT series (1) CT, 40 slices at 1.00 mm; 2) CT, 40 slices at 1.00 mm)"),
    "mr": (lambda f, b: _dicom(f / "mr", modality="MR"), "is an MR series, not CT", None),
    "different_scans": (lambda f, b: _different_scans(f / "different_scans"),
                        "the thick and thin series overlap over 0 thick slices along z (need 4): are they from "
                        "the same scan?", "holds 2 CT series (1) CT, 8 slices at 5.00 mm; 2) CT, 40 slices at "
                        "1.00 mm); pass the folder of one series"),
    "traversal": (lambda f, b: write_malicious_zip(f / "traversal.zip", "series/../../evil.txt"),
                  "is unsafe: member 'series/../../evil.txt' would be written outside the extraction folder", None),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """The bad inputs and two good cases (a NIfTI and a DICOM series), by case name."""
    folder = tmp_path_factory.mktemp("corpus")
    good = write_volume(phantom(1), folder / "good_nifti.nii.gz")
    return {**{name: writer(folder, good) for name, (writer, _, _) in CORPUS.items()},
            "good_nifti": good, "good_dicom": _dicom(folder / "good_dicom")}


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """Temporary files (zip extraction) go to ``tmp_path/tmp``, so that any file written beside them shows."""
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    return tmp_path


def tree(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``roots`` with its size and modification time: a snapshot to compare."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for root in roots for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_preprocess_records_each_bad_case_with_its_reason_and_caches_the_good_ones(corpus, private_tmp, cli):
    before = tree(corpus["good_nifti"].parent, private_tmp)
    output = private_tmp / "out" / "cache.h5"
    result = cli("preprocess", *corpus.values(), "-o", output, "--min-slices", "4")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    with Cache(output) as cache:
        reasons = {f.case_id: f.reason for f in cache.failures()}
        assert cache.case_ids() == ["good_dicom", "good_nifti"]
    assert set(reasons) == set(CORPUS)
    for name, (_, expected, _) in CORPUS.items():
        assert expected in reasons[name], (name, reasons[name])
        assert "\n" not in reasons[name]
    # nothing but the cache was written: no part files left, nothing extracted beside the temporary folder
    assert tree(corpus["good_nifti"].parent, private_tmp) == {**before, **tree(output.parent)}
    assert [p.name for p in output.parent.iterdir()] == ["cache.h5"]
    with h5py.File(output) as file:
        assert sorted(file["cases"]) == ["good_dicom", "good_nifti"]


@pytest.mark.parametrize("name", list(CORPUS))
def test_infer_rejects_each_bad_input_in_one_line_and_writes_nothing(name, corpus, private_tmp, cli):
    _, preprocess_reason, infer_reason = CORPUS[name]
    before = tree(corpus[name].parent, private_tmp)
    output = private_tmp / "out" / "thin.nii.gz"
    result = cli("infer", corpus[name], "-o", output, "--method", "cubic")
    assert result.exit_code == 2, result.output
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert (infer_reason or preprocess_reason) in lines[0]
    assert str(corpus[name]) in lines[0]  # the message names the file or folder
    assert not output.exists() and not output.parent.exists()
    assert tree(corpus[name].parent, private_tmp) == before


def test_a_bad_input_in_a_real_process_is_one_line_on_stderr(corpus, tmp_path):
    """The same contract outside the test runner: exit code 2, one line on stderr, no traceback."""
    output = tmp_path / "thin.nii.gz"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "ctslice", "infer", str(corpus["traversal"]), "-o", str(output),
                           "--method", "cubic"], capture_output=True, encoding="utf-8", errors="replace", env=env,
                          timeout=120)
    assert done.returncode == 2
    assert done.stdout == "" and len(done.stderr.splitlines()) == 1, done.stderr
    assert "is unsafe" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd"])
def test_nan_outside_the_field_of_view_reads_as_air_where_it_was(suffix, tmp_path):
    """Resampling tools mark voxels without a measurement NaN; ITK's NIfTI reader would make them 0 HU (water)."""
    truth = phantom(0).array.astype(np.float32)
    values = truth.copy()
    values[:, :5, :] = np.nan  # an anterior band outside the field of view
    values[3, 20, 7] = np.inf
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(SPACING)
    sitk.WriteImage(image, str(tmp_path / f"scan{suffix}"))
    read = read_volume(tmp_path / f"scan{suffix}").array
    missing = ~np.isfinite(values)
    assert np.all(read[missing] == AIR_HU)
    np.testing.assert_array_equal(read[~missing], truth[~missing])


@pytest.fixture
def bracketed(tmp_path) -> Path:
    """A bad file under ``CT [/bone]``: Rich reads ``[/bone]`` as a closing tag (exports name folders "CT [bone]")."""
    path = tmp_path / "CT [/bone]" / "scan.nii.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    return path


def test_a_bracketed_path_reaches_the_failure_record_and_the_summary_verbatim(bracketed, tmp_path, cli):
    result = cli("preprocess", bracketed, "-o", tmp_path / "cache.h5")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output  # its only case is excluded
    with Cache(tmp_path / "cache.h5") as cache:
        [failure] = cache.failures()
    assert failure.reason == f"{bracketed} is empty (0 bytes); copy or export it again"


def test_an_error_line_shows_a_bracketed_path_verbatim(bracketed, tmp_path, cli):
    result = cli("infer", bracketed, "-o", tmp_path / "thin.nii.gz", "--method", "cubic")
    assert result.exit_code == 2
    assert result.output == f"error: {bracketed} is empty (0 bytes); copy or export it again\n"
