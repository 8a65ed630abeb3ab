"""Opening a scan that arrives as a folder or as a zip of one, without trusting the zip.

Hospitals and public archives ship DICOM studies as zips. A zip is untrusted input: a member named
``../x`` or ``/etc/x`` would be written outside the extraction folder (path traversal), a symlink
member can point anywhere, and a few kilobytes can inflate to terabytes (a zip bomb). So every member
name is checked before anything is written, every byte written is counted against a limit, and the
extraction lives in a temporary folder that is removed however the caller exits.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from ctslice.errors import CtsliceError, InputError
from ctslice.io.paths import check_regular_file

LIMIT_ENV = "CTSLICE_MAX_UNZIPPED_GB"
"""Environment variable that overrides the default limit, in GB (for example on a large study server)."""

DEFAULT_MAX_BYTES = 16 * 1024**3
"""Default limit on the total uncompressed size of one zip: far above a CT study (a 1000-slice
512 x 512 series is about 0.5 GB), far below what would fill a disk."""

_CHUNK = 1024 * 1024
_NAME_ERRORS = (errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG)
"""Errors that a member's name causes (a file and a folder of one name, a name too long to create),
not the extraction folder: the zip's fault, reported as such."""


@contextmanager
def extracted(path: Path, *, max_bytes: int | None = None) -> Iterator[Path]:
    """Yield a folder holding the contents of ``path``: the folder itself, or a zip extracted safely.

    A zip is extracted into a fresh temporary folder that is deleted on exit. ``max_bytes`` caps the
    total uncompressed size (default: ``$CTSLICE_MAX_UNZIPPED_GB`` or ``DEFAULT_MAX_BYTES``). Raises
    ``InputError`` naming the zip (and the member) for a bad, unsafe or oversized archive.
    """
    path = Path(path)
    if path.is_dir():
        yield path
        return
    if not path.exists():
        raise InputError(f"{path} does not exist")
    check_regular_file(path)  # a FIFO named study.zip would block the read
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path} is neither a folder nor a valid zip archive (a zip may be truncated or corrupt)")
    limit = _byte_limit() if max_bytes is None else max_bytes
    with tempfile.TemporaryDirectory(prefix="ctslice-unzip-") as tmp:
        _extract(path, Path(tmp), limit)
        yield Path(tmp)


def _byte_limit() -> int:
    value = os.environ.get(LIMIT_ENV)
    if value is None:
        return DEFAULT_MAX_BYTES
    try:
        return int(float(value) * 1024**3)
    except ValueError:
        raise InputError(f"{LIMIT_ENV}={value!r} is not a number of GB") from None


def _extract(archive: Path, target: Path, limit: int) -> None:
    """Check every member, then write them one by one, counting the bytes actually inflated."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if _should_extract(zf, archive, m)]
            _check_unique(archive, members)
            declared = sum(m.file_size for m in members)
            if declared > limit:
                raise _too_large(archive, declared, limit)
            written = 0
            for member in members:
                written = _write_member(zf, member, target, archive, written, limit)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError) as exc:
        # RuntimeError: an encrypted member; NotImplementedError: an unsupported compression method.
        raise InputError(f"{archive} could not be extracted ({exc}); check that it is a complete, "
                         "unencrypted zip") from None
    except OSError as exc:  # the zip may be fine, the temporary folder is not (a full disk, permissions)
        raise CtsliceError(f"could not extract {archive} into {target}: {exc.strerror or exc}") from None


def _should_extract(zf: zipfile.ZipFile, archive: Path, member: zipfile.ZipInfo) -> bool:
    """True for a member to extract, False for one to skip (a directory entry or an internal symlink).

    Raises for a name that would land outside the extraction folder or a symlink pointing out of it.
    Backslashes count as separators: a zip made on Windows may use them, and ``..\\x`` must not pass.
    """
    name = member.filename.replace("\\", "/")
    if _escapes(name):
        raise InputError(f"{archive} is unsafe: member {member.filename!r} would be written outside the "
                         "extraction folder; re-create the zip with relative paths")
    if stat.S_ISLNK(member.external_attr >> 16):
        # zipfile cannot create symlinks (it would write the link text as a plain file), so none is
        # extracted; one that points out of the archive is the mark of a crafted zip and is rejected.
        link = zf.read(member).decode("utf-8", "replace").replace("\\", "/")
        if _escapes(str(PurePosixPath(name).parent / link)):
            raise InputError(f"{archive} is unsafe: member {member.filename!r} is a symbolic link to {link!r}, "
                             "outside the archive; re-create the zip without links")
        return False
    return not member.is_dir()


def _escapes(name: str) -> bool:
    """Whether a zip path is absolute (``/x``, ``C:x``) or climbs above its root with ``..``."""
    parts = PurePosixPath(name).parts
    if name.startswith("/") or (parts and parts[0].endswith(":")):
        return True
    depth = 0
    for part in parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return True
    return False


def _write_member(zf: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path, archive: Path,
                  written: int, limit: int) -> int:
    """Stream one member to disk; return the running byte count. The declared sizes in a zip can lie."""
    destination = target.joinpath(*PurePosixPath(member.filename.replace("\\", "/")).parts)
    if not destination.resolve().is_relative_to(target.resolve()):  # belt and braces over _escapes
        raise InputError(f"{archive} is unsafe: member {member.filename!r} would be written outside the "
                         "extraction folder")
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        sink = open(destination, "wb")  # closed by the with below
    except OSError as error:
        if error.errno not in _NAME_ERRORS:
            raise
        raise InputError(f"{archive}: member {member.filename!r} cannot be extracted ({error.strerror}: its name "
                         "clashes with another member's or is too long); re-create the zip") from None
    with zf.open(member) as source, sink:
        while chunk := source.read(_CHUNK):
            written += len(chunk)
            if written > limit:
                raise _too_large(archive, written, limit)
            sink.write(chunk)
    return written


def _check_unique(archive: Path, members: list[zipfile.ZipInfo]) -> None:
    """Refuse two members with one name: the second would silently replace the first."""
    seen: set[str] = set()
    for member in members:
        name = PurePosixPath(member.filename.replace("\\", "/")).as_posix()
        if name in seen:
            raise InputError(f"{archive}: member {member.filename!r} appears twice; re-create the zip")
        seen.add(name)


def _too_large(archive: Path, size: int, limit: int) -> InputError:
    return InputError(f"{archive} inflates to more than {limit / 1024**3:.1f} GB (at least {size / 1024**3:.1f} GB); "
                      f"it may be a zip bomb. If it is a genuine study, raise the limit with {LIMIT_ENV}=<GB>")
