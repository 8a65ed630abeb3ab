"""SimpleITK's exception text cut down to the reason a user can act on.

SimpleITK raises ``RuntimeError`` whose message starts with C++ source paths and object addresses
(``ITK ERROR: NrrdImageIO(0x5611...): ...``); users should see one line, not that. The C++ libraries
also print on stderr themselves; ``captured_stderr`` keeps that out of the output and ``first_error``
finds the reason in it.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

_CAPTURE_LIMIT = 64 * 1024  # a failing reader can print a line per slice; the first lines say why
_ERROR = re.compile(r"^\W*(ITK ERROR|sitk::ERROR|ERROR)\b:?\s*(\w+\(0x[0-9a-f]+\):)?\s*", re.IGNORECASE)
_FAILURE = re.compile(r"fail|not read completely|cannot open|could not|wrote only|read only", re.IGNORECASE)
"""What the C libraries print, without an ERROR prefix, when data is lost (MetaImage's "Uncompress failed")."""
_NOISE = re.compile(r"^(sitk::ERROR:|ITK ERROR:)\s*(\w+\(0x[0-9a-f]+\):)?\s*", re.IGNORECASE)


def sitk_reason(error: Exception) -> str:
    """The last meaningful line of a SimpleITK error, without source locations and addresses."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # ITK appends "Reason: <strerror(errno)>" to some messages; errno is stale there and misleads.
    lines = [_NOISE.sub("", line) for line in lines
             if not line.startswith(("Exception thrown in SimpleITK", "Reason:"))]
    reason = lines[-1] if lines else "unknown error"
    return reason.rstrip(".")


@contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Keep what C++ code (ITK, the NIfTI and NRRD libraries) prints on stderr out of the output.

    They write to file descriptor 2 directly, past Python's ``sys.stderr``: warnings a user cannot act on,
    and sometimes the only account of a failure (the NIfTI writer's "wrote only N of M bytes" on a full
    disk, which it does not raise). The yielded list receives the captured lines when the block ends, so
    that a caller can turn the first error among them into its reason (``first_error``).
    """
    lines: list[str] = []
    python_stderr = sys.stderr
    python_stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all (a daemon): nothing to keep out
        yield lines
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        if _is_fd2(python_stderr):  # Python's own messages (a live progress bar) still reach the terminal
            sys.stderr = open(saved, "w", buffering=1, encoding=python_stderr.encoding,
                              errors=python_stderr.errors, closefd=False)
        try:
            yield lines
        finally:
            if sys.stderr is not python_stderr:
                sys.stderr.flush()
                sys.stderr = python_stderr
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(sink.read(_CAPTURE_LIMIT).decode("utf-8", "replace").splitlines())


def _is_fd2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):  # a test runner's buffer, a closed stream
        return False


def first_error(lines: list[str]) -> str | None:
    """The first line of captured stderr that reports an error or lost data, without its prefix (None if none).

    Warnings (``WARNING: In file.cxx, line N`` and the lines after) do not count unless they say that
    something failed.
    """
    for line in lines:
        if (found := _ERROR.match(line)) and (reason := line[found.end():].strip().rstrip(".")):
            return reason
        if _FAILURE.search(line) and not line.lstrip().upper().startswith("WARNING"):
            return line.strip().rstrip(".")
    return None
