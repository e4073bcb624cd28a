"""A volume as a neuroglancer precomputed folder (read-only), in every node.

    <inst>/precomputed/info
    <inst>/precomputed/s<n>/<x0>-<x1>_<y0>-<y1>_<z0>-<z1>

What the files hold is data/precomputed.py's; here they are entries.  CloudVolume
opens it with `file://…/<inst>/precomputed` and reads every chunk by name.
Sizes are exact: a raw (grayscale) chunk's is its voxel count; a
compressed_segmentation (labels) chunk's is known once it is encoded, so its
`stat` encodes it in a worker thread and the tree's render cache keeps the
bytes for the read that follows (per write generation, as every rendering).
Directory listings of label chunks give their names with attributes the
kernel may not keep (`volatile_in_listing`), so `ls` encodes nothing and
`ls -l` asks for each size.  Committed nodes are read through the kernel's
page cache (`keep_cache`); open nodes never serve a stale chunk (every write
invalidates the instance's inodes and bumps the generation).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from dvidfs.data.precomputed import Precomputed, chunk_name
from dvidfs.errors import NotFoundError
from dvidfs.fs.entry import Attr, DirEntry, Entry, as_json

if TYPE_CHECKING:
    from dvidfs.fs.tree import Tree


def _view(tree: "Tree", e: Entry) -> Precomputed:
    return Precomputed(e.obj, tree.core.view(e.node))


class PrecomputedDir(DirEntry):
    def attr(self, tree: "Tree") -> Attr:
        return Attr("dir", 0, False, tree.mtime(self.node), self.locked)

    def children(self, tree: "Tree") -> list[tuple[str, Entry]]:
        out: list[tuple[str, Entry]] = [("info", self.child(PrecomputedInfo, name="info"))]
        out += [(s.key, self.child(ScaleDir, scale=s.level, name=s.key)) for s in _view(tree, self).scales]
        return out

    def lookup(self, tree: "Tree", name: str) -> Entry:
        for n, child in self.children(tree):
            if n == name:
                return child
        raise NotFoundError(f"no {name!r} in {self.data}/precomputed")

    def describe(self) -> str:
        return f"{self.data}/precomputed"


class PrecomputedInfo(Entry):
    def attr(self, tree: "Tree") -> Attr:
        return Attr("file", len(self.read(tree)), False, tree.mtime(self.node), self.locked)

    def read(self, tree: "Tree") -> bytes:
        return as_json(_view(tree, self).info())

    def describe(self) -> str:
        return f"{self.data}/precomputed/info"


class ScaleDir(DirEntry):
    """`s<n>/`: the chunks of one scale (listed x fastest, then y, then z)."""

    def _scale(self, tree: "Tree"):
        pc = _view(tree, self)
        s = pc.scale(self.name)
        if s is None:
            raise NotFoundError(f"{self.data}/precomputed has no scale {self.name!r}")
        return pc, s

    def attr(self, tree: "Tree") -> Attr:
        self._scale(tree)
        return Attr("dir", 0, False, tree.mtime(self.node), self.locked)

    def lookup(self, tree: "Tree", name: str) -> Entry:
        _, s = self._scale(tree)
        if s.parse(name) is None:
            raise NotFoundError(f"no chunk {name!r} in {self.data}/precomputed/{self.name}")
        return self.child(ChunkFile, name=name)

    def list(self, tree: "Tree") -> Sequence[tuple[str, Entry, Attr]]:
        pc, s = self._scale(tree)
        return _ChunkListing(self, pc, s, tree.mtime(self.node))

    def describe(self) -> str:
        return f"{self.data}/precomputed/{self.name}"


class _ChunkListing(Sequence):
    """Chunk files made as they are read (`ls | head` of 10⁵ chunks reads what it shows)."""

    def __init__(self, scale_dir: ScaleDir, pc: Precomputed, scale, mtime: float):
        self.scale_dir, self.pc, self.scale, self.mtime = scale_dir, pc, scale, mtime

    def __len__(self) -> int:
        return self.scale.count()

    def __getitem__(self, i):
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        box = self.scale.chunk_at(i % len(self))
        name = chunk_name(box)
        size = self.pc.raw_size(box)
        e = self.scale_dir.child(ChunkFile, name=name)
        return name, e, Attr("file", size or 0, False, self.mtime, self.scale_dir.locked)


class ChunkFile(Entry):
    rendered = True

    @property
    def _labels(self) -> bool:
        return self.obj.dtype.itemsize == 8

    @property
    def slow_attr(self) -> bool:  # type: ignore[override]
        return self._labels            # the size is known once the chunk is encoded

    @property
    def volatile_in_listing(self) -> bool:  # type: ignore[override]
        return self._labels

    def _box(self, tree: "Tree"):
        pc = _view(tree, self)
        s = pc.scale(f"s{self.scale}")
        box = s.parse(self.name) if s is not None else None
        if box is None:
            raise NotFoundError(f"no chunk {self.describe()}")
        return pc, s, box

    def attr(self, tree: "Tree") -> Attr:
        pc, _, box = self._box(tree)
        size = pc.raw_size(box)
        if size is None:
            size = len(tree.read(self))
        return Attr("file", size, False, tree.mtime(self.node), self.locked)

    def read(self, tree: "Tree") -> bytes:
        pc, s, box = self._box(tree)
        return pc.chunk(s, box)

    def describe(self) -> str:
        return f"{self.data}/precomputed/s{self.scale}/{self.name}"
