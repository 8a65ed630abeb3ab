"""The numbers the README and the shipped configs state are the numbers the code computes.

Figures in prose go stale silently (a config header once said 184.5 M parameters for a U-Net of
279.53 M, and the README a 37.6 GB peak that `inspect-memory` printed as 38.7 GB). Each figure is
found in the text by a pattern, tied to a shipped config, and compared with the value computed now:
U-Net parameter counts from the network built on the meta device, peaks from the memory model (the
prediction `ctslice inspect-memory` prints, on the volume the config's own header names). A figure
agrees when it equals the computed value to the precision it is written with (38.7 means 38.65-38.75).
Also: the licence and citation files match pyproject.toml.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "ctslice" / "configs"
README = REPO / "README.md"
NUMBER = r"(\d+(?:\.\d+)?)"


def header(name: str) -> str:
    """The leading comment of a shipped config, joined into one line of prose."""
    lines = []
    for line in (CONFIGS / f"{name}.yaml").read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return " ".join(lines)


def agrees(stated: str, computed: float) -> bool:
    decimals = len(stated.partition(".")[2])
    return abs(float(stated) - computed) <= 0.5 * 10 ** -decimals + 1e-9


def config(name: str):
    from ctslice.config import load_config

    return load_config(CONFIGS / f"{name}.yaml")


@functools.cache
def unet_millions(name: str) -> float:
    import torch

    from ctslice.codecs import codec_class
    from ctslice.models.unet import build_unet

    settings = config(name)
    with torch.device("meta"):
        unet = build_unet(settings.model, codec_class(settings.codec.name).latent_channels)
    return sum(p.numel() for p in unet.parameters()) / 1e6


def volume_of(name: str) -> tuple[int, int, int] | None:
    """The --volume of the `ctslice inspect-memory` command in the config's header, if it gives one."""
    match = re.search(r"inspect-memory [^`]*--volume (\d+)x(\d+)x(\d+)", header(name))
    return tuple(int(n) for n in match.groups()) if match else None


@functools.cache
def estimate(name: str):
    """The memory model's prediction for CUDA, as `inspect-memory --config NAME [--volume ...]` makes it."""
    from ctslice.memory import estimate_memory, resolve_geometry

    settings = config(name)
    volume = volume_of(name)
    geometry = resolve_geometry(settings, 5.0, volume or (300, 512, 512))
    return estimate_memory(settings, geometry, "cuda")


def peak_gb(name: str) -> float:
    return estimate(name).training_peak.total / 2**30


def train_step_gb(name: str) -> float:
    return next(s.total for s in estimate(name).training if s.name == "train step") / 2**30


SHIPPED = sorted(path.stem for path in CONFIGS.glob("*.yaml"))
MAISI_CONFIGS = [name for name in SHIPPED if config(name).codec.name == "maisi"]


def claims() -> list[tuple[str, str, str, str]]:
    """(where, config, what, stated number) for every checked figure in the configs and the README."""
    found = []
    for name in SHIPPED:
        text = header(name)
        found += [(f"{name}.yaml", name, "unet", n) for n in re.findall(NUMBER + r" M-parameter U-Net", text)]
        found += [(f"{name}.yaml", name, "peak", n) for n in
                  re.findall(rf"inspect-memory --config {name}\b[^`]*` predicts an? {NUMBER} GB peak", text)]
        found += [(f"{name}.yaml", name, "train step", n) for n in
                  re.findall(rf"a training step needs {NUMBER} GB", text)]
    readme = " ".join(README.read_text(encoding="utf-8").split())
    for name, details in re.findall(r"`configs/(\w+)\.yaml`[^()`]*\(peak ([^)]*)\)", readme):
        found += [("README.md", name, "peak", n) for n in re.findall(r"^" + NUMBER + " GB", details)]
        found += [("README.md", name, "train step", n) for n in re.findall(r"training step " + NUMBER + " GB", details)]
    # The bundled model's card names its recipe, configs/default_model.yaml.
    found += [("README.md", "default_model", "unet", n) for n in re.findall(r"U-Net of " + NUMBER + " M parameters",
                                                                             readme)]
    return found


CLAIMS = claims()


def test_the_figures_are_found_where_they_are_written():
    """The patterns still find what they check: a rewording must not turn the checks off silently."""
    kinds = {(where, name, what) for where, name, what, _ in CLAIMS}
    expected = {("README.md", "default_model", "unet"), ("slice_interpolation_full_medium.yaml",
                "slice_interpolation_full_medium", "unet"), ("slice_interpolation_full_medium.yaml",
                "slice_interpolation_full_medium", "train step"), ("README.md", "slice_interpolation_full_medium",
                "train step")}
    expected |= {(where, name, "peak") for name in MAISI_CONFIGS for where in ("README.md", f"{name}.yaml")}
    assert expected <= kinds, sorted(expected - kinds)


@pytest.mark.parametrize(("where", "name", "what", "stated"), [c for c in CLAIMS if c[2] == "unet"],
                         ids=[f"{c[0]}:{c[1]}" for c in CLAIMS if c[2] == "unet"])
def test_stated_unet_parameter_counts_match_the_network(where, name, what, stated):
    computed = unet_millions(name)
    assert agrees(stated, computed), f"{where} says a {stated} M-parameter U-Net for {name}; it has {computed:.2f} M"


@pytest.mark.slow  # the memory model traces each MAISI config's stages on the meta device: ~10 s per config
@pytest.mark.parametrize(("where", "name", "what", "stated"), [c for c in CLAIMS if c[2] != "unet"],
                         ids=[f"{c[0]}:{c[1]}:{c[2]}" for c in CLAIMS if c[2] != "unet"])
def test_stated_memory_figures_match_the_memory_model(where, name, what, stated):
    computed = peak_gb(name) if what == "peak" else train_step_gb(name)
    assert agrees(stated, computed), f"{where} says {stated} GB ({what}) for {name}; the model predicts {computed:.2f}"


def test_stated_vae_parameter_count_matches_the_network():
    import torch

    from ctslice.codecs.maisi import build_network

    (stated,) = re.findall(r"([\d,]+) parameters, 4 latent channels", README.read_text(encoding="utf-8"))
    with torch.device("meta"):
        network = build_network("meta")
    assert int(stated.replace(",", "")) == sum(p.numel() for p in network.parameters())


# ---------------------------------------------------------------- licence and citation

def pyproject_field(key: str) -> str:
    """A top-level string of pyproject.toml's [project] table (tomllib needs Python 3.11; we support 3.10)."""
    return re.search(rf'^{key} = "([^"]+)"', (REPO / "pyproject.toml").read_text(encoding="utf-8"), re.M)[1]


PYPROJECT = {key: pyproject_field(key) for key in ("name", "version", "license")}


def test_license_file_is_the_apache_2_licence_pyproject_declares():
    assert PYPROJECT["license"] == "Apache-2.0"
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 10_000  # the full text, not a stub


def test_citation_file_is_valid_cff_and_matches_the_package():
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8"))
    assert citation["cff-version"] == "1.2.0"
    for key in ("message", "title", "authors"):  # required by the CFF 1.2.0 schema
        assert citation[key], key
    assert all(author.get("name") or author.get("family-names") for author in citation["authors"])
    assert citation["title"] == PYPROJECT["name"] and citation["license"] == PYPROJECT["license"]
    assert str(citation["version"]) == PYPROJECT["version"]
    titles = " ".join(ref["title"] for ref in citation.get("references", []))
    assert "MAISI" in titles and "MONAI" in titles, titles
    for reference in citation["references"]:
        assert reference["type"] and reference["authors"], reference["title"]
