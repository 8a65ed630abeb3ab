"""Reliability, part 3: untrusted files run no code, and patient identifiers stay in the scans they came in.

A checkpoint or config handed over by someone else is untrusted: a pickled object in a checkpoint or a
``!!python/object`` tag in a YAML file would run code when loaded, so both are refused (the zip guard is
in the bad-input corpus). DICOM headers name the patient: a whole preprocess -> split -> train ->
validate -> infer pipeline runs on DICOM studies whose headers carry identifiers, and no file it writes
and nothing it prints may contain any of them.
"""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch

from ctslice.data.pairs import simulate_pair
from ctslice.data.phantom import make_phantom
from ctslice.io import Volume, write_volume
from tests.dicom_utils import write_dicom_series
from tests.tiny import TINY


class CodeOnLoad:
    """A pickle that runs ``exec(source)`` when it is loaded: what a malicious checkpoint holds."""

    def __init__(self, source: str):
        self.source = source

    def __reduce__(self):
        return exec, (self.source,)


def test_a_checkpoint_with_a_pickled_object_is_refused_not_run(tmp_path, cli):
    marker = tmp_path / "code-ran"
    checkpoint = tmp_path / "model.pt"
    torch.save({"format": "ctslice-checkpoint", "model": CodeOnLoad(f"open({str(marker)!r}, 'w').close()")},
               checkpoint)
    torch.load(checkpoint, weights_only=False)  # the payload is live: loaded unsafely, it runs
    assert marker.exists()
    marker.unlink()
    scan = write_volume(make_phantom(shape=(8, 32, 32), spacing=(12.0, 12.0, 5.0)), tmp_path / "scan.nii.gz")
    result = cli("infer", scan, "-o", tmp_path / "thin.nii.gz", "--checkpoint", checkpoint, "--device", "cpu")
    assert result.exit_code == 2
    assert result.output == (f"error: {checkpoint}: refused: it holds a pickled Python object (exec) that could "
                             "run code when loaded; ctslice loads only tensors and plain data, as `ctslice "
                             "train` writes them\n")
    assert not marker.exists() and not (tmp_path / "thin.nii.gz").exists()


