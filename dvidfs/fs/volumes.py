"""Volume instances as slice images: the planes of grayscale and label volumes.

    <inst>/xy/<z>.png, xz/<y>.png, yz/<x>.png     8-bit slices (grayscale)
    <inst>/xy/<z>.tif …                            exact uint64 ids (labels; numpy, tifffile)
    <inst>/xy-fiji/<z>.tif …                       the same ids as 32-bit float, which ImageJ/Fiji
                                                   and Pillow read (labels): exact up to 2**24, NaN
                                                   where an id is larger (never a rounded id)
    <inst>/xy-rgb/<z>.png …                        a stable colour per body (labels, any viewer)
    <inst>/s<n>/xy/<z>.png …                       pyramid level n (read-only), the same views
                                                   and names; one directory per stored level
    <inst>/precomputed/…                           neuroglancer precomputed (fs/precomputed.py)

Slice names are the coordinate zero-padded to SLICE_WIDTH digits, so `ls` and
Fiji sort non-negative coordinates numerically; directories list them in
coordinate order, streamed (a listing costs what is read of it, whatever the
extents).  Sizes are formulas of width and height (stored-deflate PNG,
uncompressed TIFF): `ls -l` encodes nothing.

`rm <plane>/<slice>` in an open node makes that slice background (0) in that
node only (blocks left empty get tombstones; parents keep their data); the
slice stays listed, reading as zeros, as any slice within the extents.  While
the plane directory itself is open (`rm -r`, `find -delete` walk it) a slice
rm is refused (fs/operations.py), so no recursive rm can wipe a volume.

Names written into a plane directory (`parse_slice_name`, `is_temp_name`):
  * `00012.png`, `12.png`, `-0004.tif`: slice 12, slice -4 (ASCII digits, int32);
  * `<prefix><digits>.png|tif` with a prefix of letters first, e.g. ImageJ's
    *Save As > Image Sequence* `xy0012.png`: slice 12 too;
  * a hidden name (`.00012.png.Ab12Cd`, rsync's and editors' temporary files):
    kept in memory until renamed onto a slice name, which stores it; a temporary
    file never renamed is gone at unmount, like the temp files of a failed rsync;
  * anything else is refused at create (EINVAL): nothing is kept in memory only.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from collections.abc import Sequence
from typing import TYPE_CHECKING, Callable

import numpy as np

from dvidfs.errors import InvalidInputError, NotFoundError
from dvidfs.formats.images import (decode_image, encode_label_float_tiff, encode_png_stored,
                                   encode_pseudocolor_png, encode_tiff, label_float_tiff_size, png_size,
                                   tiff_size, voxel_spec)
from dvidfs.fs.entry import ON_CLOSE, Attr, DirEntry, Entry
from dvidfs.geometry import PLANE, PLANES

if TYPE_CHECKING:
    from dvidfs.fs.tree import Tree

SLICE_RE = re.compile(r"(-?[0-9]{1,10})\.(png|tif|tiff)")
ALIAS_RE = re.compile(r"[A-Za-z][A-Za-z0-9_ +-]*?([0-9]{1,10})\.(png|tif|tiff)")   # ImageJ's xy0012.png
SLICE_WIDTH = 5
RGB = "-rgb"
FIJI = "-fiji"
COORD_MIN, COORD_MAX = -2**31, 2**31 - 1   # DVID's int32 coordinates
# An upload may be larger than our stored-deflate rendering of the same image
# (other encoders add chunks, metadata, worse filters), never this much larger.
UPLOAD_SLACK, UPLOAD_FIXED = 2, 1 << 20
FIRST_SLICE_LIMIT = 256 << 20   # an empty volume: no plane size known yet


def slice_name(coord: int, ext: str) -> str:
    return f"{coord:0{SLICE_WIDTH}d}.{ext}"


def parse_slice_name(name: str, aliases: bool = False) -> int | None:
    """The coordinate a slice file name stands for, or None.  ASCII digits only,
    within int32; `aliases` also takes ImageJ's `<prefix><digits>.png`."""
    m = SLICE_RE.fullmatch(name) or (ALIAS_RE.fullmatch(name) if aliases else None)
    if m is None:
        return None
    coord = int(m.group(1))
    return coord if COORD_MIN <= coord <= COORD_MAX else None


def is_temp_name(name: str) -> bool:
    """Names kept as in-memory temporary files until renamed (rsync, editors)."""
    return name.startswith(".") and name not in (".", "..")


