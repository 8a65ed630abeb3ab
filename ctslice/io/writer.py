"""``write_volume``: a Volume to NIfTI, NRRD or MetaImage by extension, atomically.

A crash, a full disk or a killed job must never leave a half-written scan that a later step (or a
viewer) takes for a result. So SimpleITK writes into a hidden staging folder beside the target, and
the finished file is moved into place with ``os.replace``, atomic within one file system. A staging
folder rather than a temporary file name because MetaImage ``.mhd`` writes a second (``.raw``) file
whose name is recorded inside the header: both are written under their final names and moved data
first, header last.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ctslice.errors import CtsliceError, InputError
from ctslice.io.failures import sitk_reason
from ctslice.io.intensity import cast_rounded
from ctslice.io.volume import Volume

WRITABLE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
_COMPRESSED = (".nrrd", ".mha", ".mhd")  # gzip inside the format; .nii.gz is compressed by its name


def write_volume(volume: Volume, path: Path, dtype=np.int16) -> Path:
    """Write ``volume`` to ``path`` as ``dtype`` (rounded and clipped for integers) with its exact geometry.

    The format follows the extension (``WRITABLE_SUFFIXES``); parent folders are created; an existing
    file is replaced only once the new one is complete. Returns ``path``.
    """
    path = Path(path)
    name = path.name.lower()
    if not name.endswith(WRITABLE_SUFFIXES):
        raise InputError(f"cannot write {path}: unknown extension; use one of {', '.join(WRITABLE_SUFFIXES)}")
    image = volume.with_array(cast_rounded(volume.array, dtype)).to_image()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    except OSError as error:
        raise CtsliceError(f"could not write {path}: {error.strerror or error}") from None
    try:
        sitk.WriteImage(image, str(staging / path.name), useCompression=name.endswith(_COMPRESSED))
        for produced in sorted(staging.iterdir(), key=lambda p: p.name == path.name):  # header last
            os.replace(produced, path.parent / produced.name)
    except (RuntimeError, OSError) as error:
        reason = sitk_reason(error) if isinstance(error, RuntimeError) else error.strerror or str(error)
        raise CtsliceError(f"could not write {path}: {reason}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
