"""The ``ctslice`` command line (Typer). ``app`` holds every command once this package is imported."""

from ctslice.cli import data, demo, evaluate, train  # noqa: E402,F401  (register the commands)
from ctslice.cli.app import app, main

__all__ = ["app", "main"]
