"""Chunked encode/decode along z (the slab method) matches the whole-volume result within the stated tolerance.

The block-wise method, the codec's default, is tested in ``test_codec_blocks.py``.

Stated tolerance (``TOLERANCE``): with the default overlap (40 slices, the MAISI networks' receptive
field along z), max |chunked - whole| <= 1e-4 * max |whole|, for encoding and decoding, on the
released config with random weights, in float32 on CPU. Measured: about 2e-6 (float rounding).

The volumes have statistics that change along z (as CT does: air, lungs, abdomen), so that chunks
normalised with their own GroupNorm statistics would not pass (measured 8e-2 at 117 slices, even
with full halos); the in-plane size is tiny (4 x 4) because chunking only concerns z.
"""

from __future__ import annotations

import pytest
import torch

from ctslice.codecs.chunking import Chunk, plan_chunks, run_in_chunks
from ctslice.codecs.group_norm import VolumeGroupNorm
from ctslice.codecs.maisi import DEFAULT_OVERLAP, MaisiCodec, build_network

TOLERANCE = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def z_varying_volume(depth: int, size: int = 4, seed: int = 0) -> torch.Tensor:
    """Values in [0, 1] whose mean and spread drift along z, with a step halfway down."""
    g = torch.Generator().manual_seed(seed)
    z = torch.arange(depth, dtype=torch.float32).view(1, 1, depth, 1, 1)
    level = 0.4 + 0.3 * torch.sin(z / 9.0) + 0.2 * (z > depth // 2)
    spread = 0.05 + 0.1 * (torch.cos(z / 13.0) + 1) / 2
    return (level + spread * torch.randn(1, 1, depth, size, size, generator=g)).clamp(0, 1)


@pytest.mark.parametrize(("depth", "chunk", "halo"), [(1, 4, 0), (10, 4, 0), (100, 32, 10), (161, 32, 40), (9, 2, 3)])
def test_plan_tiles_the_volume_with_clipped_halos(depth, chunk, halo):
    chunks = plan_chunks(depth, chunk, halo)
    assert [c.start for c in chunks] == [0] + [c.stop for c in chunks[:-1]]
    assert chunks[-1].stop == depth
    for c in chunks:
        assert 0 < c.stop - c.start <= chunk or len(chunks) == 1
        assert c.slab_start == max(0, c.start - halo) and c.slab_stop == min(depth, c.stop + halo)
        assert c.slab_stop - c.slab_start <= chunk + 2 * halo


def test_a_volume_no_deeper_than_one_slab_runs_whole():
    assert len(plan_chunks(112, 32, 40)) == 1
    assert len(plan_chunks(116, 32, 40)) == 4


def test_group_norm_statistics_are_those_of_the_whole_volume(network):
    """Every slab is the whole volume, so only the gathered statistics can make a difference.

    Two samples in the batch: statistics are per sample, as in GroupNorm.
    """
    x = torch.cat([z_varying_volume(16), 0.5 * z_varying_volume(16, seed=1)])
    with torch.no_grad():
        expected = network.encoder(x)
        chunks = [Chunk(start, start + 8, 0, 16) for start in (0, 8)]
        got = run_in_chunks(network.encoder, network.encoder, x, chunks, torch.device("cpu"))
    assert relative_difference(got, expected) < 1e-5
    assert all("forward" not in norm.__dict__ for norm in VolumeGroupNorm(network.encoder).norms)  # restored


@pytest.mark.parametrize(("depth", "chunk"), [(117, 32), (150, 64)])
def test_chunked_encoding_matches_whole_volume(network, whole, depth, chunk, capsys):
    x = z_varying_volume(depth)
    chunked = MaisiCodec(network, encode_chunk=chunk, strategy="slabs").encode(x)
    chunks = -(-depth // chunk)
    assert f"Chunked encoding: {depth} slices -> {chunks} chunks of at most {chunk}" in capsys.readouterr().err
    assert chunked.shape == (1, 4, -(-depth // 4), 1, 1)
    assert relative_difference(chunked, whole.encode(x)) <= TOLERANCE


@pytest.mark.parametrize(("latent_depth", "chunk"), [(29, 8), (37, 16)])
def test_chunked_decoding_matches_whole_volume(network, whole, latent_depth, chunk, capsys):
    z = whole.encode(z_varying_volume(4 * latent_depth, seed=latent_depth))
    size = (4 * latent_depth - 3, 4, 4)  # crop to a depth that is not a multiple of 4
    chunked = MaisiCodec(network, decode_chunk=chunk, strategy="slabs").decode(z, size=size)
    chunks = -(-latent_depth // chunk)
    assert f"Chunked decoding: {latent_depth} latent slices -> {chunks} chunks of at most {chunk}" in (
        capsys.readouterr().err
    )
    assert chunked.shape == (1, 1, *size)
    assert relative_difference(chunked, whole.decode(z, size=size)) <= TOLERANCE


def test_an_overlap_short_of_the_receptive_field_breaks_the_tolerance(network, whole):
    """The tolerance is not vacuous: these volumes do expose a halo that is too small."""
    x = z_varying_volume(36)
    short = MaisiCodec(network, encode_chunk=16, overlap=8, strategy="slabs")
    assert relative_difference(short.encode(x), whole.encode(x)) > 100 * TOLERANCE


def test_default_overlap_covers_the_receptive_field_along_z():
    """Which slices reach a given output, from the gradient's support (GroupNorm kept to its affine part)."""
    torch.manual_seed(0)
    network = build_network()  # a fresh one: its GroupNorms are replaced below
    for norm in network.modules():
        if isinstance(norm, torch.nn.GroupNorm):
            norm.forward = lambda x, norm=norm: x * norm.weight.view(1, -1, 1, 1, 1)

    def reach(inputs: torch.Tensor, outputs: torch.Tensor, lo: int, hi: int) -> int:
        outputs.sum().backward()
        touched = inputs.grad.abs().sum(dim=(0, 1, 3, 4)).nonzero().flatten()
        return max(lo - touched.min().item(), touched.max().item() - hi)

    x = torch.rand(1, 1, 160, 4, 4, requires_grad=True)
    encoder_reach = reach(x, network.encode(x)[0][:, :, 20], 80, 83)  # latent slice 20 = image slices 80..83
    z = torch.rand(1, 4, 40, 1, 1, requires_grad=True)
    decoder_reach = reach(z, network.decode(z)[:, :, 80:84], 20, 20)  # in latent slices
    assert (encoder_reach, decoder_reach) == (36, 10)
    assert DEFAULT_OVERLAP >= encoder_reach and DEFAULT_OVERLAP // 4 >= decoder_reach
