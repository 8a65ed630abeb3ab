"""A CT volume as a numpy array with the physical geometry that places it in the scanner.

Arrays are always (z, y, x), as SimpleITK's ``GetArrayFromImage`` returns them. Geometry is kept in
SimpleITK's (x, y, z) order because it describes physical axes, not array axes: ``spacing`` in mm,
``origin`` the physical position (mm) of voxel (0, 0, 0), ``direction`` the 3 x 3 matrix (row-major)
whose column k is the unit vector of index axis k. Keeping both conventions explicit is what lets a
thin output overlay its thick input in any viewer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk


@dataclass(frozen=True)
class Grid:
    """A sampling grid: size (x, y, z) voxels, spacing (x, y, z) mm, origin and direction."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @property
    def slice_axis(self) -> np.ndarray:
        """Unit vector of the slice (k) index axis: column 2 of the direction matrix."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)[:, 2]

    def slice_positions(self) -> np.ndarray:
        """Physical position (mm) of each slice centre along the slice axis."""
        start = float(np.dot(self.origin, self.slice_axis))
        return start + self.spacing[2] * np.arange(self.size[2])

    def reference_image(self) -> sitk.Image:
        """An empty SimpleITK image on this grid, the reference that ``sitk.Resample`` expects."""
        image = sitk.Image([int(s) for s in self.size], sitk.sitkUInt8)
        image.SetSpacing([float(s) for s in self.spacing])
        image.SetOrigin([float(o) for o in self.origin])
        image.SetDirection([float(d) for d in self.direction])
        return image

    def index_to_physical(self, index: tuple[float, float, float]) -> tuple[float, float, float]:
        """Physical position of a continuous (x, y, z) index on this grid."""
        axes = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        offset = axes @ (np.asarray(index, dtype=np.float64) * np.asarray(self.spacing, dtype=np.float64))
        return tuple(float(v) for v in np.asarray(self.origin) + offset)

    def shifted_along_slices(self, offset_mm: float) -> tuple[float, float, float]:
        """The origin moved by ``offset_mm`` along the slice axis (x/y of the grid unchanged)."""
        return tuple(float(v) for v in np.asarray(self.origin) + offset_mm * self.slice_axis)


@dataclass(frozen=True)
class Volume:
    """A (z, y, x) array of HU values with its physical geometry (see the module docstring)."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @property
    def grid(self) -> Grid:
        z, y, x = self.array.shape
        return Grid((x, y, z), self.spacing, self.origin, self.direction)

    @property
    def depth(self) -> int:
        return int(self.array.shape[0])

    @classmethod
    def from_image(cls, image: sitk.Image) -> Volume:
        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
        return cls(
            array=sitk.GetArrayFromImage(image),
            spacing=tuple(float(s) for s in image.GetSpacing()),
            origin=tuple(float(o) for o in image.GetOrigin()),
            direction=tuple(float(d) for d in image.GetDirection()),
        )

    def to_image(self) -> sitk.Image:
        image = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        image.SetSpacing([float(s) for s in self.spacing])
        image.SetOrigin([float(o) for o in self.origin])
        image.SetDirection([float(d) for d in self.direction])
        return image

    def with_array(self, array: np.ndarray, **geometry) -> Volume:
        """Same geometry (unless overridden by keyword) around a new array."""
        return replace(self, array=array, **geometry)

    def slices(self, start: int, stop: int) -> Volume:
        """Slices [start, stop) with the origin moved so that they stay where they were."""
        return self.crop((start, stop), (0, self.array.shape[1]), (0, self.array.shape[2]))

    def crop(self, z: tuple[int, int], y: tuple[int, int], x: tuple[int, int]) -> Volume:
        """The sub-volume [z0:z1, y0:y1, x0:x1], placed where it was (its origin moved accordingly)."""
        return replace(self, array=self.array[z[0]:z[1], y[0]:y[1], x[0]:x[1]],
                       origin=self.grid.index_to_physical((x[0], y[0], z[0])))
