"""The memory model sizes the trainer's patches with the trainer's own rules, for every shipped config.

Both sides read the same cache: the trainer through its patch sources (``PixelSource``, or
``LatentSource`` over the latent cache it builds) and ``PatchDataset``, the memory model through
``resolve_geometry`` and ``workload.pixel_patch`` / ``latent_size``. The caches are synthetic (volumes
of realistic sizes that are never written: HDF5 allocates nothing until data is), so that shipped
patch sizes are tested both unclipped and clipped to a small volume.
"""

from __future__ import annotations

from dataclasses import replace

import h5py
import numpy as np
import pytest

from ctslice.codecs import codec_class
from ctslice.config import load_config, shipped_configs
from ctslice.data.cache import CASE_ATTRS, FORMAT_VERSION, VOLUME_ATTRS
from ctslice.data.patches import PatchDataset, PixelSource
from ctslice.memory.estimate import resolve_geometry
from ctslice.memory.workload import latent_size, pixel_patch
from ctslice.training.latents import LatentSource

GEOMETRIES = {  # case id -> (thick/thin ratio, thin shape (D, H, W))
    "large": {"a": (5.0, (300, 512, 512)), "b": (2.5, (182, 400, 384))},
    "one small": {"a": (5.0, (300, 512, 512)), "c": (3.0, (61, 96, 130))},
}


def write_cache(path, cases: dict) -> None:
    """A cache in ``Cache``'s layout whose volumes have shapes but no data."""
    with h5py.File(path, "w") as file:
        file.attrs["format_version"] = FORMAT_VERSION
        file.create_group("failures")
        for case_id, (ratio, shape) in cases.items():
            group = file.create_group(f"cases/{case_id}")
            group.attrs.update({name: "x" for name in CASE_ATTRS})
            group.attrs.update({"ratio": ratio, "options": "{}"})
            thick = (int(np.ceil(shape[0] / ratio)), *shape[1:])
            for which, size in (("thin", shape), ("thick", thick)):
                dataset = group.create_dataset(which, shape=size, dtype="int16")
                dataset.attrs.update({name: [0.0, 0.0, 0.0] for name in VOLUME_ATTRS})


def write_latents(path, cases: dict, codec) -> None:
    """The latent cache as ``build_latent_cache`` lays it out (encoded shapes are ``Codec.latent_size``)."""
    with h5py.File(path, "w") as store:
        for case_id, (ratio, shape) in cases.items():
            group = store.create_group(case_id)
            for which in ("cond", "thin"):
                group.create_dataset(which, shape=(codec.latent_channels, *codec.latent_size(shape)), dtype="f4")
            group.attrs["ratio"] = ratio


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_memory_model_and_trainer_agree_on_patch_and_latent_shapes(name, geometry, tmp_path):
    cases = GEOMETRIES[geometry]
    write_cache(tmp_path / "cache.h5", cases)
    base = load_config(shipped_configs()[name][0], [f"data.cache={tmp_path / 'cache.h5'}"])
    codec = codec_class(base.codec.name)
    write_latents(tmp_path / "latents.h5", cases, codec)
    for cache_latents in (False, True):
        # through-plane patches only: these shape-only caches have no spacings to place in-plane pairs with
        config = replace(base, data=replace(base.data, cache_latents=cache_latents, whole_volumes=False,
                                            inplane_fraction=0.0))
        predicted = resolve_geometry(config)
        pixels = PatchDataset(PixelSource(tmp_path / "cache.h5", list(cases), codec.compression), config.data, 0)
        latents = PatchDataset(LatentSource(tmp_path / "latents.h5", list(cases), codec), config.data, 0)
        assert pixel_patch(config, predicted) == pixels.patch_shape, (name, geometry)
        assert latent_size(config, pixel_patch(config, predicted)) == latents.patch_shape, (name, geometry)
        assert codec.latent_size(pixels.patch_shape) == latents.patch_shape  # encoding a pixel patch: the latent one
