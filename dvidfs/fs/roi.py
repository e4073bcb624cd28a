"""roi instances in the mount: the spans as JSON, and the mask as slice images.

    <roi>/info.json                 the instance's info (fs/instances.py)
    <roi>/spans.json                [[z, y, x0, x1], …] block spans, one per line (data/roi.py);
                                    writable in open nodes: what is written *replaces* the ROI at
                                    close, all or nothing (DVID's POST roi); `[]` empties it
    <roi>/mask/xy/<z>.png           8-bit slices of the mask, 255 inside, 0 outside, across the
    <roi>/mask/xz/<y>.png           voxel box of the ROI's blocks (its extents); read-only
    <roi>/mask/yz/<x>.png

Slice names and listings follow fs/volumes.py (zero-padded coordinates, listed
in coordinate order, exact sizes from the stored-deflate PNG formula, so `ls -l`
encodes nothing).  An ROI without spans has empty plane directories.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np

from dvidfs.errors import InvalidInputError, NotFoundError
from dvidfs.formats.images import encode_png_stored, png_size
from dvidfs.fs.entry import Attr, DirEntry, EditableFile, Entry
from dvidfs.fs.volumes import _SliceListing, parse_slice_name
from dvidfs.geometry import PLANE, PLANES

if TYPE_CHECKING:
    from dvidfs.fs.tree import Tree

SPANS = "spans.json"
MAX_SPANS_FILE = 1 << 30     # the most a spans.json written through the mount may hold (it is buffered)


def roi_children(inst: Entry, tree: "Tree") -> list[tuple[str, Entry]]:
    return [(SPANS, inst.child(SpansFile, name=SPANS)), ("mask", inst.child(MaskDir, name="mask"))]


def spans_text(spans) -> bytes:
    """One span a line: `diff` and `grep` work on it, `json.load` reads it."""
    if not spans:
        return b"[]\n"
    return ("[\n" + ",\n".join(f"  [{z}, {y}, {x0}, {x1}]" for z, y, x0, x1 in spans) + "\n]\n").encode()


class SpansFile(EditableFile):
    max_upload = MAX_SPANS_FILE

    def read(self, tree: "Tree") -> bytes:
        return spans_text(self.obj.spans(tree.core.view(self.node)))

    def upload(self, tree: "Tree", data: bytes) -> str:
        try:
            spans = json.loads(bytes(data))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"{self.data}/{SPANS}: not JSON ({exc}); write [[z, y, x0, x1], …]") from None
        self.obj.put_spans(self.node, spans)
        return f"stored {len(spans)} span(s) in {self.data}"

    def describe(self) -> str:
        return f"{self.data}/{SPANS}"


class MaskDir(DirEntry):
    def attr(self, tree: "Tree") -> Attr:
        return Attr("dir", 0, False, tree.mtime(self.node), self.locked)

    def children(self, tree: "Tree") -> list[tuple[str, Entry]]:
        return [(p, self.child(MaskPlaneDir, plane=p)) for p in PLANES]

    def lookup(self, tree: "Tree", name: str) -> Entry:
        if name in PLANE:
            return self.child(MaskPlaneDir, plane=name)
        raise NotFoundError(f"no {name!r} in {self.data}/mask (planes: {', '.join(PLANES)})")

    def describe(self) -> str:
        return f"{self.data}/mask"


def _inside(ext, plane: str, coord: int) -> bool:
    fixed = PLANE[plane].fixed
    return ext is not None and ext.lo[fixed] <= coord < ext.hi[fixed]


def _slice_attr(tree: "Tree", e: Entry, ext) -> Attr:
    return Attr("file", png_size(*PLANE[e.plane].dims(ext)), False, tree.mtime(e.node), e.locked)


class MaskPlaneDir(DirEntry):
    def attr(self, tree: "Tree") -> Attr:
        return Attr("dir", 0, False, tree.mtime(self.node), self.locked)

    def slice_entry(self, coord: int) -> "MaskSlice":
        return self.child(MaskSlice, coord=coord)

    def lookup(self, tree: "Tree", name: str) -> Entry:
        coord = parse_slice_name(name)
        if coord is None or not name.endswith(".png") or not _inside(tree.extents(self), self.plane, coord):
            raise NotFoundError(f"no mask slice {name!r}")
        return self.slice_entry(coord)

    def list(self, tree: "Tree"):
        ext = tree.extents(self)
        if ext is None:
            return []
        fixed = PLANE[self.plane].fixed
        return _SliceListing(self, range(ext.lo[fixed], ext.hi[fixed]), "png", _slice_attr(tree, self, ext))

    def describe(self) -> str:
        return f"{self.data}/mask/{self.plane}"


class MaskSlice(Entry):
    rendered = True

    def attr(self, tree: "Tree") -> Attr:
        ext = tree.extents(self)
        if not _inside(ext, self.plane, self.coord):
            raise NotFoundError(f"no mask {self.plane} slice {self.coord}")
        return _slice_attr(tree, self, ext)

    def read(self, tree: "Tree") -> bytes:
        ext = tree.extents(self)
        if not _inside(ext, self.plane, self.coord):
            raise NotFoundError(f"no mask {self.plane} slice {self.coord}")
        p = PLANE[self.plane]
        box = p.box(ext, self.coord)
        vol = self.obj.mask(tree.core.view(self.node), box.lo, box.size)
        return encode_png_stored(p.to_image(vol) * np.uint8(255))

    def describe(self) -> str:
        return f"{self.data}/mask/{self.plane}/{self.coord}"
