"""Block-wise chunked execution of the MAISI VAE: derived halos, exactness, and the choice of method.

Same stated tolerance as ``test_codec_chunking.py``: max |chunked - whole| <= 1e-4 * max |whole|
on the released config with random weights, float32 on CPU (measured about 2e-6).
"""

from __future__ import annotations

import pytest
import torch
from monai.apps.generation.maisi.networks.autoencoderkl_maisi import MaisiUpsample

from ctslice.codecs.blocks import describe, describe_all, run_blockwise, storage_bytes
from ctslice.codecs.chunking import plan_chunks, run_in_chunks
from ctslice.codecs.maisi import MaisiCodec, build_network
from ctslice.codecs.strategy import plan
from tests.test_codec_chunking import TOLERANCE, relative_difference, z_varying_volume

pytestmark = pytest.mark.usefixtures("one_thread")
CPU = torch.device("cpu")


def _blocks(network):
    """(part, index, block) for every block of the encoder and decoder, with its input channels."""
    for part in (network.encoder, network.decoder):
        channels = 1 if part is network.encoder else 4
        for index, block in enumerate(part.blocks):
            yield part, index, block, channels
            channels = describe(block).out_channels


def test_derived_halo_is_each_blocks_reach_along_z_rounded_up_to_its_stride():
    """The reach is measured from the gradient's support, GroupNorm kept to its affine part."""
    torch.manual_seed(0)
    network = build_network()  # a fresh one: its GroupNorms are replaced below
    for norm in network.modules():
        if isinstance(norm, torch.nn.GroupNorm):
            norm.forward = lambda x, norm=norm: x * norm.weight.view(1, -1, 1, 1, 1)
    halos = []
    for _, _, block, channels in _blocks(network):
        spec = describe(block)
        x = torch.rand(1, channels, 24, 2, 2, requires_grad=True)
        y = block(x)
        scale = y.shape[2] / x.shape[2]
        y[:, :, int(8 * scale) : int(10 * scale)].sum().backward()  # owned input slices 8 and 9
        touched = x.grad.abs().sum(dim=(0, 1, 3, 4)).nonzero().flatten()
        reach = max(8 - touched.min().item(), touched.max().item() - 9)
        assert reach <= spec.halo < reach + spec.stride, type(block).__name__
        halos.append(spec.halo)
    # conv, 2 res blocks, down, 2 res, down, 2 res, norm, conv; then conv, 2 res, up, 2 res, up, 2 res, norm, conv
    assert halos == [1, 2, 2, 2, 2, 2, 2, 2, 2, 0, 1] + [1, 2, 2, 1, 2, 2, 1, 2, 2, 0, 1]


def test_a_halo_short_of_the_derived_one_breaks_exactness_and_the_derived_one_does_not(network):
    """Each block with a halo, alone, on a z-varying activation, in chunks of 4 (plus halo) slices."""
    checked = 0
    for _, _, block, channels in _blocks(network):
        spec = describe(block)
        if spec.halo == 0:
            continue
        g = torch.Generator().manual_seed(checked)
        x = torch.randn(1, channels, 16, 2, 2, generator=g) + torch.linspace(-1, 1, 16).view(1, 1, 16, 1, 1)
        with torch.no_grad():
            expected = block(x)
            exact = run_in_chunks(block, block, x, plan_chunks(16, 4, spec.halo), CPU)
            short = run_in_chunks(block, block, x, plan_chunks(16, 4, spec.halo - spec.stride), CPU)
        assert relative_difference(exact, expected) <= TOLERANCE, type(block).__name__
        assert relative_difference(short, expected) > 100 * TOLERANCE, type(block).__name__
        checked += 1
    assert checked == 20


def test_storage_is_the_largest_block_input_plus_output(network):
    """Against the activations a whole-volume pass really makes, block by block."""
    x = torch.rand(1, 4, 6, 2, 2)
    most, h = 0, network.post_quant_conv(x)
    with torch.no_grad():
        for block in network.decoder.blocks:
            y = block(h)
            most = max(most, h.numel() + y.numel())
            h = y
    specs = describe_all(network.decoder.blocks)
    assert storage_bytes(specs, 4, (1, 6, 2, 2), 4) == 4 * most


def test_unsupported_blocks_make_the_codec_use_slabs():
    upsample = MaisiUpsample(3, 8, use_convtranspose=True, num_splits=1, dim_split=0, print_info=False)
    with pytest.raises(ValueError, match="transposed"):
        describe(upsample)
    assert describe_all(torch.nn.ModuleList([upsample])) is None
    how = plan(None, 4, (1, 64, 16, 16), 8, CPU)
    assert not how.blockwise and "unknown" in how.reason


