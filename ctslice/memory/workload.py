"""What a run does on its device, written once for both the prediction and the measurement.

Each *part* is one moment of a run whose peak matters: a training step, and the three stages of
inference (encode the condition volume, denoise it in windows, decode the result). A part builds what
is resident at that moment (codec and U-Net weights, AdamW states) and then does the work, exactly as
the trainer (``ctslice.training.trainer``) and the inference pipeline (``ctslice.inference.pipeline``)
do. The same function runs on ``meta`` tensors inside a :class:`~ctslice.memory.trace.MetaTrace` (the
prediction, ``estimate.TraceRecorder``) and on real tensors on the real device (``--measure``,
``measure.RealRecorder``): a :class:`Recorder` supplies what differs (how weights are built, how
autocast applies, and the tags that attribute bytes to components). Peaks start once the resident
objects exist: initialising weights has transients of its own (building the MAISI VAE on a device
peaks at 126 MiB for 80 MiB of weights) that the pipeline, which loads weights on the CPU and moves
them, never has on the GPU.

The sizes are the data pipeline's own, imported rather than restated: ``patch_shape`` and
``clip_patch`` (``ctslice.data.patches``) size a patch as ``PatchDataset`` does, ``Codec.latent_size``
its latents; the U-Net pads latent sizes itself. Inference and the latent cache see whole volumes (the
largest one).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch

from ctslice.codecs import Codec, codec_class
from ctslice.config import Config
from ctslice.data.patches import clip_patch, patch_shape
from ctslice.inference.pipeline import SliceInterpolator
from ctslice.models.sampling import ddim_sample, mean_estimate
from ctslice.training.latents import encode_batch, uses_latent_cache
from ctslice.training.optim import build_optimizer

PARTS = ("train step", "encode", "denoise", "decode")

# Component names (the rows of the report), used as trace tags.
VAE_WEIGHTS, UNET_WEIGHTS = "VAE weights", "U-Net weights"
GRADIENTS, OPTIMIZER, UPDATE, BATCH = "Gradients", "AdamW states", "AdamW update", "Data batch"
ACTIVATIONS, ATTENTION = "U-Net activations", "Attention"
ENCODE, WINDOWS, DECODE = "VAE encode", "Windowed U-Net", "VAE decode"


@dataclass(frozen=True)
class Geometry:
    """The data a config will see: thick/thin spacing ratio and thin volume sizes (D, H, W)."""

    ratio: float
    largest: tuple[int, int, int]  # inference, validation and the latent cache run on whole volumes
    smallest: tuple[int, int, int]  # training patches are clipped to the smallest volume
    source: str  # where these figures come from, for the report


class Recorder(Protocol):
    """What differs between tracing a part on meta tensors and running it for real."""

    def tag(self, name: str): ...

    def codec(self, config: Config): ...

    def model(self, config: Config, latent_channels: int): ...

    def optimizer(self, optimizer: torch.optim.Optimizer) -> None: ...

    def forward_precision(self): ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def codec_precision(self): ...

    def ready(self) -> None:
        """Everything resident is built: the stage's peak starts here (construction transients are not its)."""


def config_codec(config: Config) -> type[Codec]:
    """The class of the config's codec: its compression and latent channels, without weights."""
    return codec_class(config.codec.name)


def pixel_patch(config: Config, geometry: Geometry) -> tuple[int, int, int]:
    """Thin-voxel patch (D, H, W) the dataset draws (``PatchDataset``: ``patch_shape``, then ``clip_patch``)."""
    if config.data.whole_volumes:
        return geometry.largest
    return clip_patch(patch_shape(config.data, geometry.ratio, config_codec(config).compression), geometry.smallest)


def latent_size(config: Config, size: tuple[int, int, int]) -> tuple[int, int, int]:
    """``Codec.latent_size`` of the config's codec."""
    return config_codec(config).latent_size(size)


