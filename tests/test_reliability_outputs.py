"""Reliability, part 4: outputs, writes, signals, names and readers (issue 16, items 2 and 4).

Every command that writes checks its output path before it works (``ctslice.io.paths``): not an input,
a folder it can write in, room on the disk. A write that comes out short is caught before the rename
(a full disk does not make the NIfTI writer raise), a signal during ``infer`` removes the staging files,
a name that is not UTF-8 is refused before SimpleITK sees it, and a header that declares more voxels
than its file holds is refused before ITK allocates them. Each ends in one line, the right exit code,
the input untouched, no staging leftovers and any previous output unchanged.
"""

from __future__ import annotations

import gzip
import os
import resource
import signal
import subprocess
import sys
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch

from ctslice.checkpoint import read_checkpoint, write_checkpoint
from ctslice.data.cache import Cache
from ctslice.data.phantom import make_phantom
from ctslice.errors import CtsliceError, InputError
from ctslice.inference.loading import default_model_path
from ctslice.io import read_volume, write_volume
from ctslice.io.paths import check_output
from tests.dicom_utils import write_dicom_series

WIDE = {**os.environ, "COLUMNS": "1000"}  # Rich would fold long paths at the console width
TINY_CONFIG = Path(__file__).resolve().parents[1] / "ctslice" / "configs" / "tiny_cpu.yaml"


def scan(path: Path, depth: int = 8) -> Path:
    """A small thick phantom scan (5 mm slices) written to ``path``."""
    return write_volume(make_phantom(shape=(depth, 32, 32), spacing=(12.0, 12.0, 5.0), seed=1), path)


def error_line(output: str) -> str:
    """The one line an expected failure prints; no traceback."""
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (hidden staging files included)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(*args, **kwargs) -> subprocess.CompletedProcess:
    """``python -m ctslice ARGS`` in a process of its own (for argv bytes and signals)."""
    return subprocess.run([sys.executable, "-m", "ctslice", *map(os.fsdecode, args)], capture_output=True, text=True,
                          errors="backslashreplace", env=WIDE, timeout=300, **kwargs)


# --- output paths ------------------------------------------------------------------------------------------------

def test_an_output_that_is_the_input_is_refused_and_the_input_untouched(tmp_path, cli):
    thick = scan(tmp_path / "scan.nii.gz")
    before = tree(tmp_path)
    result = cli("infer", thick, "-o", thick, "--method", "cubic")
    assert result.exit_code == 2
    assert "would overwrite the input" in error_line(result.output)
    assert tree(tmp_path) == before


def test_an_output_inside_the_input_folder_is_refused(tmp_path, cli):
    series = tmp_path / "series"
    write_dicom_series(make_phantom(shape=(8, 32, 32), spacing=(12.0, 12.0, 5.0), seed=1), series)
    before = tree(tmp_path)
    result = cli("infer", series, "-o", series / "thin.nii.gz", "--method", "cubic")
    assert result.exit_code == 2
    assert "would overwrite the input" in error_line(result.output)
    assert tree(tmp_path) == before


def test_check_output_accepts_a_new_file_in_a_new_folder_and_refuses_the_reverse_kinds(tmp_path):
    assert check_output(tmp_path / "new" / "deeper" / "out.nii.gz") == tmp_path / "new" / "deeper" / "out.nii.gz"
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(InputError, match="is a folder; give the output a file name"):
        check_output(tmp_path / "folder")
    with pytest.raises(InputError, match="is a file, not a folder; choose a folder"):
        check_output(tmp_path / "file", folder=True)
    with pytest.raises(InputError, match="would overwrite the input"):  # a .mhd writes its .zraw beside it
        check_output(tmp_path / "scan.mhd", inputs=[tmp_path / "scan.zraw"])
    assert not (tmp_path / "new").exists()


@contextmanager
def tmpfs(folder, options: str, why_skipped: str):
    """A tmpfs mounted on ``folder`` with ``options`` for the block (skips the test where it cannot be mounted)."""
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip(why_skipped)
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder this user cannot write in: chmod 555, or (as root, whom modes do not stop) a read-only tmpfs."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    with tmpfs(folder, "ro,size=1m", "running as root and cannot mount a read-only tmpfs"):
        yield folder


