"""Label bodies as directories of DVID-format files, and label edits as files.

    <labels>/labels/<id>/sparsevol, sparsevol-coarse, size, bbox.json,
                         blocks.json, supervoxels, split (write-only)
    <labels>/merge               write "TARGET ID…": merge bodies into TARGET
    <labels>/mutations.jsonl     every merge/split visible from this node

Shown for every instance whose type offers "bodies".  A body's files are
rendered from its label index (sizes need the rendering, so their `stat`
runs in a worker thread); bodies disappear when merged away, so their names
are invalidated, not only their inodes.
"""
from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from dvidfs.errors import InvalidInputError, NotFoundError
from dvidfs.fs.entry import NOW, ON_CLOSE, Attr, DirEntry, Entry, as_json

if TYPE_CHECKING:
    from dvidfs.fs.tree import Tree

BODY_FILES = ("bbox.json", "blocks.json", "size", "sparsevol", "sparsevol-coarse", "split", "supervoxels")


def body_children(inst: Entry, tree: "Tree") -> list[tuple[str, Entry]]:
    return [("labels", inst.child(LabelsDir)), ("merge", inst.child(MergeFile, name="merge")),
            ("mutations.jsonl", inst.child(MutationsFile, name="mutations.jsonl"))]


class LabelsDir(DirEntry):
    def lookup(self, tree: "Tree", name: str) -> Entry:
        if not name.isdigit() or self.obj.index(tree.core.view(self.node), int(name)) is None:
            raise NotFoundError(f"no label {name!r}")
        return self.child(BodyDir, coord=int(name))

    def list(self, tree: "Tree") -> list[tuple[str, Entry, Attr]]:
        a = DirEntry.attr(self, tree)
        bodies = self.obj.bodies(tree.core.view(self.node)).tolist()
        return [(str(b), self.child(BodyDir, coord=b), a) for b in bodies]

    def describe(self) -> str:
        return f"{self.data}/labels"


class BodyDir(DirEntry):
    can_vanish = True

    def attr(self, tree: "Tree") -> Attr:
        self.obj.require_index(tree.core.view(self.node), self.coord)
        return super().attr(tree)

    def lookup(self, tree: "Tree", name: str) -> Entry:
        if name in BODY_FILES:
            return self.child(BodyFile, name=name)
        raise NotFoundError(f"no {name!r} for a label")

    def children(self, tree: "Tree"):
        return [(n, self.child(BodyFile, name=n)) for n in BODY_FILES]


def _bbox(vol, view, body) -> bytes:
    lo, hi = vol.bbox(view, body)
    return as_json({"MinPoint": list(lo), "MaxPoint": list(hi)})


_RENDER = {
    "sparsevol": lambda vol, view, body: vol.sparsevol(view, body),
    "sparsevol-coarse": lambda vol, view, body: vol.sparsevol_coarse(view, body),
    "size": lambda vol, view, body: f"{vol.size(view, body)}\n".encode(),
    "bbox.json": _bbox,
    "blocks.json": lambda vol, view, body: as_json([list(c) for c in vol.block_coords(view, body)]),
    "supervoxels": lambda vol, view, body: "".join(f"{s}\n" for s in vol.supervoxels(view, body)).encode(),
    "split": lambda vol, view, body: b"",  # write-only
}


class BodyFile(Entry):
    rendered = True
    can_vanish = True
    slow_attr = True  # the size of a sparsevol is known once it is computed

    @property
    def write_mode(self) -> str | None:  # type: ignore[override]
        return ON_CLOSE if self.name == "split" else None

    def attr(self, tree: "Tree") -> Attr:
        if self.name == "split":
            return Attr("file", 0, not self.locked, tree.mtime(self.node), self.locked)
        return Attr("file", len(tree.read(self)), False, tree.mtime(self.node), self.locked)

    def read(self, tree: "Tree") -> bytes:
        return _RENDER[self.name](self.obj, tree.core.view(self.node), self.coord)

    def upload(self, tree: "Tree", data: bytes) -> str:
        if self.name != "split":
            raise InvalidInputError("this file is read-only")
        rec = self.obj.split(self.node, self.coord, bytes(data))
        return f"split {self.coord}: new label {rec['NewLabel']}"

    def describe(self) -> str:
        return f"{self.data}/labels/{self.coord}/{self.name}"


class MergeFile(Entry):
    write_mode = NOW

    def attr(self, tree: "Tree") -> Attr:
        return Attr("file", 0, not self.locked, tree.mtime(self.node), self.locked)

    def read(self, tree: "Tree") -> bytes:
        return b""

    def control(self, tree: "Tree", text: str) -> str:
        ids = re.split(r"[\s,]+", text)
        if len(ids) < 2 or not all(i.isdigit() for i in ids):
            raise InvalidInputError("write 'TARGET LABEL [LABEL…]' (decimal ids) to merge labels into TARGET")
        rec = self.obj.merge(self.node, int(ids[0]), [int(i) for i in ids[1:]])
        return f"merged {ids[1:]} into {ids[0]} (mutation {rec['MutationID']})"


class MutationsFile(Entry):
    def attr(self, tree: "Tree") -> Attr:
        return Attr("file", len(self.read(tree)), False, tree.mtime(self.node), self.locked)

    def read(self, tree: "Tree") -> bytes:
        recs = self.obj.mutations(tree.core.view(self.node))
        return "".join(json.dumps(r) + "\n" for r in recs).encode()
