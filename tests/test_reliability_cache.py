"""The cache is never degraded by a run (issue 16, item 3).

Each test asserts the files on disk: the cache's case list and entries before and after, no temporary
file or parts folder left unless the one error line says it is kept, the exit code, one error line.
"""

from __future__ import annotations

import errno
import os
import resource
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from ctslice.data import preprocess
from ctslice.data.cache import Cache
from ctslice.data.discover import discover
from ctslice.data.lock import lock_path, writer_lock
from ctslice.data.phantom import make_phantom
from ctslice.data.preprocess import PreprocessOptions, run_preprocess
from ctslice.errors import InputError
from ctslice.io import write_volume

SMALL = PreprocessOptions(thick_spacing=5.0, thin_spacing=1.0, min_slices=4)
WIDE = {**os.environ, "COLUMNS": "1000"}  # Rich wraps at the console width


def phantom(seed: int):
    return make_phantom(shape=(40, 32, 32), spacing=(12.0, 12.0, 1.0), seed=seed)


@pytest.fixture
def cached(tmp_path) -> tuple[Path, Path]:
    """Four scans in ``in/`` and their cache ``out/cache.h5``."""
    for seed in range(4):
        write_volume(phantom(seed), tmp_path / "in" / f"case{seed}.nii.gz")
    output = tmp_path / "out" / "cache.h5"
    run_preprocess([tmp_path / "in"], output, SMALL)
    return tmp_path / "in", output


def entries(path: Path) -> dict[str, str]:
    """case id -> content hash of a cache's cases."""
    with Cache(path) as cache:
        return {case_id: cache.info(case_id).content_hash for case_id in cache.case_ids()}


def leftovers(output: Path) -> list[str]:
    """Everything beside the cache in its folder (temporary files, parts, lock)."""
    return sorted(p.name for p in output.parent.iterdir() if p.name != output.name)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


# ---- 1. a failure that is not the input's keeps the previous entry

@pytest.mark.parametrize("failure", [RuntimeError("a bug"), MemoryError(), OSError(errno.EIO, "I/O error")])
def test_a_non_input_failure_keeps_every_good_entry(cached, monkeypatch, cli, failure):
    inputs, output = cached
    before, failures_before = entries(output), Cache(output).failures()

    def broken(source, options):
        raise failure

    monkeypatch.setattr(preprocess, "build_pair", broken)
    result = cli("preprocess", inputs, "-o", output, "--min-slices", "4", "--thick-spacing", "4")  # a new hash
    assert result.exit_code == 1, result.output
    [line] = error_lines(result.stderr)
    assert "4 case(s) failed for a reason other than their input" in line and "4 kept" in line
    assert "Traceback" not in result.output
    assert entries(output) == before  # same cases, same content
    with Cache(output) as cache:
        assert cache.failures() == failures_before == []
    assert leftovers(output) == []


def test_nan_or_inf_spacing_never_empties_the_cache(cached, cli):
    inputs, output = cached
    before = entries(output)
    for value in ("nan", "inf"):
        result = cli("preprocess", inputs, "-o", output, "--min-slices", "4", "--thick-spacing", value)
        assert result.exit_code in (1, 2), result.output  # 2 once the option domains refuse it up front
        assert len(error_lines(result.stderr)) == 1 and "Traceback" not in result.output
        assert entries(output) == before
        assert leftovers(output) == []


def test_an_input_caused_failure_replaces_the_entry_and_a_new_case_without_entry_is_recorded(cached, monkeypatch):
    inputs, output = cached
    before = entries(output)
    (inputs / "case1.nii.gz").write_bytes((inputs / "case1.nii.gz").read_bytes()[:3000])  # now truncated
    write_volume(phantom(9), inputs / "new.nii.gz")
    real = preprocess.build_pair

    def broken_for_new(source, options):
        if source.case_id == "new":
            raise MemoryError()
        return real(source, options)

    monkeypatch.setattr(preprocess, "build_pair", broken_for_new)
    with pytest.raises(preprocess.CtsliceError, match="1 case.s. failed .* 0 kept"):
        run_preprocess([inputs], output, SMALL)
    assert entries(output) == {k: v for k, v in before.items() if k != "case1"}
    with Cache(output) as cache:
        reasons = {f.case_id: f.reason for f in cache.failures()}
    assert set(reasons) == {"case1", "new"} and "truncated" in reasons["case1"] and "MemoryError" in reasons["new"]


