"""Reading and writing CT volumes with SimpleITK: files, DICOM series, zips, and their geometry."""

from ctslice.io.archive import extracted
from ctslice.io.dicom import DicomSeries, ReadOptions, SeriesReport, find_series, scan_series
from ctslice.io.reader import SUPPORTED_SUFFIXES, Scan, is_volume_file, read_scan, read_volume
from ctslice.io.volume import Grid, Volume
from ctslice.io.writer import WRITABLE_SUFFIXES, write_volume

__all__ = [
    "SUPPORTED_SUFFIXES",
    "WRITABLE_SUFFIXES",
    "DicomSeries",
    "Grid",
    "ReadOptions",
    "Scan",
    "SeriesReport",
    "Volume",
    "extracted",
    "find_series",
    "is_volume_file",
    "read_scan",
    "read_volume",
    "scan_series",
    "write_volume",
]
