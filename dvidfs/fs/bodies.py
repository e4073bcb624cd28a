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
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dvidfs.errors import InvalidInputError, NotFoundError
from dvidfs.fs.entry import NOW, ON_CLOSE, Attr, DirEntry, Entry, as_json

if TYPE_CHECKING:
    from dvidfs.fs.tree import Tree

BODY_FILES = ("bbox.json", "blocks.json", "size", "sparsevol", "sparsevol-coarse", "split", "supervoxels")
_ID_RE = re.compile(r"[0-9]{1,20}")
MAX_LABEL = 2**64 - 1


def parse_label_id(text: str) -> int | None:
    """A label id written by a person: ASCII digits, 1..2**64-1; else None."""
    if not _ID_RE.fullmatch(text):
        return None
    v = int(text)
    return v if 0 < v <= MAX_LABEL else None


def body_children(inst: Entry, tree: "Tree") -> list[tuple[str, Entry]]:
    return [("labels", inst.child(LabelsDir)), ("merge", inst.child(MergeFile, name="merge")),
            ("mutations.jsonl", inst.child(MutationsFile, name="mutations.jsonl"))]


class LabelsDir(DirEntry):
    def lookup(self, tree: "Tree", name: str) -> Entry:
        body = parse_label_id(name)
        if body is None or self.obj.index(tree.core.view(self.node), body) is None:
            raise NotFoundError(f"no label {name!r}")
        return self.child(BodyDir, coord=body)

    def list(self, tree: "Tree") -> Sequence[tuple[str, Entry, Attr]]:
        return _BodyListing(self, self.obj.bodies(tree.core.view(self.node)), DirEntry.attr(self, tree))

    def describe(self) -> str:
        return f"{self.data}/labels"


class _BodyListing(Sequence):
    """Body directories made as they are read (the ids come from one keys-only scan)."""

    def __init__(self, labels_dir: LabelsDir, ids, attr: Attr):
        self.labels_dir, self.ids, self.attr = labels_dir, ids, attr

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        b = int(self.ids[i])
        return str(b), self.labels_dir.child(BodyDir, coord=b), self.attr


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

    def upload_limit(self, tree: "Tree") -> int:
        """A split's sparsevol has at most one run per voxel of the body (16 bytes
        a run after a 12-byte header): anything larger cannot be a valid split."""
        return 12 + 16 * self.obj.size(tree.core.view(self.node), self.coord)

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
        words = [w for w in re.split(r"[\s,]+", text) if w]
        ids = [parse_label_id(w) for w in words]
        if len(ids) < 2 or None in ids:
            raise InvalidInputError("write 'TARGET LABEL [LABEL…]' (decimal ids 1..2^64-1) to merge "
                                    "labels into TARGET")
        rec = self.obj.merge(self.node, ids[0], ids[1:])
        return f"merged {ids[1:]} into {ids[0]} (mutation {rec['MutationID']})"


class MutationsFile(Entry):
    def attr(self, tree: "Tree") -> Attr:
        return Attr("file", len(self.read(tree)), False, tree.mtime(self.node), self.locked)

    def read(self, tree: "Tree") -> bytes:
        recs = self.obj.mutations(tree.core.view(self.node))
        return "".join(json.dumps(r) + "\n" for r in recs).encode()
