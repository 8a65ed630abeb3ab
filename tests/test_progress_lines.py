"""Progress in logs: off a terminal (``kubectl logs``, Slurm, ``nohup``) a bar becomes timestamped lines."""

from __future__ import annotations

import re

from ctslice.console import PlainProgress
from ctslice.data.phantom import make_phantom
from ctslice.io import write_volume

STAMP = r"\d\d:\d\d:\d\d"


def test_plain_progress_prints_at_most_one_line_per_interval_and_the_last_state(capsys, monkeypatch):
    clock = iter([0.0, 1.0, 2.0, 11.0, 12.0, 30.0])
    monkeypatch.setattr("ctslice.console.time.monotonic", lambda: next(clock))
    with PlainProgress(interval=10) as bar:  # the task starts at t=0
        task = bar.add_task("Preprocessing", total=5)
        bar.advance(task)  # t=1: too soon
        bar.advance(task)  # t=2: too soon
        bar.advance(task)  # t=11: a line (printed at 11, the next not before 21)
        bar.advance(task)  # t=12: too soon
    lines = capsys.readouterr().err.splitlines()
    assert [re.sub(STAMP, "T", line) for line in lines] == ["T Preprocessing 3/5 (60%)", "T Preprocessing 4/5 (80%)"]


def test_a_short_task_prints_nothing(capsys):
    with PlainProgress(interval=10) as bar:
        task = bar.add_task("Inferring", total=None)
        bar.update(task, description="Denoising", completed=3, total=3)
    assert capsys.readouterr().err == ""


def test_infer_off_a_terminal_prints_timestamped_window_counts(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("CTSLICE_PROGRESS_INTERVAL", "0")
    thick = make_phantom(shape=(8, 48, 48), spacing=(4.0, 4.0, 5.0), seed=1)
    source = write_volume(thick, tmp_path / "thick.nii.gz")
    result = cli("infer", source, "-o", tmp_path / "thin.nii.gz", "--device", "cpu")
    assert result.exit_code == 0, result.output
    counts = re.findall(rf"^{STAMP} Denoising \(windows\) (\d+)/(\d+) \(\d+%\)$", result.stderr, re.M)
    assert counts, result.stderr
    done, total = map(int, counts[-1])
    assert done == total > 0


def test_fields_are_shown_but_not_the_starting_count(capsys):
    with PlainProgress(interval=0) as bar:
        task = bar.add_task("Training", total=10, completed=4, status="")
        bar.update(task, completed=5, status="loss 0.12")
    line = capsys.readouterr().err.strip()
    assert re.fullmatch(rf"{STAMP} Training 5/10 \(50%\) loss 0.12", line), line
