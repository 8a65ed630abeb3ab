"""The declared domain of every numeric option, checked while the command line is parsed: before any work.

Typer accepts ``nan`` and ``inf`` for a float option, and NaN passes every comparison (``--thick-spacing
nan`` once made every case fail and wiped a good cache), so each numeric option is declared with
``number``: finite, within a range that ``--help`` shows, else a one-line error and exit code 2.
"""

from __future__ import annotations

import math
from typing import Any

import typer

from ctslice.errors import shown

SEED = {"low": 0, "high": 2**32 - 1, "integer": True}  # what NumPy and torch generators take
SPACING = {"low": 0, "high": 100, "above": True}  # mm; the thin grid itself is capped in ctslice.io.geometry


def number(default: Any, *names: str, help: str, low: float, high: float, above: bool = False,
           integer: bool = False) -> Any:
    """A ``typer.Option`` for an int (``integer``) or a finite float within [low, high] (low excluded: ``above``)."""
    domain = (f"{'an integer' if integer else 'a finite number'} {'above' if above else 'from'} {_plain(low)} "
              f"{'and at most' if above else 'to'} {_plain(high)}")

    def parse(value: Any) -> int | float:
        try:
            parsed = _integer(value) if integer else float(value)
        except (TypeError, ValueError, OverflowError):
            raise typer.BadParameter(f"must be {domain}, got {shown(value)}") from None
        inside = math.isfinite(parsed) and (parsed > low if above else parsed >= low) and parsed <= high
        if not inside:
            raise typer.BadParameter(f"must be {domain}, got {shown(value)}")
        return parsed

    return typer.Option(default, *names, help=f"{help} ({domain}.)", parser=parse,
                        metavar="INTEGER" if integer else "NUMBER")


def _integer(value: Any) -> int:
    """An int from '12' or 12, not from '1.5', 'nan' or a string of thousands of digits."""
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if len(text) > 30:
        raise ValueError(text)
    return int(text)


def _plain(bound: float) -> str:
    return f"{int(bound):,}" if float(bound).is_integer() else f"{bound:g}"
