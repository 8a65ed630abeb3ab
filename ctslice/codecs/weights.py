"""Loading pretrained weights strictly: all of them, or a clear error and nothing loaded.

A partly loaded VAE still runs and produces plausible-looking latents, so a silent partial load would
poison a whole training run. Every key and shape is therefore checked against the network before a
single tensor is copied into it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ctslice.errors import InputError, first_line

_SHOWN = 3  # keys named in an error message; the rest are counted


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The state dict in ``path``: a plain one, or one wrapped under ``"state_dict"``.

    Loaded with ``weights_only=True``: a checkpoint is data and must not be able to run code.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise InputError(f"VAE checkpoint {path} {what}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any failure to unpickle means the same thing: not a usable checkpoint
        raise InputError(f"VAE checkpoint {path} is not a PyTorch checkpoint ({first_line(error)})") from error
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    is_state_dict = isinstance(loaded, dict) and loaded
    if not (is_state_dict and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in loaded.items())):
        raise InputError(
            f"VAE checkpoint {path} holds no state dict (found {type(loaded).__name__}); "
            "expected a dict of tensors, plain or under 'state_dict'"
        )
    return loaded


def load_strict(network: nn.Module, state: dict[str, Tensor], source: str | Path) -> int:
    """Copies ``state`` into ``network`` if keys and shapes match exactly; returns the tensor count.

    On any mismatch raises ``InputError`` naming the first few offending keys, with ``network`` left
    untouched.
    """
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        _describe(missing, "missing key", "missing keys"),
        _describe(unexpected, "unexpected key", "unexpected keys"),
        _describe(mismatched, "shape mismatch (checkpoint vs network)", "shape mismatches (checkpoint vs network)"),
    ]
    problems = [p for p in problems if p]
    if problems:
        raise InputError(f"VAE checkpoint {source} does not fit the network: " + "; ".join(problems))
    network.load_state_dict(state, strict=True)
    return len(expected)


def _describe(items: list[str], singular: str, plural: str) -> str:
    if not items:
        return ""
    shown = ", ".join(items[:_SHOWN]) + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")
    return f"{len(items)} {singular if len(items) == 1 else plural}: {shown}"
