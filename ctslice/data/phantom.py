"""A synthetic chest CT phantom whose anatomy changes along z at the scale of a few mm.

Tests and the embedded demo need CT-like volumes without real scans, and a slice interpolator can only
learn something from them if thin slices hold detail that thick slabs blur. So the phantom is a
continuous chest defined in millimetres and sampled at the voxel centres of the requested grid:

- a body outline (an ellipse whose axes drift smoothly along z) in air, a subcutaneous fat layer,
  chest-wall muscle, the mediastinum, heart, descending aorta, and liver and spleen under the diaphragm;
- two lungs bounded by the rib cage, mediastinum, spine, diaphragm domes and apices, holding branching
  vessel trees: curved 3D tubes of tapering radius that cross slices obliquely;
- the spine (vertebral bodies with a cortical shell and cancellous core, discs between them, neural
  arches and spinous processes), a sternum, and ribs: bone tubes that descend from the spine to the
  front, so they appear and disappear between slices;
- seeded Gaussian noise, slightly correlated in-plane as a reconstruction kernel makes it.

Coordinates are DICOM patient coordinates (LPS: x to the patient's left, y posterior, z superior) with
the identity direction. The field of view (shape x spacing) is centred on the patient axis and on z = 0,
about the level of the lung hila; an adult chest is about 300 x 220 mm, so choose an in-plane spacing
that fits it (2 mm for 192 voxels). Because anatomy lives in mm, the same seed at 1 mm and at 2 mm
gives the same patient sampled differently. Edges are ramps EDGE_MM wide (a scanner's point spread)
sampled at voxel centres: make thick slices by slab averaging a thin phantom, not by generating one at
thick spacing. Each seed draws its own patient (size, position, fat, lung extent, diaphragm, heart,
vertebral period, ribs, vessel paths) from random streams separate from the noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

import numpy as np
from scipy import ndimage

from ctslice.io.volume import Volume

EDGE_MM = 1.0  # width of every tissue boundary ramp
STEP_MM = 1.0  # centreline node spacing of vessels and ribs

AIR, FAT, MUSCLE, MEDIASTINUM = -1000.0, -100.0, 45.0, 30.0
BLOOD, CONTRAST_BLOOD, LIVER, SPLEEN, LUNG = 40.0, 250.0, 62.0, 50.0, -850.0
DISC, CANAL, CANCELLOUS, CORTICAL = 90.0, 15.0, 250.0, 850.0
VESSEL, RIB = 0, 1  # tube kinds


def make_phantom(shape: tuple[int, int, int] = (128, 192, 192),
                 spacing: tuple[float, float, float] = (2.0, 2.0, 1.0),
                 seed: int = 0, noise_hu: float = 15.0, contrast: bool = False,
                 noise_correlation_px: float = 0.6) -> Volume:
    """A chest phantom: ``shape`` (z, y, x) voxels, ``spacing`` (x, y, z) mm, int16 HU, identity direction.

    ``contrast`` makes blood (heart, aorta, lung vessels) enhance to about 250 HU.
    ``noise_correlation_px`` is the in-plane Gaussian sigma (voxels) that correlates the noise; 0 is white.
    """
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be three positive sizes (z, y, x), got {shape}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive sizes in mm (x, y, z), got {spacing}")
    anatomy, trees, ribs, noise = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))
    patient = _Patient.draw(anatomy)
    tubes = _vessel_trees(trees, patient) + _ribs(ribs, patient)
    spacing = tuple(float(s) for s in spacing)
    origin = tuple(-(n - 1) * s / 2.0 for n, s in zip(shape[::-1], spacing, strict=True))
    hu = _render(patient, tubes, _Grid.of(shape, spacing, origin), spacing, origin, contrast)
    if noise_hu > 0:
        hu += ct_noise(hu.shape, noise_hu, noise, noise_correlation_px)
    return Volume(np.clip(np.rint(hu), -1024, 3071).astype(np.int16), spacing=spacing, origin=origin)


def ct_noise(shape: tuple[int, ...], sigma_hu: float, rng: np.random.Generator,
             correlation_px: float = 0.0) -> np.ndarray:
    """Gaussian noise of standard deviation ``sigma_hu``, Gaussian-correlated over the last two axes."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    if correlation_px <= 0:
        return noise * np.float32(sigma_hu)
    sigmas = (0,) * (len(shape) - 2) + (correlation_px, correlation_px)
    noise = ndimage.gaussian_filter(noise, sigmas)
    # Filtering white noise scales its std by the kernel's L2 norm: divide it out so sigma_hu holds.
    impulse = np.zeros((2 * int(4 * correlation_px + 1) + 1,) * 2)
    impulse[impulse.shape[0] // 2, impulse.shape[1] // 2] = 1.0
    gain = np.sqrt(np.sum(ndimage.gaussian_filter(impulse, correlation_px) ** 2))
    return noise * np.float32(sigma_hu / gain)


@dataclass(frozen=True)
class _Grid:
    """Voxel-centre coordinates (mm, float32) of a grid or a box in it, shaped to broadcast as (z, y, x)."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray

    @classmethod
    def of(cls, shape, spacing, origin) -> _Grid:
        x, y, z = (np.float32(o) + np.float32(s) * np.arange(n, dtype=np.float32)
                   for o, s, n in zip(origin, spacing, shape[::-1], strict=True))
        return cls(x[None, None, :], y[None, :, None], z[:, None, None])

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.z.shape[0], self.y.shape[1], self.x.shape[2]

    def box(self, xlim, ylim, zlim=(-np.inf, np.inf)) -> tuple[tuple[slice, slice, slice], _Grid]:
        """Slices (z, y, x) and coordinates of the voxels within the mm limits grown by the edge ramp.

        Painting a small structure in its box instead of the whole grid is what keeps the phantom fast.
        """
        slices = tuple(slice(int(np.searchsorted(c.ravel(), lo - EDGE_MM)),
                             int(np.searchsorted(c.ravel(), hi + EDGE_MM, side="right")))
                       for c, (lo, hi) in ((self.z, zlim), (self.y, ylim), (self.x, xlim)))
        return slices, _Grid(self.x[..., slices[2]], self.y[:, slices[1]], self.z[slices[0]])


@dataclass(frozen=True)
class _Patient:
    """One patient's anatomy parameters (mm, HU), drawn once per seed and independent of the grid."""

    size: float
    centre: tuple[float, float]
    axes: tuple[float, float]
    waves: np.ndarray  # (3 terms, [amplitude, wavelength mm, phase]) drift of the body axes along z
    fat: float
    apex: float
    domes: tuple[float, float]  # z of the right and left diaphragm dome tops
    heart: tuple[float, float, float]  # centre z, axial radius, left shift
    spine_shift: float
    period: float  # vertebral period along z
    phase: float
    hilum: float  # z of the lung hila, where the vessel trees start

    @classmethod
    def draw(cls, rng: np.random.Generator) -> _Patient:
        size = rng.uniform(0.88, 1.08)
        waves = np.stack([rng.uniform(0.01, 0.035, 3), rng.uniform(60, 250, 3), rng.uniform(0, 2 * np.pi, 3)], 1)
        right_dome = rng.uniform(-75, -40)
        return cls(size=size, centre=(rng.normal(0, 8), rng.normal(0, 6)),
                   axes=(rng.uniform(140, 160) * size, rng.uniform(95, 110) * size), waves=waves,
                   fat=rng.uniform(5, 18), apex=rng.uniform(95, 125),
                   domes=(right_dome, right_dome - rng.uniform(8, 20)),
                   heart=(right_dome + rng.uniform(20, 35), rng.uniform(44, 54) * size, rng.uniform(8, 20)),
                   spine_shift=rng.normal(0, 3), period=rng.uniform(24, 28) * size,
                   phase=rng.uniform(0, 30), hilum=rng.uniform(-10, 20))

    def body(self, z):
        """Centre (x, y) and semi-axes of the skin outline at height z."""
        amp, wavelength, phase = self.waves.astype(np.float32).T
        drift = np.sin(np.float32(2 * np.pi) * np.asarray(z, dtype=np.float32)[..., None] / wavelength + phase)
        ax = self.axes[0] * (1 + drift @ amp)
        ay = self.axes[1] * (1 + drift[..., ::-1] @ amp)
        return self.centre[0], self.centre[1], ax, ay

    def cage(self, z):
        """Centre and semi-axes of the rib cage: inside the fat and chest wall, thicker at the back."""
        cx, cy, ax, ay = self.body(z)
        return cx, cy - 10 * self.size, ax - self.fat - 14 * self.size, ay - self.fat - 24 * self.size

    def vertebra(self, z):
        """Centre of the vertebral bodies, at the back of the cage."""
        cx, cy, _, ay = self.cage(z)
        return cx + self.spine_shift, cy + ay - 12 * self.size


def _render(patient: _Patient, tubes: list, grid: _Grid, spacing, origin, contrast: bool) -> np.ndarray:
    """The noiseless phantom in float32 HU, painted outside in: each tissue over what lies under it."""
    s = patient.size
    blood = CONTRAST_BLOOD if contrast else BLOOD
    hu = np.full(grid.shape, AIR, dtype=np.float32)
    bx, by, bax, bay = patient.body(grid.z)
    box, g = grid.box((bx - bax.max(), bx + bax.max()), (by - bay.max(), by + bay.max()))  # all z: g.z is grid.z
    _paint(hu[box], FAT, _ellipse(g.x, g.y, bx, by, bax, bay))
    _paint(hu[box], MUSCLE, _ellipse(g.x, g.y, bx, by, bax - patient.fat, bay - patient.fat))

    cx, cy, cax, cay = patient.cage(grid.z)
    box, g = grid.box((cx - cax.max(), cx + cax.max()), (cy - cay.max(), cy + cay.max()))
    chest, view = _chest(patient, g.x, g.y, g.z), hu[box]
    _paint(view, MEDIASTINUM, reduce(np.minimum, [chest["mediastinum"], chest["pleura"], chest["above"]]))
    _paint(view, MUSCLE, chest["heart"])
    _paint(view, blood, chest["heart"] - 7 * s)
    _paint(view, blood, chest["aorta"])
    _paint(view, LIVER, chest["liver"])
    _paint(view, SPLEEN, chest["spleen"])
    lung = np.zeros(grid.shape, dtype=np.float32)
    lung[box] = _inside(chest["lung"])
    view += lung[box] * (np.float32(LUNG) - view)
    del chest, view  # free the chest fields before the distance transform of the tubes

    vx, vy = patient.vertebra(grid.z)
    box, g = grid.box((vx - 35 * s, vx + 35 * s), (vy.min() - 20 * s, vy.max() + 70 * s))
    _paint_spine(hu[box], patient, g)
    box, g = grid.box((cx - 15 * s, cx + 15 * s), (cy - cay.max() - 10 * s, cy - cay.min() + 4 * s),
                      (patient.domes[0] - 20, patient.apex - 30))
    _, _, _, cay = patient.cage(g.z)
    sternum = np.minimum(_ellipse(g.x, g.y, cx, cy - cay - 3 * s, 14 * s, 6 * s),
                         np.minimum(g.z - patient.domes[0] + 20, patient.apex - 30 - g.z))
    _paint_bone(hu[box], sternum, 1.5)
    _paint_tubes(hu, lung, tubes, spacing, origin, blood)
    return hu


def _chest(patient: _Patient, x, y, z) -> dict[str, np.ndarray]:
    """Signed distances (mm, positive inside) of the chest's organs at points x, y, z (broadcastable).

    The lungs are what the cage leaves free of mediastinum, heart, aorta, spine and diaphragm. Vessel
    trees use the same function at their branch points, so they stay inside the lungs.
    """
    s = patient.size
    cx, cy, cax, cay = patient.cage(z)
    vx, vy = patient.vertebra(z)
    hz, hr, hshift = patient.heart
    taper = np.sqrt(np.clip((patient.apex - z) / 50, 0, 1))
    out = {
        "pleura": _ellipse(x, y, cx, cy, cax - 7 * s, cay - 7 * s, taper=taper),
        "above": z - _diaphragm(patient, x, y),
        "mediastinum": _ellipse(x, y, cx + 6 * s, cy, 30 * s, cay + 4 * s),
        "heart": _ellipsoid((x - cx - hshift, y - cy + 0.25 * cay, z - hz), (hr, 0.8 * hr, 0.9 * hr)),
        "aorta": _ellipse(x, y, vx + 24 * s, vy - 22 * s, 12 * s, 12 * s),
    }
    below = -out["above"]
    cavity = _ellipse(x, y, cx, cy, cax - 7 * s, cay - 7 * s)
    out["liver"] = reduce(np.minimum, [below, cavity, cx + 35 * s - x, z - patient.domes[0] + 160 * s])
    spleen = _ellipsoid((x - cx - 0.6 * cax, y - cy - 0.45 * cay, z - patient.domes[1] + 45 * s),
                        (28 * s, 45 * s, 50 * s))
    out["spleen"] = np.minimum(spleen, below)
    spine_zone = _ellipse(x, y, vx, vy + 4 * s, 30 * s, 30 * s)
    out["lung"] = reduce(np.minimum, [out["pleura"], out["above"], -out["mediastinum"], -out["heart"],
                                      -spine_zone, -out["aorta"] - 2])
    return out


def _paint_spine(hu, patient: _Patient, g: _Grid) -> None:
    """Vertebral bodies (shell and core) repeating along z with discs between, a canal and neural arches."""
    s, period = patient.size, patient.period
    x, y, z = g.x, g.y, g.z
    vx, vy = patient.vertebra(z)
    zp = np.mod(z - patient.phase, period)
    length = 0.8 * period
    column = _ellipse(x, y, vx, vy, 19 * s, 15 * s)
    _paint(hu, DISC, column)
    _paint_bone(hu, np.minimum(column, np.minimum(zp, length - zp)), 2.0)
    canal_y = vy + 25 * s
    arch_z = np.minimum(zp - 0.1 * period, 0.75 * period - zp)
    ring = np.minimum(_ellipse(x, y, vx, canal_y, 14 * s, 13 * s), -_ellipse(x, y, vx, canal_y, 8 * s, 8 * s))
    spinous = _ellipse(x, y, vx, canal_y + 24 * s, 4 * s, 14 * s)
    _paint_bone(hu, np.minimum(np.maximum(ring, spinous), arch_z), 2.0)
    _paint(hu, CANAL, _ellipse(x, y, vx, canal_y, 8 * s, 8 * s))


def _paint_bone(hu, sdf, shell_mm: float) -> None:
    """Cortical bone where ``sdf`` > 0, cancellous bone deeper than ``shell_mm`` inside it."""
    _paint(hu, CORTICAL, sdf)
    _paint(hu, CANCELLOUS, sdf - shell_mm)


def _paint(hu: np.ndarray, value: float, sdf) -> None:
    """Blend ``value`` into ``hu`` in place by the partial-volume fraction of the region ``sdf`` > 0."""
    fraction = _inside(sdf)
    hu += fraction * (np.float32(value) - hu)


def _inside(sdf):
    """Partial-volume fraction of a region from its signed distance (mm, positive inside)."""
    return np.clip(0.5 + sdf / np.float32(EDGE_MM), 0.0, 1.0, dtype=np.float32)


def _ellipse(x, y, cx, cy, ax, ay, taper=1.0):
    """Signed distance (mm, positive inside) to an axial ellipse, its semi-axes scaled by ``taper``."""
    return _ellipsoid((x - cx, y - cy), (ax * taper, ay * taper))


def _ellipsoid(offsets, axes):
    """Approximate signed distance (mm, positive inside) to an axis-aligned ellipsoid at the origin.

    First order: (1 - f) / |grad f| with f the normalised radius, exact along each axis and close near
    the surface, which is all a 1 mm edge ramp and a 2 mm bone shell need.
    """
    axes = [np.maximum(a, 1e-3) for a in axes]
    scaled = [o / a for o, a in zip(offsets, axes, strict=True)]
    radius = np.sqrt(sum(u * u for u in scaled))
    grad = np.sqrt(sum((u / a) ** 2 for u, a in zip(scaled, axes, strict=True))) / np.maximum(radius, 1e-6)
    grad = np.clip(grad, 1 / reduce(np.maximum, axes), 1 / reduce(np.minimum, axes))
    return (1 - radius) / grad


def _diaphragm(patient: _Patient, x, y):
    """Height (mm) of the diaphragm under each (y, x): two domes, the right one higher, falling off laterally."""
    cx, cy, cax, _ = patient.cage(0.0)
    right = patient.domes[0] - ((x - cx + 0.45 * cax) ** 2 + (y - cy) ** 2) / 320
    left = patient.domes[1] - ((x - cx - 0.45 * cax) ** 2 + (y - cy) ** 2) / 320
    return np.where(x < cx, right, left).astype(np.float32)


def _vessel_trees(rng: np.random.Generator, patient: _Patient, generations: int = 8) -> list:
    """Pulmonary vessel trees: seven trunks from each hilum, forking generation by generation.

    Children of a branch that ends near a lung wall turn away from it, and a branch that ends outside
    the lung has none, so the trees fill the lungs and stop at their walls. The lung tests run on a
    whole generation at once.
    """
    s = patient.size
    cx, cy, _, _ = patient.cage(patient.hilum)
    branches = []
    for side in (-1, 1):  # the right lung (x < 0), then the left
        root = np.array([cx + 6 * s + side * (30 * s + 6), cy, patient.hilum])
        for _ in range(7):  # trunks spread over the lateral half-space
            direction = np.array([side * rng.uniform(0.2, 1.0), rng.uniform(-0.8, 0.8), rng.uniform(-1.0, 1.0)])
            branches.append((root, direction, rng.uniform(25, 40) * s, rng.uniform(3.5, 5.5) * s))
    tubes = []
    for generation in range(generations):
        paths = [_wander(rng, *branch) for branch in branches]
        tubes += [(points, radii, VESSEL) for points, radii in paths]
        ends = np.array([points[-1] for points, _ in paths]).T
        depth = _chest(patient, *ends)["lung"]
        inward = np.stack([_chest(patient, *(ends + step[:, None]))["lung"] - depth for step in np.eye(3)], axis=1)
        pull = inward / np.maximum(np.linalg.norm(inward, axis=1, keepdims=True), 1e-9)
        pull *= np.clip(1 - depth / 20, 0, 1)[:, None]  # children near a lung wall turn away from it
        forks = [_fork(rng, points, radii, branch[2], bias)
                 for (points, radii), branch, bias in zip(paths, branches, pull, strict=True)]
        last = generation == generations - 1
        branches = [child for pair, ok in zip(forks, depth > 0, strict=True) if ok and not last for child in pair]
    return tubes


def _wander(rng: np.random.Generator, start, direction, length: float, radius: float):
    """Centreline points (mm, x y z) and radii of a vessel whose heading random-walks and that tapers by 8%."""
    n = max(2, round(length / STEP_MM))
    heading = direction / np.linalg.norm(direction) + np.cumsum(rng.normal(0, 0.04, (n, 3)), axis=0)
    heading /= np.linalg.norm(heading, axis=1, keepdims=True)
    points = np.vstack([start, start + np.cumsum(heading * STEP_MM, axis=0)])
    return points, np.linspace(radius, 0.92 * radius, n + 1)


def _fork(rng: np.random.Generator, points, radii, length: float, pull) -> list:
    """Two children leaving the end of a branch on opposite sides of its heading, shorter and thinner,
    their directions bent by the vector ``pull``."""
    heading = points[-1] - points[-2]
    heading /= np.linalg.norm(heading)
    normal = rng.normal(size=3)
    normal -= (normal @ heading) * heading
    normal /= np.linalg.norm(normal)
    children = []
    for sign in (1, -1):
        angle = rng.uniform(0.3, 0.75)
        children.append((points[-1], np.cos(angle) * heading + sign * np.sin(angle) * normal + pull,
                         length * rng.uniform(0.72, 0.88), radii[-1] * rng.uniform(0.88, 0.96)))
    return children


def _ribs(rng: np.random.Generator, patient: _Patient) -> list:
    """Rib pairs, one per vertebra: from beside the spine round the cage, descending towards the front."""
    s, period = patient.size, patient.period
    tubes = []
    u = np.linspace(0.0, 1.0, 300)
    tops = patient.phase + (np.arange(-12, 12) + 0.4) * period  # the rib heads, near each vertebra's top
    for top in tops[(tops > -170) & (tops < patient.apex - 15)]:
        for side in (-1, 1):
            drop, end = rng.uniform(35, 55) * s, rng.uniform(2.2, 2.6)
            z = top - drop * u ** 1.3
            cx, cy, cax, cay = patient.cage(z)
            angle = 0.3 + u * (end - 0.3)
            vx, vy = patient.vertebra(top)
            points = np.vstack([[vx + side * 18 * s, vy + 2 * s, top + 2],
                                np.stack([cx + side * cax * np.sin(angle), cy + cay * np.cos(angle), z], axis=1)])
            tubes.append((points, np.full(len(points), 4.5 * s), RIB))
    return tubes


def _paint_tubes(hu: np.ndarray, lung: np.ndarray, tubes: list, spacing, origin, blood: float) -> None:
    """Vessels (inside the lungs only) and ribs (cortical shell, cancellous core) into ``hu`` in place."""
    found = _tube_clearance(tubes, hu.shape, spacing, origin)
    if found is None:
        return
    index, clearance, kind = found
    flat = hu.reshape(-1)
    values = flat[index]
    rib = kind == RIB
    values += np.where(rib, 0.0, _inside(clearance) * lung.reshape(-1)[index]) * (np.float32(blood) - values)
    values += np.where(rib, _inside(clearance), 0.0) * (np.float32(CORTICAL) - values)
    values += np.where(rib, _inside(clearance - 1.5), 0.0) * (np.float32(CANCELLOUS) - values)
    flat[index] = values


def _tube_clearance(tubes: list, shape, spacing, origin):
    """For voxels near a tube: flat index, clearance r - d (mm, > 0 inside) and kind of the nearest tube.

    Centrelines are rasterised into a label volume (over the grid plus a margin, so tubes just outside
    still reach in), a Euclidean distance transform finds each voxel's nearest labelled voxel, and the
    exact distance to that voxel's centreline segment, with the radius there, gives a clearance that
    does not depend on the grid. None when no tube comes near the grid.
    """
    a = np.concatenate([p[:-1] for p, _, _ in tubes])
    b = np.concatenate([p[1:] for p, _, _ in tubes])
    ra = np.concatenate([r[:-1] for _, r, _ in tubes])
    rb = np.concatenate([r[1:] for _, r, _ in tubes])
    kind = np.concatenate([np.full(len(p) - 1, k) for p, _, k in tubes])
    spacing, origin, size = np.asarray(spacing), np.asarray(origin), np.asarray(shape[::-1])  # (x, y, z)
    reach = max(ra.max(), rb.max()) + EDGE_MM
    lo, hi = np.minimum(a, b) - reach, np.maximum(a, b) + reach
    keep = np.all((hi >= origin - spacing / 2) & (lo <= origin + (size - 0.5) * spacing), axis=1)
    if not keep.any():
        return None
    a, b, ra, rb, kind = a[keep], b[keep], ra[keep], rb[keep], kind[keep]

    margin = np.ceil(reach / spacing).astype(int) + 1
    box_lo = np.maximum(np.floor((lo[keep].min(0) - origin) / spacing).astype(int), -margin)
    box_hi = np.minimum(np.ceil((hi[keep].max(0) - origin) / spacing).astype(int), size - 1 + margin)
    box = box_hi - box_lo + 1
    counts = np.ceil(2 * np.linalg.norm((b - a) / spacing, axis=1)).astype(int) + 1  # samples 1/2 voxel apart
    segment = np.repeat(np.arange(len(a)), counts)
    t = (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)) / np.repeat(
        np.maximum(counts - 1, 1), counts)
    voxel = np.rint((a[segment] + t[:, None] * (b - a)[segment] - origin) / spacing).astype(int) - box_lo
    inside = np.all((voxel >= 0) & (voxel < box), axis=1)
    if not inside.any():
        return None
    labels = np.zeros(box[::-1], np.int32)
    labels[voxel[inside, 2], voxel[inside, 1], voxel[inside, 0]] = segment[inside] + 1
    distance, nearest = ndimage.distance_transform_edt(labels == 0, sampling=spacing[::-1], return_indices=True)

    grid = tuple(slice(max(0, -lo_), min(n, s - lo_)) for lo_, n, s in zip(box_lo, box, size, strict=True))[::-1]
    near = np.nonzero(distance[grid] <= reach + 0.5 * np.linalg.norm(spacing))
    in_box = tuple(i + g.start for i, g in zip(near, grid, strict=True))
    seg = labels[tuple(axis[in_box] for axis in nearest)] - 1
    zyx = tuple(i + lo_ for i, lo_ in zip(in_box, box_lo[::-1], strict=True))
    p = origin + spacing * np.stack(zyx[::-1], axis=1)
    ab = b[seg] - a[seg]
    t = np.clip(np.sum((p - a[seg]) * ab, axis=1) / np.maximum(np.sum(ab * ab, axis=1), 1e-12), 0.0, 1.0)
    d = np.linalg.norm(p - a[seg] - t[:, None] * ab, axis=1)
    r = ra[seg] + t * (rb[seg] - ra[seg])
    return np.ravel_multi_index(zyx, shape), (r - d).astype(np.float32), kind[seg]