@dataclass(frozen=True)
class SliceFormat:
    """How one plane directory shows a volume's slices."""

    ext: str
    size: Callable[[int, int, tuple | None], int]      # (width, height, voxel) -> exact file size
    encode: Callable[[np.ndarray, tuple | None], bytes]  # (slice, voxel) -> file; TIFFs tag the voxel size
    writable: bool


GRAY_PNG = SliceFormat("png", lambda w, h, voxel: png_size(w, h), lambda img, voxel: encode_png_stored(img), True)
LABEL_TIFF = SliceFormat("tif", lambda w, h, voxel: tiff_size(w, h, np.uint64, voxel=voxel),
                         lambda img, voxel: encode_tiff(img, voxel=voxel), True)
LABEL_RGB = SliceFormat("png", lambda w, h, voxel: png_size(w, h, 3), lambda img, voxel: encode_pseudocolor_png(img),
                        False)
LABEL_FIJI = SliceFormat("tif", label_float_tiff_size, encode_label_float_tiff, False)


def plane_formats(dtype: np.dtype) -> dict[str, SliceFormat]:
    """Plane directory name -> format, by the volume's voxel type."""
    if dtype == np.uint8:
        return {p: GRAY_PNG for p in PLANES}
    return {**{p: LABEL_TIFF for p in PLANES}, **{p + FIJI: LABEL_FIJI for p in PLANES},
            **{p + RGB: LABEL_RGB for p in PLANES}}


def _inside(ext, plane_dir: str, coord: int) -> bool:
    """Slice `coord` of a plane directory ("xz", "xz-rgb") exists within the extents."""
    fixed = PLANE[plane_dir[:2]].fixed
    return ext is not None and ext.lo[fixed] <= coord < ext.hi[fixed]


def volume_children(inst: Entry, tree: "Tree") -> list[tuple[str, Entry]]:
    from dvidfs.fs.precomputed import PrecomputedDir
    levels = inst.obj.pyramid_levels(tree.core.view(inst.node))
    return (plane_children(inst)
            + [(f"s{n}", inst.child(LevelDir, scale=n, obj=inst.obj.level(n))) for n in range(1, levels + 1)]
            + [("precomputed", inst.child(PrecomputedDir, name="precomputed"))])


def plane_children(e: Entry) -> list[tuple[str, Entry]]:
    """The plane directories of `e`'s volume at `e`'s level."""
    return [(p, e.child(PlaneDir, plane=p)) for p in plane_formats(e.obj.dtype)]


class LevelDir(DirEntry):
    """`s<n>/`: pyramid level n, with the plane directories of level 0."""

    def attr(self, tree: "Tree") -> Attr:
        if self.scale > self.obj.pyramid_levels(tree.core.view(self.node)):
            raise NotFoundError(f"{self.data} has no stored level {self.scale}")
        return Attr("dir", 0, False, tree.mtime(self.node), self.locked)

    def children(self, tree: "Tree") -> list[tuple[str, Entry]]:
        return plane_children(self)

    def lookup(self, tree: "Tree", name: str) -> Entry:
        if name in plane_formats(self.obj.dtype):
            return self.child(PlaneDir, plane=name)
        raise NotFoundError(f"no {name!r} in level {self.scale} of {self.data!r}")

    def describe(self) -> str:
        return f"{self.data}/s{self.scale}"


class _OnPlane:
    """What a plane directory and its slices share: the format and the axes of
    their plane, and the attributes of a slice file (one size for every slice)."""

    @property
    def format(self) -> SliceFormat:
        return plane_formats(self.obj.dtype)[self.plane]

    @property
    def axes(self):
        return PLANE[self.plane[:2]]

    @property
    def voxel(self):
        """The voxel size a TIFF slice carries: VoxelSize in this plane's axes, at this level."""
        cfg, a = self.obj.inst.config, self.axes
        return voxel_spec(cfg.get("VoxelSize"), cfg.get("VoxelUnits"), a.width, a.height, a.fixed, self.scale)

    def slice_attr(self, tree: "Tree", ext) -> Attr:
        fmt = self.format
        return Attr("file", fmt.size(*self.axes.dims(ext), self.voxel),
                    not self.locked and fmt.writable and not self.scale,
                    tree.mtime(self.node), self.locked)


