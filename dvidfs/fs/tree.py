"""What the mount shows: paths -> entries -> data-type calls.  No FUSE here.

    /<repo>/                          repo directory (mkdir here creates a repo)
    /<repo>/<uuid>/                   every version node (a unique prefix also resolves)
    /<repo>/<branch>                  symlink to the branch's newest node ("master" too)
    /<repo>/<uuid>/.dvid/             control files of the node (CONTROL_FILES)
    /<repo>/<uuid>/<gray>/info.json, xy/ xz/ yz/<coord>.png
    /<repo>/<uuid>/<labels>/info.json, mutations.jsonl, merge
    /<repo>/<uuid>/<labels>/xy/<coord>.tif         exact uint64 ids (bodies)
    /<repo>/<uuid>/<labels>/xy-rgb/<coord>.png     a stable colour per body, for Fiji
    /<repo>/<uuid>/<labels>/labels/<id>/sparsevol, sparsevol-coarse, size,
                                        bbox.json, supervoxels, blocks.json, split

Every method here is synchronous and may touch LevelDB, so `fs/operations.py`
calls them from worker threads (`trio.to_thread`), never on the trio thread.
Entries are small immutable values: the same path always maps to an equal
`Entry`, which is what the inode table keys on.  `generation` (bumped by the
trio thread after each write through the mount) versions cached renderings.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

import numpy as np

from dvidfs.api import DvidStore
from dvidfs.data.geometry import PLANE_AXES, PLANES, plane_dims
from dvidfs.data.volume import BlockVolume
from dvidfs.errors import InvalidInputError, NotFoundError, ReadOnlyError
from dvidfs.formats.images import (decode_image, encode_png_stored, encode_pseudocolor_png,
                                   encode_tiff, png_size, tiff_size)
from dvidfs.data.readahead import ReadAhead
from dvidfs.store.cache import LRUCache
from dvidfs.versions.model import UUID_RE, Node

CTRL_DIR = ".dvid"
CONTROL_FILES = {
    "commit": "write a message: commit (lock) this node",
    "branch": "write a name: new child on a new branch; write an empty line: next version on this branch",
    "merge": "write node UUIDs (prefixes): new node merging this node and them",
    "newdata": "write 'grayscale NAME [BLOCKSIZE]' or 'labels NAME [BLOCKSIZE]': new data instance",
    "note": "read/write the node's note",
    "log": "read the node's log; each line written is appended",
    "info.json": "read: the node's info as JSON (DVID field names)",
    "last-error": "read: the last failed write under this node",
}
READ_ONLY_CONTROL = {"info.json", "last-error"}
SLICE_RE = re.compile(r"^(-?\d+)\.(png|tif|tiff)$")
SLICE_WIDTH = 5  # zero-padded so `ls` and Fiji sort non-negative coordinates numerically
RGB = "-rgb"
BODY_FILES = ("bbox.json", "blocks.json", "size", "sparsevol", "sparsevol-coarse", "split", "supervoxels")
LABEL_INST_FILES = ("info.json", "merge", "mutations.jsonl")
# Entries whose writes act at once (text commands) vs. when the file is closed (uploads)
WRITE_NOW = {("ctrlfile", n) for n in CONTROL_FILES} | {("instfile", "merge")}
WRITE_ON_CLOSE_KINDS = {"slice", "bodyfile"}


def slice_name(coord: int, ext: str) -> str:
    return f"{coord:0{SLICE_WIDTH}d}.{ext}"


def parse_slice_name(name: str) -> int | None:
    m = SLICE_RE.match(name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class Entry:
    kind: str     # root repo link node ctrl ctrlfile inst instfile plane slice labelsdir body bodyfile scratch
    repo: str = ""
    uuid: str = ""
    data: str = ""
    plane: str = ""   # "xy" .. or "xy-rgb" ..
    coord: int = 0    # slice coordinate, or body id
    name: str = ""    # link branch / control, instance or body file name / scratch name

    @property
    def is_dir(self) -> bool:
        return self.kind in ("root", "repo", "node", "ctrl", "inst", "plane", "labelsdir", "body")


ROOT = Entry("root")


@dataclass
class Attr:
    kind: str          # "dir" | "file" | "link"
    size: int
    writable: bool
    mtime: float
    immutable: bool    # content can never change: let the kernel cache it


class Tree:
    def __init__(self, store: DvidStore, cache_bytes: int = 256 << 20):
        self.store = store
        self.db = store.db
        self.started = time.time()
        self.cache = LRUCache(cache_bytes)
        self.readahead = ReadAhead()
        self.generation: dict[tuple[str, str], int] = {}   # (uuid, data) -> writes through the mount

    # ---------------------------------------------------------------- helpers
    def node_of(self, e: Entry) -> Node:
        n = self.db.nodes.get(e.uuid)
        if n is None:
            raise NotFoundError(f"no node {e.uuid}")
        return n

    def vol(self, e: Entry) -> BlockVolume:
        return self.store.data(self.node_of(e), e.data)

    def view(self, e: Entry):
        return self.db.view(self.node_of(e))

    def _repo(self, alias: str):
        for r in self.db.repos.values():
            if r.alias == alias:
                return r
        raise NotFoundError(f"no repo {alias!r}")

    def _is_labels(self, e: Entry) -> bool:
        return self.vol(e).typename == "labels"

    def _planes(self, e: Entry) -> tuple[str, ...]:
        return PLANES + tuple(p + RGB for p in PLANES) if self._is_labels(e) else PLANES

    def _slice_ext(self, e: Entry) -> str:
        return "tif" if self._is_labels(e) and not e.plane.endswith(RGB) else "png"

    def _child(self, e: Entry, kind: str, **kw) -> Entry:
        base = dict(repo=e.repo, uuid=e.uuid, data=e.data, plane=e.plane, coord=e.coord)
        base.update(kw)
        return Entry(kind, **base)

    # ---------------------------------------------------------------- lookup
    def lookup(self, parent: Entry, name: str) -> Entry:
        k = parent.kind
        if k == "root":
            self._repo(name)
            return Entry("repo", repo=name)
        if k == "repo":
            repo = self._repo(parent.repo)
            if UUID_RE.match(name) and name in self.db.nodes and self.db.nodes[name].repo == repo.root:
                return Entry("node", repo=parent.repo, uuid=name)
            if name in self.db.branches(repo):
                return Entry("link", repo=parent.repo, name=name)
            if re.fullmatch(r"[0-9a-f]{1,31}", name):  # a unique prefix is the node itself
                return Entry("node", repo=parent.repo, uuid=self.db.node(name, repo).uuid)
            raise NotFoundError(f"no node or branch {name!r} in repo {parent.repo!r}")
        if k == "node":
            if name == CTRL_DIR:
                return Entry("ctrl", repo=parent.repo, uuid=parent.uuid)
            if name in self.db.instances_at(self.node_of(parent)):
                return Entry("inst", repo=parent.repo, uuid=parent.uuid, data=name)
            raise NotFoundError(f"no data instance {name!r}")
        if k == "ctrl":
            if name in CONTROL_FILES:
                return self._child(parent, "ctrlfile", name=name)
            raise NotFoundError(f"no control file {name!r}")
        if k == "inst":
            for n, child in self._inst_children(parent):
                if n == name:
                    return child
            raise NotFoundError(f"no {name!r} in data instance {parent.data!r}")
        if k == "plane":
            coord = parse_slice_name(name)
            if coord is None or not self.slice_exists(parent, coord):
                raise NotFoundError(f"no slice {name!r}")
            return self._child(parent, "slice", coord=coord)
        if k == "labelsdir":
            if not name.isdigit() or (self.vol(parent).index(self.view(parent), int(name)) is None):
                raise NotFoundError(f"no label {name!r}")
            return self._child(parent, "body", coord=int(name))
        if k == "body":
            if name in BODY_FILES:
                return self._child(parent, "bodyfile", name=name)
            raise NotFoundError(f"no {name!r} for a label")
        raise NotFoundError(f"{name!r}: not a directory")

    def slice_exists(self, plane_entry: Entry, coord: int) -> bool:
        ext = self.vol(plane_entry).extents(self.view(plane_entry))
        if ext is None:
            return False
        fixed = PLANE_AXES[plane_entry.plane[:2]][0]
        return ext.lo[fixed] <= coord < ext.hi[fixed]

    # ---------------------------------------------------------------- listing
    def _inst_children(self, e: Entry) -> list[tuple[str, Entry]]:
        files = LABEL_INST_FILES if self._is_labels(e) else ("info.json",)
        out = [(f, self._child(e, "instfile", name=f)) for f in files]
        out += [(p, self._child(e, "plane", plane=p)) for p in self._planes(e)]
        if self._is_labels(e):
            out.append(("labels", self._child(e, "labelsdir")))
        return sorted(out, key=lambda t: t[0])

    def list(self, e: Entry) -> list[tuple[str, Entry, Attr]]:
        """Children with their attributes (readdirplus: no getattr storm)."""
        if e.kind == "plane":
            return self._list_slices(e)
        if e.kind == "labelsdir":
            node = self.node_of(e)
            a = Attr("dir", 0, not node.locked, self._mtime(node), node.locked)
            repo, uuid, data = e.repo, e.uuid, e.data
            return [(str(b), Entry("body", repo, uuid, data, "", b, ""), a)
                    for b in self.vol(e).bodies(self.view(e)).tolist()]
        if e.kind == "root":
            out = [(r.alias, Entry("repo", repo=r.alias)) for r in self.db.repos.values()]
        elif e.kind == "repo":
            repo = self._repo(e.repo)
            out = [(n.uuid, Entry("node", repo=e.repo, uuid=n.uuid)) for n in self.db.repo_nodes(repo)]
            out += [(b, Entry("link", repo=e.repo, name=b)) for b in self.db.branches(repo)]
        elif e.kind == "node":
            out = [(CTRL_DIR, Entry("ctrl", repo=e.repo, uuid=e.uuid))]
            out += [(name, Entry("inst", repo=e.repo, uuid=e.uuid, data=name))
                    for name in self.db.instances_at(self.node_of(e))]
        elif e.kind == "ctrl":
            out = [(n, self._child(e, "ctrlfile", name=n)) for n in CONTROL_FILES]
        elif e.kind == "inst":
            out = self._inst_children(e)
        elif e.kind == "body":
            out = [(n, self._child(e, "bodyfile", name=n)) for n in BODY_FILES]
        else:
            raise NotFoundError("not a directory")
        out.sort(key=lambda t: t[0])
        return [(name, child, self.attr(child)) for name, child in out]

    def _list_slices(self, e: Entry) -> list[tuple[str, Entry, Attr]]:
        node = self.node_of(e)
        ext = self.vol(e).extents(self.view(e))
        if ext is None:
            return []
        fixed = PLANE_AXES[e.plane[:2]][0]
        attr = Attr("file", self._slice_size(e, ext), not node.locked and not e.plane.endswith(RGB),
                    self._mtime(node), node.locked)
        suffix = self._slice_ext(e)
        # Coordinate order (not name order): `ls -U`, `find`, os.listdir and
        # Fiji's virtual stack see slices in order even where names are negative.
        return [(slice_name(c, suffix), self._child(e, "slice", coord=c), attr)
                for c in range(ext.lo[fixed], ext.hi[fixed])]

    def _slice_size(self, e: Entry, ext) -> int:
        w, h = plane_dims(ext, e.plane[:2])
        if not self._is_labels(e):
            return png_size(w, h)
        return png_size(w, h, 3) if e.plane.endswith(RGB) else tiff_size(w, h, np.uint64)

    # ---------------------------------------------------------------- attributes
    def _mtime(self, node: Node) -> float:
        return node.updated if node.locked else max(node.updated, self.started)

    def attr(self, e: Entry) -> Attr:
        k = e.kind
        if k == "root":
            return Attr("dir", 0, True, self.started, False)
        if k == "repo":
            return Attr("dir", 0, True, self._repo(e.repo).updated, False)
        if k == "link":
            return Attr("link", len(self.readlink(e)), False, self.started, False)
        node = self.node_of(e)
        locked, mtime = node.locked, self._mtime(node)
        if k in ("node", "inst", "plane", "labelsdir", "body"):
            if k == "body":
                self.vol(e).require_index(self.view(e), e.coord)
            elif k != "node":
                self.vol(e)  # raises if the instance is not visible here
            return Attr("dir", 0, not locked, mtime, locked)
        if k == "ctrl":
            return Attr("dir", 0, True, node.updated, False)
        if k == "ctrlfile":
            return Attr("file", len(self.read(e)), e.name not in READ_ONLY_CONTROL, node.updated, False)
        if k == "instfile":
            if e.name == "merge":
                return Attr("file", 0, not locked, mtime, locked)
            return Attr("file", len(self.read(e)), False, mtime, locked)
        if k == "bodyfile":
            if e.name == "split":
                return Attr("file", 0, not locked, mtime, locked)
            return Attr("file", len(self.read(e)), False, mtime, locked)
        if k == "slice":
            ext = self.vol(e).extents(self.view(e))
            if ext is None:
                raise NotFoundError("empty volume")
            return Attr("file", self._slice_size(e, ext), not locked and not e.plane.endswith(RGB),
                        mtime, locked)
        raise NotFoundError(f"unknown entry {e}")

    def readlink(self, e: Entry) -> str:
        return self.db.branch_tip(self._repo(e.repo), e.name).uuid

    # ---------------------------------------------------------------- reading
    def read(self, e: Entry, keep: bool = True) -> bytes:
        """Whole content of a file entry (rendered data cached per write
        generation; `keep=False` uses the cache but does not add to it)."""
        if e.kind in ("slice", "bodyfile"):
            key = (e, self.generation.get((e.uuid, e.data), 0))
            data = self.cache.get(key)
            if data is None:
                data = self._render(e)
                if keep:
                    self.cache.put(key, data)
            return data
        if e.kind == "instfile":
            view = self.view(e)
            if e.name == "info.json":
                return _json(self.vol(e).info(view))
            if e.name == "mutations.jsonl":
                return "".join(json.dumps(r) + "\n" for r in self.vol(e).mutations(view)).encode()
            return b""
        if e.kind == "ctrlfile":
            node = self.node_of(e)
            if e.name == "info.json":
                info = node.info()
                info["Repo"] = e.repo
                info["DataInstances"] = {k: v.typename for k, v in self.db.instances_at(node).items()}
                return _json(info)
            if e.name == "log":
                return "".join(line + "\n" for line in node.log).encode()
            if e.name == "note":
                return (node.note + "\n").encode() if node.note else b""
            return b""  # write-only control files; last-error is served by operations
        raise NotFoundError("not a file")

    def _render(self, e: Entry) -> bytes:
        vol, view = self.vol(e), self.view(e)
        if e.kind == "slice":
            img = self.readahead.read_slice(vol, view, e.plane[:2], e.coord)
            if not self._is_labels(e):
                return encode_png_stored(img)
            return encode_pseudocolor_png(img) if e.plane.endswith(RGB) else encode_tiff(img)
        body, name = e.coord, e.name
        if name == "sparsevol":
            return vol.sparsevol(view, body)
        if name == "sparsevol-coarse":
            return vol.sparsevol_coarse(view, body)
        if name == "size":
            return f"{vol.size(view, body)}\n".encode()
        if name == "bbox.json":
            lo, hi = vol.bbox(view, body)
            return _json({"MinPoint": list(lo), "MaxPoint": list(hi)})
        if name == "blocks.json":
            return _json([list(c) for c in vol.block_coords(view, body)])
        if name == "supervoxels":
            return "".join(f"{s}\n" for s in vol.supervoxels(view, body)).encode()
        return b""  # split is write-only

    # ---------------------------------------------------------------- writing
    def upload(self, e: Entry, data: bytes) -> str:
        """Store a file written through the mount when it is closed: a slice image
        or a split sparsevol.  All-or-nothing; returns what happened."""
        node = self.node_of(e)
        if node.locked:
            raise ReadOnlyError(f"node {node.uuid} is committed (read-only)")
        vol = self.vol(e)
        if e.kind == "bodyfile" and e.name == "split":
            rec = vol.split(node, e.coord, bytes(data))
            return f"split {e.coord}: new label {rec['NewLabel']}"
        if e.kind != "slice":
            raise InvalidInputError("this file is read-only")
        if e.plane.endswith(RGB):
            raise InvalidInputError(f"{e.plane} shows colours; write uint64 TIFF slices to {e.plane[:2]}/ instead")
        img = decode_image(bytes(data), vol.dtype)
        vol.write_slice(node, e.plane[:2], e.coord, img)
        return f"wrote {e.plane} slice {e.coord}"

    def control(self, e: Entry, text: str) -> str:
        """Run a text command written to a control file; returns what happened."""
        node = self.node_of(e)
        text = text.strip()
        if e.kind == "instfile" and e.name == "merge":
            ids = re.split(r"[\s,]+", text)
            if len(ids) < 2 or not all(i.isdigit() for i in ids):
                raise InvalidInputError("write 'TARGET LABEL [LABEL…]' (decimal ids) to merge labels into TARGET")
            rec = self.vol(e).merge(node, int(ids[0]), [int(i) for i in ids[1:]])
            return f"merged {ids[1:]} into {ids[0]} (mutation {rec['MutationID']})"
        name = e.name
        if name in READ_ONLY_CONTROL:
            raise InvalidInputError(f"{CTRL_DIR}/{name} is read-only")
        if name == "commit":
            self.db.commit(node, text)
            return f"committed {node.uuid}"
        if name == "branch":
            child = self.db.branch(node, text or None)
            return f"created node {child.uuid} on branch {child.branch_name}"
        if name == "merge":
            refs = [r for r in re.split(r"[\s,]+", text) if r]
            if not refs:
                raise InvalidInputError("write the UUIDs of the nodes to merge with this one")
            repo = self.db.repos[node.repo]
            others = [self.db.node(r, repo) for r in refs]
            names = {i.id: i.name for i in repo.instances.values()}
            child = self.db.merge([node] + others, f"merge of {node.uuid[:8]} and "
                                  + ", ".join(o.uuid[:8] for o in others), instance_names=names)
            return f"created merge node {child.uuid}"
        if name == "newdata":
            parts = text.split()
            if len(parts) not in (2, 3):
                raise InvalidInputError("write 'TYPE NAME [BLOCKSIZE]', e.g. 'grayscale em' or 'labels seg'")
            try:
                bs = int(parts[2]) if len(parts) == 3 else None
            except ValueError:
                raise InvalidInputError(f"block size {parts[2]!r} is not a number") from None
            self.store.new_instance(node, parts[1], parts[0], block_size=bs)
            return f"created {parts[0]} instance {parts[1]}"
        if name == "note":
            self.db.set_note(node, text)
            return "note set"
        if name == "log":
            self.db.append_log(node, text.splitlines())
            return "log appended"
        raise NotFoundError(f"no control file {name!r}")

    def mkdir(self, parent: Entry, name: str) -> Entry:
        if parent.kind == "root":
            self.db.new_repo(name)
            return Entry("repo", repo=name)
        if parent.kind == "node":
            self.store.new_instance(self.node_of(parent), name, "grayscale")
            return Entry("inst", repo=parent.repo, uuid=parent.uuid, data=name)
        if parent.uuid and self.node_of(parent).locked:
            raise ReadOnlyError("cannot create directories in a committed node")
        raise InvalidInputError("directories can be made at the top (a repo) or in a node (a grayscale instance)")


def _json(obj) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()
