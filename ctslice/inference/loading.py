"""A trained model from a checkpoint (or the bundled default), ready for inference.

The checkpoint holds the U-Net, its latent statistics, the resolved config, the codec's identity and
the data geometry it was trained on; the codec's own weights (MAISI) come from the user's path, as
they may not be redistributed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ctslice.checkpoint import CheckpointError, bundled_model_path, load_weights, read_checkpoint
from ctslice.codecs import codec_for
from ctslice.config import config_from_dict, with_precision
from ctslice.errors import CtsliceError
from ctslice.hardware import Precision, resolve_precision
from ctslice.inference.pipeline import SliceInterpolator
from ctslice.models import build_model


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
    _check_meta(path, state)
    config = with_precision(config_from_dict(state["config"], where=f"{path} (config)"), resolved.name)
    codec = codec_for(config.codec, device, vae_checkpoint)
    if codec.latent_channels != state["codec"]["latent_channels"]:
        raise CheckpointError(f"{path}: trained with {state['codec']['latent_channels']} latent channels, "
                              f"the {codec.name} codec has {codec.latent_channels}")
    model = build_model(config, codec.latent_channels, device)
    load_weights(model, state["model"], path)
    data = state["data"]
    interpolator = SliceInterpolator(model, codec, config, device, int(data.get("inplane_size", 0)))
    thin = data.get("thin_spacing")
    return LoadedModel(interpolator, path, None if thin is None else float(thin), float(data["ratio"]),
                       int(state.get("step", 0)), resolved)


def _check_meta(path: Path, state: dict) -> None:
    """What the checkpoint says about its codec and data, checked as a config's keys are: a NaN ratio or a
    negative spacing would make a thin grid of no slices or of millions."""
    codec, data = state["codec"], state["data"]

    def number(value, low: float, high: float) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and low < value <= high

    problems = [
        (not isinstance(codec, dict) or not isinstance(codec.get("latent_channels"), int), "its codec entry"),
        (not isinstance(data, dict), "its data entry"),
        (isinstance(data, dict) and not number(data.get("ratio"), 0, 100), "its data ratio"),
        (isinstance(data, dict) and data.get("thin_spacing") is not None and not number(data.get("thin_spacing"),
                                                                                       0, 100), "its thin spacing"),
        (isinstance(data, dict) and not isinstance(data.get("inplane_size", 0), int), "its in-plane size"),
        (not isinstance(state.get("step", 0), int), "its step"),
    ]
    for wrong, what in problems:
        if wrong:
            raise CheckpointError(f"{path}: damaged: {what} is not what `ctslice train` writes")
