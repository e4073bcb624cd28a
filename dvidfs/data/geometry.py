"""Boxes, block grids and slice planes: the arithmetic every volume type shares.

Conventions (DVID's): points and sizes are (x, y, z); numpy arrays are indexed
[z, y, x].  Extents are inclusive min/max points.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from dvidfs.errors import InvalidInputError

XYZ = tuple[int, int, int]
INT32_MIN, INT32_MAX = -2**31, 2**31 - 1
PLANES = ("xy", "xz", "yz")
# plane -> (axis held fixed, width axis, height axis), axes 0=x 1=y 2=z
PLANE_AXES = {"xy": (2, 0, 1), "xz": (1, 0, 2), "yz": (0, 1, 2)}


@dataclass(frozen=True)
class Box:
    """Half-open box [lo, hi) in voxel coordinates (x, y, z)."""

    lo: XYZ
    hi: XYZ

    @classmethod
    def from_offset_size(cls, offset: XYZ, size: XYZ) -> "Box":
        if any(s <= 0 for s in size):
            raise InvalidInputError(f"size {tuple(size)} must be positive in x, y and z")
        if any(o < INT32_MIN or o + s - 1 > INT32_MAX for o, s in zip(offset, size)):
            raise InvalidInputError(f"box at {tuple(offset)} of size {tuple(size)} leaves the int32 "
                                    "coordinate range DVID uses")
        return cls(tuple(int(o) for o in offset), tuple(int(o) + int(s) for o, s in zip(offset, size)))

    @classmethod
    def from_extents(cls, min_pt: XYZ, max_pt: XYZ) -> "Box":
        return cls(tuple(min_pt), tuple(m + 1 for m in max_pt))

    @property
    def size(self) -> XYZ:
        return tuple(h - l for l, h in zip(self.lo, self.hi))

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        sx, sy, sz = self.size
        return (sz, sy, sx)

    def intersect(self, other: "Box") -> "Box | None":
        lo = tuple(max(a, b) for a, b in zip(self.lo, other.lo))
        hi = tuple(min(a, b) for a, b in zip(self.hi, other.hi))
        return Box(lo, hi) if all(l < h for l, h in zip(lo, hi)) else None

    def union(self, other: "Box | None") -> "Box":
        if other is None:
            return self
        return Box(tuple(min(a, b) for a, b in zip(self.lo, other.lo)),
                   tuple(max(a, b) for a, b in zip(self.hi, other.hi)))

    def slices_in(self, outer: "Box") -> tuple[slice, slice, slice]:
        """numpy [z, y, x] slices of this box inside an array covering `outer`."""
        return tuple(slice(self.lo[a] - outer.lo[a], self.hi[a] - outer.lo[a]) for a in (2, 1, 0))


@dataclass(frozen=True)
class BlockGrid:
    """A regular grid of blocks of size (bx, by, bz) anchored at the origin."""

    size: XYZ

    def block_range(self, box: Box) -> tuple[XYZ, XYZ]:
        """Inclusive block coordinate range covering `box` (floor division handles negatives)."""
        lo = tuple(l // b for l, b in zip(box.lo, self.size))
        hi = tuple((h - 1) // b for h, b in zip(box.hi, self.size))
        return lo, hi

    def block_box(self, bcoord: XYZ) -> Box:
        lo = tuple(c * b for c, b in zip(bcoord, self.size))
        return Box(lo, tuple(l + b for l, b in zip(lo, self.size)))

    def blocks(self, box: Box) -> Iterator[XYZ]:
        (x0, y0, z0), (x1, y1, z1) = self.block_range(box)
        for z in range(z0, z1 + 1):
            for y in range(y0, y1 + 1):
                for x in range(x0, x1 + 1):
                    yield (x, y, z)

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return (self.size[2], self.size[1], self.size[0])


def plane_box(extents: Box, plane: str, coord: int) -> Box:
    """The one-voxel-thick box of slice `coord` of `plane` across the extents."""
    fixed = PLANE_AXES[plane][0]
    lo, hi = list(extents.lo), list(extents.hi)
    lo[fixed], hi[fixed] = coord, coord + 1
    return Box(tuple(lo), tuple(hi))


def plane_dims(extents: Box, plane: str) -> tuple[int, int]:
    """(width, height) of a slice image of `plane`."""
    _, w, h = PLANE_AXES[plane]
    return extents.size[w], extents.size[h]


def volume_to_image(vol: "np.ndarray", plane: str) -> "np.ndarray":  # noqa: F821
    """A [z, y, x] array one voxel thick along the plane's fixed axis -> 2-D (height, width)."""
    if plane == "xy":
        return vol[0]
    if plane == "xz":
        return vol[:, 0, :]
    return vol[:, :, 0]


def image_to_volume(img: "np.ndarray", plane: str) -> "np.ndarray":  # noqa: F821
    """Inverse of `volume_to_image`."""
    if plane == "xy":
        return img[None, :, :]
    if plane == "xz":
        return img[:, None, :]
    return img[:, :, None]
