"""The one way ctslice parses YAML and JSON that a user wrote: bounded in size, depth and expansion.

A config, a ``--set`` value, ``splits.json`` or an attribute of a cache are user input, and a parser
can be made to do unbounded work by a few hundred bytes: a YAML alias bomb (nine levels of nine
aliases expand to 9^9 leaves), nesting deep enough to overflow the interpreter's stack, or an integer
of millions of digits. Here YAML aliases are refused (a ctslice file never needs them), nesting is
capped while the document is composed, and every such failure is an ``InputError`` of one line.
YAML keeps ``safe_load`` semantics: plain data only, no Python tags.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
from pathlib import Path
from typing import Any

import yaml

from ctslice.errors import InputError, first_line

MAX_DEPTH = 32  # nesting levels; ctslice's own files use three
MAX_BYTES = 64 * 2**20  # a splits.json of a million case ids is about 20 MB


class NotValid(InputError):
    """The text is not YAML (or JSON) at all, as opposed to valid text refused for its size or shape."""


class _Refused(yaml.YAMLError):
    def __init__(self, reason: str, mark) -> None:
        super().__init__(f"{reason}, line {mark.line + 1}" if mark is not None else reason)


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases, nesting deeper than ``MAX_DEPTH`` and a key given twice in
    one mapping (PyYAML keeps the last silently: a second ``training:`` section dropped the first)."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise _Refused("YAML aliases (*name) are not accepted", self.peek_event().start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key, _ in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if (key.tag, key.value) in seen:  # a merge (<<) may be overridden: that is its purpose
                        raise _Refused(f"key {key.value!r} given twice", key.start_mark)
                    seen.add((key.tag, key.value))
        return super().construct_mapping(node, deep)


def load_yaml(text: str, where: str) -> Any:
    """The data in YAML ``text``; errors name ``where`` (a file or a ``--set`` override)."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # a SafeLoader: safe_load semantics
    except _Refused as error:
        raise InputError(f"{where}: not usable YAML ({error})") from None
    except yaml.YAMLError as error:
        raise NotValid(f"{where}: not valid YAML ({_yaml_reason(error)})") from None
    except (ValueError, RecursionError, MemoryError) as error:  # e.g. an integer of more than 4300 digits
        raise InputError(f"{where}: not usable YAML ({first_line(error, 120)})") from None


def load_json(text: str | bytes, where: str) -> Any:
    """The data in JSON ``text``, no deeper than ``MAX_DEPTH``; errors name ``where``."""
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except _Duplicate as error:
        raise InputError(f"{where}: not usable JSON (key {error.args[0]!r} given twice)") from None
    except json.JSONDecodeError as error:
        raise NotValid(f"{where}: not valid JSON ({error.msg}, line {error.lineno})") from None
    except (ValueError, RecursionError, MemoryError) as error:  # too deep for the parser, too many digits
        reason = "nested too deeply" if isinstance(error, RecursionError) else first_line(error, 120)
        raise InputError(f"{where}: not usable JSON ({reason})") from None
    if _depth(data) > MAX_DEPTH:
        raise InputError(f"{where}: not usable JSON (nested more than {MAX_DEPTH} levels deep)")
    return data


class _Duplicate(ValueError):
    pass


def _unique_keys(pairs: list) -> dict:
    """``json.loads`` keeps the last of a key given twice; a hand-written ``splits.json`` must not lose a list so."""
    data = {}
    for key, value in pairs:
        if key in data:
            raise _Duplicate(key)
        data[key] = value
    return data


def read_text(path: Path, what: str, max_bytes: int = MAX_BYTES) -> str:
    """The text of ``path``, refused beyond ``max_bytes`` (a config or splits file is small).

    Only a regular file or a pipe (``<(...)``, ``/dev/stdin``) is read, and never past ``max_bytes``: a
    device such as ``/dev/zero`` has no end, and a named pipe without a writer reads as empty instead of
    blocking. Raises ``FileNotFoundError`` for a missing file, so that callers can say how to create it.
    """
    try:
        with open(path, "rb", opener=lambda name, flags: os.open(name, flags | os.O_NONBLOCK)) as handle:
            status = os.fstat(handle.fileno())
            if stat.S_ISREG(status.st_mode) and status.st_size > max_bytes:
                raise InputError(f"{path}: {status.st_size:,} bytes is too large for {what} (at most {max_bytes:,})")
            if not (stat.S_ISREG(status.st_mode) or stat.S_ISFIFO(status.st_mode)):
                raise InputError(f"{path}: not a regular file, so not {what}")
            if stat.S_ISFIFO(status.st_mode):  # wait for a writer's data, now that opening did not wait for a writer
                flags = fcntl.fcntl(handle.fileno(), fcntl.F_GETFL)
                fcntl.fcntl(handle.fileno(), fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
            data = handle.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise InputError(f"{path}: more than {max_bytes:,} bytes is too large for {what}")
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: {what} is not UTF-8 text (byte {error.start})") from None
    except FileNotFoundError:
        raise
    except IsADirectoryError:
        raise InputError(f"{path}: a folder, not {what}") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read {what} ({error.strerror or first_line(error)})") from None


def _yaml_reason(error: yaml.YAMLError) -> str:
    """PyYAML's problem and where it is, without the context lines that quote the document."""
    problem = getattr(error, "problem", None)
    mark = getattr(error, "problem_mark", None)
    if not problem:
        return first_line(error, 200)
    return f"{problem}" + (f", line {mark.line + 1}" if mark is not None else "")


def _depth(data: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, level)
            if level <= MAX_DEPTH:
                stack.extend((child, level + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest
