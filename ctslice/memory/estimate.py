"""The memory model: each moment of a run traced on meta tensors, per component, plus what-if suggestions.

A run's memory is never the sum of everything it ever allocates: the latent cache is built before
training starts, validation runs between steps, and inference encodes, denoises and decodes one after
the other. So each such moment (a *stage*) is traced on its own (see ``trace.py`` for why tracing and
``workload.py`` for what each stage runs), giving the bytes of each component alive at that stage's
peak; a device must hold the largest stage.

Two kinds of stage are not traced at full size, because tracing costs one Python call per op and the
chunked codec and the sliding-window sampler repeat their ops per chunk and per window:

- Chunked encode/decode (MAISI). With slabs, the peak is one slab (``chunk + 2 * halo`` slices) plus
  whole-volume input and output; block by block (``codecs/blocks.py``), the whole-volume input and
  output of the largest block plus one slab of it. Either is affine in the depth once a chunk with
  full halos exists: traced at that depth and one chunk deeper, then extrapolated. Which method is
  traced for ``codec.strategy: auto``: see :meth:`TraceRecorder.codec_strategy`.
- The windowed U-Net pass: one batch of windows' activations plus whole-volume buffers (input,
  output and count maps), so affine in the latent volume: traced on two columns of windows, then
  extrapolated.

Every trace is remembered per relevant config subset, so the suggestions, which re-run the model with
one change each, only re-trace the stages that change.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ctslice.codecs import codec_for
from ctslice.config import Config, config_from_dict, with_precision
from ctslice.data.patches import round_up
from ctslice.hardware import resolve_precision
from ctslice.memory.trace import MetaTrace
from ctslice.memory.workload import (
    ACTIVATIONS,
    ATTENTION,
    BATCH,
    DECODE,
    ENCODE,
    GRADIENTS,
    OPTIMIZER,
    UNET_WEIGHTS,
    UPDATE,
    VAE_WEIGHTS,
    WINDOWS,
    Geometry,
    config_codec,
    latent_size,
    notes_off,
    pixel_patch,
    run_part,
)
from ctslice.models.unet import attention_tokens, latent_window, padded_size, uses_flash_attention
from ctslice.models.window_plan import covered_by
from ctslice.training.latents import uses_latent_cache

GIB = 2**30
COMPONENTS = (VAE_WEIGHTS, UNET_WEIGHTS, GRADIENTS, OPTIMIZER, UPDATE, BATCH, ACTIVATIONS, ATTENTION, ENCODE,
              WINDOWS, DECODE)
DEFAULT_RATIO = 5.0  # 5 mm -> 1 mm, the common case
DEFAULT_VOLUME = (300, 512, 512)  # a 50-slice 5 mm chest/abdomen CT on a 1 mm grid


@dataclass
class Stage:
    """One moment of a run: the bytes of each component alive at its peak."""

    name: str
    components: dict[str, int]
    parts: tuple[str, ...]  # the traced parts it is made of (see ``workload.PARTS``)
    note: str = ""

    @property
    def total(self) -> int:
        return sum(self.components.values())


@dataclass
class MemoryEstimate:
    config: Config
    geometry: Geometry
    device_type: str  # what the prediction is for: "cuda" or "cpu"
    training: list[Stage]
    inference: list[Stage]
    facts: dict = field(default_factory=dict)

    @property
    def training_peak(self) -> Stage:
        return max(self.training, key=lambda s: s.total)

    @property
    def inference_peak(self) -> Stage:
        return max(self.inference, key=lambda s: s.total)


def resolve_geometry(config: Config, ratio: float | None = None,
                     volume: tuple[int, int, int] | None = None) -> Geometry:
    """Spacing ratio and volume sizes from the options, else from ``data.cache``, else typical values."""
    from ctslice.data.cache import Cache

    cache_path = Path(config.data.cache)
    if cache_path.is_file() and (ratio is None or volume is None):
        with Cache(cache_path) as cache:
            infos = [cache.info(c) for c in cache.case_ids()]
        infos = [i for i in infos if i.has_truth]  # through-plane patches come from cases with a thin volume
        if infos:
            shapes = [i.thin_shape for i in infos]
            largest = volume or max(shapes, key=math.prod)
            smallest = volume or tuple(min(s[k] for s in shapes) for k in range(3))
            return Geometry(ratio or max(i.ratio for i in infos), largest, smallest,
                            f"{cache_path} ({len(infos)} cases)")
    assumed = [name for name, value in (("ratio", ratio), ("volumes", volume)) if value is None]
    source = f"{' and '.join(assumed)} assumed (no cache at {cache_path})" if assumed else "given"
    return Geometry(ratio or DEFAULT_RATIO, volume or DEFAULT_VOLUME, volume or DEFAULT_VOLUME, source)


def estimate_memory(config: Config, geometry: Geometry, device_type: str = "cuda") -> MemoryEstimate:
    """Predicted memory of ``config`` on a ``device_type`` ("cuda" or "cpu") device, per stage and component.

    ``training.precision`` auto is resolved for that device (for "cpu": this CPU) as a run there would:
    the estimate's config holds the precision predicted, and ``facts["precision"]`` says why.
    """
    if device_type not in ("cuda", "cpu"):
        raise ValueError(f"device_type must be cuda or cpu, got {device_type!r}")
    precision = resolve_precision(config.training.precision, device_type)
    config = with_precision(config, precision.name)
    step = Stage("train step", _traced("train step", config, geometry, device_type), ("train step",))
    if step.components.get(UPDATE):
        step.note = "peaks in the AdamW update, once backward has freed the activations"
    inference = [Stage(part, _volume_stage(part, config, geometry, device_type), (part,))
                 for part in ("encode", "denoise", "decode")]
    validation_denoise = Stage("denoise", _volume_stage("denoise", config, geometry, device_type,
                                                        config.validation.mode), ("denoise",))
    worst = max([inference[0], validation_denoise, inference[2]], key=lambda s: s.total)
    states = {OPTIMIZER: step.components[OPTIMIZER]} if step.components.get(OPTIMIZER) else {}
    validation = Stage("validation", {**worst.components, **states},
                       (worst.name, "train step"), note=f"its {worst.name} stage, with the AdamW states kept")
    training = [step, validation]
    if uses_latent_cache(config.data):
        training.insert(0, Stage("latent cache", inference[0].components, ("encode",),
                                 note="encoding each training volume once"))
    facts = {**_facts(config, geometry, device_type), "precision": precision.reason}
    return MemoryEstimate(config, geometry, device_type, training, inference, facts)


def with_overrides(config: Config, overrides: dict[str, object]) -> Config:
    """``config`` with ``section.key`` values replaced, validated like ``--set``."""
    data = config.to_dict()
    for key, value in overrides.items():
        section, name = key.split(".")
        data[section][name] = value
    return config_from_dict(data, where="suggestion")


class TraceRecorder:
    """Weights on the meta device, autocast emulated as on the target device, bytes tagged by component."""

    def __init__(self, trace: MetaTrace, device_type: str, precision: str) -> None:
        self.trace, self.device_type, self.precision = trace, device_type, precision

    def tag(self, name: str):
        return self.trace.tag(name)

    def codec(self, config: Config):
        """The config's codec (``codec_for``), on meta tensors, with the chunked method traced for this device."""
        codec_config = replace(config.codec, strategy=self.codec_strategy(config), memory_gb=None)
        with self.trace.tag(VAE_WEIGHTS), torch.device("meta"):
            codec = codec_for(codec_config, "meta", random_weights=True)
        if config.codec.name == "maisi":
            from monai.apps.generation.maisi.networks.autoencoderkl_maisi import MaisiGroupNorm3D

            for module in codec.network.modules():  # what MaisiCodec.to("cuda") sets: GroupNorm output in fp16
                if isinstance(module, MaisiGroupNorm3D):
                    module.norm_float16 = self.device_type == "cuda"
        return codec

    def codec_strategy(self, config: Config) -> str:
        """The chunked method to trace: ``auto`` is traced block by block on a CPU (where it runs so whenever
        the activations fit half the available memory) and with slabs on CUDA, where a real run keeps the
        block-wise activations on the GPU only if the free memory holds them (else in host memory, with a
        smaller device peak than the slabs'): the slab peak is what a CUDA run needs at most."""
        if config.codec.strategy != "auto":
            return config.codec.strategy
        return "blocks" if self.device_type == "cpu" else "slabs"

    def model(self, config: Config, latent_channels: int):
        from monai.networks.blocks.spatialattention import SpatialAttentionBlock

        from ctslice.models.diffusion import SliceDiffusion

        flash = uses_flash_attention(config.hardware, self.device_type)  # as build_model decides
        with self.trace.tag(UNET_WEIGHTS), torch.device("meta"):
            model = SliceDiffusion(config, latent_channels, flash_attention=flash)
        for p in model.unet.parameters():  # a gradient is born as a backward temporary, then kept
            p.register_post_accumulate_grad_hook(lambda p: self.trace.retag(p.grad, GRADIENTS))
        for module in model.unet.modules():  # always_call: checkpointing ends a recomputation by raising
            if isinstance(module, SpatialAttentionBlock):
                module.register_forward_pre_hook(lambda *_: self.trace.push_tag(ATTENTION))
                module.register_forward_hook(self._attention_done, always_call=True)
        return model

    def _attention_done(self, module, inputs, output) -> None:
        self.trace.pop_tag()
        if output is not None:
            self.trace.tag_graph(output, inputs, ATTENTION)

    def optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """On CUDA, PyTorch's AdamW defaults to its foreach implementation (one temporary per parameter)."""
        for group in optimizer.param_groups:
            group["foreach"] = self.device_type == "cuda"

    def forward_precision(self):
        return self.trace.autocast(self.device_type, torch.bfloat16 if self.precision == "bf16" else None)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, with checkpointed blocks recomputed under the forward's autocast (each in a
        region of its own, so without the weight cache), as real checkpointing does. The engine is called
        directly: ``loss.backward()`` is a torch function, and a mode is switched off while it handles one,
        which would leave the recomputation without autocast."""
        dtype = torch.bfloat16 if self.precision == "bf16" else None
        with self.trace.autocast(self.device_type, dtype, cache=False):
            torch.autograd.graph._engine_run_backward((loss,), (torch.ones_like(loss),), False, False, (),
                                                      allow_unreachable=True, accumulate_grad=True)

    def codec_precision(self):
        return self.trace.autocast(self.device_type, torch.float16 if self.device_type == "cuda" else None)

    def ready(self) -> None:
        self.trace.reset_peak()


# ---- tracing, remembered per the config keys each stage depends on

_TRACES: dict[tuple, dict[str, int]] = {}
_DEFAULT_TAG = {"train step": ACTIVATIONS, "encode": ENCODE, "denoise": WINDOWS, "decode": DECODE}


def _traced(part: str, config: Config, geometry: Geometry, device_type: str,
            volume: tuple[int, int, int] | None = None, mode: str = "mean") -> dict[str, int]:
    """Bytes per component at the peak of ``part``, traced on meta tensors (remembered)."""
    key = (part, _relevant(part, config), geometry, device_type, volume, mode)
    if key not in _TRACES:
        trace = MetaTrace(default_tag=_DEFAULT_TAG[part])
        with trace, notes_off():
            rec = TraceRecorder(trace, device_type, config.training.precision)
            run_part(part, config, geometry, torch.device("meta"), rec, volume, mode)
        _TRACES[key] = dict(trace.at_peak)
    return _TRACES[key]


def _relevant(part: str, config: Config) -> str:
    """The config values ``part``'s memory depends on, as a key (so unrelated changes reuse traces)."""
    c = config
    model = c.model.__dict__ if part == "train step" else {**c.model.__dict__, "gradient_checkpointing": None}
    keys = {"model": model, "flash": c.hardware.flash_attention, "codec": c.codec.name}
    if part == "train step":
        cached = uses_latent_cache(c.data)
        keys.update(data=(c.data.patch_thick_slices, c.data.patch_size, c.data.whole_volumes, cached),
                    training=(c.training.batch_size, c.training.grad_accumulation, c.training.precision),
                    prediction=c.diffusion.prediction_type,
                    encode_chunk=None if cached else (c.codec.encode_chunk, c.codec.overlap, c.codec.strategy))
    elif part == "encode":
        keys.update(encode_chunk=c.codec.encode_chunk, overlap=c.codec.overlap, strategy=c.codec.strategy)
    elif part == "decode":
        keys.update(decode_chunk=c.codec.decode_chunk, overlap=c.codec.overlap, strategy=c.codec.strategy)
    else:
        keys.update(inference=c.inference, precision=c.training.precision)
    return json.dumps(keys, default=str, sort_keys=True)