@pytest.mark.parametrize(("latent_depth", "chunk"), [(29, 8), (48, 12), (37, 16), (33, 5)])
def test_block_wise_decoding_matches_whole_volume(network, whole, latent_depth, chunk, capsys):
    z = whole.encode(z_varying_volume(4 * latent_depth, seed=latent_depth))
    size = (4 * latent_depth - 3, 4, 4)  # crop to a depth that is not a multiple of 4
    chunked = MaisiCodec(network, decode_chunk=chunk).decode(z, size=size)
    chunks = -(-latent_depth // chunk)
    assert (f"Chunked decoding: {latent_depth} latent slices -> {chunks} chunks of at most {chunk}, block by block "
            "(activations on cpu)") in " ".join(capsys.readouterr().err.split())
    assert chunked.shape == (1, 1, *size)
    assert relative_difference(chunked, whole.decode(z, size=size)) <= TOLERANCE


@pytest.mark.parametrize(("depth", "chunk"), [(117, 32), (150, 64), (130, 16)])
def test_block_wise_encoding_matches_whole_volume_mean_and_sample(network, whole, depth, chunk, capsys):
    x = z_varying_volume(depth, seed=depth)
    codec = MaisiCodec(network, encode_chunk=chunk)
    assert relative_difference(codec.encode(x), whole.encode(x)) <= TOLERANCE
    assert "block by block" in " ".join(capsys.readouterr().err.split())
    draws = [c.encode(x, sample=True, generator=torch.Generator().manual_seed(3)) for c in (codec, whole)]
    assert relative_difference(*draws) <= TOLERANCE


def test_over_budget_the_codec_falls_back_to_slabs_still_exact(network, whole, capsys):
    z = whole.encode(z_varying_volume(4 * 29, seed=1))
    codec = MaisiCodec(network, decode_chunk=8, memory_budget=1)
    fallback = codec.decode(z)
    err = " ".join(capsys.readouterr().err.split())
    assert "4 chunks of at most 8, whole network per slab (block-wise activations need" in err
    assert relative_difference(fallback, whole.decode(z)) <= TOLERANCE
    roomy = plan(describe_all(network.decoder.blocks), 4, (1, 29, 1, 1), 8, CPU, budget=10**9)
    assert roomy.blockwise and roomy.storage == CPU and roomy.chunk == 8


def test_the_budget_decides_at_the_storage_size(network):
    specs = describe_all(network.decoder.blocks)
    need = storage_bytes(specs, 4, (1, 64, 16, 16), 4)
    assert plan(specs, 4, (1, 64, 16, 16), 8, CPU, budget=need).blockwise
    assert not plan(specs, 4, (1, 64, 16, 16), 8, CPU, budget=need - 1).blockwise
    assert not plan(specs, 4, (1, 64, 16, 16), 8, CPU, strategy="slabs").blockwise
    assert plan(specs, 4, (1, 64, 16, 16), 8, CPU, strategy="blocks", budget=1).blockwise


def test_on_cuda_the_chunk_follows_free_memory_and_activations_move_to_the_host_when_needed(network, monkeypatch):
    """``torch.cuda.mem_get_info`` stubbed: no GPU is needed to check the choice."""
    specs = describe_all(network.decoder.blocks)
    shape, cuda = (1, 63, 128, 128), torch.device("cuda", 0)
    need = storage_bytes(specs, 4, shape, 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10 * need, 10 * need))
    roomy = plan(specs, 4, shape, 8, cuda)
    assert roomy.blockwise and roomy.storage == cuda and roomy.chunk > 8
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (need, need))
    tight = plan(specs, 4, shape, 8, cuda, strategy="blocks")
    assert tight.blockwise and tight.storage == CPU
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10 * need, 10 * need))
    capped = plan(specs, 4, shape, 8, cuda, strategy="blocks", budget=need // 2)  # a 24 GB card's share
    assert capped.blockwise and capped.storage == CPU and capped.chunk < roomy.chunk


def test_run_blockwise_rejects_a_chunk_off_the_downsampling_stride(network):
    x = torch.rand(1, 1, 24, 4, 4)
    with pytest.raises(ValueError, match="stride"):
        run_blockwise(network.encoder.blocks, describe_all(network.encoder.blocks), x, 6, CPU, CPU)


def test_block_wise_statistics_are_per_sample(network, whole):
    """GroupNorm statistics are per sample: two samples with different levels, decoded in one batch."""
    z = whole.encode(torch.cat([z_varying_volume(4 * 29, seed=5), 0.3 * z_varying_volume(4 * 29, seed=6)]))
    chunked = MaisiCodec(network, decode_chunk=8, strategy="blocks").decode(z)
    assert relative_difference(chunked, whole.decode(z)) <= TOLERANCE


def test_the_config_sets_the_method_and_the_memory_budget():
    from ctslice.codecs import memory_budget
    from ctslice.config import ConfigError, load_config

    codec = load_config(None, ["codec.strategy=slabs", "codec.memory_gb=20"]).codec
    assert (codec.strategy, memory_budget(codec)) == ("slabs", 20 * 10**9)
    assert memory_budget(load_config(None).codec) is None
    for bad in ("codec.strategy=layers", "codec.memory_gb=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(None, [bad])
