"""Every path a command reads or writes, checked once, before any work: names, outputs, free space.

Commands that write (``infer -o``, ``validate --out``, ``train --out``, ``split -o``, ``demo --out``,
``preprocess -o``) call ``check_output`` before they start, so that a mistyped or unusable output is one
line and exit 2 instead of a traceback after an hour of work, and an output that is the input (or lies
inside an input folder) never replaces the scan it is computed from. ``check_name`` refuses names that
are not valid UTF-8: Linux allows any bytes in a name, but SimpleITK converts paths to UTF-8 and aborts
the whole process (SIGABRT) on one that is not.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path

from ctslice.errors import CtsliceError, InputError

MAX_NAME_BYTES = 255 - 20  # NAME_MAX, less what staging adds (``.<name>.<random>.partial``)
MHD_COMPANIONS = (".raw", ".zraw")  # a MetaImage .mhd header writes its voxels beside it under these names


def printable(path: Path | str) -> str:
    """``path`` as printable text: bytes that are not UTF-8 appear as ``\\xff`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def check_name(path: Path | str) -> Path:
    """``path`` if its name is valid UTF-8 (what SimpleITK and HDF5 need), else ``InputError``."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{printable(path)}: the name is not valid UTF-8 (bytes shown as \\x..); rename it with "
                         "UTF-8 characters") from None
    return Path(path)


def check_regular_file(path: Path | str, holds: str = "a scan") -> Path:
    """``path`` if it is a regular file (or a link to one) this process may read, else ``InputError``.

    Opening a named pipe (FIFO) blocks until another process writes to it, and a device such as
    ``/dev/zero`` never ends: neither is a scan (or whatever the file should hold, ``holds``), and reading
    either would hang the run.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as error:
        broken = path.is_symlink() and not isinstance(error, PermissionError)
        what = "is a broken symbolic link" if broken else f"cannot be read ({error.strerror})"
        raise InputError(f"{printable(path)} {what}; pass an existing, readable file") from None
    if not os.access(path, os.R_OK):
        raise InputError(f"{printable(path)} cannot be read (permission denied); make it readable or leave it out")
    if not stat.S_ISREG(mode):
        raise InputError(f"{printable(path)} is {file_kind(mode)}, not a file that holds {holds}; pass a regular file")
    return path


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is, in words, from its ``st_mode`` (``lstat``'s for a link)."""
    return ("a symbolic link" if stat.S_ISLNK(mode) else "a named pipe (FIFO)" if stat.S_ISFIFO(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a folder" if stat.S_ISDIR(mode) else "not a regular file")


def check_output(path: Path, *, inputs: Iterable[Path | None] = (), folder: bool = False,
                 needed_bytes: int = 0) -> Path:
    """Check that ``path`` can be written as a file (or, with ``folder``, a folder) before any work; return it.

    Refused with one ``InputError`` line: a name that is not UTF-8; the path of one of ``inputs`` (or a
    path inside an input folder, or an input folder inside an output folder); an existing folder where a
    file goes, or the reverse; a parent that is a file or a folder this user cannot write to; less free
    space than ``needed_bytes``. Missing parent folders are fine (they are created on write).
    """
    path = check_name(path)
    if len(os.fsencode(path.name)) > MAX_NAME_BYTES:
        raise InputError(f"{printable(path)}: the name is {len(os.fsencode(path.name))} bytes long; at most "
                         f"{MAX_NAME_BYTES} fit (the file system's 255, less the staging name it is written under)")
    target = resolved(path)
    written = [target]
    if not folder and target.name.lower().endswith(".mhd"):
        written += [target.with_suffix(suffix) for suffix in MHD_COMPANIONS]
    for source in (Path(p) for p in inputs if p is not None):
        source = resolved(source)
        if source in written or (source.is_dir() and target.is_relative_to(source)) or (
                folder and source.is_dir() and source.is_relative_to(target)):
            raise InputError(f"{printable(path)}: the output would overwrite the input {printable(source)}; "
                             "choose another output path")
    if folder and target.exists() and not target.is_dir():
        raise InputError(f"{printable(path)} is a file, not a folder; choose a folder for the output")
    if not folder and target.is_dir():
        raise InputError(f"{printable(path)} is a folder; give the output a file name")
    existing = _nearest_existing(target if folder else target.parent)
    if not existing.is_dir():
        raise InputError(f"{printable(path)}: cannot write there, {printable(existing)} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{printable(path)}: cannot write there, the folder {printable(existing)} is read-only "
                         "for this user")
    ensure_space(path, needed_bytes)
    return path


def resolved(path: Path) -> Path:
    """``path.resolve()``, or one ``InputError`` line for a symbolic link that leads back to itself."""
    try:
        return Path(path).resolve()
    except RuntimeError:  # Python < 3.13 raises RuntimeError("Symlink loop from ...")
        raise InputError(f"{printable(path)}: a symbolic link that leads back to itself (a loop); remove it or point "
                         "it at a file") from None
    except OSError as error:
        raise InputError(f"{printable(path)}: {error.strerror or error}") from None


def ensure_space(path: Path, needed_bytes: int) -> None:
    """``InputError`` if the file system that will hold ``path`` has less than ``needed_bytes`` free."""
    if needed_bytes <= 0:
        return
    free = shutil.disk_usage(_nearest_existing(resolved(Path(path)))).free
    if free < needed_bytes:
        raise InputError(f"{printable(path)}: not enough free space ({_size(free)} free, the output needs about "
                         f"{_size(needed_bytes)}); free some space or write elsewhere")


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (the folder a write would create its parents in)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _size(n: int) -> str:
    return f"{n / 1024**3:.1f} GB" if n >= 1024**3 else f"{n / 1024**2:.1f} MB"


def staging_folder(target: Path) -> Path:
    """A new hidden ``.partial`` folder beside ``target``, where an output is written before its atomic
    rename (same file system, so the rename cannot copy); a folder that cannot be made is one line."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    except OSError as error:
        raise CtsliceError(f"could not write {printable(target)}: {error.strerror or error}") from None