def changes_parts(config: Config, changed: Config, parts: tuple[str, ...]) -> bool:
    """Whether ``changed`` differs from ``config`` in anything the memory of ``parts`` depends on."""
    return any(_relevant(part, config) != _relevant(part, changed) for part in parts)


def _volume_stage(part: str, config: Config, geometry: Geometry, device_type: str, mode: str = "mean") -> dict:
    """A whole-volume stage, traced small and extrapolated where tracing at full size would be slow."""
    volume = geometry.largest
    if part == "denoise":
        return _windows(config, geometry, device_type, mode)
    if config.codec.name != "maisi":
        return _traced(part, config, geometry, device_type, volume, mode)
    depth, cz, halo = volume[0], config_codec(config).compression[0], config.codec.overlap
    chunk = config.codec.encode_chunk if part == "encode" else config.codec.decode_chunk * cz
    # The shallowest volume run in several chunks (not whole) of which one has full halos on both sides.
    first_full = max(math.ceil(halo / chunk) * chunk + chunk + halo, round_up(chunk + 2 * halo + 1, cz))
    if depth <= first_full + chunk:
        return _traced(part, config, geometry, device_type, volume)
    low = _traced(part, config, geometry, device_type, (first_full, *volume[1:]))
    high = _traced(part, config, geometry, device_type, (first_full + chunk, *volume[1:]))
    return _affine(low, high, first_full, first_full + chunk, depth)


