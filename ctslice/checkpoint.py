"""Checkpoint files: written atomically, read with ``weights_only=True``, damaged ones detected.

A checkpoint is a plain dict of tensors and Python primitives (so ``torch.load(weights_only=True)``
loads it without trusting pickled code): ``format``, ``version``, ``ctslice_version``, ``step``,
``config`` (the resolved config), ``model`` (state dict, including the latent statistics),
``codec`` (name, latent channels, compression), ``data`` (thin/thick spacing, ratio, in-plane size),
and for training state ``optimizer``, ``lr_scheduler``, ``rng``, ``best_metric``; last, ``checksum``
(sha256 of everything else). A file holding any other pickled object is refused, not executed.

The checksum is what finds damage inside the file: a torch checkpoint is a zip whose reader notices a
lost end (truncation) but loads zeroed or flipped bytes in the middle of a tensor without complaint.
Files without a checksum (written before it existed) load unchecked.

In a run folder, ``checkpoints/`` holds periodic ``step_N.pt``, ``latest.pt`` (the newest),
``best.pt`` (best validation PSNR) and ``final.pt``. If ``latest.pt`` is truncated or corrupt (a
node died while copying it, a disk filled up), resuming falls back to the newest readable
``step_N.pt`` with a warning instead of losing the run. ``latest.pt`` is a hard link to the newest
``step_N.pt``, so damage to one is damage to both: the fallback then reaches the one before.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ctslice.errors import InputError, first_line
from ctslice.io.paths import check_regular_file
from ctslice.version import __version__

log = logging.getLogger(__name__)

FORMAT = "ctslice-checkpoint"
VERSION = 1


BUNDLED = "bundled"  # the name that stands for the packaged model where a checkpoint path is asked for


def bundled_model_path() -> Path:
    """Where the model bundled with the package lives (``ctslice/default_model/default.pt``)."""
    return Path(str(resources.files("ctslice") / "default_model" / "default.pt"))


class CheckpointError(InputError):
    """A checkpoint that cannot be used: missing, damaged, or not a ctslice checkpoint."""


def write_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Save ``state`` to ``path`` atomically (temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {"format": FORMAT, "version": VERSION, "ctslice_version": __version__, **state}
    document["checksum"] = checksum(document)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        torch.save(document, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return path


def read_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; a missing, damaged or foreign file is a ``CheckpointError``."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give the checkpoint file in it (for example checkpoints/best.pt)")
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        check_regular_file(path, holds="a checkpoint")  # a FIFO would block the read, a device never end
    except InputError as error:
        raise CheckpointError(str(error)) from None
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of foreign files before refusing them
            warnings.simplefilter("ignore")
            document = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        code = re.search(r"unsupported global:? (?:GLOBAL )?([\w.]+)", str(error), re.IGNORECASE)
        if code is None:
            raise CheckpointError(f"{path}: damaged or not a checkpoint (it does not unpickle)") from None
        raise CheckpointError(f"{path}: refused: it holds a pickled Python object ({code.group(1)}) that could run "
                              "code when loaded; ctslice loads only tensors and plain data, as `ctslice train` "
                              "writes them") from None
    except Exception as error:  # torch raises many types for damaged files: all mean "unreadable"
        raise CheckpointError(f"{path}: damaged or not a checkpoint ({first_line(error, 160)})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a ctslice checkpoint")
    if document.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: written by a newer ctslice (format {document['version']}); upgrade ctslice")
    expected = document.pop("checksum", None)
    if expected is not None and expected != checksum(document):
        raise CheckpointError(f"{path}: damaged: its contents do not match the checksum written with them "
                              "(a disk or copy error)")
    return document


def checksum(document: Any) -> str:
    """sha256 of a checkpoint's contents: tensors by dtype, shape and bytes, the rest by type and value."""
    digest = hashlib.sha256()
    _feed(digest, document)
    return digest.hexdigest()


def _feed(digest, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"tensor {tensor.dtype} {tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        digest.update(f"dict {len(value)};".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):  # a tuple may come back from the file as either
        digest.update(f"sequence {len(value)};".encode())
        for item in value:
            _feed(digest, item)
    else:
        digest.update(f"{type(value).__name__} {value!r};".encode())


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def periodic_checkpoints(run_dir: Path) -> list[Path]:
    """``step_N.pt`` files of a run, newest (highest N) first."""
    found = []
    for path in checkpoint_dir(run_dir).glob("step_*.pt"):
        match = re.fullmatch(r"step_(\d+)\.pt", path.name)
        if match:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found, reverse=True)]


def resolve_resume(resume: str, run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint ``--resume`` names, loaded; ``latest`` falls back past damaged files.

    ``latest`` in a run folder with no checkpoint yet means a fresh start (returns None), so a
    Kubernetes Job can always pass ``--resume latest``.
    """
    if not resume.strip():  # an unset variable in `--resume $CKPT` must not start the run afresh
        raise CheckpointError("resume '': expected latest or a checkpoint path")
    if resume != "latest":
        return Path(resume), read_checkpoint(Path(resume))
    candidates = [checkpoint_dir(run_dir) / "latest.pt", *periodic_checkpoints(run_dir)]
    candidates = [c for c in candidates if c.exists()]
    damaged = []  # told once a fallback is found; when none is, the one error line says it all
    for candidate in candidates:
        try:
            document = read_checkpoint(candidate)
        except CheckpointError as error:
            damaged.append(f"{error}; trying an earlier checkpoint")
            continue
        for warning in damaged:
            log.warning(warning)
        if damaged:
            log.warning(f"resuming from {candidate.name} instead")
        return candidate, document
    if candidates:  # damaged files are bad input, as a damaged --resume PATH is
        raise CheckpointError(f"{checkpoint_dir(run_dir)}: no readable checkpoint to resume from (all "
                              f"{len(candidates)} damaged); resume from a copy of the run, or start a new run "
                              "elsewhere")
    return None


def load_weights(model: torch.nn.Module, weights: dict[str, Any], path: Path, hint: str = "") -> None:
    """Load ``weights`` into ``model``, or one ``CheckpointError`` line naming the first parameter that differs.

    torch's own message lists every mismatch over many lines; the first one, with both shapes, says
    enough to see which part of the config changed.
    """
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path}: its model entry is not a set of weights; was it written by `ctslice train`?")
    expected = model.state_dict()
    problem = next((f"parameter {name} is {_shape(weights[name])} in the checkpoint, {_shape(tensor)} in the model"
                    for name, tensor in expected.items()
                    if name in weights and _shape(weights[name]) != _shape(tensor)), None)
    missing, extra = [n for n in expected if n not in weights], [n for n in weights if n not in expected]
    problem = (problem or (f"parameter {missing[0]} is missing from the checkpoint" if missing else None)
               or (f"the checkpoint has parameter {extra[0]}, which the model lacks" if extra else None))
    broken = next((name for name, tensor in weights.items() if isinstance(tensor, torch.Tensor)
                   and tensor.is_floating_point() and not bool(tensor.isfinite().all())), None)
    if problem is None and broken is not None:  # the checksum holds (written so), yet every output would be NaN
        raise CheckpointError(f"{path}: its parameter {broken} holds NaN or infinite values (a diverged run?); use "
                              "an earlier checkpoint")
    if problem is None:
        try:
            model.load_state_dict(weights)
            return
        except (RuntimeError, ValueError) as error:
            problem = first_line(error, 200)
    raise CheckpointError(f"{path}: weights do not fit the model in its config{hint}: {problem}")


def _shape(tensor: Any) -> str:
    return "x".join(map(str, getattr(tensor, "shape", ()))) or "a scalar"