def train_step(config: Config, geometry: Geometry, device: torch.device, rec: Recorder) -> None:
    """One optimizer step of the trainer, with the codec, U-Net and AdamW states resident.

    Two micro-batches stand for ``grad_accumulation`` of them: from the second on, each meets the
    gradients of the previous ones, so the second's peak is every later one's.
    """
    codec = rec.codec(config)
    model = rec.model(config, codec.latent_channels).train()
    with rec.tag(OPTIMIZER):
        optimizer = build_optimizer({"unet": model.unet}, config.training)
        rec.optimizer(optimizer)
        _allocate_states(optimizer)
    rec.ready()
    cached = uses_latent_cache(config.data)
    patch = latent_size(config, pixel_patch(config, geometry)) if cached else pixel_patch(config, geometry)
    shape = (config.training.batch_size, codec.latent_channels if cached else 1, *patch)
    accumulation = config.training.grad_accumulation
    for _ in range(min(accumulation, 2)):
        with rec.tag(BATCH):
            thin, cond = torch.rand(shape, device=device), torch.rand(shape, device=device)
        if not cached:
            with rec.tag(ENCODE), rec.codec_precision():
                thin, cond = encode_batch({"thin": thin, "cond": cond}, codec, device)
        with rec.forward_precision():
            loss = model.loss(thin, cond) / accumulation
        rec.backward(loss)
    with rec.tag(UPDATE):  # temporaries of clipping and the update (on CUDA one per parameter, foreach)
        torch.nn.utils.clip_grad_norm_(model.unet.parameters(), config.training.grad_clip)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def encode(config: Config, volume: tuple[int, int, int], device: torch.device, rec: Recorder) -> None:
    """The condition volume (HU) on the device, normalised and encoded in chunks (inference, latent cache)."""
    codec = rec.codec(config)
    model = rec.model(config, codec.latent_channels)
    rec.ready()
    with rec.tag(ENCODE), rec.codec_precision():
        hu = torch.rand((1, 1, *volume), device=device)
        codec.encode(codec.normalize(hu))
    del model  # resident until the stage ends, as in the pipeline


def denoise(config: Config, volume: tuple[int, int, int], device: torch.device, rec: Recorder,
            mode: str = "mean") -> None:
    """The U-Net over overlapping latent windows of the whole volume (the mean estimate, or one DDIM step)."""
    codec = rec.codec(config)
    model = rec.model(config, codec.latent_channels).eval()
    network = SliceInterpolator(model, codec, config, device).windowed_network()
    rec.ready()
    with rec.tag(WINDOWS):
        cond = torch.rand((1, codec.latent_channels, *latent_size(config, volume)), device=device)
        with rec.forward_precision():
            if mode == "mean":
                mean_estimate(model, cond, network)
            else:
                ddim_sample(model, cond, 1, torch.Generator().manual_seed(0), network)


def decode(config: Config, volume: tuple[int, int, int], device: torch.device, rec: Recorder) -> None:
    """Chunked decoding of the thin latents back to HU, with the condition latents still held."""
    codec = rec.codec(config)
    model = rec.model(config, codec.latent_channels)
    rec.ready()
    with rec.tag(DECODE), rec.codec_precision():
        shape = (1, codec.latent_channels, *latent_size(config, volume))
        cond, latents = torch.rand(shape, device=device), torch.rand(shape, device=device)
        codec.denormalize(codec.decode(latents, size=volume))
    del model, cond  # resident until the stage ends, as in the pipeline


def run_part(part: str, config: Config, geometry: Geometry, device: torch.device, rec: Recorder,
             volume: tuple[int, int, int] | None = None, mode: str = "mean") -> None:
    """Runs ``part`` (one of :data:`PARTS`); ``volume`` overrides the whole-volume size of inference parts,
    ``mode`` is the denoising mode (mean estimate or DDIM sample)."""
    volume = volume or geometry.largest
    if part == "train step":
        train_step(config, geometry, device, rec)
    elif part == "encode":
        encode(config, volume, device, rec)
    elif part == "denoise":
        denoise(config, volume, device, rec, mode)
    elif part == "decode":
        decode(config, volume, device, rec)
    else:
        raise ValueError(f"unknown part {part!r}; expected one of {', '.join(PARTS)}")


def _allocate_states(optimizer: torch.optim.Optimizer) -> None:
    """AdamW creates its states lazily at the first step; a zero-gradient step creates them now, so
    that the step measured is a steady-state one (states resident during forward and backward)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@contextmanager
def notes_off():
    """The library's notes (INFO: "Chunked encoding: ...", the optimizer's groups) off while a part is traced
    or measured: they describe the simulated run, not the user's; warnings still pass."""
    logger = logging.getLogger("ctslice")
    level = logger.level
    logger.setLevel(max(logging.WARNING, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        logger.setLevel(level)
