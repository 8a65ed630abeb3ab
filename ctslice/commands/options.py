"""Flag text that only the command line has, parsed here where errors may name the flag (issue 14).

The library takes typed values and words its errors by the setting ("window 'x': ..."); ``flag_wording``
renames that setting to the flag the user typed, so the one-line error still points at it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ctslice.errors import InputError, shown


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``--shard I/N`` -> (I, N) with 0 <= I < N; None without one."""
    if not text:
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise InputError(f"--shard {shown(text)}: expected I/N, e.g. 0/4") from None
    if not 0 <= index < count:
        raise InputError(f"--shard {shown(text)}: need 0 <= I < N")
    return index, count


@contextmanager
def flag_wording(**flags: str) -> Iterator[None]:
    """An ``InputError`` that starts with a setting's name (a keyword, underscores for spaces) is re-raised
    starting with its flag: ``flag_wording(window="--window")`` turns "window 'x': ..." into "--window 'x': ...".
    The longer of two settings that start alike is tried first ("device memory" before "device")."""
    try:
        yield
    except InputError as error:
        message = str(error)
        for words, flag in sorted(((s.replace("_", " "), f) for s, f in flags.items()), reverse=True):
            if message.startswith(words + " "):
                raise type(error)(flag + message[len(words):]) from None
        raise
