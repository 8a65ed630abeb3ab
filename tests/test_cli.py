"""The command-line surface: every command of the contract exists, help is fast, errors are one line."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

COMMANDS = ["preprocess", "split", "train", "validate", "infer", "inspect-memory", "demo"]


def test_top_level_help_lists_every_command(cli):
    result = cli("--help")
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.stdout


@pytest.mark.parametrize("name", COMMANDS)
def test_command_help(cli, name):
    result = cli(name, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage" in result.stdout


def test_help_does_not_import_heavy_libraries():
    """``ctslice --help`` must stay fast: no torch, monai, SimpleITK or h5py at import time."""
    code = ("import sys, time; t=time.time(); from ctslice.cli import app; "
            "heavy=[m for m in ('torch','monai','SimpleITK','h5py','numpy') if m in sys.modules]; "
            "print(heavy, time.time()-t)")
    started = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("[]"), out
    assert time.time() - started < 10


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.startswith("ctslice ")


def test_library_lines_reach_stderr_and_quiet_keeps_only_warnings(cli, tmp_path):
    """The library logs (it never prints): the command layer shows its info lines and notes on stderr,
    ``--quiet`` (at the root or after the command) leaves only warnings, and stdout keeps the results."""
    from ctslice.data.phantom import make_phantom
    from ctslice.io import write_volume

    inputs = tmp_path / "in"
    inputs.mkdir()
    for seed in range(2):
        write_volume(make_phantom((40, 24, 24), (4.0, 4.0, 1.0), seed=seed), inputs / f"case{seed}.nii.gz")
    (inputs / "Thumbs.db").write_bytes(b"\0" * 16)  # OS litter: skipped with a note, unlike the scans
    loud = cli("preprocess", inputs, "-o", tmp_path / "loud.h5", "--min-slices", "4")
    assert loud.exit_code == 0, loud.output
    assert "Preprocessing 2 case(s)" in loud.stderr and "Preprocessing summary" in loud.stdout, loud.stderr
    assert "note: skipped 1 file(s) that are not images" in " ".join(loud.stderr.split()), loud.stderr  # not the scans
    for quiet in (["-q", "preprocess"], ["preprocess", "--quiet"]):
        result = cli(*quiet, inputs, "-o", tmp_path / f"{quiet[0]}.h5", "--min-slices", "4")
        assert result.exit_code == 0, result.output
        assert result.stderr == "" and "Preprocessing summary" in result.stdout
    both = cli("-q", "-v", "configs")
    assert both.exit_code == 2 and "--quiet and --verbose" in both.stderr and both.stdout == ""
