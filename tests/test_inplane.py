"""In-plane pairs (SR4ZCT / SMORE): an axial region degraded along y or x by the case's slice profile,
turned so that the degraded axis is the model's slice axis; mixed with through-plane pairs in training."""

from __future__ import annotations

import numpy as np
import pytest

from ctslice.config import load_config
from ctslice.data import cache as cache_files
from ctslice.data.inplane import inplane_pair
from ctslice.data.pairs import SliceProfile, self_supervised_case, simulate_pair
from ctslice.data.patches import Patch, PatchDataset, PixelSource
from ctslice.data.phantom import make_phantom
from ctslice.errors import ConfigError
from ctslice.io.volume import Volume


@pytest.mark.parametrize("axis", [-2, -1])
def test_the_thick_side_is_the_slab_average_along_the_chosen_axis(axis):
    region = np.random.default_rng(0).normal(0, 100, (6, 20, 25)).astype(np.float32)
    thick, thin = inplane_pair(region, axis, SliceProfile(5.0, 5.0), thin_spacing=1.0)
    turned = np.moveaxis(region, axis, 0)  # (degraded axis, z, the other in-plane axis)
    np.testing.assert_array_equal(thin.array, turned)
    assert thick.array.shape == (turned.shape[0] // 5, 6, turned.shape[2])
    for i in range(thick.depth):  # thick sample i averages turned samples 5i..5i+4
        np.testing.assert_allclose(thick.array[i], turned[5 * i: 5 * i + 5].mean(axis=0), atol=1e-3)
    # slab i is centred on its samples, on the thin samples' z line
    np.testing.assert_allclose(thick.grid.slice_positions(), 5 * np.arange(thick.depth) + 2.0)
    np.testing.assert_allclose(thin.grid.slice_positions(), np.arange(thin.depth))


def test_an_overlapping_profile_averages_its_thickness_at_its_spacing():
    """2 mm slices every 1.5 mm (0.5 mm overlap) at a 0.5 mm thin spacing: 4 samples wide, 3 apart."""
    region = np.random.default_rng(1).normal(0, 100, (2, 30, 7)).astype(np.float32)
    thick, _ = inplane_pair(region, -2, SliceProfile(2.0, 1.5), thin_spacing=0.5)
    turned = np.moveaxis(region, -2, 0)
    assert thick.array.shape == (10, 2, 7) and thick.spacing[2] == 1.5
    # slab 2: centre at sample 7 (3 x 2 + 1), covering [5, 9]: half of samples 5 and 9, all of 6..8
    expected = (0.5 * turned[5] + turned[6:9].sum(axis=0) + 0.5 * turned[9]) / 4
    np.testing.assert_allclose(thick.array[2], expected, atol=1e-3)


def thick_only_case(seed: int = 0) -> tuple[Volume, object]:
    """A 5 mm scan with 0.5 mm pixels (finer than the 1 mm target), kept as a self-supervised case."""
    thick = simulate_pair(make_phantom(shape=(40, 48, 56), spacing=(0.5, 0.5, 1.0), seed=seed), 5.0, 1.0).thick
    return thick, self_supervised_case(thick, 1.0)


def write_cache(path, pairs: dict) -> None:
    parts = cache_files.parts_dir(path)
    for case_id, pair in pairs.items():
        cache_files.write_part(parts, case_id, pair, source=case_id, content_hash=case_id, patient=case_id,
                               options={"thin_spacing": 1.0, "profile": "slab"})
    cache_files.consolidate_parts(path)


def test_an_inplane_patch_of_a_self_supervised_case_is_its_resampled_region_turned(tmp_path):
    thick, case = thick_only_case()
    write_cache(tmp_path / "cache.h5", {"ss": case})
    source = PixelSource(tmp_path / "cache.h5", ["ss"])
    assert source.pair_case_ids == [] and source.inplane_shape("ss") == (8, 24, 28)  # 0.5 mm pixels -> 1 mm
    cond, thin = source.read(Patch("ss", z=(2, 6), y=(10, 20), x=(3, 13), inplane_axis=-2))
    # 1 mm samples of 0.5 mm pixels fall on every other pixel: linear resampling returns them exactly
    region = thick.array[2:6, 20:40:2, 6:26:2].astype(np.float32)
    np.testing.assert_allclose(thin, np.moveaxis(region, -2, 0), atol=1e-3)
    assert cond.shape == thin.shape == (10, 4, 10)
    # slabs tile the widened region from its start (row 0 here): the condition passes through each slab's
    # mean at its centre (rows 12 and 17: patch samples 2 and 7)
    rows = thick.array[2:6, 0:40:2, 6:26:2].astype(np.float32)
    np.testing.assert_allclose(cond[2], rows[:, 10:15].mean(axis=1), atol=0.05)
    np.testing.assert_allclose(cond[7], rows[:, 15:20].mean(axis=1), atol=0.05)


def test_the_mix_draws_inplane_pairs_from_every_case_and_through_plane_pairs_from_pairs_only(tmp_path):
    _, case = thick_only_case()
    pair = simulate_pair(make_phantom(shape=(40, 48, 48), spacing=(0.8, 0.8, 1.0), seed=1), 5.0, 1.0)
    write_cache(tmp_path / "cache.h5", {"pair": pair, "ss": case})
    source = PixelSource(tmp_path / "cache.h5", ["pair", "ss"])
    config = load_config(None, ["data.inplane_fraction=0.5", "data.patch_size=8", "data.patch_thick_slices=2"])
    dataset = PatchDataset(source, config.data, seed=0)
    plans = [dataset.plan(k) for k in range(200)]
    inplane = [p for p in plans if p.inplane_axis is not None]
    assert 70 < len(inplane) < 130
    assert {p.case_id for p in inplane} == {"pair", "ss"} and {p.inplane_axis for p in inplane} == {-2, -1}
    assert {p.case_id for p in plans if p.inplane_axis is None} == {"pair"}
    shapes = {tuple(dataset[k]["thin"].shape) for k in range(6)} | {tuple(dataset[k]["cond"].shape) for k in range(6)}
    assert shapes == {(1, 10, 8, 8)}  # one batch can hold both kinds
    with pytest.raises(Exception, match="set data.inplane_fraction to 1"):
        PatchDataset(PixelSource(tmp_path / "cache.h5", ["ss"]), config.data, seed=0)


def test_cases_with_pixels_coarser_than_the_thin_spacing_give_no_inplane_pairs(tmp_path):
    """3 mm pixels resampled to 1 mm are no 1 mm truth: such a case gives through-plane pairs only."""
    _, case = thick_only_case()
    coarse = simulate_pair(make_phantom(shape=(40, 16, 16), spacing=(3.0, 3.0, 1.0), seed=2), 5.0, 1.0)
    write_cache(tmp_path / "cache.h5", {"coarse": coarse, "ss": case})
    config = load_config(None, ["data.inplane_fraction=0.5", "data.patch_size=8", "data.patch_thick_slices=2"])
    source = PixelSource(tmp_path / "cache.h5", ["coarse", "ss"])
    assert source.inplane_case_ids == ["ss"]
    plans = [PatchDataset(source, config.data, seed=0).plan(k) for k in range(100)]
    assert {p.case_id for p in plans if p.inplane_axis is not None} == {"ss"}
    assert {p.case_id for p in plans if p.inplane_axis is None} == {"coarse"}
    with pytest.raises(Exception, match="no training case has axial pixels as fine as its thin spacing"):
        PatchDataset(PixelSource(tmp_path / "cache.h5", ["coarse"]), config.data, seed=0)


def test_without_inplane_pairs_the_draws_are_unchanged(dataset):
    """Fraction 0 draws exactly the patches a run drew before in-plane pairs existed."""
    cache, _ = dataset
    config = load_config(None, ["data.patch_size=16", "data.patch_thick_slices=2"])
    source = PixelSource(cache, ["case0", "case1"])
    patches = PatchDataset(source, config.data, seed=3)
    for k in range(20):
        rng = np.random.default_rng([3, k])
        assert patches.plan(k).case_id == ["case0", "case1"][int(rng.integers(2))]
        assert patches.plan(k).inplane_axis is None


@pytest.mark.parametrize("override, message", [
    ("data.inplane_fraction=1.5", "data.inplane_fraction must be a finite number from 0 to 1, got 1.5"),
    ("data.inplane_fraction=-0.1", "data.inplane_fraction must be a finite number from 0 to 1"),
    ("data.inplane_fraction=.nan", "data.inplane_fraction must be a finite number from 0 to 1"),
    ("data.inplane_fraction=half", "data.inplane_fraction must be float"),
    ("data.inplane_fractoin=0.5", "did you mean 'data.inplane_fraction'"),
])
def test_the_fraction_is_checked_like_every_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(None, [override])


def test_whole_volumes_have_no_inplane_pairs():
    with pytest.raises(ConfigError, match="data.whole_volumes trains on whole volumes"):
        load_config(None, ["data.whole_volumes=true", "data.inplane_fraction=0.2"])
    assert load_config(None, ["data.inplane_fraction=1"]).data.inplane_fraction == 1.0


def test_an_inplane_batch_encodes_with_the_maisi_codec(tmp_path, network):
    """In-plane pairs are made in pixels and encoded like any pixel batch (the latent cache cannot hold them)."""
    import torch

    from ctslice.codecs.maisi import MaisiCodec
    from ctslice.training.latents import encode_batch, uses_latent_cache

    _, case = thick_only_case()
    write_cache(tmp_path / "cache.h5", {"ss": case})
    config = load_config(None, ["codec.name=maisi", "data.inplane_fraction=1", "data.patch_size=8",
                                "data.patch_thick_slices=2"])
    assert config.data.cache_latents and not uses_latent_cache(config.data)
    dataset = PatchDataset(PixelSource(tmp_path / "cache.h5", ["ss"], MaisiCodec.compression), config.data, seed=0)
    batch = {k: v[None] for k, v in dataset[0].items()}
    assert batch["thin"].shape == (1, 1, 12, 8, 8)  # whole compression steps: 2 x 5 = 10 -> 12
    thin, cond = encode_batch(batch, MaisiCodec(network, encode_chunk=4096, decode_chunk=4096), torch.device("cpu"))
    assert thin.shape == cond.shape == (1, 4, 3, 2, 2) and torch.isfinite(thin).all()


def test_a_short_run_mixes_inplane_pairs_from_a_self_supervised_case(tmp_path, monkeypatch):
    from ctslice.data.preprocess import PreprocessOptions, run_preprocess
    from ctslice.data.splits import run_split
    from ctslice.io import write_volume
    from ctslice.training.run_log import read_log
    from ctslice.training.trainer import train
    from tests.tiny import thick_phantom, tiny_config

    for seed in range(3):
        write_volume(make_phantom(shape=(40, 32, 32), spacing=(12.0, 12.0, 1.0), seed=seed),
                     tmp_path / "raw" / f"case{seed}.nii.gz")
    thick = thick_phantom(7)  # relabelled with pixels finer than the 1 mm target, as in-plane pairs need
    write_volume(Volume(thick.array, (0.8, 0.8, 5.0), thick.origin, thick.direction),
                 tmp_path / "raw" / "thick_only.nii.gz")
    cache, splits = tmp_path / "cache.h5", tmp_path / "splits.json"
    run_preprocess([tmp_path / "raw"], cache, PreprocessOptions(5.0, 1.0, min_slices=4))
    assert "thick_only" in run_split(cache, splits, val=0.34, test=0.0, seed=0)["train"]
    reads = []
    read_inplane = PixelSource._read_inplane
    monkeypatch.setattr(PixelSource, "_read_inplane", lambda self, patch: reads.append(patch) or read_inplane(
        self, patch))
    config = tiny_config((cache, splits), "training.max_steps=3", "data.inplane_fraction=0.5",
                         "validation.val_samples=1", "training.val_interval=100")
    train(config, tmp_path / "run")
    records = read_log(tmp_path / "run")
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) for r in records if r["kind"] == "train")
    assert [r["step"] for r in records if r["kind"] == "final_validation"] == [3]
    assert "thick_only" in {p.case_id for p in reads} and {p.inplane_axis for p in reads} == {-2, -1}
    assert not (tmp_path / "run" / "latents.h5").exists()  # in-plane pairs: each batch is encoded as it comes