def _commands(dataset, inputs: Path, checkpoint: Path, where: Path) -> dict[str, list]:
    """For each writing command, arguments that write into ``where``; everything else is valid."""
    cache, splits = dataset
    return {
        "infer": ["infer", scan(inputs / "scan.nii.gz"), "-o", where / "thin.nii.gz", "--method", "cubic"],
        "validate": ["validate", "--checkpoint", checkpoint, "--cache", cache, "--splits", splits, "--split", "val",
                     "--out", where / "report", "--device", "cpu"],
        "train": ["train", "--config", TINY_CONFIG, "--set", f"data.cache={cache}", "--set", f"data.splits={splits}",
                  "--out", where / "run", "--device", "cpu"],
        "split": ["split", cache, "-o", where / "splits.json"],
        "demo": ["demo", "--out", where / "demo"],
        "preprocess": ["preprocess", inputs / "scan.nii.gz", "-o", where / "cache.h5"],
    }


COMMANDS = ["infer", "validate", "train", "split", "demo", "preprocess"]


@pytest.mark.parametrize("command", COMMANDS)
def test_an_output_under_a_file_is_one_line_and_writes_nothing(command, dataset, tmp_path, cli):
    (tmp_path / "inputs").mkdir()
    not_a_folder = tmp_path / "notes.txt"
    not_a_folder.write_text("a file, not a folder", encoding="utf-8")
    args = _commands(dataset, tmp_path / "inputs", default_model_path(), not_a_folder)[command]
    before = tree(tmp_path)
    result = cli(*args)
    assert result.exit_code == 2
    assert f"{not_a_folder} is a file, not a folder" in error_line(result.output)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("command", COMMANDS)
def test_an_output_in_a_read_only_folder_is_one_line_and_writes_nothing(command, dataset, read_only_folder,
                                                                        tmp_path, cli):
    (tmp_path / "inputs").mkdir()
    args = _commands(dataset, tmp_path / "inputs", default_model_path(), read_only_folder)[command]
    before = tree(tmp_path)
    result = cli(*args)
    assert result.exit_code == 2
    assert f"the folder {read_only_folder} is read-only" in error_line(result.output)
    assert tree(tmp_path) == before


