"""ctslice: thick-slice to thin-slice CT with a latent diffusion model.

The package is split by concept (see ``../shared/DESIGN.md``): ``io`` reads and writes volumes,
``data`` builds the HDF5 cache and splits, ``codecs`` turn volumes into latents, ``models`` holds the
denoising U-Net and its sampler, ``training`` the trainer, ``evaluation`` metrics and baselines,
``inference`` whole-scan inference, and ``cli`` the thin Typer front end.

``ctslice.interpolate`` (``ctslice.api``) is the Python API. It is imported on first use, so that
``import ctslice`` (and ``ctslice --help``) stays free of torch, NumPy and SimpleITK.
"""

__version__ = "0.2.0"
__all__ = ["__version__", "interpolate"]


def __getattr__(name: str):
    if name == "interpolate":
        from ctslice.api import interpolate

        return interpolate
    raise AttributeError(f"module 'ctslice' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
