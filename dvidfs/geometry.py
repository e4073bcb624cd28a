"""Boxes, block grids and slice planes: the arithmetic every layer shares.

Conventions (DVID's): points and sizes are (x, y, z); numpy arrays are indexed
[z, y, x].  Extents are inclusive min/max points.

`PLANE` is the one table of slice planes: for each plane, the axis held fixed
and the axes along the image's columns (width) and rows (height).  Formats
(label-plane decoding), data types (slices, read-ahead) and front ends (slice
sizes and names) all derive their axis arithmetic from it.  An image of a
plane is the [z, y, x] array indexed at the fixed axis: the two remaining axes
keep their z, y, x order, so the image is (height, width) for every plane.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from dvidfs.errors import InvalidInputError

if TYPE_CHECKING:  # annotations only: this module does arithmetic, numpy is the callers'
    import numpy as np

XYZ = tuple[int, int, int]
INT32_MIN, INT32_MAX = -2**31, 2**31 - 1


@dataclass(frozen=True)
class Plane:
    """A slice orientation: the axis held fixed, and the axes of the image's
    columns (width) and rows (height); axes 0 = x, 1 = y, 2 = z."""

    name: str
    fixed: int
    width: int
    height: int

    def take(self, arr: "np.ndarray", i: int) -> "np.ndarray":
        """Plane i along the fixed axis of a [z, y, x] array, as a 2-D (height, width) view."""
        index: list = [slice(None)] * 3
        index[2 - self.fixed] = i
        return arr[tuple(index)]

    def to_image(self, vol: "np.ndarray") -> "np.ndarray":
        """A [z, y, x] array one voxel thick along the fixed axis -> 2-D (height, width)."""
        return self.take(vol, 0)

    def to_volume(self, img: "np.ndarray") -> "np.ndarray":
        """Inverse of `to_image`: a (height, width) image as a one-voxel-thick [z, y, x] array."""
        return img.reshape(self.volume_shape(img.shape[1], img.shape[0]))

    def volume_shape(self, width: int, height: int) -> tuple[int, int, int]:
        """[z, y, x] shape of a one-voxel-thick volume holding a width x height image."""
        size = [1, 1, 1]
        size[self.width], size[self.height] = width, height
        return (size[2], size[1], size[0])

    def dims(self, extents: "Box") -> tuple[int, int]:
        """(width, height) of a slice image of this plane across `extents`."""
        return extents.size[self.width], extents.size[self.height]

    def box(self, extents: "Box", coord: int) -> "Box":
        """The one-voxel-thick box of slice `coord` across `extents`."""
        lo, hi = list(extents.lo), list(extents.hi)
        lo[self.fixed], hi[self.fixed] = coord, coord + 1
        return Box(tuple(lo), tuple(hi))


PLANE: dict[str, Plane] = {p.name: p for p in (Plane("xy", 2, 0, 1), Plane("xz", 1, 0, 2),
                                                Plane("yz", 0, 1, 2))}
PLANES = tuple(PLANE)
PLANE_OF_AXIS: dict[int, Plane] = {p.fixed: p for p in PLANE.values()}


def plane(name: str) -> Plane:
    """The plane called `name` ("xy", "xz", "yz"), or InvalidInputError."""
    p = PLANE.get(name)
    if p is None:
        raise InvalidInputError(f"unknown plane {name!r} (xy, xz or yz)")
    return p


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

