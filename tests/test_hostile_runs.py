"""Hostile inputs to split, train, validate and the files they read (round 3): each is one line, exit code 2,
refused before any write, and leaves the run folder, checkpoints, splits and caches as they were.

Each case here once fell short: a second ``training:`` section silently replaced the first; ``--config
/dev/zero`` read without end and a named pipe blocked; a fresh ``train`` into a run folder overwrote its
checkpoints; a resume with another architecture rewrote ``config.yaml`` before it failed; a partial last
line in ``log.jsonl`` made a run impossible to resume; ``checkpoints`` as a file failed after training with
a traceback; ``--splits DIR/report.json --out DIR`` overwrote the splits with the report.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from ctslice.config import load_config
from ctslice.errors import InputError
from ctslice.parsing import read_text
from ctslice.training.trainer import train
from tests.tiny import TINY

RUN = ["training.max_steps=2", "training.checkpoint_interval=1", "training.val_interval=1000",
       "validation.val_samples=0"]


def settings(dataset, *extra: str) -> list[str]:
    cache, splits = dataset
    return [*TINY, f"data.cache={cache}", f"data.splits={splits}", "hardware.device=cpu", *RUN, *extra]


def train_args(dataset, run: Path, *extra: str, config: Path | None = None) -> list[str]:
    """``ctslice train`` of the tiny run into ``run``, every key from ``--set`` (the config file is ``{}``)."""
    if config is None:
        config = run.parent / "empty.yaml"
        config.write_text("{}\n", encoding="utf-8")
    return ["train", "--config", str(config), *(a for s in settings(dataset, *extra) for a in ("--set", s)),
            "--out", str(run)]


@pytest.fixture(scope="module")
def finished(dataset, tmp_path_factory) -> Path:
    """A finished 2-step run (checkpoints at steps 1 and 2, then final.pt)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train(load_config(None, settings(dataset)), run)
    return run


@pytest.fixture
def run(finished, tmp_path) -> Path:
    """A copy of the finished run to be hostile to (hard links kept: latest.pt is one to step_2.pt)."""
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def files(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with a hash of its bytes: what "left as it was" means."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def error_line(result) -> str:
    """The one line of a refused command, with exit code 2 and no traceback."""
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert result.exit_code == 2 and len(errors) == 1 and "Traceback" not in result.output, result.output
    return errors[0]


# --- config files and --set ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("training:\n  max_steps: 1\ntraining:\n  lr: 0.001\n", "not usable YAML (key 'training' given twice, line 3)"),
    ("training:\n  max_steps: 1\n  max_steps: 2\n", "not usable YAML (key 'max_steps' given twice, line 3)"),
    ("", "the config file is empty; write the sections to change, or {} for every default"),
    ("# only a comment\n", "the config file is empty; write the sections to change, or {} for every default"),
], ids=["section twice", "key twice", "empty", "only comments"])
def test_a_config_that_would_lose_settings_is_refused(text, message, dataset, tmp_path, cli):
    config = tmp_path / "c.yaml"
    config.write_text(text, encoding="utf-8")
    result = cli(*train_args(dataset, tmp_path / "new", config=config))
    assert error_line(result) == f"error: {config}: {message}"
    assert not (tmp_path / "new").exists()


