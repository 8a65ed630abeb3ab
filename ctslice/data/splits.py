"""Patient-level train/val/test splits of the cached cases, in ``splits.json``.

Each patient draws a number in [0, 1) from a hash of (seed, patient pseudonym); the draw alone decides
its split (test below ``test``, val below ``test + val``, else train). That makes the split
deterministic for a seed and stable when cases are added: nobody moves because somebody joined. Only
on tiny data sets, where the draws leave a requested split empty, is the patient nearest to that
split's interval moved into it. An existing ``splits.json`` at the output path is respected: its
assignments are kept and only new cases are assigned. Failed cases are never in the cache's case list,
so they never enter a split.

File format (a user may write it by hand)::

    {"train": ["case_a", ...], "val": [...], "test": [...], "meta": {"seed": 42, ...}}
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ctslice.console import console, stdout
from ctslice.data.cache import Cache
from ctslice.errors import InputError

SPLITS = ("train", "val", "test")


def patient_draw(patient: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{patient}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(patients: dict[str, str], val: float, test: float, seed: int) -> dict[str, list[str]]:
    """Split case ids by patient. ``patients`` maps case id -> patient pseudonym."""
    draws = {p: patient_draw(p, seed) for p in set(patients.values())}
    bounds = {"test": (0.0, test), "val": (test, test + val)}
    split_of = {p: "test" if u < test else "val" if u < test + val else "train" for p, u in draws.items()}
    for name, fraction in (("test", test), ("val", val)):
        members = [p for p, s in split_of.items() if s == name]
        trainers = [p for p, s in split_of.items() if s == "train"]
        if fraction > 0 and not members and len(trainers) >= 2:
            low, high = bounds[name]
            nearest = min(trainers, key=lambda p: min(abs(draws[p] - low), abs(draws[p] - high)))
            split_of[nearest] = name
    return {name: sorted(c for c, p in patients.items() if split_of[p] == name) for name in SPLITS}


def read_splits(path: Path, case_ids: list[str] | None = None) -> dict[str, list[str]]:
    """Load and check a splits file: lists of strings, no case in two splits, ids known to the cache."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: no such splits file (create it with `ctslice split`)") from None
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(data, dict) or not any(name in data for name in SPLITS):
        raise InputError(f"{path}: expected an object with train/val/test lists")
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
                raise InputError(f"{path}: case {case_id!r} is in both '{owners[case_id]}' and '{name}'")
            owners[case_id] = name
    if case_ids is not None:
        unknown = sorted(set(owners) - set(case_ids))
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            raise InputError(f"{path}: {len(unknown)} case id(s) not in the cache: {shown}")
    return splits


def run_split(cache_path: Path, output: Path, val: float, test: float, seed: int) -> dict[str, list[str]]:
    """Write (or update) ``output`` with a split of the cache's cases and print the counts."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise InputError(f"--val {val} and --test {test} must be fractions that leave some training data")
    with Cache(cache_path) as cache:
        patients = {case_id: cache.info(case_id).patient for case_id in cache.case_ids()}
    if not patients:
        raise InputError(f"{cache_path}: no successfully preprocessed cases to split")
    fresh = assign(patients, val, test, seed)
    if output.exists():
        kept = read_splits(output)
        known = {c for name in SPLITS for c in kept[name]}
        gone = sorted(known - set(patients))
        if gone:
            console.print(f"[yellow]{len(gone)} case(s) in {output} are not in the cache and were dropped: "
                          f"{', '.join(gone[:5])}")
        split_of = {c: name for name in SPLITS for c in fresh[name]}
        patient_split = {patients[c]: name for name in SPLITS for c in kept[name] if c in patients}
        for case_id in set(patients) - known:  # a new case joins its patient's existing split
            split_of[case_id] = patient_split.get(patients[case_id], split_of[case_id])
        for name in SPLITS:
            split_of.update({c: name for c in kept[name] if c in patients})
        splits = {name: sorted(c for c, s in split_of.items() if s == name) for name in SPLITS}
        console.print(f"Kept the {len(known) - len(gone)} existing assignment(s) in {output}; "
                      f"assigned {len(set(patients) - known)} new case(s)")
    else:
        splits = fresh
    document = {**splits, "meta": {"cache": str(cache_path), "seed": seed, "val": val, "test": test}}
    temporary = output.with_name(f".{output.name}.tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(temporary, output)
    stdout.print("Split: " + ", ".join(f"{name} {len(splits[name])}" for name in SPLITS)
                 + f" case(s) ({len(set(patients.values()))} patients) -> {output}")
    return splits
