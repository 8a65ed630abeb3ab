"""Codecs between CT volumes and the latents the diffusion model works on.

``build_codec`` is the one entry point the rest of the project uses; the config's ``codec:`` section
(``name``, ``checkpoint``, ``encode_chunk``, ``decode_chunk``, ``overlap``, ``strategy``, ``memory_gb``)
maps onto its arguments.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ctslice.codecs.base import Codec, latent_scale_factor
from ctslice.codecs.identity import IdentityCodec
from ctslice.codecs.maisi import DEFAULT_OVERLAP, MaisiCodec, build_network, load_maisi
from ctslice.config import CodecConfig
from ctslice.errors import InputError

CODEC_CLASSES: dict[str, type[Codec]] = {"maisi": MaisiCodec, "identity": IdentityCodec}
CODECS = tuple(CODEC_CLASSES)

__all__ = ["CODECS", "Codec", "IdentityCodec", "MaisiCodec", "build_codec", "codec_class", "codec_for",
           "latent_scale_factor", "memory_budget"]


def codec_class(name: str) -> type[Codec]:
    """The class of the codec called ``name``: its latent channels and compression, without weights."""
    if name not in CODEC_CLASSES:
        raise InputError(f"unknown codec {name!r}; choose one of: {', '.join(CODECS)}")
    return CODEC_CLASSES[name]


def build_codec(
    name: str,
    *,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    encode_chunk: int = 32,
    decode_chunk: int = 8,
    overlap: int = DEFAULT_OVERLAP,
    strategy: str = "auto",
    memory_budget: int | None = None,
    random_weights: bool = False,
) -> Codec:
    """The codec called ``name``, frozen and on ``device``.

    ``checkpoint`` (the MAISI VAE weights) takes precedence over ``$CTSLICE_MAISI_VAE``; the
    identity codec has no weights and no chunking, and ignores the other arguments.
    ``random_weights`` builds the network directly on ``device`` with random weights, for the memory
    model (memory does not depend on the weights' values, and ``meta`` tensors have none).
    """
    if codec_class(name) is IdentityCodec:
        return IdentityCodec(device)
    chunking = dict(encode_chunk=encode_chunk, decode_chunk=decode_chunk, overlap=overlap, strategy=strategy,
                    memory_budget=memory_budget)
    if random_weights:
        return MaisiCodec(build_network(device), **chunking)
    return load_maisi(checkpoint, device=device, **chunking)


def codec_for(config: CodecConfig, device: str | torch.device = "cpu", checkpoint: str | Path | None = None,
              random_weights: bool = False) -> Codec:
    """The codec a config's ``codec:`` section describes; ``checkpoint`` (e.g. ``--vae-checkpoint``) wins."""
    return build_codec(config.name, checkpoint=checkpoint or config.checkpoint, device=device,
                       encode_chunk=config.encode_chunk, decode_chunk=config.decode_chunk, overlap=config.overlap,
                       strategy=config.strategy, memory_budget=memory_budget(config), random_weights=random_weights)


def memory_budget(config: CodecConfig) -> int | None:
    """``codec.memory_gb`` in bytes (None: the codec decides from the free memory)."""
    return None if config.memory_gb is None else int(config.memory_gb * 1e9)
