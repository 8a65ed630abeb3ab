"""ctslice: thick-slice to thin-slice CT with a latent diffusion model.

The package is split by concept (see ``../shared/DESIGN.md``): ``io`` reads and writes volumes,
``data`` builds the HDF5 cache and splits, ``codecs`` turn volumes into latents, ``models`` holds the
denoising U-Net and its sampler, ``training`` the trainer, ``evaluation`` metrics and baselines,
``inference`` whole-scan inference, and ``cli`` the thin Typer front end.
"""

__version__ = "0.1.0"
