"""The package version, on its own so that the library below the API facade (``ctslice/__init__``) can
stamp it into the files it writes without importing upward."""

__version__ = "0.2.0"