def _windows(config: Config, geometry: Geometry, device_type: str, mode: str) -> dict:
    """The windowed pass, traced on a column of windows one window wide and extrapolated by latent voxels.

    Both traced columns hold at least ``window_batch`` (and two) whole windows, their depths chosen so that
    the window planner tiles them with windows of the full size, so that their U-Net calls, like the
    whole volume's, carry full batches of the largest windows; what differs between them is only the
    whole-volume buffers.
    """
    compression = config_codec(config).compression
    latent = latent_size(config, geometry.largest)
    window = tuple(min(r, n) for r, n in zip(_roi(config, device_type), latent, strict=True))
    count = max(2, config.inference.window_batch)
    low = (covered_by(count, window[0], config.inference.overlap), *window[1:])
    high = (covered_by(count + 1, window[0], config.inference.overlap), *window[1:])
    if latent[1:] == window[1:] and latent[0] <= high[0]:
        return _traced("denoise", config, geometry, device_type, geometry.largest, mode)
    pixels = [tuple(n * f for n, f in zip(size, compression, strict=True)) for size in (low, high)]
    traced = [_traced("denoise", config, geometry, device_type, size, mode) for size in pixels]
    return _affine(*traced, math.prod(low), math.prod(high), math.prod(latent))


def _roi(config: Config, device_type: str) -> tuple[int, int, int]:
    """The largest inference window in latent voxels on ``device_type``, as the traced model's attention
    (fused or not, ``TraceRecorder.model``) makes ``SliceInterpolator.roi`` compute it."""
    return latent_window(config, config_codec(config).compression, uses_flash_attention(config.hardware, device_type))


