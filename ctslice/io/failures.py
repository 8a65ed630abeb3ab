"""SimpleITK's exception text cut down to the reason a user can act on.

SimpleITK raises ``RuntimeError`` whose message starts with C++ source paths and object addresses
(``ITK ERROR: NrrdImageIO(0x5611...): ...``); users should see one line, not that.
"""

from __future__ import annotations

import re

_NOISE = re.compile(r"^(sitk::ERROR:|ITK ERROR:)\s*(\w+\(0x[0-9a-f]+\):)?\s*", re.IGNORECASE)


def sitk_reason(error: Exception) -> str:
    """The last meaningful line of a SimpleITK error, without source locations and addresses."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # ITK appends "Reason: <strerror(errno)>" to some messages; errno is stale there and misleads.
    lines = [_NOISE.sub("", line) for line in lines
             if not line.startswith(("Exception thrown in SimpleITK", "Reason:"))]
    reason = lines[-1] if lines else "unknown error"
    return reason.rstrip(".")
