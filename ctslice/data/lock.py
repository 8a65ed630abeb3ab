"""One writer per cache: an exclusive lock file next to it (``cache.h5.lock``).

Two ``ctslice preprocess`` runs on the same cache would delete each other's parts and race on the
final rename, losing cases. The writer therefore holds ``fcntl.flock`` on ``<cache>.lock`` for the
whole run; the file says who holds it (pid, host, start time) so that a second run can name the first.
The kernel (and the NFS lock manager) drops a flock when its holder dies, even by kill -9, so a lock
file that exists but is not locked was left by a dead run: the next run takes it over and says so.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ctslice.errors import CtsliceError, InputError
from ctslice.io.paths import file_kind


def lock_path(cache_path: Path) -> Path:
    return cache_path.with_name(cache_path.name + ".lock")


@contextmanager
def writer_lock(cache_path: Path, on_takeover=None) -> Iterator[Path]:
    """Hold the cache's writer lock for the ``with`` block; ``InputError`` naming the holder if taken.

    ``on_takeover(message)`` is told when a lock left by a dead run is taken over.
    """
    path = lock_path(cache_path)
    _check_kind(path)
    handle = _acquire(path, cache_path)
    try:
        left = handle.read(LOCK_TEXT_LIMIT).strip()
        if left and on_takeover:
            on_takeover(f"took over the lock {path} left by {_describe(left)}, which is no longer running")
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S %Z")}) + "\n")
        handle.flush()
        yield path
    finally:
        path.unlink(missing_ok=True)  # before the unlock, so a waiting run cannot lock the deleted file
        handle.close()


LOCK_TEXT_LIMIT = 4096
"""Bytes of a lock file read: it holds one line of JSON. A lock file of gigabytes is not read whole."""


def _check_kind(path: Path) -> None:
    """Refuse a lock path that is not a plain file (a FIFO would block the read, a link to /dev/zero never
    end, a folder cannot be locked): something else sits where the lock belongs."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise InputError(f"{path} is {file_kind(mode)}, not a ctslice lock file; remove it (no run is using it), "
                         "then run again")


def _lock_text(path: Path) -> str:
    with open(path, "rb") as handle:
        return handle.read(LOCK_TEXT_LIMIT).decode(errors="replace").strip()


def _acquire(path: Path, cache_path: Path):
    """Open and flock the lock file; retry when the holder deleted it between our open and our flock."""
    while True:
        try:
            handle = open(path, "a+")  # noqa: SIM115 (held open for the whole run)
        except OSError as error:
            raise InputError(f"cannot create the lock file {path} ({error.strerror}); the cache's folder must be "
                             "writable") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _describe(_lock_text(path)) if path.exists() else "another run"
            handle.close()
            if error.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise InputError(f"{cache_path} is being written by {holder}; wait for it to finish "
                                 "(one writer per cache)") from None
            raise CtsliceError(f"cannot lock {path} ({error.strerror})") from None
        try:
            if os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino:
                handle.seek(0)
                return handle
        except FileNotFoundError:
            pass
        handle.close()


def _describe(text: str) -> str:
    """``pid 123 on host h since 2026-...`` from the lock file's contents (whatever is readable of it)."""
    try:
        holder = json.loads(text)
        return f"ctslice pid {holder['pid']} on host {holder['host']} since {holder['since']}"
    except (ValueError, KeyError, TypeError):
        return f"another run ({text[:80]!r})"