# ---- 2. case ids unique by construction

def test_names_that_sanitize_alike_get_distinct_stable_ids(tmp_path):
    names = ["a b.nii.gz", "a_b.nii.gz", "a_b-2.nii.gz", "A_B.nii.gz", "solo.nii.gz"]
    for seed, name in enumerate(names):
        write_volume(phantom(seed), tmp_path / "in" / name)
    output = tmp_path / "cache.h5"
    results = run_preprocess([tmp_path / "in"], output, SMALL)
    ids = {Path(r.source).name: r.case_id for r in results}
    assert len(set(ids.values())) == len(names) and all(r.status == "processed" for r in results)
    assert len({i.lower() for i in ids.values()}) == len(names)  # distinct on case-insensitive disks too
    assert ids["solo.nii.gz"] == "solo" and ids["a_b-2.nii.gz"] == "a_b-2"  # unshared names are kept
    with Cache(output) as cache:
        assert sorted(cache.case_ids()) == sorted(ids.values())
        for name, case_id in ids.items():
            assert Path(cache.info(case_id).source).name == name  # each entry holds its own scan
    rerun = run_preprocess([tmp_path / "in"], output, SMALL)
    assert {Path(r.source).name: r.case_id for r in rerun} == ids and {r.status for r in rerun} == {"reused"}


def test_ids_do_not_depend_on_the_order_or_on_reaching_a_file_twice(tmp_path):
    for folder in ("p1", "p2"):
        write_volume(phantom(0), tmp_path / "in" / folder / "scan.nii.gz")
    forward = {s.path.resolve(): s.case_id for s in discover([tmp_path / "in" / "p1", tmp_path / "in" / "p2"])}
    backward = discover([tmp_path / "in" / "p2", tmp_path / "in" / "p1", tmp_path / "in" / "p2" / "scan.nii.gz"])
    assert len(backward) == 2 and {s.path.resolve(): s.case_id for s in backward} == forward
    assert len(set(forward.values())) == 2 and all(c.startswith("scan-") for c in forward.values())


# ---- 3. one writer per cache

