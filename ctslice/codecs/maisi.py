"""The frozen, pretrained MAISI VAE (MONAI) as a codec: 4 latent channels, 4x compression per axis.

The network is MONAI's ``AutoencoderKlMaisi`` with the released CT config; its weights
(``autoencoder_v1.pt``, earlier ``autoencoder_epoch273.pt``, a plain state dict) come from a path the
user gives, never from the network: they cannot be downloaded here, and their licence is
non-commercial. Two of MONAI's options are set explicitly because their defaults break here:

- ``norm_float16`` (GroupNorm output in fp16) only on CUDA: on CPU the next float32 convolution
  rejects fp16 input. :meth:`MaisiCodec.to` switches it with the device.
- ``num_splits=1``: MONAI's default of 16 splits every convolution along one axis and crashes on
  small inputs (a 64 x 8 x 8 volume already fails). Its splitting does not bound memory anyway (GroupNorm
  still sees whole tensors); the z-chunking in ``chunking.py`` does.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch
from monai.apps.generation.maisi.networks.autoencoderkl_maisi import AutoencoderKlMaisi, MaisiGroupNorm3D
from torch import Tensor, nn

from ctslice.codecs.base import Codec, pad_end
from ctslice.codecs.blocks import describe_all, run_blockwise
from ctslice.codecs.chunking import plan_chunks, run_in_chunks
from ctslice.codecs.strategy import STRATEGIES, Plan, plan
from ctslice.codecs.weights import load_strict, read_state_dict
from ctslice.errors import InputError

log = logging.getLogger(__name__)

CHECKPOINT_ENV = "CTSLICE_MAISI_VAE"

# The released CT autoencoder (MAISI config_maisi.json): 20,944,897 parameters, 130 tensors.
CT_CONFIG = dict(
    spatial_dims=3,
    in_channels=1,
    out_channels=1,
    latent_channels=4,
    num_channels=(64, 128, 256),
    num_res_blocks=(2, 2, 2),
    norm_num_groups=32,
    norm_eps=1e-6,
    attention_levels=(False, False, False),
    with_encoder_nonlocal_attn=False,
    with_decoder_nonlocal_attn=False,
    use_checkpointing=False,
    use_convtranspose=False,
)

# Halo per side, in image slices, for the slab method of chunked encoding and decoding (a multiple of 4, so that
# decoding uses overlap / 4 latent slices). Along z the encoder's receptive field reaches 36 slices
# beyond a latent slice's own 4, the decoder's 10 latent slices (40 image slices); the tests measure
# both. With 40 the chunks see everything the whole volume would, and chunked results match
# whole-volume ones to float rounding (max relative difference ~2e-6 on the released config with
# random weights; tested at 1e-4). Shorter halos cost accuracy fast: 32 leaves ~1e-3, 20 leaves
# 4-13% (benchmarks/RESULTS.md), though it would save memory (a slab of 72 slices instead of 112).
DEFAULT_OVERLAP = 40


def build_network(device: str | torch.device = "cpu") -> AutoencoderKlMaisi:
    """The released CT network with random weights, frozen, on ``device``."""
    device = torch.device(device)
    network = AutoencoderKlMaisi(**CT_CONFIG, num_splits=1, dim_split=0, norm_float16=device.type == "cuda")
    return network.to(device).eval().requires_grad_(False)


def load_maisi(
    checkpoint: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    encode_chunk: int = 32,
    decode_chunk: int = 8,
    overlap: int = DEFAULT_OVERLAP,
    strategy: str = "auto",
    memory_budget: int | None = None,
) -> MaisiCodec:
    """The MAISI codec with pretrained weights from ``checkpoint``, else from ``$CTSLICE_MAISI_VAE``."""
    path = checkpoint or os.environ.get(CHECKPOINT_ENV)
    if not path:
        raise InputError(
            "the MAISI codec needs the pretrained VAE weights (autoencoder_v1.pt from the MONAI model zoo, "
            f"non-commercial licence): give its path (codec.checkpoint) or set ${CHECKPOINT_ENV}"
        )
    state = read_state_dict(path)
    network = build_network("cpu")
    loaded = load_strict(network, state, path)
    expected = len(network.state_dict())
    log.info(f"Loaded {loaded}/{expected} parameters ({100.0 * loaded / expected:.1f}%)")
    codec = MaisiCodec(network, encode_chunk=encode_chunk, decode_chunk=decode_chunk, overlap=overlap,
                       strategy=strategy, memory_budget=memory_budget).to(device)
    trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
    log.info(f"VAE: {codec.parameter_count():,} ({trainable:,} trainable)")
    if codec.device.type != "cuda":
        log.info(f"Note: fp16 GroupNorm is CUDA-only; the VAE runs in float32 on {codec.device.type}.")
    return codec


class MaisiCodec(Codec):
    """Encode/decode with the frozen MAISI VAE, chunked along z (see ``chunking.py``).

    ``encode_chunk`` (image slices) and ``overlap`` must be multiples of 4 so that chunks fall on
    whole latent slices; ``decode_chunk`` is in latent slices. ``strategy`` picks the chunked
    execution: ``auto`` runs block by block when the whole-volume block activations fit
    ``memory_budget`` (bytes; see ``strategy.plan``; default: from the free memory), else the whole network
    per slab; ``blocks`` and ``slabs`` force one (see ``strategy.py``). ``overlap`` is the slab
    method's halo; the block-wise one derives each block's own.
    """

    name = "maisi"
    latent_channels = 4
    compression = (4, 4, 4)
    hu_window = (-1000.0, 1000.0)

    def __init__(
        self,
        network: AutoencoderKlMaisi,
        *,
        encode_chunk: int = 32,
        decode_chunk: int = 8,
        overlap: int = DEFAULT_OVERLAP,
        strategy: str = "auto",
        memory_budget: int | None = None,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        if encode_chunk < 4 or encode_chunk % 4:
            raise InputError(f"codec.encode_chunk must be a positive multiple of 4 slices, got {encode_chunk}")
        if decode_chunk < 1:
            raise InputError(f"codec.decode_chunk must be at least 1 latent slice, got {decode_chunk}")
        if overlap < 0 or overlap % 4:
            raise InputError(f"codec.overlap must be a non-negative multiple of 4 slices, got {overlap}")
        self.network = network.eval().requires_grad_(False)
        self.encode_chunk = encode_chunk
        self.decode_chunk = decode_chunk
        self.overlap = overlap
        self.strategy = strategy
        self.memory_budget = memory_budget
        self.to(next(network.parameters()).device)

    def to(self, device: str | torch.device) -> MaisiCodec:
        self._device = torch.device(device)
        self.network.to(self._device)
        for module in self.network.modules():
            if isinstance(module, MaisiGroupNorm3D):
                module.norm_float16 = self._device.type == "cuda"
        return self

    @property
    def device(self) -> torch.device:
        return self._device

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.network.parameters())

    def encode(self, x: Tensor, *, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Posterior mean (or, with ``sample``, a draw using ``generator`` on ``x``'s device)."""
        _check_shape(x, 1, "volume")
        depth = x.shape[2]
        x = pad_end(x.float(), self.compression)
        with self._inference():
            moments = self._chunked(
                self.network.encoder, x, self.encode_chunk, self.overlap, lambda h: h,
                partial(self._moments, sample), f"Chunked encoding: {depth} slices",
            ).to(x.device)
        if not sample:
            return moments
        mean, sigma = moments.chunk(2, dim=1)
        return mean + sigma * torch.randn(mean.shape, generator=generator, device=mean.device)

    def decode(self, latents: Tensor, *, size: tuple[int, int, int] | None = None) -> Tensor:
        _check_shape(latents, self.latent_channels, "latents")
        with self._inference():
            what = f"Chunked decoding: {latents.shape[2]} latent slices"
            out = self._chunked(
                self.network.decoder, latents.float(), self.decode_chunk, self.overlap // 4,
                self.network.post_quant_conv, lambda h: h.float(), what,
            ).to(latents.device)
        if size is not None:
            if any(s > n for s, n in zip(size, out.shape[2:], strict=True)):
                raise ValueError(f"cannot crop a decoded {tuple(out.shape[2:])} volume to {tuple(size)}")
            out = out[..., : size[0], : size[1], : size[2]]
        return out

    def execution_plan(self, part: nn.Module, x: Tensor, chunk: int) -> Plan:
        """How ``part`` (the encoder or decoder) runs on ``x`` in chunks of ``chunk`` slices (see ``strategy.py``)."""
        align = self.compression[0] if part is self.network.encoder else 1
        return plan(describe_all(part.blocks), x.shape[1], (x.shape[0], *x.shape[2:]), chunk, self._device,
                    strategy=self.strategy, budget=self.memory_budget, align=align)

    def _chunked(self, part: nn.Module, x: Tensor, chunk: int, halo: int, head, tail, what: str) -> Tensor:
        """``tail(part(head(x)))`` run in chunks along z; ``head`` and ``tail`` act per voxel (1x1x1 convolutions).

        A volume no deeper than one slab of the slab method runs whole, as it always has: exact, in
        the memory of one slab, with no extra passes.
        """
        slabs = plan_chunks(x.shape[2], chunk, halo)
        how = self.execution_plan(part, x, chunk) if len(slabs) > 1 else None
        if how is None or not how.blockwise:
            if how is not None:
                log.info(f"{what} -> {len(slabs)} chunks of at most {chunk}, {how.reason}")

            def network(slab: Tensor) -> Tensor:
                return tail(part(head(slab)))

            return run_in_chunks(network, part, x, slabs, self._device)
        chunks = -(-x.shape[2] // how.chunk)
        log.info(f"{what} -> {chunks} chunks of at most {how.chunk}, block by block "
                 f"(activations on {how.storage.type})")
        h = head(x.to(self._device)).to(how.storage)
        h = run_blockwise(part.blocks, describe_all(part.blocks), h, how.chunk, self._device, how.storage)
        return tail(h.to(self._device))

    def _moments(self, sample: bool, h: Tensor) -> Tensor:
        """The posterior from the encoder's output, as MONAI's ``AutoencoderKL.encode`` computes it."""
        mean = self.network.quant_conv_mu(h)
        if not sample:
            return mean.float()
        sigma = torch.exp(torch.clamp(self.network.quant_conv_log_sigma(h), -30.0, 20.0) / 2)
        return torch.cat([mean, sigma], dim=1).float()

    @contextmanager
    def _inference(self):
        """No autograd graph, and fp16 autocast on CUDA (what ``norm_float16`` expects).

        ``no_grad`` rather than ``inference_mode``: inference tensors cannot be saved for backward, so
        latents made under it would break the diffusion model's training step.
        """
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=self._device.type == "cuda"):
            yield


def _check_shape(x: Tensor, channels: int, what: str) -> None:
    if x.dim() != 5 or x.shape[1] != channels:
        raise ValueError(f"expected {what} of shape (B, {channels}, D, H, W), got {tuple(x.shape)}")
