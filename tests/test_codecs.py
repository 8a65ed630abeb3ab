"""Codecs: the released MAISI config, strict loading of its weights, frozen state, intensity maps, identity.

The pretrained weights cannot be downloaded here, so a randomly initialised network of the released
config is saved in the released format (a plain state dict) and loaded back through the real code.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctslice.codecs import CODECS, Codec, IdentityCodec, MaisiCodec, build_codec, latent_scale_factor
from ctslice.codecs.maisi import CHECKPOINT_ENV, build_network
from ctslice.codecs.weights import load_strict
from ctslice.errors import InputError

RELEASED_PARAMETERS = 20_944_897
RELEASED_TENSORS = 130


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return build_network()


@pytest.fixture(scope="module")
def checkpoint(network, tmp_path_factory):
    """The random network saved like the released ``autoencoder_v1.pt``: a plain state dict."""
    path = tmp_path_factory.mktemp("vae") / "autoencoder_v1.pt"
    torch.save(network.state_dict(), path)
    return path


@pytest.fixture(autouse=True)
def no_env_checkpoint(monkeypatch):
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sb = b.state_dict()
    return all(torch.equal(v, sb[k]) for k, v in a.state_dict().items())


def test_released_config_has_the_released_size(network):
    assert sum(p.numel() for p in network.parameters()) == RELEASED_PARAMETERS
    assert len(network.state_dict()) == RELEASED_TENSORS


def test_load_round_trip_plain_state_dict(network, checkpoint, capsys):
    codec = build_codec("maisi", checkpoint=str(checkpoint))
    assert isinstance(codec, MaisiCodec)
    assert _same_weights(codec.network, network)
    err = capsys.readouterr().err
    assert "Loaded 130/130 parameters (100.0%)" in err
    assert "VAE: 20,944,897 (0 trainable)" in err
    assert codec.parameter_count() == RELEASED_PARAMETERS


def test_load_round_trip_wrapped_state_dict(network, tmp_path):
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": network.state_dict(), "epoch": 273}, path)
    assert _same_weights(build_codec("maisi", checkpoint=path).network, network)


def test_environment_variable_is_used_and_the_argument_overrides_it(network, checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv(CHECKPOINT_ENV, str(checkpoint))
    assert _same_weights(build_codec("maisi").network, network)
    with pytest.raises(InputError, match="nowhere.pt does not exist"):
        build_codec("maisi", checkpoint=tmp_path / "nowhere.pt")


def test_no_checkpoint_at_all_says_how_to_give_one():
    with pytest.raises(InputError, match=CHECKPOINT_ENV) as caught:
        build_codec("maisi")
    assert caught.value.exit_code == 2
    assert "codec.checkpoint" in str(caught.value)


def _corrupt(state: dict, how: str) -> dict:
    state = dict(state)
    first = next(iter(state))
    if how == "missing":
        del state[first]
    elif how == "unexpected":
        state["encoder.extra.weight"] = torch.zeros(1)
    elif how == "shape":
        state[first] = torch.zeros(3)
    return state


def _write(path, content):
    """Writes ``content`` (text, or anything ``torch.save`` takes) to ``path`` and returns the path."""
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        torch.save(content, path)
    return path


LOADING_ERRORS = {
    "missing-file": (lambda p, s: p.with_name("absent.pt"), "absent.pt does not exist"),
    "directory": (lambda p, s: p.parent, "is a directory"),
    "not-a-checkpoint": (lambda p, s: _write(p, "not a checkpoint"), "is not a PyTorch checkpoint"),
    "not-a-dict": (lambda p, s: _write(p, [torch.zeros(1)]), "holds no state dict"),
    "no-tensors": (lambda p, s: _write(p, {"step": 3}), "holds no state dict"),
    "missing-key": (lambda p, s: _write(p, _corrupt(s, "missing")), "1 missing key: encoder.blocks.0"),
    "unexpected-key": (lambda p, s: _write(p, _corrupt(s, "unexpected")), "1 unexpected key: encoder.extra.weight"),
    "shape-mismatch": (lambda p, s: _write(p, _corrupt(s, "shape")), r"1 shape mismatch .*: \S+ \(3,\) vs \(64, 1,"),
}


@pytest.mark.parametrize(("make", "message"), LOADING_ERRORS.values(), ids=LOADING_ERRORS.keys())
def test_loading_errors_are_one_clear_input_error(network, tmp_path, make, message):
    path = make(tmp_path / "vae.pt", network.state_dict())
    with pytest.raises(InputError, match=message) as caught:
        build_codec("maisi", checkpoint=path)
    assert "\n" not in str(caught.value)


def test_a_mismatched_checkpoint_leaves_the_network_untouched(network):
    target = build_network()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    state = network.state_dict()
    last = list(state)[-1]
    state = {**state, last: torch.zeros(2)}  # every tensor but the last one would fit
    with pytest.raises(InputError, match="shape mismatch"):
        load_strict(target, state, "vae.pt")
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


def test_unknown_codec_names_the_valid_ones():
    with pytest.raises(InputError, match="unknown codec 'vqgan'; choose one of: maisi, identity"):
        build_codec("vqgan")
    assert CODECS == ("maisi", "identity")


def test_maisi_codec_is_frozen_and_builds_no_graph(network):
    codec = MaisiCodec(network).to("cpu")
    assert not isinstance(codec, nn.Module)
    assert not codec.network.training
    assert not any(p.requires_grad for p in codec.network.parameters())
    x = torch.rand(1, 1, 8, 8, 8, requires_grad=True)
    with torch.enable_grad():
        z = codec.encode(x)
        y = codec.decode(z)
    assert z.grad_fn is None and not z.requires_grad
    assert y.grad_fn is None and not y.requires_grad
    assert not torch.is_inference(z)  # usable as an input to a trained model's backward pass


def test_cpu_never_uses_fp16_group_norm(network):
    codec = MaisiCodec(network).to("cpu")
    flags = [m.norm_float16 for m in codec.network.modules() if hasattr(m, "norm_float16")]
    assert flags and not any(flags)


@pytest.mark.parametrize(
    ("key", "value"), [("encode_chunk", 30), ("encode_chunk", 0), ("decode_chunk", 0), ("overlap", 6), ("overlap", -4)]
)
def test_chunk_settings_are_checked(network, key, value):
    with pytest.raises(InputError, match=f"codec.{key}"):
        MaisiCodec(network, **{key: value})


def test_odd_sizes_are_padded_by_edge_replication_and_cropped_back_exactly(network):
    """Also: the codec's GroupNorm (used on every run) gives what MONAI's own forward gives."""
    codec = MaisiCodec(network)
    x = torch.rand(2, 1, 9, 6, 5)
    z = codec.encode(x)
    assert z.shape == (2, 4, 3, 2, 2) == (2, 4, *codec.latent_size((9, 6, 5)))
    full = codec.decode(z)
    assert full.shape == (2, 1, 12, 8, 8)
    with torch.no_grad():
        expected_z = network.encode(F.pad(x, (0, 3, 0, 2, 0, 3), mode="replicate"))[0]
        expected_full = network.decode(z)
    for got, expected in ((z, expected_z), (full, expected_full)):  # equal up to float rounding
        assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert torch.equal(codec.decode(z, size=(9, 6, 5)), full[..., :9, :6, :5])
    with pytest.raises(ValueError, match="cannot crop"):
        codec.decode(z, size=(13, 6, 5))


def test_sampling_draws_around_the_mean_reproducibly(network):
    codec = MaisiCodec(network)
    x = torch.rand(1, 1, 8, 8, 8)
    mean = codec.encode(x)
    a = codec.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
    b = codec.encode(x, sample=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert not torch.allclose(a, mean)
    assert torch.equal(codec.encode(x), mean)  # the mean is deterministic


def test_maisi_intensity_mapping(network):
    codec = MaisiCodec(network)
    hu = torch.tensor([-3000.0, -1000.0, 0.0, 1000.0, 3000.0])
    assert torch.equal(codec.normalize(hu), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    assert torch.equal(
        codec.denormalize(torch.tensor([-0.5, 0.0, 0.5, 1.0, 2.0])),
        torch.tensor([-1000.0, -1000.0, 0.0, 1000.0, 1000.0]),
    )


def test_identity_codec_round_trip_is_exact():
    codec = build_codec("identity")
    assert isinstance(codec, IdentityCodec) and isinstance(codec, Codec)
    assert (codec.latent_channels, codec.compression, codec.hu_window) == (1, (1, 1, 1), (-1024.0, 2048.0))
    hu = torch.randint(-1024, 2049, (2, 1, 7, 5, 3), generator=torch.Generator().manual_seed(0)).to(torch.int16)
    x = codec.normalize(hu)
    assert x.min() >= 0 and x.max() <= 1
    z = codec.encode(x)
    assert torch.equal(codec.decode(z), x)
    assert z.data_ptr() != x.data_ptr()
    assert torch.equal(codec.denormalize(codec.decode(z, size=(7, 5, 3))).round().to(torch.int16), hu)
    assert codec.latent_size((7, 5, 3)) == (7, 5, 3)
    assert codec.parameter_count() == 0


def test_latent_scale_factor_is_one_over_std_and_streams():
    g = torch.Generator().manual_seed(0)
    parts = [3.0 + 0.5 * torch.randn(1, 4, 6, 5, 5, generator=g) for _ in range(3)]
    whole = torch.cat([p.flatten() for p in parts])
    expected = 1.0 / whole.double().std(correction=0).item()
    assert latent_scale_factor(whole) == pytest.approx(expected, rel=1e-9)
    assert latent_scale_factor(iter(parts)) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(InputError, match="constant"):
        latent_scale_factor(torch.full((2, 4, 3, 3, 3), 0.3))