def test_a_yaml_merge_key_may_still_be_overridden(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("training:\n  <<: {lr: 0.1, seed: 3}\n  lr: 0.01\n", encoding="utf-8")
    assert (load_config(config).training.lr, load_config(config).training.seed) == (0.01, 3)


def test_a_device_is_not_read_without_end_and_a_pipe_without_writer_does_not_block(tmp_path, cli):
    with pytest.raises(InputError, match=r"^/dev/zero: not a regular file, so not a config file$"):
        read_text(Path("/dev/zero"), "a config file")
    pipe = tmp_path / "config.yaml"
    os.mkfifo(pipe)
    result = cli("train", "--config", pipe, "--out", tmp_path / "new")
    assert error_line(result) == (f"error: {pipe}: the config file is empty; write the sections to change, or {{}} "
                                  "for every default")
    assert not (tmp_path / "new").exists()


def test_a_pipe_with_a_writer_is_read(tmp_path):
    read, write = os.pipe()
    os.write(write, b"training:\n  lr: 0.5\n")
    os.close(write)
    assert load_config(Path(f"/dev/fd/{read}")).training.lr == 0.5  # --config <(sed ... config.yaml)
    os.close(read)


@pytest.mark.parametrize("override, message", [
    (".=5", "--set .=5: expected section.key=value"),
    ("training..lr=0.1", "--set training..lr=0.1: expected section.key=value"),
    ("training.init_from=", "--set training.init_from=: no value after '='; write training.init_from=null to "
                            "unset the key"),
    ("training={max_steps: 1, max_steps: 2}", "--set training={max_steps: 1, max_steps: 2}: not usable YAML "
                                              "(key 'max_steps' given twice, line 1)"),
    ("training.lr=1\n---\n2", "--set training.lr=1\\n---\\n2: training.lr must be float, got '1\\n---\\n2'"),
], ids=["empty key", "empty part", "empty value", "key twice", "newline"])
def test_a_bad_override_is_one_line_naming_it(override, message, dataset, tmp_path, cli):
    result = cli(*train_args(dataset, tmp_path / "new"), "--set", override)
    assert error_line(result) == f"error: {message}"
    assert not (tmp_path / "new").exists()


# --- splits files and split -------------------------------------------------------------------------------------

@pytest.mark.parametrize("document, message", [
    ('{"train": ["case0"], "tset": ["case1"]}', "unknown key 'tset' (the keys are train, val, test and meta)"),
    ('{"train": ["case0", "case0"]}', "case 'case0' is twice in 'train'"),
    ('{"train": ["case0"], "train": []}', "not usable JSON (key 'train' given twice)"),
], ids=["unknown key", "listed twice", "key twice"])
def test_a_splits_file_that_would_lose_cases_is_refused(document, message, dataset, tmp_path, cli):
    splits = tmp_path / "splits.json"
    splits.write_text(document, encoding="utf-8")
    result = cli(*train_args(dataset, tmp_path / "new", f"data.splits={splits}"))
    assert error_line(result) == f"error: {splits}: {message}"
    assert not (tmp_path / "new").exists()
    result = cli("split", dataset[0], "-o", splits)  # updating it keeps its assignments: refused the same way
    assert error_line(result) == f"error: {splits}: {message}"
    assert splits.read_text(encoding="utf-8") == document


def test_a_split_that_leaves_no_training_patient_is_refused(dataset, tmp_path, cli):
    result = cli("split", dataset[0], "-o", tmp_path / "splits.json", "--val", "0.5", "--test", "0.45")
    assert error_line(result) == ("error: validation fraction 0.5 and test fraction 0.45 leave none of the 4 "
                                  "patient(s) for training; lower them")
    assert not (tmp_path / "splits.json").exists()


# --- run folders, checkpoints and resume -------------------------------------------------------------------------

def test_a_new_run_into_a_folder_holding_a_run_is_refused(run, dataset, cli):
    before = files(run)
    result = cli(*train_args(dataset, run))
    assert error_line(result) == (f"error: {run} already holds a training run (checkpoints (final.pt, latest.pt, "
                                  "step_1.pt ...)); continue it with --resume latest, or choose another --out")
    assert files(run) == before


def test_an_empty_resume_is_not_a_fresh_start(run, dataset, cli):
    before = files(run)
    result = cli(*train_args(dataset, run), "--resume", "")
    assert error_line(result) == "error: --resume '': expected latest or a checkpoint path"
    assert files(run) == before


def test_a_resume_with_another_architecture_leaves_the_run_folder_as_it_was(run, dataset, cli):
    before = files(run)
    result = cli(*train_args(dataset, run, "model.channels=[8, 8]"), "--resume", "latest")
    assert "weights do not fit the model in its config (was model.* changed since the run started?)" in \
        error_line(result)
    assert files(run) == before  # config.yaml too: it was rewritten before the weights were checked


def test_a_resume_drops_a_partial_last_log_line_and_goes_on(run, dataset, cli, one_thread, caplog):
    with open(run / "log.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"step": 3, "kind": "tr')  # the line a killed run was writing
    result = cli(*train_args(dataset, run, "training.max_steps=3"), "--resume", "latest")
    assert result.exit_code == 0, result.output
    assert f"dropped 1 unreadable line(s) of {run / 'log.jsonl'} (a run stopped while writing it?)" in caplog.messages
    records = [json.loads(line) for line in (run / "log.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]


@pytest.mark.parametrize("damage, message", [
    (lambda run: (shutil.rmtree(run / "checkpoints"), (run / "checkpoints").write_text("x")),
     "{run}/checkpoints is a file, not a folder of the run; move it away or choose another run folder"),
    (lambda run: (shutil.rmtree(run / "tensorboard"), (run / "tensorboard").write_text("x")),
     "{run}/tensorboard is a file, not a folder of the run; move it away or choose another run folder"),
    (lambda run: ((run / "log.jsonl").unlink(), (run / "log.jsonl").mkdir()),
     "{run}/log.jsonl is not a file, so not the run's log.jsonl; move it away or choose another run folder"),
    (lambda run: ((run / "config.yaml").unlink(), (run / "config.yaml").mkdir()),
     "{run}/config.yaml is not a file, so not the run's config.yaml; move it away or choose another run folder"),
    (lambda run: ((run / "checkpoints" / "latest.pt").unlink(), (run / "checkpoints" / "latest.pt").mkdir()),
     "{run}/checkpoints/latest.pt is not a file, so not the run's latest.pt; move it away or choose another run "
     "folder"),
    (lambda run: [path.write_bytes(path.read_bytes()[:1000]) for path in (run / "checkpoints").glob("*.pt")],
     "{run}/checkpoints: no readable checkpoint to resume from (all 3 damaged); resume from a copy of the run, or "
     "start a new run elsewhere"),
], ids=["checkpoints is a file", "tensorboard is a file", "log is a folder", "config is a folder",
        "latest is a folder", "every checkpoint damaged"])
def test_a_damaged_run_folder_is_one_line_before_any_work(damage, message, run, dataset, cli):
    damage(run)
    before = files(run)
    result = cli(*train_args(dataset, run, "training.max_steps=3"), "--resume", "latest")
    assert error_line(result) == "error: " + message.format(run=run)
    assert "warning" not in result.output
    assert files(run) == before


def test_a_damaged_latent_cache_is_rebuilt(run, dataset, cli, one_thread, caplog):
    (run / "latents.h5").write_text("not HDF5", encoding="utf-8")  # a run killed with -9 while writing it
    result = cli(*train_args(dataset, run, "training.max_steps=3", "data.cache_latents=true"), "--resume", "latest")
    assert result.exit_code == 0, result.output
    assert any(m.startswith(f"{run / 'latents.h5'} is damaged (") and m.endswith("; the latent cache is rebuilt")
               for m in caplog.messages)
    import h5py

    with h5py.File(run / "latents.h5", "r") as store:
        assert sorted(store) == ["case0", "case1", "case2"]


@pytest.mark.parametrize("change, reason", [
    (lambda d: d.pop("rng"), "'rng'"), (lambda d: d.update(rng={"python": 1}), "'int' object is not subscriptable"),
    (lambda d: d.update(step=-5), "step -5"),
], ids=["no rng", "bad rng", "negative step"])
def test_a_checkpoint_with_a_damaged_training_state_is_one_line(change, reason, run, dataset, tmp_path, cli):
    checkpoint = rewritten(run / "checkpoints" / "final.pt", tmp_path / "x.pt", change)
    result = cli(*train_args(dataset, tmp_path / "new"), "--resume", checkpoint)
    assert error_line(result) == (f"error: {checkpoint}: its training state is damaged ({reason}); resume from "
                                  "another checkpoint")
    assert not (tmp_path / "new").exists()


def test_a_new_run_does_not_replace_its_own_config_file(dataset, tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("config.yaml").write_text("# my notes\n{}\n", encoding="utf-8")
    result = cli(*train_args(dataset, Path("."), config=Path("config.yaml")))
    assert error_line(result) == ("error: --out .: the run would replace the config file config.yaml with its "
                                  "resolved copy; choose another run folder")
    assert sorted(os.listdir()) == ["config.yaml"]
    assert Path("config.yaml").read_text(encoding="utf-8") == "# my notes\n{}\n"


@pytest.mark.parametrize("make, message", [
    (lambda path: path.mkdir(), " is a folder; give the checkpoint file in it (for example checkpoints/best.pt)"),
    (lambda path: os.mkfifo(path), " is a named pipe (FIFO), not a file that holds a checkpoint; pass a regular file"),
], ids=["folder", "pipe"])
def test_an_init_checkpoint_that_is_no_file_is_one_line(make, message, dataset, tmp_path, cli):
    make(tmp_path / "init.pt")
    result = cli(*train_args(dataset, tmp_path / "new", f"training.init_from={tmp_path / 'init.pt'}"))
    assert error_line(result) == f"error: training.init_from: {tmp_path / 'init.pt'}{message}"
    assert not (tmp_path / "new").exists()


# --- validate and the cache ---------------------------------------------------------------------------------------

def test_validate_does_not_write_its_report_over_the_splits_file(finished, dataset, tmp_path, cli):
    out = tmp_path / "report"
    out.mkdir()
    splits = out / "report.json"
    shutil.copyfile(dataset[1], splits)
    before = files(out)
    result = cli("validate", "--checkpoint", finished / "checkpoints" / "final.pt", "--cache", dataset[0],
                 "--splits", splits, "--split", "val", "--out", out, "--device", "cpu")
    assert error_line(result) == (f"error: {splits}: the output would overwrite the input {splits}; choose another "
                                  "output path")
    assert files(out) == before


def test_an_absurd_window_is_refused_before_any_work(finished, dataset, tmp_path, cli):
    result = cli("validate", "--checkpoint", finished / "checkpoints" / "final.pt", "--cache", dataset[0],
                 "--splits", dataset[1], "--split", "val", "--out", tmp_path / "v", "--window", "1e300,1e300")
    assert error_line(result) == ("error: --window '1e300,1e300': give lung, soft, bone, or W,L in HU with a width "
                                  "from 1 to 65,536 and a level from -65,536 to 65,536 (e.g. 1500,-600)")
    assert not (tmp_path / "v").exists()


@pytest.mark.parametrize("make, what", [(lambda path: path.mkdir(), "a folder"),
                                        (lambda path: os.mkfifo(path), "a named pipe (FIFO)")], ids=["folder", "pipe"])
def test_a_cache_that_is_no_file_is_one_line(make, what, tmp_path, cli):
    make(tmp_path / "cache.h5")
    result = cli("split", tmp_path / "cache.h5", "-o", tmp_path / "splits.json")
    assert error_line(result) == f"error: {tmp_path / 'cache.h5'} is {what}, not a file that holds a cache; pass a " \
                                 "regular file"
    assert not (tmp_path / "splits.json").exists()


# --- demo and inspect-memory --------------------------------------------------------------------------------------

def test_the_demo_does_not_write_into_a_folder_of_other_work(dataset, tmp_path, cli):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copyfile(dataset[0], work / "cache.h5")  # the user's own cache, of the name the demo writes
    before = files(work)
    result = cli("demo", "--out", work, "--minutes", "0.05")
    assert error_line(result) == f"error: --out {work}: the folder holds other files and no earlier demo; give a " \
                                 "new or empty folder"
    assert files(work) == before


def test_a_missing_demo_input_is_found_before_the_folder_is_made(tmp_path, cli):
    result = cli("demo", "--out", tmp_path / "demo", "--input", tmp_path / "missing.nii.gz")
    assert error_line(result) == f"error: --input {tmp_path / 'missing.nii.gz'}: no such file or folder"
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("value, message", [
    ("", "--device-memory '': expected a size such as 80GB (up to 1024 TB), or several such as 24,40,80"),
    (",".join(["80"] * 1000), "--device-memory: 1,000 sizes; give at most 16"),
], ids=["empty", "a thousand"])
def test_device_memory_that_is_empty_or_endless_is_refused(value, message, cli):
    result = cli("inspect-memory", "--config", "tiny_cpu", "--device-memory", value)
    assert error_line(result) == f"error: {message}"


def test_an_empty_volume_is_refused_not_ignored(cli):
    result = cli("inspect-memory", "--config", "tiny_cpu", "--volume", "")
    assert error_line(result) == ("error: --volume '': expected thin-slice depth x height x width from 1 to 65,536 "
                                  "each, e.g. 300x512x512")


def rewritten(source: Path, target: Path, change) -> Path:
    """``source`` with ``change(document)`` applied, written with a valid checksum: only the contents are wrong."""
    from ctslice.checkpoint import read_checkpoint, write_checkpoint

    document = read_checkpoint(source)
    change(document)
    return write_checkpoint({k: v for k, v in document.items() if k not in ("format", "version", "ctslice_version")},
                            target)


@pytest.mark.parametrize("change, message", [
    (lambda d: d["data"].update(ratio=float("nan")), "its ratio entry is nan, not a number from 1 to 100; the file is "
     "damaged or was not written by `ctslice train`"),
    (lambda d: d["data"].update(thin_spacing=-1.0), "its thin_spacing entry is -1.0, not a number from 0.001 to 100; "
     "the file is damaged or was not written by `ctslice train`"),
    (lambda d: d.update(codec="maisi"), "its data and codec entries are not mappings; was it written by ctslice "
     "train?"),
    (lambda d: d["model"].update(target_shift=d["model"]["target_shift"] * float("nan")),
     "its parameter target_shift holds NaN or infinite values (a diverged run?); use an earlier checkpoint"),
], ids=["NaN ratio", "negative spacing", "codec a string", "NaN weights"])
def test_validate_refuses_a_checkpoint_whose_contents_are_wrong(change, message, finished, dataset, tmp_path, cli):
    checkpoint = rewritten(finished / "checkpoints" / "final.pt", tmp_path / "x.pt", change)
    result = cli("validate", "--checkpoint", checkpoint, "--cache", dataset[0], "--splits", dataset[1], "--split",
                 "val", "--out", tmp_path / "v", "--device", "cpu")
    assert error_line(result) == f"error: {checkpoint}: {message}"
    assert not (tmp_path / "v").exists()
