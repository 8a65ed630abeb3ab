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
