"""``write_volume``: a Volume to NIfTI, NRRD or MetaImage by extension, atomically.

A crash, a full disk or a killed job must never leave a half-written scan that a later step (or a
viewer) takes for a result. So SimpleITK writes into a hidden staging folder beside the target, and
the finished file is moved into place with ``os.replace``, atomic within one file system. A staging
folder rather than a temporary file name because MetaImage ``.mhd`` writes a second (``.raw``) file
whose name is recorded inside the header: both are written under their final names and moved data
first, header last.

A write is checked before the rename, because a full disk does not always raise: the NIfTI writer
prints "** ERROR: NWAD: wrote only N of M bytes" and returns normally. The staged file must read back
with the image's size and type, and a NIfTI must hold all its bytes (uncompressed: the file size;
gzip: the uncompressed length its trailer records). NRRD and MetaImage raise on a short write.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ctslice.errors import CtsliceError, InputError
from ctslice.io.failures import captured_stderr, first_error, sitk_reason
from ctslice.io.intensity import cast_rounded
from ctslice.io.paths import check_name, staging_folder
from ctslice.io.volume import Volume

WRITABLE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
_COMPRESSED = (".nrrd", ".mha", ".mhd")  # gzip inside the format; .nii.gz is compressed by its name


def output_bytes(path: Path, voxels: int, dtype=np.int16) -> int:
    """About how many bytes ``write_volume`` needs on disk for ``voxels`` voxels at ``path``.

    Exact for uncompressed NIfTI (plus its 352-byte header); gzip rarely shrinks CT below a quarter, so
    compressed formats count a quarter: a free-space check refuses only a write that cannot fit.
    """
    raw = voxels * np.dtype(dtype).itemsize
    return raw // 4 if Path(path).name.lower().endswith((".gz", *_COMPRESSED)) else raw + 352


def write_volume(volume: Volume, path: Path, dtype=np.int16) -> Path:
    """Write ``volume`` to ``path`` as ``dtype`` (rounded and clipped for integers) with its exact geometry.

    The format follows the extension (``WRITABLE_SUFFIXES``); parent folders are created; an existing
    file is replaced only once the new one is complete and checked; a failed write leaves it as it was.
    Returns ``path``.
    """
    path = check_name(path)
    name = path.name.lower()
    if not name.endswith(WRITABLE_SUFFIXES):
        raise InputError(f"cannot write {path}: unknown extension; use one of {', '.join(WRITABLE_SUFFIXES)}")
    image = volume.with_array(cast_rounded(volume.array, dtype)).to_image()
    staging = staging_folder(path)
    try:
        with captured_stderr() as chatter:
            sitk.WriteImage(image, str(staging / path.name), useCompression=name.endswith(_COMPRESSED))
        problem = _incomplete(staging / path.name, image)
        if problem:
            raise CtsliceError(f"could not write {path}: {first_error(chatter) or problem} (is the disk full?); "
                               "nothing was written")
        for produced in sorted(staging.iterdir(), key=lambda p: p.name == path.name):  # header last
            os.replace(produced, path.parent / produced.name)
    except (RuntimeError, OSError) as error:
        reason = (first_error(chatter) or sitk_reason(error) if isinstance(error, RuntimeError)
                  else error.strerror or str(error))
        raise CtsliceError(f"could not write {path}: {reason.replace(str(staging / path.name), path.name)}; "
                           "nothing was written") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _incomplete(staged: Path, image: sitk.Image) -> str | None:
    """Why the staged file does not hold the whole ``image`` (None when it does)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(staged))
    try:
        with captured_stderr():
            reader.ReadImageInformation()
    except RuntimeError as error:
        return f"the written file does not read back ({sitk_reason(error)})"
    if reader.GetSize() != image.GetSize() or reader.GetPixelID() != image.GetPixelID():
        return "the written file does not read back as the image"
    name = staged.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return None
    voxels = image.GetNumberOfPixels() * image.GetNumberOfComponentsPerPixel() * image.GetSizeOfPixelComponent()
    expected = int(float(reader.GetMetaData("vox_offset"))) + voxels
    if name.endswith(".nii"):
        size = staged.stat().st_size
        return None if size >= expected else f"the file holds {size} of {expected} bytes"
    with open(staged, "rb") as stream:  # gzip's trailer ends with the uncompressed length, modulo 2**32
        stream.seek(max(0, staged.stat().st_size - 4))
        recorded = int.from_bytes(stream.read(4), "little")
    return None if recorded == expected % 2**32 else "the compressed file is incomplete"