def test_a_yaml_config_with_a_python_tag_is_refused_not_run(tmp_path, cli):
    marker = tmp_path / "code-ran"
    config = tmp_path / "config.yaml"
    config.write_text(f"training:\n  seed: !!python/object/apply:os.system ['touch {marker}']\n", encoding="utf-8")
    result = cli("train", "--config", config, "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert result.output.startswith(f"error: {config}: not valid YAML (could not determine a constructor for the "
                                    "tag 'tag:yaml.org,2002:python/object/apply:os.system'")
    assert len(result.output.splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "run").exists()


# --- patient identifiers ---------------------------------------------------------------------------------------

IDENTIFYING = {  # tag -> value: the Patient module and the usual suspects around it
    "0010|0010": "Quixote^Zebulon^Amadeus",  # PatientName
    "0010|0020": "MRN-77310042",  # PatientID
    "0010|0030": "19510203",  # PatientBirthDate
    "0010|1000": "OLD-MRN-55187",  # OtherPatientIDs
    "0010|1040": "12 Secretia Lane",  # PatientAddress
    "0008|0050": "ACC5550199",  # AccessionNumber
    "0008|0080": "St Obscura Hospital",  # InstitutionName
    "0008|0090": "Holmes^Sherlock",  # ReferringPhysicianName
}
TOKENS = ["Quixote", "Zebulon", "Amadeus", "77310042", "19510203", "55187", "Secretia", "Obscura", "Sherlock",
          "ACC5550199", "1.2.826.0.1.3680043.9.7147"]  # the last: the root of every study and series UID


def write_identified_series(volume: Volume, folder: Path, patient: int, series: int, **defects) -> None:
    """A DICOM series whose every file carries the identifying tags (the patient's own values)."""
    files = write_dicom_series(volume, folder, patient_id=f"{IDENTIFYING['0010|0020']}-{patient}",
                               patient_name=IDENTIFYING["0010|0010"],
                               study_uid=f"1.2.826.0.1.3680043.9.7147.{patient}",
                               series_uid=f"1.2.826.0.1.3680043.9.7147.{patient}.{series}", **defects)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")  # the files have no extension to tell it
    for file in files:
        image = sitk.ReadImage(str(file))
        for tag, value in IDENTIFYING.items():
            if tag != "0010|0020":
                image.SetMetaData(tag, value)
        writer.SetFileName(str(file))
        writer.Execute(image)


def write_study(folder: Path, patient: int, *, thick: bool, **defects) -> None:
    """A study of one patient: a 1 mm series, and with ``thick`` a 5 mm series of the same scan."""
    truth = make_phantom(shape=(40, 32, 32), spacing=(12.0, 12.0, 1.0), seed=patient)
    write_identified_series(truth, folder / "2", patient, 2, **defects)
    if thick:
        write_identified_series(simulate_pair(truth, 5.0, 1.0).thick, folder / "1", patient, 1)


def readable_bytes(path: Path) -> bytes:
    """A file's bytes as a reader would see them: gzip inflated, zip members (checkpoints) extracted."""
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return data + b"".join(archive.read(name) for name in archive.namelist())
    return data


@pytest.fixture
def wide_console(monkeypatch):
    """No wrapping of printed lines: Rich would fold a long word, and a folded identifier escapes a search."""
    from ctslice.console import console, stdout

    for printer in (console, stdout):
        monkeypatch.setattr(printer, "width", 1000)


def test_patient_identifiers_appear_in_no_file_and_no_output(tmp_path, cli, wide_console):
    inputs, work = tmp_path / "inputs", tmp_path / "work"
    write_study(inputs / "study_a", 1, thick=True)
    write_study(inputs / "study_b", 2, thick=True)
    write_study(inputs / "study_c", 3, thick=False)
    write_study(inputs / "study_d", 4, thick=False, drop_slices=(17, 18))  # fails: its failure reason is output too
    raw = b"".join(f.read_bytes() for f in inputs.rglob("*") if f.is_file())
    assert all(token.encode() in raw for token in TOKENS)  # the inputs do carry every identifier

    cache, splits, run = work / "cache.h5", work / "splits.json", work / "run"
    config = work / "config.yaml"
    work.mkdir()
    config.write_text("{}\n", encoding="utf-8")
    settings = [*TINY, f"data.cache={cache}", f"data.splits={splits}", "hardware.device=cpu", "training.max_steps=3",
                "training.val_interval=1000", "training.checkpoint_interval=2", "validation.val_samples=1"]
    commands = [  # (arguments, exit code)
        (["preprocess", *sorted(inputs.iterdir()), "-o", cache, "--min-slices", "4"], 0),
        (["split", cache, "-o", splits, "--val", "0.34", "--test", "0.34"], 0),
        (["train", "--config", config, *(a for s in settings for a in ("--set", s)), "--out", run], 0),
        (["validate", "--checkpoint", run / "checkpoints" / "final.pt", "--cache", cache, "--splits", splits,
          "--out", work / "report", "--json", "--device", "cpu"], 0),
        (["infer", inputs / "study_a" / "1", "-o", work / "thin.nii.gz", "--checkpoint",
          run / "checkpoints" / "final.pt", "--device", "cpu"], 0),
        (["infer", inputs / "study_d" / "2", "-o", work / "failed.nii.gz", "--method", "cubic"], 2),
    ]
    outputs = []
    for arguments, exit_code in commands:
        result = cli(*arguments)
        outputs.append(result.output)
        assert result.exit_code == exit_code, result.output
    assert "is missing 2 slice(s)" in outputs[0] and "is missing 2 slice(s)" in outputs[-1]

    written = sorted(f for f in work.rglob("*") if f.is_file())
    assert {f.suffix for f in written} >= {".h5", ".json", ".yaml", ".jsonl", ".pt", ".png", ".gz"}
    assert b"study_a" in readable_bytes(cache) and b"cache.h5" in readable_bytes(run / "checkpoints" / "final.pt")
    for text, where in [*((readable_bytes(f), f) for f in written), *((o.encode(), "output") for o in outputs)]:
        for token in TOKENS:
            assert token.lower().encode() not in text.lower(), f"{token} in {where}"

