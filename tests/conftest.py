"""Shared fixtures: where the real CT volumes are, and a CLI runner; a wide terminal for every test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests read help texts and tables as text: the terminal the suite runs in (a narrow CI log, a split
# editor pane) must not wrap them. Rich and Typer size their output from COLUMNS.
os.environ["COLUMNS"] = "200"

SHARED_CT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ct"


def _one_cpu_per_worker() -> None:
    """Under pytest-xdist (``-n 2``, as the README runs the suite), each worker process and every process it
    starts keeps to one CPU of its own: commands size their threads from the CPUs they may use
    (``hardware.available_cpus``), so two workers never run four busy threads on two cores (OpenMP teams
    spinning against each other ran compute-bound tests several times slower)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw") or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > 1:
        os.sched_setaffinity(0, {cpus[int(worker[2:]) % len(cpus)]})


_one_cpu_per_worker()


def _ctrl_c_deliverable() -> None:
    """A shell without job control starts a command put in the background (``pytest ... &``) with Ctrl-C
    (SIGINT) ignored, and every process it starts inherits that: the tests that press Ctrl-C on a command
    would see nothing happen. Python's own handler is put back, so that the suite tests the same whatever
    started it (its children, started afresh, get the default disposition)."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


_ctrl_c_deliverable()


@pytest.fixture(scope="session")
def shared_ct() -> Path:
    """The folder of real CT volumes beside the repository; tests that need it skip without it."""
    if not (SHARED_CT / "MANIFEST.md").exists():
        pytest.skip(f"real CT volumes not found at {SHARED_CT}")
    return SHARED_CT


@pytest.fixture(autouse=True)
def library_lines():
    """The library's log records printed as a command prints them ("note: ...", "warning: ..." on stderr),
    also for tests that call the library directly; at the default level, whatever a test before chose."""
    from ctslice.console import show_logs

    show_logs()


@pytest.fixture(scope="session")
def dataset(tmp_path_factory):
    """The tiny phantom cache (3 training cases, 1 validation case) and its splits; see ``tests/tiny.py``."""
    from tests.tiny import make_phantom_cache

    return make_phantom_cache(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one thread beats two (no synchronisation) and spares a shared machine. Commands
    set the threads to the CPUs available (``hardware.configure``); here that is one."""
    import torch

    from ctslice import hardware

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hardware, "available_cpus", lambda: 1)
        yield
    torch.set_num_threads(previous)


@pytest.fixture
def cli():
    """Run ``ctslice ARGS...`` in-process; returns the click Result (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner

    from ctslice.cli import app

    runner = CliRunner()

    def run(*args: str):
        # named as users run it: click would take the name from sys.argv[0], which a test runner sets (pytest-xdist
        # workers: "-c") and Typer's completion scripts need
        return runner.invoke(app, [str(a) for a in args], prog_name="ctslice")

    return run


@pytest.fixture(scope="module")
def network():
    """A randomly initialised MAISI VAE of the released config (the weights cannot be downloaded here)."""
    import torch

    from ctslice.codecs.maisi import build_network

    torch.manual_seed(0)
    return build_network()


@pytest.fixture(scope="module")
def whole(network):
    """The same network run on whole volumes: chunks larger than any test volume."""
    from ctslice.codecs.maisi import MaisiCodec

    return MaisiCodec(network, encode_chunk=4096, decode_chunk=4096)


@pytest.fixture
def scan_folder(tmp_path):
    """Scans as users keep them: two volume files, a DICOM series folder and a damaged file."""
    from ctslice.io import write_volume
    from tests.dicom_utils import write_dicom_series
    from tests.tiny import thick_phantom

    folder = tmp_path / "scans"
    folder.mkdir()
    write_volume(thick_phantom(1), folder / "alpha.nii.gz")
    write_volume(thick_phantom(2), folder / "beta.nrrd")
    write_dicom_series(thick_phantom(3), folder / "gamma", patient_id="PAT-0042")
    (folder / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    return folder
