"""What the mount shows: paths -> entries -> data-type calls.  No FUSE here.

    /<repo>/                          repo directory (mkdir here creates a repo)
    /<repo>/<uuid>/                   every version node (a unique prefix also resolves)
    /<repo>/<branch>                  symlink to the branch's newest node ("master" too)
    /<repo>/<uuid>/.dvid/             control files of the node (see CONTROL_FILES)
    /<repo>/<uuid>/<data>/info.json   instance metadata
    /<repo>/<uuid>/<data>/{xy,xz,yz}/<coord>.png   slices across the extents

Every method here is synchronous and may touch LevelDB, so `fs/operations.py`
calls them from worker threads (`trio.to_thread`), never on the trio thread.
Entries are small immutable values: the same path always maps to an equal
`Entry`, which is what the inode table keys on.
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
from dvidfs.formats.images import decode_image, encode_png_stored, png_size
from dvidfs.versions.model import UUID_RE, Node

CTRL_DIR = ".dvid"
# name -> (writable, help shown in docs)
CONTROL_FILES = {
    "commit": "write a message: commit (lock) this node",
    "branch": "write a name: new child on a new branch; write nothing/newline: next version on this branch",
    "merge": "write node UUIDs (prefixes): new node merging this node and them",
    "newdata": "write 'grayscale NAME [BLOCKSIZE]' or 'labels NAME': new data instance",
    "note": "read/write the node's note",
    "log": "read the node's log; each line written is appended",
    "info.json": "read: the node's info as JSON (DVID field names)",
    "last-error": "read: the last failed control or slice write under this node",
}
READ_ONLY_CONTROL = {"info.json", "last-error"}
SLICE_RE = re.compile(r"^(-?\d+)\.(png|tif|tiff)$")
SLICE_WIDTH = 5  # zero-padded so `ls` and Fiji sort non-negative coordinates numerically


def slice_name(coord: int) -> str:
    return f"{coord:0{SLICE_WIDTH}d}.png"


@dataclass(frozen=True)
class Entry:
    kind: str                 # root repo link node ctrl ctrlfile inst instinfo plane slice scratch
    repo: str = ""            # repo alias
    uuid: str = ""
    data: str = ""
    plane: str = ""
    coord: int = 0
    name: str = ""            # link branch / control file / scratch file name

    @property
    def is_dir(self) -> bool:
        return self.kind in ("root", "repo", "node", "ctrl", "inst", "plane")


ROOT = Entry("root")


@dataclass
class Attr:
    kind: str                 # "dir" | "file" | "link"
    size: int
    writable: bool
    mtime: float
    immutable: bool           # content can never change: cache it in the kernel


class Tree:
    def __init__(self, store: DvidStore):
        self.store = store
        self.db = store.db
        self.started = time.time()

    # ---------------------------------------------------------------- helpers
    def node_of(self, e: Entry) -> Node:
        n = self.db.nodes.get(e.uuid)
        if n is None:
            raise NotFoundError(f"no node {e.uuid}")
        return n

    def vol(self, e: Entry) -> BlockVolume:
        return self.store.data(self.node_of(e), e.data)

    def _repo(self, alias: str):
        for r in self.db.repos.values():
            if r.alias == alias:
                return r
        raise NotFoundError(f"no repo {alias!r}")

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
            if re.fullmatch(r"[0-9a-f]{1,31}", name):  # unique prefix -> the node itself
                n = self.db.node(name, repo)
                return Entry("node", repo=parent.repo, uuid=n.uuid)
            raise NotFoundError(f"no node or branch {name!r} in repo {parent.repo!r}")
        if k == "node":
            if name == CTRL_DIR:
                return Entry("ctrl", repo=parent.repo, uuid=parent.uuid)
            if name in self.db.instances_at(self.node_of(parent)):
                return Entry("inst", repo=parent.repo, uuid=parent.uuid, data=name)
            raise NotFoundError(f"no data instance {name!r}")
        if k == "ctrl":
            if name in CONTROL_FILES:
                return Entry("ctrlfile", repo=parent.repo, uuid=parent.uuid, name=name)
            raise NotFoundError(f"no control file {name!r}")
        if k == "inst":
            if name == "info.json":
                return Entry("instinfo", repo=parent.repo, uuid=parent.uuid, data=parent.data)
            if name in PLANES:
                return Entry("plane", repo=parent.repo, uuid=parent.uuid, data=parent.data, plane=name)
            raise NotFoundError(f"no {name!r} in a data instance")
        if k == "plane":
            coord = parse_slice_name(name)
            if coord is None or not self.slice_exists(parent, coord):
                raise NotFoundError(f"no slice {name!r}")
            return Entry("slice", repo=parent.repo, uuid=parent.uuid, data=parent.data,
                         plane=parent.plane, coord=coord)
        raise NotFoundError(f"{name!r}: not a directory")

    def slice_exists(self, plane_entry: Entry, coord: int) -> bool:
        ext = self.vol(plane_entry).extents(self.db.view(self.node_of(plane_entry)))
        if ext is None:
            return False
        fixed = PLANE_AXES[plane_entry.plane][0]
        return ext.lo[fixed] <= coord < ext.hi[fixed]

    # ---------------------------------------------------------------- listing
    def list(self, e: Entry) -> list[tuple[str, Entry, Attr]]:
        """Children with their attributes (readdirplus: no getattr storm), sorted by name."""
        out: list[tuple[str, Entry]] = []
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
            out = [(n, Entry("ctrlfile", repo=e.repo, uuid=e.uuid, name=n)) for n in CONTROL_FILES]
        elif e.kind == "inst":
            out = [("info.json", Entry("instinfo", repo=e.repo, uuid=e.uuid, data=e.data))]
            out += [(p, Entry("plane", repo=e.repo, uuid=e.uuid, data=e.data, plane=p)) for p in PLANES]
        elif e.kind == "plane":
            return self._list_slices(e)
        else:
            raise NotFoundError("not a directory")
        out.sort(key=lambda t: t[0])
        return [(name, child, self.attr(child)) for name, child in out]

    def _list_slices(self, e: Entry) -> list[tuple[str, Entry, Attr]]:
        node = self.node_of(e)
        vol = self.vol(e)
        ext = vol.extents(self.db.view(node))
        if ext is None:
            return []
        fixed = PLANE_AXES[e.plane][0]
        w, h = plane_dims(ext, e.plane)
        attr = Attr("file", png_size(w, h), not node.locked, self._mtime(node), node.locked)
        # Coordinate order (not name order): `ls -U`, `find`, os.listdir and
        # Fiji's virtual stack see slices in z order even where names are negative.
        return [(slice_name(c), Entry("slice", repo=e.repo, uuid=e.uuid, data=e.data,
                                      plane=e.plane, coord=c), attr)
                for c in range(ext.lo[fixed], ext.hi[fixed])]

    # ---------------------------------------------------------------- attributes
    def _mtime(self, node: Node) -> float:
        return node.updated if node.locked else max(node.updated, self.started)

    def attr(self, e: Entry) -> Attr:
        k = e.kind
        if k == "root":
            return Attr("dir", 0, True, self.started, False)
        if k == "repo":
            r = self._repo(e.repo)
            return Attr("dir", 0, True, r.updated, False)
        if k == "link":
            return Attr("link", len(self.readlink(e)), False, self.started, False)
        node = self.node_of(e)
        locked = node.locked
        mtime = self._mtime(node)
        if k in ("node", "inst", "plane"):
            if k != "node":
                self.vol(e)  # raises if the instance vanished
            return Attr("dir", 0, not locked, mtime, locked)
        if k == "ctrl":
            return Attr("dir", 0, True, node.updated, False)
        if k == "ctrlfile":
            return Attr("file", len(self.read(e)), e.name not in READ_ONLY_CONTROL, node.updated, False)
        if k == "instinfo":
            return Attr("file", len(self.read(e)), False, mtime, locked)
        if k == "slice":
            vol = self.vol(e)
            ext = vol.extents(self.db.view(node))
            if ext is None:
                raise NotFoundError("empty volume")
            w, h = plane_dims(ext, e.plane)
            return Attr("file", png_size(w, h), not locked, mtime, locked)
        raise NotFoundError(f"unknown entry {e}")

    def readlink(self, e: Entry) -> str:
        return self.db.branch_tip(self._repo(e.repo), e.name).uuid

    # ---------------------------------------------------------------- reading
    def read(self, e: Entry) -> bytes:
        """Whole content of a file entry."""
        if e.kind == "slice":
            node = self.node_of(e)
            img = self.vol(e).read_slice(self.db.view(node), e.plane, e.coord)
            return encode_png_stored(img)
        if e.kind == "instinfo":
            node = self.node_of(e)
            return (json.dumps(self.vol(e).info(self.db.view(node)), indent=2) + "\n").encode()
        if e.kind == "ctrlfile":
            node = self.node_of(e)
            if e.name == "info.json":
                info = node.info()
                info["Repo"] = e.repo
                info["DataInstances"] = {k: v.typename for k, v in self.db.instances_at(node).items()}
                return (json.dumps(info, indent=2) + "\n").encode()
            if e.name == "log":
                return "".join(line + "\n" for line in node.log).encode()
            if e.name == "note":
                return (node.note + "\n").encode() if node.note else b""
            return b""  # write-only control files; last-error is served by operations
        raise NotFoundError("not a file")

    # ---------------------------------------------------------------- writing
    def write_slice(self, e: Entry, data: bytes) -> None:
        """Decode an uploaded PNG/TIFF and store it as slice `e` (all-or-nothing)."""
        node = self.node_of(e)
        if node.locked:
            raise ReadOnlyError(f"node {node.uuid} is committed (read-only)")
        vol = self.vol(e)
        img = decode_image(bytes(data), vol.dtype)
        vol.write_slice(node, e.plane, e.coord, img)

    def control(self, e: Entry, text: str) -> str:
        """Run a control-file command; returns a short description of what happened."""
        node = self.node_of(e)
        text = text.strip()
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
            node = self.node_of(parent)
            self.store.new_instance(node, name, "grayscale")
            return Entry("inst", repo=parent.repo, uuid=parent.uuid, data=name)
        raise ReadOnlyError(f"cannot create directories here") if self._locked(parent) else \
            InvalidInputError("directories can only be made at the top (a repo) or in a node (a grayscale instance)")

    def _locked(self, e: Entry) -> bool:
        return bool(e.uuid) and self.node_of(e).locked


def parse_slice_name(name: str) -> int | None:
    m = SLICE_RE.match(name)
    return int(m.group(1)) if m else None
