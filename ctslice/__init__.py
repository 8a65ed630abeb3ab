"""ctslice: thick-slice to thin-slice CT with a latent diffusion model.

The package is layered (the README's "Code map"; ``tests/test_layers.py`` holds the table): the command
layer (``cli`` Typer options, ``commands`` bodies that print, ``console``) on top of ``training``,
``inference``, ``evaluation`` and ``memory``, on top of ``models``, ``codecs`` and ``data``, on top of
``io``, ``config``, ``checkpoint``, ``hardware`` and ``errors``. Imports only point down.

``ctslice.interpolate`` (``ctslice.api``) is the Python API. It is imported on first use, so that
``import ctslice`` (and ``ctslice --help``) stays free of torch, NumPy and SimpleITK.
"""

from ctslice.version import __version__

__all__ = ["__version__", "interpolate"]


def __getattr__(name: str):
    if name == "interpolate":
        from ctslice.api import interpolate

        return interpolate
    raise AttributeError(f"module 'ctslice' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
