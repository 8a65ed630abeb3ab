"""Expected failures, each mapped to one clear line and an exit code by the CLI.

An ``InputError`` is the user's to fix (a bad file, a bad option, a bad config): exit code 2.
Any other ``CtsliceError`` is a failure of a run that was set up correctly: exit code 1.
``Preempted`` is a run stopped by SIGTERM: exit code 143; ``Interrupted`` one stopped by Ctrl-C: 130.
Both carry a message meant to be printed as is, without a traceback.
"""

import reprlib

_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 6
_SHORT.maxlevel = 3


def shown(value: object) -> str:
    """``repr(value)`` abbreviated (``reprlib``), so that a huge value in a message stays one short line."""
    return _SHORT.repr(value)


_CONTROLS = {code: f"\\x{code:02x}" for code in [*range(32), 127]} | {9: "\\t", 10: "\\n", 13: "\\r"}


def one_line(message: str) -> str:
    """``message`` with control characters escaped (``\\n``): a file named with a newline (legal on Linux)
    must not split an error, warning or note into two lines."""
    return message.translate(_CONTROLS)


def first_line(error: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its type's name when it has none), for a one-line error."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:limit]


class CtsliceError(Exception):
    """A failure the tool expected and can explain in one line (exit code 1).

    ``silent``: another process shows the line (a DDP rank other than 0 stopping with rank 0); exit with the
    code, print nothing.
    """

    exit_code = 1
    silent = False


class InputError(CtsliceError):
    """Bad input: a file that cannot be used, a wrong option or config value (exit code 2)."""

    exit_code = 2


class ConfigError(InputError):
    """A config file or ``--set`` override that is invalid (unknown key, wrong type, bad value)."""


class Preempted(CtsliceError):
    """SIGTERM arrived and the work so far is kept. Exit 143 so that a Kubernetes Job reschedules."""

    exit_code = 143


class Interrupted(CtsliceError):
    """Ctrl-C (SIGINT) stopped the run after it cleaned up. Exit 130, as a shell reports SIGINT."""

    exit_code = 130