def _affine(low: dict, high: dict, x0: float, x1: float, x: float) -> dict:
    return {k: max(0, round(low.get(k, 0) + (high.get(k, 0) - low.get(k, 0)) * (x - x0) / (x1 - x0)))
            for k in low.keys() | high.keys()}


def _facts(config: Config, geometry: Geometry, device_type: str) -> dict:
    """What the figures rest on, for the notes under the table."""
    with MetaTrace() as trace:
        rec = TraceRecorder(trace, device_type, config.training.precision)
        codec = rec.codec(config)
        model = rec.model(config, codec.latent_channels)
        unet = sum(p.numel() for p in model.unet.parameters())
        vae = codec.parameter_count()
    levels = len(config.model.channels)
    patch = latent_size(config, pixel_patch(config, geometry))
    padded = padded_size(config.model, patch)
    tokens = {level: attention_tokens(padded, level) for level, on in enumerate(config.model.attention_levels) if on}
    tokens["middle"] = attention_tokens(padded, levels - 1)
    return {"unet_parameters": unet, "vae_parameters": vae, "pixel_patch": pixel_patch(config, geometry),
            "latent_patch": patch, "padded_patch": padded, "attention_tokens": tokens,
            "flash_attention": uses_flash_attention(config.hardware, device_type),
            "window": _roi(config, device_type), "latent_volume": latent_size(config, geometry.largest)}

