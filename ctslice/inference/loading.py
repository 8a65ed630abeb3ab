"""A trained model from a checkpoint (or the bundled default), ready for inference.

The checkpoint holds the U-Net, its latent statistics, the resolved config, the codec's identity and
the data geometry it was trained on; the codec's own weights (MAISI) come from the user's path, as
they may not be redistributed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ctslice.checkpoint import CheckpointError, bundled_model_path, load_weights, read_checkpoint
from ctslice.codecs import codec_for
from ctslice.config import config_from_dict, with_precision
from ctslice.errors import CtsliceError, shown
from ctslice.hardware import Precision, resolve_precision
from ctslice.inference.pipeline import SliceInterpolator
from ctslice.models import build_model

_REQUIRED = object()  # an entry without a default must be present


@dataclass
class LoadedModel:
    interpolator: SliceInterpolator
    path: Path
    thin_spacing: float | None  # None when trained on mixed thin spacings
    ratio: float  # thick spacing / thin spacing it was trained for
    step: int
    precision: Precision  # what inference autocasts to on this device (not what training used)

    def default_thin_spacing(self, thick_spacing: float) -> float:
        """The training thin spacing, or (for a model trained on mixed spacings) the input's / ratio."""
        return self.thin_spacing if self.thin_spacing else thick_spacing / self.ratio


def default_model_path() -> Path:
    """The model bundled with the package (``ctslice/default_model/default.pt``)."""
    path = bundled_model_path()
    if not path.exists():
        raise CtsliceError("this installation has no bundled default model: give a checkpoint or use the cubic method")
    return path


def load_model(checkpoint: Path | None, device: torch.device | str, vae_checkpoint: Path | None = None,
               precision: str | None = None) -> LoadedModel:
    """The model in ``checkpoint`` (default: the bundled one) on ``device``.

    The precision the checkpoint was trained with is not used: a model trained in BF16 on a CPU with
    AVX512-BF16 would run many times slower than FP32 on one without. ``precision`` (default auto) is
    resolved for ``device`` instead.
    """
    device = torch.device(device)
    resolved = resolve_precision(precision, device)
    path = Path(checkpoint) if checkpoint else default_model_path()
    state = read_checkpoint(path)
    for key in ("config", "model", "codec", "data"):
        if key not in state:
            raise CheckpointError(f"{path}: checkpoint has no '{key}' entry; was it written by `ctslice train`?")
    config = with_precision(config_from_dict(state["config"], where=f"{path} (config)"), resolved.name)
    thin, ratio, inplane, channels = _data_entries(state, path)
    codec = codec_for(config.codec, device, vae_checkpoint)
    if codec.latent_channels != channels:
        raise CheckpointError(f"{path}: trained with {channels} latent channels, the {codec.name} codec has "
                              f"{codec.latent_channels}")
    model = build_model(config, codec.latent_channels, device)
    load_weights(model, state["model"], path)
    interpolator = SliceInterpolator(model, codec, config, device, inplane)
    step = state.get("step", 0)
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{path}: its step entry is {shown(step)}, not a whole number of steps; the file is "
                              "damaged or was not written by `ctslice train`")
    return LoadedModel(interpolator, path, thin, ratio, step, resolved)


def _data_entries(state: dict, path: Path) -> tuple[float | None, float, int, int]:
    """The checkpoint's thin spacing (None: mixed), slice ratio, in-plane matrix (0: none) and latent channels,
    each within its domain, or one ``CheckpointError`` line: they size every grid inference makes."""
    data, codec = state["data"], state["codec"]
    if not isinstance(data, dict) or not isinstance(codec, dict):
        raise CheckpointError(f"{path}: its data and codec entries are not mappings; was it written by ctslice train?")

    def entry(section: dict, key: str, low: float, high: float, default=_REQUIRED, integer: bool = False):
        value = section.get(key, default)
        if value is None and default is None:
            return None
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or not low <= value <= high or (integer and value != int(value)):
            kind = "an integer" if integer else "a number"
            raise CheckpointError(f"{path}: its {key} entry is {value!r}, not {kind} from {low:g} to {high:g}; the "
                                  "file is damaged or was not written by `ctslice train`")
        return int(value) if integer else float(value)

    thin = entry(data, "thin_spacing", 1e-3, 100.0, default=None)
    return (thin, entry(data, "ratio", 1.0, 100.0), entry(data, "inplane_size", 0, 4096, default=0, integer=True),
            entry(codec, "latent_channels", 1, 1024, integer=True))