def test_an_output_larger_than_the_free_space_is_refused_before_the_work(tmp_path, monkeypatch, cli):
    thick = scan(tmp_path / "scan.nii.gz")
    free = {"total": 10**9, "used": 10**9 - 1000, "free": 1000}
    monkeypatch.setattr("ctslice.io.paths.shutil.disk_usage", lambda path: type("Usage", (), free))
    result = cli("infer", thick, "-o", tmp_path / "out" / "thin.nii", "--method", "cubic")
    assert result.exit_code == 2
    assert "not enough free space (0.0 MB free, the output needs about 0.1 MB)" in error_line(result.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.nii.gz"]


# --- writes that come out short -------------------------------------------------------------------------------------

def short_writes(monkeypatch) -> None:
    """Make SimpleITK's writer behave as on a full disk: half the bytes, an error on stderr, no exception."""
    real = sitk.WriteImage

    def full_disk(image, name, *args, **kwargs):
        real(image, name, *args, **kwargs)
        size = os.path.getsize(name)
        os.truncate(name, size // 2)
        os.write(2, f"** ERROR: NWAD: wrote only {size // 2} of {size} bytes to file\n".encode())

    monkeypatch.setattr(sitk, "WriteImage", full_disk)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_short_write_keeps_the_previous_output_and_is_one_line(suffix, tmp_path, monkeypatch, cli):
    thick = scan(tmp_path / "scan.nii.gz")
    output = tmp_path / "out" / f"thin{suffix}"
    assert cli("infer", thick, "-o", output, "--method", "linear").exit_code == 0
    before = tree(tmp_path)
    short_writes(monkeypatch)
    result = cli("infer", thick, "-o", output, "--method", "cubic")
    assert result.exit_code == 1
    line = error_line(result.output)
    assert line.startswith(f"error: could not write {output}: ") and line.endswith("nothing was written")
    assert ("NWAD: wrote only" in line) if suffix == ".nii" else ("NWAD" in line or "incomplete" in line)
    assert tree(tmp_path) == before  # previous output unchanged, no staging folder left
    assert "** ERROR" not in result.output  # the C library's own line is the reason, not extra output


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MB tmpfs filled to its last bytes (needs root; skipped elsewhere: the monkeypatched test covers CI)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    with tmpfs(disk, "size=1m", "needs root to mount a small tmpfs"):
        yield disk


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha", ".mhd"])
def test_a_real_full_disk_fails_the_write_and_keeps_the_previous_output(suffix, full_disk):
    volume = make_phantom(shape=(40, 64, 64), spacing=(2.0, 2.0, 1.0), seed=0)
    previous = write_volume(volume.slices(0, 2), full_disk / f"thin{suffix}")
    before = tree(full_disk)
    with open(full_disk / "filler", "wb") as filler:  # leave about 100 kB of the 1 MB
        filler.write(bytes(max(0, os.statvfs(full_disk).f_bavail * os.statvfs(full_disk).f_frsize - 100_000)))
    before["filler"] = (full_disk / "filler").read_bytes()
    with pytest.raises(CtsliceError, match=rf"could not write {previous}: .*; nothing was written"):
        write_volume(volume, previous)
    assert tree(full_disk) == before


# --- signals -------------------------------------------------------------------------------------------------------

SLOW_WRITE = """
import sys, time
from pathlib import Path
import SimpleITK as sitk
real = sitk.WriteImage
def slow(image, name, *args, **kwargs):
    real(image, name, *args, **kwargs)
    Path(sys.argv[1]).write_text(name, encoding="utf-8")  # the staging file exists now
    time.sleep(120)
sitk.WriteImage = slow
from ctslice.cli import app
app(sys.argv[2:], prog_name="ctslice")
"""


@pytest.mark.parametrize("signum, code, said", [(signal.SIGTERM, 143, "stopped by SIGTERM"),
                                                (signal.SIGINT, 130, "interrupted")], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_while_infer_writes_removes_the_staging_files(signum, code, said, tmp_path):
    thick = scan(tmp_path / "scan.nii.gz")
    output, marker = tmp_path / "out" / "thin.nii.gz", tmp_path / "staged"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("an unrelated file", encoding="utf-8")
    before = tree(tmp_path)
    process = subprocess.Popen([sys.executable, "-c", SLOW_WRITE, marker, "infer", thick, "-o", output, "--method",
                                "cubic"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=WIDE)
    deadline = time.monotonic() + 240
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    staged = Path(marker.read_text(encoding="utf-8"))
    assert staged.exists() and staged.parent.name.endswith(".partial")
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code
    assert error_line(stderr) == f"error: {said}; unfinished output files were removed"
    marker.unlink()
    assert tree(tmp_path) == before
    assert not staged.parent.exists()


# --- names ---------------------------------------------------------------------------------------------------------

def test_an_input_name_that_is_not_utf8_is_one_line_before_simpleitk(tmp_path):
    good = scan(tmp_path / "good.nii.gz")
    bad = os.fsdecode(bytes(tmp_path) + b"/scan\xff.nii.gz")
    os.link(good, bad)
    before = tree(tmp_path)
    result = run_cli("infer", bad, "-o", tmp_path / "out.nii.gz", "--method", "cubic")
    assert result.returncode == 2  # was 134: SimpleITK aborted the process
    assert error_line(result.stderr) == (f"error: {tmp_path}/scan\\xff.nii.gz: the name is not valid UTF-8 (bytes "
                                         "shown as \\x..); rename it with UTF-8 characters")
    assert tree(tmp_path) == before


def test_an_output_name_that_is_not_utf8_is_one_line(tmp_path):
    good = scan(tmp_path / "good.nii.gz")
    before = tree(tmp_path)
    result = run_cli("infer", good, "-o", os.fsdecode(bytes(tmp_path) + b"/thin\xff.nii.gz"), "--method", "cubic")
    assert result.returncode == 2
    assert "thin\\xff.nii.gz: the name is not valid UTF-8" in error_line(result.stderr)
    assert tree(tmp_path) == before


def test_preprocess_records_a_non_utf8_name_as_a_failure_and_keeps_the_good_cases(tmp_path, cli):
    folder = tmp_path / "scans"
    scan(folder / "good.nii.gz", depth=40)
    os.link(folder / "good.nii.gz", os.fsdecode(bytes(folder) + b"/bad\xff.nii.gz"))
    result = cli("preprocess", folder, "-o", tmp_path / "cache.h5", "--thick-spacing", "20", "--thin-spacing", "5",
                 "--min-slices", "2")
    assert result.exit_code == 0, result.output
    with Cache(tmp_path / "cache.h5") as cache:
        assert cache.case_ids() == ["good"]
        (failure,) = cache.failures()
    assert failure.source == f"{folder}/bad\\xff.nii.gz" and "not valid UTF-8" in failure.reason
    assert not (tmp_path / "cache.h5.parts").exists()


# --- readers -------------------------------------------------------------------------------------------------------

NRRD_HEADER = "NRRD0004\ntype: short\ndimension: 3\nsizes: 2048 1024 1024\nspacings: 1 1 1\nendian: little\n"
MHA_HEADER = "ObjectType = Image\nNDims = 3\nDimSize = 2048 1024 1024\nElementType = MET_SHORT\n"


def _header_bomb(folder: Path, kind: str) -> Path:
    """About 1.2 kB of file whose header declares 4 GiB of voxels."""
    noise = os.urandom(1000)
    if kind == "raw nrrd":
        return _bytes(folder / "bomb.nrrd", (NRRD_HEADER + "encoding: raw\n\n").encode() + noise)
    if kind == "gzip nrrd":
        return _bytes(folder / "bomb.nrrd", (NRRD_HEADER + "encoding: gzip\n\n").encode() + noise)
    if kind == "detached nhdr":
        _bytes(folder / "bomb.raw", noise)
        return _bytes(folder / "bomb.nhdr", (NRRD_HEADER + "encoding: raw\ndata file: bomb.raw\n\n").encode())
    if kind == "raw mha":
        return _bytes(folder / "bomb.mha", (MHA_HEADER + "ElementDataFile = LOCAL\n").encode() + noise)
    if kind == "zlib mha":
        return _bytes(folder / "bomb.mha", (MHA_HEADER + "CompressedData = True\nCompressedDataSize = 1000\n"
                                            "ElementDataFile = LOCAL\n").encode() + noise)
    _bytes(folder / "bomb.raw", noise)
    return _bytes(folder / "bomb.mhd", (MHA_HEADER + "ElementDataFile = bomb.raw\n").encode())


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("kind", ["raw nrrd", "gzip nrrd", "detached nhdr", "raw mha", "zlib mha", "detached mhd"])
def test_a_header_declaring_more_voxels_than_the_file_holds_is_refused_before_reading(kind, tmp_path, monkeypatch,
                                                                                     cli):
    bomb = _header_bomb(tmp_path, kind)

    def never(self):
        raise AssertionError("ITK was asked to allocate and read the declared voxels")

    monkeypatch.setattr(sitk.ImageFileReader, "Execute", never)
    before = tree(tmp_path)
    result = cli("infer", bomb, "-o", tmp_path / "out.nii.gz", "--method", "cubic")
    assert result.exit_code == 2
    assert f"error: {bomb} declares 4294967296 bytes of voxels (2048 x 1024 x 1024 16-bit signed integer)" in (
        error_line(result.output))
    assert tree(tmp_path) == before


def test_itk_chatter_stays_out_of_the_output_and_its_first_error_is_the_reason(tmp_path):
    # MetaImage prints "Uncompress failed" for damaged zlib data and returns an image anyway (was: exit 0)
    header = MHA_HEADER.replace("2048 1024 1024", "4 4 4") + "CompressedData = True\nCompressedDataSize = 100\n"
    damaged = _bytes(tmp_path / "damaged.mha", (header + "ElementDataFile = LOCAL\n").encode() + bytes(range(100)))
    result = run_cli("infer", damaged, "-o", tmp_path / "out.nii.gz", "--method", "cubic")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [error_line(result.stderr)]  # nothing but the one line
    assert error_line(result.stderr) == (f"error: {damaged} cannot be read: it is truncated, corrupt or not a .mha "
                                         "file (Uncompress failed)")
    assert not (tmp_path / "out.nii.gz").exists()


def test_a_missing_data_file_is_named(tmp_path, cli):
    header = _bytes(tmp_path / "scan.mhd", (MHA_HEADER + "ElementDataFile = scan.raw\n").encode())
    result = cli("infer", header, "-o", tmp_path / "out.nii.gz", "--method", "cubic")
    assert result.exit_code == 2
    assert error_line(result.output) == (f"error: {header}: its data file scan.raw is missing (or not a file); copy "
                                         "it beside the header")


@pytest.mark.parametrize("failure", [MemoryError(), RuntimeError("ITK ERROR: Failed to allocate memory for image.")],
                         ids=["numpy", "itk"])
def test_a_valid_scan_too_large_for_memory_says_so(failure, tmp_path, monkeypatch):
    thick = scan(tmp_path / "scan.nii.gz")

    def out_of_memory(self):
        raise failure

    monkeypatch.setattr(sitk.ImageFileReader, "Execute", out_of_memory)
    with pytest.raises(CtsliceError, match=r"scan.nii.gz is too large for the memory of this machine \(0.0 GB of "
                                           r"voxels, 32 x 32 x 8 16-bit signed integer\)") as raised:
        read_volume(thick)
    assert not isinstance(raised.value, InputError)  # the scan is fine: exit 1, not "truncated or corrupt"


@pytest.mark.parametrize("members, named", [
    ({"series/a": b"x", "series/a/b": b"y"}, "series/a/b"),
    ({"series/" + "n" * 300: b"x"}, "series/" + "n" * 300),
    ({"series/a": b"x", "series/a ": b"y", "series//a": b"z"}, "series//a"),
], ids=["a file and a folder of one name", "an over-long name", "one name twice"])
def test_a_zip_whose_member_names_clash_is_exit_2_naming_the_member(members, named, tmp_path, cli):
    archive = tmp_path / "study.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    result = cli("infer", archive, "-o", tmp_path / "out.nii.gz", "--method", "cubic")
    assert result.exit_code == 2
    assert f"member {named!r}" in error_line(result.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.zip"]


def _huge_gzip_nifti(path: Path, size=(1024, 1024, 512)) -> Path:
    """A valid gzip NIfTI of 1 GiB of zero voxels (about 5 MB on disk), streamed without holding it."""
    sitk.WriteImage(sitk.Image([4, 4, 4], sitk.sitkInt16), str(path.with_name("tiny.nii")))
    header = bytearray(path.with_name("tiny.nii").read_bytes()[:352])
    header[42:48] = b"".join(n.to_bytes(2, "little") for n in size)  # dim[1..3]
    with gzip.open(path, "wb", compresslevel=1) as stream:
        stream.write(bytes(header))
        zeros = bytes(1 << 24)
        for _ in range(2 * size[0] * size[1] * size[2] // len(zeros)):
            stream.write(zeros)
    return path


def test_a_valid_gzip_nifti_larger_than_memory_is_too_large_not_corrupt(tmp_path):
    huge = _huge_gzip_nifti(tmp_path / "huge.nii.gz")
    limit = 1500 * 1024**2  # address space: the imports fit, the two 1 GiB buffers ITK needs do not

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    result = subprocess.run([sys.executable, "-c", "import sys\nfrom ctslice.errors import CtsliceError\n"
                             "from ctslice.io import read_volume\ntry:\n    read_volume(sys.argv[1])\n"
                             "except CtsliceError as error:\n    print(type(error).__name__, error)", huge],
                            capture_output=True, text=True, preexec_fn=cap, timeout=300)
    assert result.stdout.strip() == (f"CtsliceError {huge} is too large for the memory of this machine (1.0 GB of "
                                     "voxels, 1024 x 1024 x 512 16-bit signed integer); read it on a machine with "
                                     "more memory"), result.stdout + result.stderr


# --- checkpoints ---------------------------------------------------------------------------------------------------

def test_a_checkpoint_whose_weights_do_not_fit_its_config_is_one_line_naming_the_parameter(tmp_path, cli):
    state = read_checkpoint(default_model_path())
    name = next(k for k, v in state["model"].items() if v.ndim == 5)
    shape = tuple(state["model"][name].shape)
    state["model"][name] = torch.zeros(shape[0] + 1, *shape[1:])
    checkpoint = write_checkpoint(state, tmp_path / "changed.pt")
    thick = scan(tmp_path / "scan.nii.gz")
    result = cli("infer", thick, "-o", tmp_path / "out.nii.gz", "--checkpoint", checkpoint, "--device", "cpu")
    assert result.exit_code == 2
    wrong, right = "x".join(map(str, (shape[0] + 1, *shape[1:]))), "x".join(map(str, shape))
    assert error_line(result.output) == (f"error: {checkpoint}: weights do not fit the model in its config: parameter "
                                         f"{name} is {wrong} in the checkpoint, {right} in the model")
    assert not (tmp_path / "out.nii.gz").exists()
