"""The run configuration: one YAML file with typed, validated sections, plus ``--set`` overrides.

Every key is declared below with its type and default. Loading checks each value's type, and an
unknown or misspelled key is an error that names the closest valid key: a misspelled
``validate_every`` that was silently ignored once cost a whole training run its validation.
``--set section.key=value`` parses the value as YAML and goes through the same checks. The resolved
config (defaults filled in) is saved with every run and every checkpoint.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ctslice.errors import ConfigError, first_line

# Names people reach for that mean one of our keys (checked before spelling similarity).
SYNONYMS = {
    "validate_every": "val_interval", "eval_every": "val_interval", "val_every": "val_interval",
    "save_every": "checkpoint_interval", "ckpt_every": "checkpoint_interval", "checkpoint_every": "checkpoint_interval",
    "learning_rate": "lr", "steps": "max_steps", "num_steps": "max_steps", "accumulation": "grad_accumulation",
    "gradient_accumulation_steps": "grad_accumulation", "model_channels": "channels", "num_channels": "channels",
    "num_heads": "attention_heads", "timesteps": "num_train_timesteps", "ddim_steps": "steps",
}


@dataclass
class DataConfig:
    cache: str = "cache.h5"  # HDF5 cache from `ctslice preprocess`
    splits: str = "splits.json"  # from `ctslice split`
    patch_thick_slices: int = 4  # patch depth in thick slices (thin depth = this x ratio)
    patch_size: int = 64  # in-plane patch side in pixels; 0 = whole slices
    whole_volumes: bool = False  # train on whole volumes instead of patches
    flips: bool = True  # random flips along z, y, x and y/x swaps (thick/thin relation is symmetric)
    cache_latents: bool = True  # encode each training volume once (the codec is frozen)
    num_workers: int = 0  # DataLoader worker processes


@dataclass
class CodecConfig:
    name: str = "identity"  # identity (pixel space) or maisi (frozen pretrained VAE)
    checkpoint: str | None = None  # MAISI VAE weights (else $CTSLICE_MAISI_VAE)
    encode_chunk: int = 32  # slices per chunk when encoding
    decode_chunk: int = 8  # latent slices per chunk when decoding
    overlap: int = 40  # halo slices per side of a slab (40 covers the MAISI VAE's receptive field: exact)
    strategy: str = "auto"  # chunked VAE: auto (block by block if it fits, else slabs), blocks or slabs
    memory_gb: float | None = None  # memory the chunked VAE may take (default: from what is free)


@dataclass
class ModelConfig:
    channels: list[int] = field(default_factory=lambda: [32, 64, 64])  # U-Net channels per level
    attention_levels: list[bool] = field(default_factory=lambda: [False, False, False])
    attention_heads: int = 4  # heads in attention blocks (including the middle block's)
    num_res_blocks: int = 1
    norm_num_groups: int = 8
    residual: bool = True  # predict the thin latents as a residual over the interpolated thick ones
    gradient_checkpointing: bool = False


@dataclass
class DiffusionConfig:
    num_train_timesteps: int = 1000
    schedule: str = "cosine"  # MONAI noise schedule
    prediction_type: str = "sample"  # sample, epsilon or v_prediction
    mean_fraction: float = 0.25  # share of training steps at the last timestep (trains the mean estimate)


@dataclass
class TrainingConfig:
    seed: int = 0
    max_steps: int | None = 1000  # optimizer steps; None = use epochs
    epochs: float | None = None  # used when max_steps is None
    batch_size: int = 1
    grad_accumulation: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 0
    warmup_epochs: float | None = None  # overrides warmup_steps when set
    grad_clip: float = 1.0
    precision: str = "bf16"  # bf16 or fp32
    log_interval: int = 10
    val_interval: int = 500
    checkpoint_interval: int = 2000
    time_limit_minutes: float | None = None  # stop (with a checkpoint and validation) after this long
    max_bad_steps: int = 5  # stop after this many non-finite losses in a row


@dataclass
class ValidationConfig:
    val_samples: int = 2  # validation cases per validation
    val_steps: int = 20  # DDIM steps in validation
    mode: str = "mean"  # mean or sample


@dataclass
class InferenceConfig:
    steps: int = 20  # DDIM steps for --mode sample
    window_slices: int = 64  # thin slices per z-window (in pixels; divided by the codec's z compression)
    window_size: int = 256  # in-plane window side in pixels
    overlap: float = 0.5  # overlap of neighbouring windows
    window_batch: int = 2  # windows per U-Net call (2+ also keeps CPU convolutions on their fast path)


@dataclass
class HardwareConfig:
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    tf32: bool = True
    flash_attention: bool = True  # CUDA only; switched off on CPU
    channels_last: bool = False  # channels_last_3d memory format


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CHOICES = {
    "codec.name": ("identity", "maisi"),
    "diffusion.schedule": ("cosine", "linear_beta", "scaled_linear_beta", "sigmoid_beta"),
    "diffusion.prediction_type": ("sample", "epsilon", "v_prediction"),
    "training.precision": ("bf16", "fp32"),
    "validation.mode": ("mean", "sample"),
}


def load_config(path: Path | None, overrides: list[str] | None = None) -> Config:
    """The config in ``path`` (defaults if None) with ``--set key=value`` overrides, validated."""
    data: dict[str, Any] = {}
    where = str(path) if path else "config"
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{path}: not valid YAML ({first_line(error)})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected sections (data, codec, model, ...) at the top level")
    for override in overrides or []:
        _apply_override(data, override)
    config = _build(Config, data, where, "")
    _check(config, where)
    return config


def config_from_dict(data: dict[str, Any], where: str = "checkpoint config") -> Config:
    """Rebuild a config saved with ``Config.to_dict`` (for example inside a checkpoint)."""
    config = _build(Config, data, where, "")
    _check(config, where)
    return config


def save_config(config: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))


def _apply_override(data: dict[str, Any], override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {override!r}: expected section.key=value")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {override!r}: {part} is not a section")
    node[parts[-1]] = value


def _build(cls: type, data: Any, where: str, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'top level'} must be a mapping of keys")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise ConfigError(f"{where}: unknown key '{prefix}{key}'{_suggestion(key, prefix)}")
    values = {}
    for name, value in data.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            values[name] = _build(kind, value, where, f"{prefix}{name}.")
        else:
            values[name] = _coerce(value, kind, f"{prefix}{name}", where)
    return cls(**values)


def _suggestion(key: str, prefix: str) -> str:
    """' (did you mean section.key?)' for the closest valid key, looking in every section."""
    valid = [f"{section.name}.{f.name}" for section in dataclasses.fields(Config)
             for f in dataclasses.fields(typing.get_type_hints(Config)[section.name])]
    if not prefix:
        valid = [f.name for f in dataclasses.fields(Config)]
        matches = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
        return f" (did you mean '{matches[0]}'?)" if matches else f" (sections: {', '.join(valid)})"
    leaf = SYNONYMS.get(key, key)
    same_section = [v for v in valid if v.startswith(prefix)]
    candidates = [v for v in same_section + valid if v.endswith("." + leaf)]
    if not candidates:
        names = {v.split(".")[-1]: v for v in valid[::-1]}
        names.update({v.split(".")[-1]: v for v in same_section[::-1]})
        close = difflib.get_close_matches(leaf, list(names), n=1, cutoff=0.5)
        candidates = [names[close[0]]] if close else []
    return f" (did you mean '{candidates[0]}'?)" if candidates else ""


def _coerce(value: Any, kind: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        kind = next(option for option in options if option is not type(None))
        origin = typing.get_origin(kind)
    if origin is list:
        (item,) = typing.get_args(kind)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key} must be a list of {item.__name__}, got {value!r}")
        return [_coerce(v, item, key, where) for v in value]
    if kind is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:  # PyYAML reads 3e-4 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if kind is str and value is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: {key} must be {kind.__name__}, got {value!r}")
    return value


def _check(config: Config, where: str) -> None:
    """Value checks beyond types: choices, positive sizes, lengths that must agree."""
    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value not in choices:
            raise ConfigError(f"{where}: {key} is {value!r}; choose one of {', '.join(choices)}")
    model = config.model
    if len(model.attention_levels) != len(model.channels):
        raise ConfigError(f"{where}: model.attention_levels needs one entry per level of model.channels "
                          f"({len(model.channels)})")
    for channels in model.channels:
        if channels % model.norm_num_groups or channels % model.attention_heads:
            raise ConfigError(f"{where}: model.channels {channels} must be divisible by model.norm_num_groups "
                              f"({model.norm_num_groups}) and model.attention_heads ({model.attention_heads})")
    training = config.training
    if training.max_steps is None and training.epochs is None:
        raise ConfigError(f"{where}: set training.max_steps or training.epochs")
    positive = {"training.batch_size": training.batch_size, "training.grad_accumulation": training.grad_accumulation,
                "training.log_interval": training.log_interval, "training.val_interval": training.val_interval,
                "training.checkpoint_interval": training.checkpoint_interval, "data.patch_thick_slices":
                config.data.patch_thick_slices, "validation.val_steps": config.validation.val_steps,
                "inference.steps": config.inference.steps, "inference.window_batch": config.inference.window_batch,
                "codec.encode_chunk": config.codec.encode_chunk,
                "codec.decode_chunk": config.codec.decode_chunk}
    if config.codec.overlap < 0:
        raise ConfigError(f"{where}: codec.overlap must be 0 or more, got {config.codec.overlap}")
    if config.codec.memory_gb is not None and config.codec.memory_gb <= 0:
        raise ConfigError(f"{where}: codec.memory_gb must be positive, got {config.codec.memory_gb}")
    if config.codec.strategy not in ("auto", "blocks", "slabs"):
        raise ConfigError(f"{where}: codec.strategy must be auto, blocks or slabs, got {config.codec.strategy!r}")
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{where}: {key} must be at least 1, got {value}")
    if not 0 <= config.inference.overlap < 1:
        raise ConfigError(f"{where}: inference.overlap must be in [0, 1)")
    if not 0 <= config.diffusion.mean_fraction <= 1:
        raise ConfigError(f"{where}: diffusion.mean_fraction must be in [0, 1]")