HOLD = """
import sys
from pathlib import Path
from ctslice.data.lock import writer_lock
with writer_lock(Path(sys.argv[1])):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_second_writer_is_refused_naming_the_first_and_a_dead_ones_lock_is_taken_over(cached, cli):
    inputs, output = cached
    before = output.read_bytes()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(output)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout.readline().strip() == "locked"
        for args in (["preprocess", inputs, "-o", output, "--min-slices", "4"],
                     ["preprocess", "--merge", output, "-o", output]):
            result = cli(*args)
            assert result.exit_code == 2, result.output
            [line] = error_lines(result.stderr)
            assert f"pid {holder.pid} on host {os.uname().nodename} since" in line and "one writer" in line
        assert output.read_bytes() == before and leftovers(output) == ["cache.h5.lock"]
    finally:
        holder.kill()  # kill -9: the lock file stays, its flock goes
        holder.wait()
    assert lock_path(output).exists()
    write_volume(phantom(7), inputs / "late.nii.gz")
    result = cli("preprocess", inputs, "-o", output, "--min-slices", "4")
    assert result.exit_code == 0, result.output
    assert f"took over the lock {lock_path(output)} left by ctslice pid {holder.pid}" in " ".join(result.stderr.split())
    assert "late" in entries(output) and leftovers(output) == []


def test_two_preprocess_runs_at_once_lose_no_case(tmp_path):
    """Two real ``ctslice preprocess`` processes on one cache: one writes, the other waits its turn (exit 2
    naming the first) or, if it starts after the first ended, reuses everything; no case is ever lost."""
    for seed in range(6):
        write_volume(make_phantom(shape=(60, 64, 64), spacing=(6.0, 6.0, 1.0), seed=seed),
                     tmp_path / "in" / f"case{seed}.nii.gz")
    output = tmp_path / "out" / "cache.h5"
    command = [sys.executable, "-m", "ctslice", "preprocess", str(tmp_path / "in"), "-o", str(output),
               "--min-slices", "4"]
    runs = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=WIDE)
            for _ in range(2)]
    outcomes = sorted((run.wait(timeout=300), run.stderr.read(), run.pid) for run in runs)
    assert [code for code, _, _ in outcomes] in ([0, 0], [0, 2]), outcomes
    if outcomes[1][0] == 2:
        [line] = error_lines(outcomes[1][1])
        assert f"ctslice pid {outcomes[0][2]} on host" in line and "one writer per cache" in line
    assert sorted(entries(output)) == [f"case{k}" for k in range(6)]
    assert leftovers(output) == []


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
    with writer_lock(tmp_path / "c.h5"), pytest.raises(InputError, match=f"pid {os.getpid()}"), \
            writer_lock(tmp_path / "c.h5"):
        pass
    assert not lock_path(tmp_path / "c.h5").exists()


# ---- 4. foreign, truncated and damaged caches

@pytest.mark.parametrize("kind", ["text", "other_hdf5", "truncated"])
def test_an_output_that_is_not_a_cache_is_refused_before_any_work(cached, monkeypatch, cli, kind):
    inputs, output = cached
    if kind == "text":
        output.write_text("hello\n", encoding="utf-8")
    elif kind == "other_hdf5":
        output.unlink()
        with h5py.File(output, "w") as file:
            file["data"] = np.arange(3)
    else:
        output.write_bytes(output.read_bytes()[:5000])
    before = output.read_bytes()
    monkeypatch.setattr(preprocess, "build_pair", lambda *a: pytest.fail("work started"))
    result = cli("preprocess", inputs, "-o", output, "--min-slices", "4")
    assert result.exit_code == 2, result.output
    [line] = error_lines(result.stderr)
    assert str(output) in line and ("not a ctslice cache" in line or "not a readable HDF5 cache" in line)
    assert "Traceback" not in result.output
    assert output.read_bytes() == before and leftovers(output) == []


def damage(output: Path, case_id: str = "case2", what: str = "thin") -> None:
    with h5py.File(output, "a") as file:
        del file[f"cases/{case_id}/{what}"]


def test_a_deleted_dataset_is_one_line_naming_the_case_in_split_train_and_inspect_memory(cached, cli, tmp_path):
    _, output = cached
    splits = tmp_path / "splits.json"
    assert cli("split", output, "-o", splits).exit_code == 0
    damage(output)
    config = tmp_path / "empty.yaml"
    config.write_text("{}\n", encoding="utf-8")
    data = ["--set", f"data.cache={output}", "--set", f"data.splits={splits}"]
    for args in (["split", output, "-o", tmp_path / "other.json"],
                 ["train", "--config", config, *data, "--set", "hardware.device=cpu", "--out", tmp_path / "run"],
                 ["inspect-memory", "--config", config, *data]):
        result = cli(*args)
        assert result.exit_code == 2, (args[0], result.output)
        [line] = error_lines(result.stderr)
        assert "case 'case2' has no 'thin' volume" in line, line
        assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "other.json").exists()


def test_preprocess_rebuilds_a_damaged_entry(cached):
    inputs, output = cached
    before = entries(output)
    damage(output, "case2", "thick")
    results = {r.case_id: r.status for r in run_preprocess([inputs], output, SMALL)}
    assert results == {"case0": "reused", "case1": "reused", "case2": "processed", "case3": "reused"}
    assert entries(output) == before and leftovers(output) == []
    with Cache(output) as cache:
        assert cache.volume("case2", "thick").depth == 8


# ---- 4/5. a full disk: one line, exit 1, the old cache intact, the finished parts kept and said so

def fail_fsync_of(monkeypatch, wanted) -> None:
    """``os.fsync`` raises ENOSPC for files whose name ``wanted(name)`` picks (the write that finds the disk full)."""
    real = os.fsync

    def fsync(fd):
        if wanted(Path(os.readlink(f"/proc/self/fd/{fd}")).name):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_full_disk_while_writing_a_part_stops_the_run_and_keeps_the_finished_parts(cached, monkeypatch, cli):
    inputs, output = cached
    before = output.read_bytes()
    for seed in (5, 6):
        write_volume(phantom(seed), inputs / f"more{seed}.nii.gz")
    fail_fsync_of(monkeypatch, lambda name: name == ".more6.h5.tmp")
    result = cli("preprocess", inputs, "-o", output, "--min-slices", "4")
    assert result.exit_code == 1, result.output
    [line] = error_lines(result.stderr)
    assert "could not write case more6" in line and "No space left on device" in line
    assert f"{output} is unchanged; the 1 finished case(s) in {output}.parts are kept for the next run" in line
    assert output.read_bytes() == before
    assert leftovers(output) == ["cache.h5.parts"] and os.listdir(f"{output}.parts") == ["more5.h5"]
    monkeypatch.undo()
    statuses = {r.case_id: r.status for r in run_preprocess([inputs], output, SMALL)}
    assert statuses["more5"] == "reused" and statuses["more6"] == "processed"
    assert sorted(entries(output)) == ["case0", "case1", "case2", "case3", "more5", "more6"]
    assert leftovers(output) == []


def test_a_full_disk_while_writing_the_cache_keeps_the_old_cache_and_the_parts(cached, monkeypatch, cli):
    inputs, output = cached
    before = output.read_bytes()
    write_volume(phantom(5), inputs / "more.nii.gz")
    fail_fsync_of(monkeypatch, lambda name: name == ".cache.h5.tmp")
    result = cli("preprocess", inputs, "-o", output, "--min-slices", "4")
    assert result.exit_code == 1, result.output
    [line] = error_lines(result.stderr)
    assert f"could not write the cache {output} (No space left on device); the previous cache is unchanged" in line
    assert "the 1 finished case(s)" in line and "kept for the next run" in line
    assert output.read_bytes() == before and leftovers(output) == ["cache.h5.parts"]
    monkeypatch.undo()
    assert {r.case_id: r.status for r in run_preprocess([inputs], output, SMALL)}["more"] == "reused"
    assert "more" in entries(output) and leftovers(output) == []


@pytest.mark.parametrize("too_large", ["part", "cache"])
def test_a_real_file_size_limit_is_one_line_not_a_crash(cached, too_large):
    """RLIMIT_FSIZE makes every write past the limit fail with EFBIG, as a full disk does (Python ignores
    SIGXFSZ): HDF5 itself meets the failing disk, not a monkeypatch."""
    inputs, output = cached
    before = output.read_bytes()
    for seed in (5, 6, 7):
        write_volume(make_phantom(shape=(40, 48, 48), spacing=(8.0, 8.0, 1.0), seed=seed), inputs / f"m{seed}.nii.gz")

    part_size = 100_000  # a part of these scans: about 150 kB
    limit_bytes = part_size if too_large == "part" else len(before) + 2 * part_size  # the parts fit, not the merge

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, resource.RLIM_INFINITY))

    done = subprocess.run([sys.executable, "-m", "ctslice", "preprocess", str(inputs), "-o", str(output),
                           "--min-slices", "4"], capture_output=True, text=True, preexec_fn=limit, env=WIDE,
                          timeout=300)
    assert done.returncode == 1, done.stderr  # not -SIGSEGV, as HDF5 writing straight to a full disk gave
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    [line] = error_lines(done.stderr)
    assert "File too large" in line
    assert ("could not write case" in line) == (too_large == "part")
    assert f"{output} is unchanged" in line or "previous cache is unchanged" in line
    assert output.read_bytes() == before
    assert not any(name.startswith(".") for name in leftovers(output))
    parts = sorted(os.listdir(f"{output}.parts")) if Path(f"{output}.parts").exists() else []
    assert (f"the {len(parts)} finished case(s)" in line) == bool(parts)
    assert all(not name.startswith(".") for name in parts)
    assert bool(parts) == (too_large == "cache")
