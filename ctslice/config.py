"""The run configuration: one YAML file with typed, validated sections, plus ``--set`` overrides.

Every key is declared below with its type and default. Loading checks each value's type, and an
unknown or misspelled key is an error that names the closest valid key: a misspelled
``validate_every`` that was silently ignored once cost a whole training run its validation.
``--set section.key=value`` parses the value as YAML and goes through the same checks, then each value
against the domain ``ctslice.config_domains`` declares for its key. The resolved config (defaults filled
in) is saved with every run and every checkpoint.
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

from ctslice.config_domains import CHOICES, DOMAINS
from ctslice.errors import ConfigError, InputError, one_line, shown
from ctslice.parsing import NotValid, load_yaml, read_text

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
    cache_latents: bool = True  # encode each training volume once (the codec is frozen); off with in-plane pairs
    inplane_fraction: float = 0.0  # share of training pairs made in-plane (SMORE); self-supervised cases need > 0
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
    loss: str = "mse"  # mse, or l1 (the slice-interpolation literature's: sharper edges for the same steps)


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
    precision: str = "auto"  # auto (bf16 where the device runs it fast, else fp32), bf16 or fp32
    log_interval: int = 10
    val_interval: int = 500
    checkpoint_interval: int = 2000
    time_limit_minutes: float | None = None  # stop (with a checkpoint and validation) after this long
    max_bad_steps: int = 5  # stop after this many non-finite losses in a row
    init_from: str | None = None  # a new run starts from this checkpoint's weights (``bundled``: the packaged model)


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
    overlap: float = 0.0625  # least overlap of neighbouring windows, as a fraction of the largest window
    window_batch: int = 2  # windows per U-Net call (2+ also keeps CPU convolutions on their fast path)
    consistency: bool = True  # correct the output so that, slab-averaged, it gives back the input


@dataclass
class HardwareConfig:
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    tf32: bool = True
    flash_attention: bool = True  # fused scaled_dot_product_attention (CUDA and CPU kernels)
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


# The configs that come with the package (configs/ in a checkout links here): usable by name anywhere.
SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"


def shipped_configs() -> dict[str, tuple[Path, str]]:
    """Shipped configs by name: (path, the first line of the file's leading comment, its description)."""
    found = {}
    for path in sorted(SHIPPED_CONFIGS.glob("*.yaml")):
        first = next(iter(path.read_text(encoding="utf-8").splitlines()), "")
        found[path.stem] = (path, first.lstrip("#").strip() if first.startswith("#") else "")
    return found


def resolve_config(path: Path) -> Path:
    """``path`` itself when it exists (a path always wins), else the shipped config it names: ``tiny_cpu``
    or ``tiny_cpu.yaml`` means ctslice/configs/tiny_cpu.yaml from any folder, outside a checkout too."""
    path = Path(path)
    if path.is_file() or path.parent != Path("."):
        return path
    shipped = shipped_configs().get(path.name.removesuffix(".yaml"))
    return shipped[0] if shipped else path


def load_config(path: Path | None, overrides: list[str] | None = None) -> Config:
    """The config in ``path`` (a file, or the name of a shipped config; defaults if None) with
    ``--set key=value`` overrides, validated.

    An error names the ``--set`` override that set the key (or a section above it), else the file.
    """
    data: dict[str, Any] = {}
    origins = _Origins(str(path) if path else "config")
    if path is not None:
        try:
            data = load_yaml(read_text(resolve_config(path), "a config file", MAX_CONFIG_BYTES), str(path))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file (shipped configs, usable by name: "
                              f"{', '.join(shipped_configs())})") from None
        except InputError as error:
            raise ConfigError(str(error)) from None
        if data is None:  # an empty file is a failed copy or a full disk more often than a wish for defaults
            raise ConfigError(f"{path}: the config file is empty; write the sections to change, or {{}} for every "
                              "default")
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected sections (data, codec, model, ...) at the top level")
    for override in overrides or []:
        origins.keys[_apply_override(data, override)] = f"--set {_abbreviated(override)}"
    config = _build(Config, data, origins, "")
    _check(config, origins)
    return config


def config_from_dict(data: dict[str, Any], where: str = "checkpoint config") -> Config:
    """Rebuild a config saved with ``Config.to_dict`` (for example inside a checkpoint)."""
    config = _build(Config, data, _Origins(where), "")
    _check(config, _Origins(where))
    return config


MAX_CONFIG_BYTES = 2**20


def with_precision(config: Config, precision: str) -> Config:
    """``config`` with ``training.precision`` set (a resolved one: what autocast actually uses)."""
    return dataclasses.replace(config, training=dataclasses.replace(config.training, precision=precision))


class _Origins:
    """Where a key's value came from, for messages: the ``--set`` override that set it, else the file."""

    def __init__(self, default: str) -> None:
        self.default = default
        self.keys: dict[str, str] = {}

    def __call__(self, *keys: str) -> str:
        for key in keys:
            while key:
                if key in self.keys:
                    return self.keys[key]
                key = key.rpartition(".")[0]
        return self.default


def _abbreviated(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters, control characters escaped: an error stays one line."""
    text = one_line(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def save_config(config: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")


def _apply_override(data: dict[str, Any], override: str) -> str:
    """Put one ``section.key=value`` into ``data``; returns the key. The value is YAML (a string if not)."""
    key, sep, text = override.partition("=")
    label = f"--set {_abbreviated(override)}"
    if not sep or not all(part.strip() for part in key.split(".")):
        raise ConfigError(f"{label}: expected section.key=value")
    if not text.strip():  # --set training.init_from=$UNSET_VARIABLE must not quietly mean "not set"
        raise ConfigError(f"{label}: no value after '='; write {key.strip()}=null to unset the key")
    try:
        value = load_yaml(text, label)
    except NotValid:
        value = text
    except InputError as error:
        raise ConfigError(str(error)) from None
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{label}: {part} is not a section")
    node[parts[-1]] = value
    return key.strip()


def _build(cls: type, data: Any, where: _Origins, prefix: str):
    if not isinstance(data, dict):
        section = prefix.rstrip(".")
        raise ConfigError(f"{where(section)}: {section or 'top level'} must be a mapping of keys, got {shown(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            name = f"{prefix}{key}"
            raise ConfigError(f"{where(name)}: unknown key {shown(name)}{_suggestion(str(key), prefix)}")
    values = {}
    for name, value in data.items():
        kind = hints[name]
        if dataclasses.is_dataclass(kind):
            values[name] = _build(kind, value, where, f"{prefix}{name}.")
        else:
            values[name] = _coerce(value, kind, f"{prefix}{name}", where(f"{prefix}{name}"))
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
            raise ConfigError(f"{where}: {key} must be a list of {item.__name__}, got {shown(value)}")
        return [_coerce(v, item, key, where) for v in value]
    if kind is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:  # PyYAML reads 3e-4 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if kind is str and value is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: {key} must be {kind.__name__}, got {shown(value)}")
    return value


def _check(config: Config, where: _Origins) -> None:
    """Value checks beyond types: ``CHOICES``, ``DOMAINS``, then the rules between keys."""
    for key, choices in CHOICES.items():
        value = _value(config, key)
        if value not in choices:
            raise ConfigError(f"{where(key)}: {key} is {shown(value)}; choose one of {', '.join(choices)}")
    for key, domain in DOMAINS.items():
        value = _value(config, key)
        if value is not None and not domain.accepts(value):
            raise ConfigError(f"{where(key)}: {key} must be {domain.text}, got {shown(value)}")
    model = config.model
    if len(model.attention_levels) != len(model.channels):
        raise ConfigError(f"{where('model.attention_levels', 'model.channels')}: model.attention_levels needs one "
                          f"entry per level of model.channels ({len(model.channels)})")
    for channels in model.channels:
        if channels % model.norm_num_groups or channels % model.attention_heads:
            raise ConfigError(f"{where('model.channels', 'model.norm_num_groups', 'model.attention_heads')}: "
                              f"model.channels {channels} must be divisible by model.norm_num_groups "
                              f"({model.norm_num_groups}) and model.attention_heads ({model.attention_heads})")
    if config.data.whole_volumes and config.data.inplane_fraction > 0:
        raise ConfigError(f"{where('data.whole_volumes', 'data.inplane_fraction')}: data.whole_volumes trains on "
                          "whole volumes, which have no in-plane pairs; set data.inplane_fraction to 0 or "
                          "data.whole_volumes to false")
    training = config.training
    if training.max_steps is None and training.epochs is None:
        raise ConfigError(f"{where('training.max_steps', 'training.epochs')}: set training.max_steps or "
                          "training.epochs")
    timesteps = config.diffusion.num_train_timesteps
    for key in ("inference.steps", "validation.val_steps"):
        if _value(config, key) > timesteps:
            raise ConfigError(f"{where(key, 'diffusion.num_train_timesteps')}: {key} ({_value(config, key)}) "
                              f"must be at most diffusion.num_train_timesteps ({timesteps})")


def _value(config: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(config, section), name)
