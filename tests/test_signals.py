"""SIGTERM and Ctrl-C outside training steps: ``validate``, ``inspect-memory --measure``, ``preprocess --workers 2``.

Each test starts a real ``python -m ctslice`` process on work that would run for minutes, signals it once
the work is under way, and checks that it ends with one line and its exit code (143 / 130) and leaves no
child process behind (children found in ``/proc``). Training and its validations are in
``test_reliability_training.py``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest

from ctslice.cli.stops import stopped_cleanly
from ctslice.data.phantom import make_phantom
from ctslice.data.preprocess import _start_worker, _stops_held_back
from ctslice.errors import Interrupted, Preempted
from ctslice.io import write_volume
from tests.tiny import TINY, tiny_config

WIDE = {**os.environ, "COLUMNS": "1000"}


def start(args: list[str], stderr_path: Path) -> subprocess.Popen:
    with open(stderr_path, "w") as stderr:
        return subprocess.Popen([sys.executable, "-m", "ctslice", *args], stdout=subprocess.DEVNULL, stderr=stderr,
                                start_new_session=True, env=WIDE)


def children(pid: int) -> list[int]:
    """The live descendants of ``pid`` (from each process's parent in ``/proc/*/stat``)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent]
        found += kids
        frontier += kids
    return found


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_when(process: subprocess.Popen, ready, signum: int, record_property, timeout: float = 120) -> list[int]:
    """Wait for ``ready()``, send ``signum``, wait for the exit; the children the process had at the signal."""
    deadline = time.time() + timeout
    while not ready():
        assert process.poll() is None, f"exited early with code {process.returncode}"
        assert time.time() < deadline, "the work did not start in time"
        time.sleep(0.05)
    kids = children(process.pid)
    sent = time.monotonic()
    process.send_signal(signum)
    try:
        process.wait(timeout=60)  # the work left would take minutes
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("the process did not stop within 60 s of the signal") from None
    record_property("seconds_to_exit", round(time.monotonic() - sent, 2))
    time.sleep(0.5)  # a terminated child may take a moment to go
    assert not [k for k in kids if alive(k)], "child processes left running"
    return kids


def measuring(pid: int) -> bool:
    """Whether ``pid`` has started its measurement process (``python -m ctslice.memory.measure``): any child
    will not do, as a start-up helper process (seen under load) may come before the signal handlers."""
    for kid in children(pid):
        try:
            if b"ctslice.memory.measure" in Path(f"/proc/{kid}/cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


def error_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in text, text
    return [line for line in text.splitlines() if line.startswith("error: ")]


@pytest.fixture(scope="module")
def checkpoint(dataset, tmp_path_factory) -> Path:
    from ctslice.training.trainer import train

    run = tmp_path_factory.mktemp("signals") / "run"
    train(tiny_config(dataset, "training.max_steps=1", "validation.val_samples=0"), run)
    return run / "checkpoints" / "final.pt"


@pytest.mark.parametrize("signum, code, words", [(signal.SIGTERM, 143, "stopped by SIGTERM"),
                                                 (signal.SIGINT, 130, "interrupted")])
def test_a_signal_during_validate_ends_it_in_one_line(signum, code, words, dataset, checkpoint, tmp_path,
                                                      record_property):
    cache, splits = dataset
    stderr = tmp_path / "stderr.txt"
    process = start(["validate", "--checkpoint", str(checkpoint), "--cache", str(cache), "--splits", str(splits),
                     "--split", "val", "--mode", "sample", "--steps", "1000", "--out", str(tmp_path / "report")],
                    stderr)
    started = []

    def validating() -> bool:  # the precision line comes after the model is loaded, just before the cases
        if stderr.read_text(encoding="utf-8", errors="replace").strip() and not started:
            started.append(time.time())
        return bool(started) and time.time() - started[0] > 2

    stop_when(process, validating, signum, record_property)
    assert process.returncode == code
    assert error_lines(stderr) == [f"error: {words}; the figures of the cases done are kept, no report was written"]
    assert not (tmp_path / "report" / "report.json").exists()


def test_sigterm_during_inspect_memory_measure_ends_the_measurement_process(tmp_path, record_property):
    stderr = tmp_path / "stderr.txt"
    process = start(["inspect-memory", "--config", "tiny_cpu", "--measure", "--device", "cpu",
                     *(a for s in TINY for a in ("--set", s))], stderr)
    kids = stop_when(process, lambda: measuring(process.pid), signal.SIGTERM, record_property)
    assert kids
    assert process.returncode == 143
    assert error_lines(stderr) == ["error: stopped by SIGTERM; the measurement process was ended"]


@pytest.mark.parametrize("signum, code, words", [(signal.SIGTERM, 143, "stopped by SIGTERM"),
                                                 (signal.SIGINT, 130, "interrupted")])
def test_a_signal_during_preprocess_with_workers_leaves_no_worker_behind(signum, code, words, tmp_path,
                                                                         record_property):
    raw = tmp_path / "raw"
    for seed in range(16):
        write_volume(make_phantom(shape=(120, 96, 96), spacing=(4.0, 4.0, 1.0), seed=seed), raw / f"case{seed}.nii.gz")
    stderr = tmp_path / "stderr.txt"
    process = start(["preprocess", str(raw), "-o", str(tmp_path / "cache.h5"), "--workers", "2"], stderr)
    kids = stop_when(process, lambda: len(children(process.pid)) >= 2, signum, record_property)
    assert len(kids) >= 2
    assert process.returncode == code
    assert error_lines(stderr) == [f"error: {words}; the worker processes were ended; the finished cases are kept, "
                                   "rerun to go on"]


@pytest.mark.parametrize("signum, expected", [(signal.SIGTERM, Preempted), (signal.SIGINT, Interrupted)])
def test_a_stop_that_lands_in_a_finalizer_is_raised_again_at_an_ordinary_line(signum, expected, capsys):
    """A signal's exception raised inside a weakref callback cannot propagate (Python prints it and goes on);
    ``stopped_cleanly`` raises it again, so the stop is neither lost nor printed as a traceback."""

    class Resource:
        pass

    def signalled_while_finalizing(_):
        os.kill(os.getpid(), signum)  # the handler runs here, inside the callback
        for _ in range(1000):
            pass

    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGALRM), sys.unraisablehook)
    with pytest.raises(expected, match="cleaned up"), stopped_cleanly("cleaned up"):
        resource = Resource()
        reference = weakref.ref(resource, signalled_while_finalizing)
        del resource
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # the retried stop ends this loop long before the deadline
            pass
    assert reference() is None
    assert "Exception ignored" not in capsys.readouterr().err
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGALRM), sys.unraisablehook) == before


def test_preprocess_workers_leave_ctrl_c_to_the_main_process_and_die_at_once_on_sigterm():
    """A forked worker must not run the main process's SIGTERM handler (which raises): ending it would
    print a traceback. Stops are held back while workers start, and released once their handlers are set."""
    import SimpleITK as sitk

    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    previous = {signum: signal.signal(signum, lambda *_: None) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with _stops_held_back():
            assert {signal.SIGINT, signal.SIGTERM} <= signal.pthread_sigmask(signal.SIG_BLOCK, [])
            _start_worker(2)  # as a worker forked here would
            assert not {signal.SIGINT, signal.SIGTERM} & signal.pthread_sigmask(signal.SIG_BLOCK, [])
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == max(1, (os.cpu_count() or 1) // 2)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
