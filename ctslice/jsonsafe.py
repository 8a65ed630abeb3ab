"""JSON without NaN or infinity: such floats are written as null, so any JSON reader can parse the file.

Python's ``json`` writes ``NaN`` and ``Infinity``, which are not JSON; a PSNR of +inf (a prediction equal
to its truth) or the loss of a skipped non-finite step would otherwise break ``log.jsonl`` and reports.
"""

from __future__ import annotations

import json
import math
from typing import Any


def json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def dumps(value: Any, **options) -> str:
    return json.dumps(json_safe(value), allow_nan=False, **options)
