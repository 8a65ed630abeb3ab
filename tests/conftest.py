"""Shared fixtures: where the real CT volumes are, and a CLI runner."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_CT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ct"


@pytest.fixture(scope="session")
def shared_ct() -> Path:
    """The folder of real CT volumes beside the repository; tests that need it skip without it."""
    if not (SHARED_CT / "MANIFEST.md").exists():
        pytest.skip(f"real CT volumes not found at {SHARED_CT}")
    return SHARED_CT


@pytest.fixture
def cli():
    """Run ``ctslice ARGS...`` in-process; returns the click Result (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from ctslice.cli import app

    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    return run
