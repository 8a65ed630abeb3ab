"""Run one benchmark variant in a fresh Python process, so that its peak memory is its own."""

from __future__ import annotations

import json
import subprocess


def run_variant(command: list[str]) -> dict | str:
    """The JSON object the variant printed last, or its last error line when it failed."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return lines[-1] if lines else f"exit code {done.returncode}"
    return json.loads(done.stdout.strip().splitlines()[-1])
