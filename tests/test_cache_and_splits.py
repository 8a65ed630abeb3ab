"""The HDF5 cache (layout, atomic merge, failures) and patient-level splits."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from ctslice.data import cache as cache_files
from ctslice.data.cache import Cache, Failure
from ctslice.data.pairs import self_supervised_case, simulate_pair
from ctslice.data.splits import assign, read_splits, run_split
from ctslice.errors import InputError
from ctslice.io.volume import Volume


def small_pair(seed=0, depth=20):
    rng = np.random.default_rng(seed)
    array = rng.integers(-1000, 1500, (depth, 10, 12)).astype(np.int16)
    return simulate_pair(Volume(array, (0.7, 0.7, 1.0), (1.0, 2.0, 3.0)), 5.0, 1.0)


def thick_only(seed=0, depth=6):
    """A self-supervised case: a 5 mm scan without a thin partner."""
    rng = np.random.default_rng(seed)
    array = rng.integers(-1000, 1500, (depth, 10, 12)).astype(np.int16)
    return self_supervised_case(Volume(array, (0.7, 0.7, 5.0), (1.0, 2.0, 3.0)), 1.0)


def write_cache(path, case_ids, patients=None, failures=(), self_supervised=()):
    parts = cache_files.parts_dir(path)
    for k, case_id in enumerate(case_ids):
        patient = (patients or {}).get(case_id, case_id)
        pair = thick_only(k) if case_id in self_supervised else small_pair(k)
        cache_files.write_part(parts, case_id, pair, source=f"/data/{case_id}.nii.gz",
                               content_hash=f"h{k}", patient=patient, options={"thin_spacing": 1.0})
    cache_files.consolidate(path, sorted(parts.glob("*.h5")) + ([path] if path.exists() else []), failures)
    cache_files.remove_parts(path)


def test_cache_layout_round_trip(tmp_path):
    path = tmp_path / "cache.h5"
    write_cache(path, ["a", "b"], failures=[Failure("bad", "/data/bad.nii.gz", "constant volume")])
    pair = small_pair(0)
    with Cache(path) as cache:
        assert cache.case_ids() == ["a", "b"]
        info = cache.info("a")
        assert (info.pair_kind, info.ratio, info.content_hash) == ("simulated", 5.0, "h0")
        thin = cache.volume("a", "thin")
        np.testing.assert_array_equal(thin.array, pair.thin.array)
        assert thin.spacing == pair.thin.spacing and thin.origin == pair.thin.origin
        assert cache.volume("a", "thick").origin == pair.thick.origin
        assert cache.failures() == [Failure("bad", "/data/bad.nii.gz", "constant volume")]
    with h5py.File(path) as file:  # plain h5py sees int16, chunked, compressed datasets
        dataset = file["cases/a/thin"]
        assert dataset.dtype == np.int16 and dataset.chunks is not None and dataset.compression == "gzip"
        assert file.attrs["format_version"] == cache_files.FORMAT_VERSION
    assert not cache_files.parts_dir(path).exists()


def test_merge_keeps_old_cases_and_newest_version_wins(tmp_path):
    path = tmp_path / "cache.h5"
    write_cache(path, ["a", "b"])
    cache_files.write_part(cache_files.parts_dir(path), "b", small_pair(7), source="/data/b.nii.gz",
                           content_hash="new", patient="b", options={})
    cache_files.consolidate(path, [cache_files.parts_dir(path) / "b.h5", path])
    with Cache(path) as cache:
        assert cache.case_ids() == ["a", "b"]
        assert cache.info("b").content_hash == "new"
        assert cache.info("a").content_hash == "h0"


def test_a_case_that_now_fails_replaces_its_old_entry_and_a_success_clears_its_failure(tmp_path):
    path = tmp_path / "cache.h5"
    write_cache(path, ["a", "b"], failures=[Failure("c", "c.nii", "truncated")])
    cache_files.consolidate(path, [path], [Failure("a", "a.nii", "now corrupt")])
    with Cache(path) as cache:
        assert cache.case_ids() == ["b"]
        assert {f.case_id for f in cache.failures()} == {"a", "c"}
    write_cache(path, ["c"])
    with Cache(path) as cache:
        assert "c" in cache.case_ids()
        assert {f.case_id for f in cache.failures()} == {"a"}


def test_unreadable_or_foreign_cache_is_a_clear_input_error(tmp_path):
    with pytest.raises(InputError, match="no such cache"):
        Cache(tmp_path / "missing.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(InputError, match="not a readable HDF5 cache"):
        Cache(junk)
    foreign = tmp_path / "foreign.h5"
    h5py.File(foreign, "w").close()
    with pytest.raises(InputError, match="not a ctslice cache"):
        Cache(foreign)
    with h5py.File(foreign, "a") as file:
        file.attrs["format_version"] = 99
    with pytest.raises(InputError, match="cache format 99"):
        Cache(foreign)


def test_split_is_patient_level_deterministic_and_has_the_requested_fractions():
    patients = {f"case{k:03d}": f"patient{k // 2}" for k in range(200)}  # two cases per patient
    first = assign(patients, val=0.15, test=0.10, seed=42)
    assert first == assign(patients, val=0.15, test=0.10, seed=42)
    assert first != assign(patients, val=0.15, test=0.10, seed=43)
    split_of = {c: name for name, members in first.items() for c in members}
    assert all(split_of[f"case{2 * p:03d}"] == split_of[f"case{2 * p + 1:03d}"] for p in range(100))
    assert (len(first["test"]), len(first["val"]), len(first["train"])) == (20, 30, 150)


def test_split_is_stable_when_cases_are_added(tmp_path):
    path = tmp_path / "cache.h5"
    write_cache(path, [f"c{k}" for k in range(10)])
    out = tmp_path / "splits.json"
    first = run_split(path, out, val=0.2, test=0.2, seed=3)
    write_cache(path, [f"n{k}" for k in range(10)])
    second = run_split(path, out, val=0.2, test=0.2, seed=3)
    for name, members in first.items():
        assert set(members) <= set(second[name])
    assert (len(second["test"]), len(second["val"])) == (4, 4)


def test_tiny_data_sets_still_get_a_validation_and_test_case():
    splits = assign({f"c{k}": f"p{k}" for k in range(5)}, val=0.15, test=0.10, seed=42)
    assert len(splits["val"]) == 1 and len(splits["test"]) == 1 and len(splits["train"]) == 3


def test_run_split_writes_json_keeps_existing_assignments_and_excludes_failures(tmp_path, cli):
    path = tmp_path / "cache.h5"
    write_cache(path, ["a", "b", "c", "d"], failures=[Failure("bad", "bad.nii", "2D image")])
    out = tmp_path / "splits.json"
    result = cli("split", path, "-o", out, "--seed", "1")
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text(encoding="utf-8"))
    assert sorted(document["train"] + document["val"] + document["test"]) == ["a", "b", "c", "d"]
    # a user moves a case by hand; re-running keeps that and assigns the new case
    for name in ("train", "val", "test"):
        document[name] = [c for c in document[name] if c != "a"]
    document["test"].append("a")
    out.write_text(json.dumps(document), encoding="utf-8")
    write_cache(path, ["e"])
    run_split(path, out, val=0.15, test=0.10, seed=1)
    updated = read_splits(out, ["a", "b", "c", "d", "e"])
    assert "a" in updated["test"]
    assert sorted(sum(updated.values(), [])) == ["a", "b", "c", "d", "e"]


def test_user_written_splits_are_checked(tmp_path):
    path = tmp_path / "splits.json"
    path.write_text(json.dumps({"train": ["a", "b"], "val": ["b"], "test": []}), encoding="utf-8")
    with pytest.raises(InputError, match="'b' is in both 'train' and 'val'"):
        read_splits(path, ["a", "b"])
    path.write_text(json.dumps({"train": ["a", "zz"], "val": [], "test": []}), encoding="utf-8")
    with pytest.raises(InputError, match="1 case id.*not in the cache: zz"):
        read_splits(path, ["a"])
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match="not valid JSON"):
        read_splits(path)


def test_self_supervised_cases_are_cached_without_a_thin_volume_and_split_into_train_only(tmp_path):
    """They have no ground truth to score: train only, and val/test fractions count scorable patients."""
    path = tmp_path / "cache.h5"
    names = [f"c{k}" for k in range(8)] + ["s0", "s1", "s2", "shared"]
    patients = {"shared": "c0"}  # a thick-only scan of the patient of pair c0
    write_cache(path, names, patients=patients, self_supervised={"s0", "s1", "s2", "shared"})
    with Cache(path) as cache:  # not taken for a damaged entry, though it has no thin volume
        info = cache.info("s0")
        assert (info.pair_kind, info.has_truth, info.ratio, info.profile.overlap) == ("self-supervised", False, 5.0, 0)
    for seed in range(5):
        splits = run_split(path, tmp_path / f"splits{seed}.json", val=0.25, test=0.25, seed=seed)
        assert {"s0", "s1", "s2"} <= set(splits["train"])
        assert (len(splits["val"]), len(splits["test"])) == (2, 2)  # a quarter of the 8 scorable patients each
        assert not {"s0", "s1", "s2", "shared"} & set(splits["val"] + splits["test"])
        # the thick-only scan of a val/test patient is in no split: in train it would leak that patient
        assert ("shared" in splits["train"]) == ("c0" in splits["train"])