class PlaneDir(_OnPlane, DirEntry):
    @property
    def accepts_temp_files(self) -> bool:  # type: ignore[override]
        return not self.scale   # levels are computed: nothing is written there

    def attr(self, tree: "Tree") -> Attr:
        return Attr("dir", 0, not self.locked and not self.scale, tree.mtime(self.node), self.locked)

    def slice_entry(self, coord: int) -> "Slice":
        return self.child(Slice, coord=coord)

    def lookup(self, tree: "Tree", name: str) -> Entry:
        coord = parse_slice_name(name, aliases=True)
        if coord is None or not self._has(tree, coord):
            raise NotFoundError(f"no slice {name!r}")
        return self.slice_entry(coord)

    def _has(self, tree: "Tree", coord: int) -> bool:
        return _inside(tree.extents(self), self.plane, coord)

    def list(self, tree: "Tree") -> Sequence[tuple[str, Entry, Attr]]:
        ext = tree.extents(self)
        if ext is None:
            return []
        fixed = self.axes.fixed
        # Coordinate order (not name order): `ls -U`, `find`, os.listdir and
        # Fiji's virtual stack see slices in order even where names are negative.
        return _SliceListing(self, range(ext.lo[fixed], ext.hi[fixed]), self.format.ext,
                             self.slice_attr(tree, ext))

    def remove_file(self, tree: "Tree", name: str) -> None:
        """`rm` of a slice (open nodes): its voxels become background (0) in this
        node only (data/volume.py `delete_slice`).  It stays listed, all zeros,
        as every slice within the extents is."""
        coord = parse_slice_name(name, aliases=True)
        if coord is None:
            raise NotFoundError(f"no slice {name!r}")
        if self.scale:
            raise InvalidInputError(f"level {self.scale} is computed from level 0: rm slices there")
        if not self.format.writable:
            raise InvalidInputError(f"{self.plane} is a view: rm the slice in {self.plane[:2]}/ instead")
        self.obj.delete_slice(self.node, self.plane[:2], coord)

    def upload_limit(self, tree: "Tree") -> int:
        """The most bytes a slice file (or a temp file renamed onto one) may take."""
        ext = tree.extents(self)
        if ext is None:
            return FIRST_SLICE_LIMIT
        return UPLOAD_SLACK * self.format.size(*self.axes.dims(ext), self.voxel) + UPLOAD_FIXED


class _SliceListing(Sequence):
    """The slices of a plane directory, made as they are read: `ls | head`
    of a plane spanning 10⁹ slices costs what `head` reads."""

    def __init__(self, plane_dir: PlaneDir, coords: range, ext: str, attr: Attr):
        self.plane_dir, self.coords, self.ext, self.attr = plane_dir, coords, ext, attr

    def __len__(self) -> int:
        return len(self.coords)

    def __getitem__(self, i):
        c = self.coords[i]
        return slice_name(c, self.ext), self.plane_dir.slice_entry(c), self.attr


class Slice(_OnPlane, Entry):
    rendered = True
    starts_with_content = True

    @property
    def write_mode(self) -> str | None:  # type: ignore[override]
        return None if self.scale else ON_CLOSE

    def attr(self, tree: "Tree") -> Attr:
        ext = tree.extents(self)
        if not _inside(ext, self.plane, self.coord):
            raise NotFoundError(f"no {self.plane} slice {self.coord}")
        return self.slice_attr(tree, ext)

    def read(self, tree: "Tree") -> bytes:
        img = tree.core.read_slice(self.node, self.obj, self.plane[:2], self.coord)
        return self.format.encode(img, self.voxel)

    def upload_limit(self, tree: "Tree") -> int:
        return self.child(PlaneDir).upload_limit(tree)

    def upload(self, tree: "Tree", data: bytes) -> str:
        if self.scale:
            raise InvalidInputError(f"level {self.scale} is computed from level 0: write slices there")
        if not self.format.writable:
            shows = "colours" if self.format is LABEL_RGB else "the ids for ImageJ (read-only)"
            raise InvalidInputError(f"{self.plane} shows {shows}; write uint64 TIFF slices to "
                                    f"{self.plane[:2]}/ instead")
        ext = tree.extents(self)
        shape = None
        if ext is not None:  # checked from the file's header, before any pixel is decoded
            w, h = self.axes.dims(ext)
            shape = (h, w)
        img = decode_image(bytes(data), self.obj.dtype, shape)
        self.obj.write_slice(self.node, self.plane[:2], self.coord, img)
        return f"wrote {self.plane} slice {self.coord}"

    def describe(self) -> str:
        level = f"s{self.scale}/" if self.scale else ""
        return f"{self.data}/{level}{self.plane}/{self.coord}"
