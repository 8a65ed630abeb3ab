"""Data: preprocessing, thick/thin pairs, the HDF5 cache, splits, patch datasets and the synthetic phantom."""
