"""Patient-level train/val/test splits of the cached cases, in ``splits.json``.

Each patient draws a number in [0, 1) from a hash of (seed, patient pseudonym). Patients are taken in
draw order: the first ``round(N * test)`` go to test, the next ``round(N * val)`` to val, the rest to
train (a requested split gets at least one patient when there are three or more). That is
deterministic for a seed and gives the requested fractions even on small data sets. It is stable
when cases are added because an existing ``splits.json`` at the output path is respected: its
assignments are kept and only new patients are assigned, filling each split toward its fraction of
the new total; a new case of a known patient joins that patient's split. Failed cases are never in
the cache's case list, so they never enter a split.

Self-supervised cases (thick-only scans) have no thin ground truth, so they cannot be validated or
tested: they go to train. Only patients with a scorable case (a real or simulated pair) are drawn for
val and test, and the fractions are of those patients; a patient with only self-supervised cases is a
training patient. A self-supervised case of a val or test patient is left out of every split (in train
it would leak that patient's anatomy into training). Validation skips such cases too, should a
hand-written splits file hold them.

File format (a user may write it by hand)::

    {"train": ["case_a", ...], "val": [...], "test": [...], "meta": {"seed": 42, ...}}
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from ctslice.data.cache import Cache
from ctslice.errors import InputError
from ctslice.io.paths import check_output
from ctslice.parsing import load_json, read_text

SPLITS = ("train", "val", "test")
log = logging.getLogger(__name__)


def patient_draw(patient: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{patient}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(patients: dict[str, str], val: float, test: float, seed: int,
           existing: dict[str, str] | None = None, unscored: set[str] = frozenset()) -> dict[str, list[str]]:
    """Split case ids by patient. ``patients`` maps case id -> patient pseudonym; ``existing`` maps
    patients that already have a split to it (they keep it); ``unscored`` are the cases without thin
    ground truth (self-supervised: train only, see the module docstring)."""
    split_of = dict(existing or {})
    everyone = {p for c, p in patients.items() if c not in unscored}
    split_of.update({p: "train" for p in set(patients.values()) - everyone if p not in split_of})
    targets = _targets(len(everyone), val, test)
    new = sorted(everyone - set(split_of), key=lambda p: (patient_draw(p, seed), p))
    for name in ("test", "val"):
        missing = targets[name] - sum(s == name for s in split_of.values())
        for patient in new[: max(0, missing)]:
            split_of[patient] = name
        new = new[max(0, missing):]
    split_of.update(dict.fromkeys(new, "train"))
    kept = {c: p for c, p in patients.items() if c not in unscored or split_of[p] == "train"}
    return {name: sorted(c for c, p in kept.items() if split_of[p] == name) for name in SPLITS}


def _targets(count: int, val: float, test: float) -> dict[str, int]:
    """Patients per split: the fractions rounded, at least one where asked for (from 3 patients on)."""
    targets = {"test": round(count * test), "val": round(count * val)}
    for name, fraction in (("test", test), ("val", val)):
        if fraction > 0 and targets[name] == 0 and count >= 3:
            targets[name] = 1
    return targets


def read_splits(path: Path, case_ids: list[str] | None = None) -> dict[str, list[str]]:
    """Load and check a splits file: lists of strings, no case in two splits, ids known to the cache."""
    try:
        data = load_json(read_text(path, "a splits file"), str(path))
    except FileNotFoundError:
        raise InputError(f"{path}: no such splits file (create it with `ctslice split`)") from None
    if not isinstance(data, dict) or not any(name in data for name in SPLITS):
        raise InputError(f"{path}: expected an object with train/val/test lists")
    unknown = [key for key in data if key not in (*SPLITS, "meta")]
    if unknown:  # a misspelled "tset" would quietly leave the test split empty
        raise InputError(f"{path}: unknown key {unknown[0]!r} (the keys are train, val, test and meta)")
    splits = {}
    for name in SPLITS:
        members = data.get(name, [])
        if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
            raise InputError(f"{path}: '{name}' must be a list of case ids")
        splits[name] = members
    owners: dict[str, str] = {}
    for name in SPLITS:
        for case_id in splits[name]:
            if case_id in owners:
                where = f"twice in '{name}'" if owners[case_id] == name else f"in both '{owners[case_id]}' and '{name}'"
                raise InputError(f"{path}: case {case_id!r} is {where}")
            owners[case_id] = name
    if case_ids is not None:
        unknown = sorted(set(owners) - set(case_ids))
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise InputError(f"{path}: {len(unknown)} case id(s) not in the cache: {shown}")
    return splits


def run_split(cache_path: Path, output: Path, val: float, test: float, seed: int) -> dict[str, list[str]]:
    """Write (or update) ``output`` with a split of the cache's cases; returns the split."""
    return write_split(cache_path, output, val, test, seed)[0]


def write_split(cache_path: Path, output: Path, val: float, test: float,
                seed: int) -> tuple[dict[str, list[str]], int]:
    """``run_split`` that also returns the number of patients (for the command layer's ``summary``)."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise InputError(f"validation fraction {val} and test fraction {test} must be fractions that leave some "
                         "training data")
    check_output(output, inputs=(cache_path,))
    with Cache(cache_path) as cache:
        infos = [cache.info(case_id) for case_id in cache.case_ids()]
    patients = {info.case_id: info.patient for info in infos}
    unscored = {info.case_id for info in infos if not info.has_truth}
    if not patients:
        raise InputError(f"{cache_path}: no successfully preprocessed cases to split")
    existing: dict[str, str] = {}
    if output.exists():
        kept = read_splits(output)
        gone = sorted({c for name in SPLITS for c in kept[name]} - set(patients))
        if gone:
            log.warning(f"{len(gone)} case(s) in {output} are not in the cache and were dropped: {', '.join(gone[:5])}")
        existing = {patients[c]: name for name in SPLITS for c in kept[name] if c in patients}
        log.info(f"Kept the split of {len(existing)} patient(s) in {output}; "
                 f"assigning {len(set(patients.values()) - set(existing))} new patient(s)")
    splits = assign(patients, val, test, seed, existing, unscored)
    left_out = sorted(set(patients) - {c for name in SPLITS for c in splits[name]})
    if left_out:
        log.info(f"{len(left_out)} self-supervised case(s) of validation or test patients are left out of every "
                 f"split (no ground truth to score; in train they would leak): {', '.join(left_out[:5])}")
    if not splits["train"]:
        raise InputError(f"validation fraction {val} and test fraction {test} leave none of the "
                         f"{len(set(patients.values()))} patient(s) for training; lower them")
    document = {**splits, "meta": {"cache": str(cache_path), "seed": seed, "val": val, "test": test}}
    temporary = output.with_name(f".{output.name}.tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, output)
    return splits, len(set(patients.values()))


def summary(splits: dict[str, list[str]], patients: int, output: Path) -> str:
    """``Split: train 3, val 1, test 1 case(s) (5 patients) -> splits.json``."""
    return ("Split: " + ", ".join(f"{name} {len(splits[name])}" for name in SPLITS)
            + f" case(s) ({patients} patients) -> {output}")
