"""What the mount shows: paths -> entries -> core calls.  No FUSE here.

    /<repo>/<uuid>/.dvid/…            repos, nodes, control files   (fs/nodes.py)
    /<repo>/<uuid>/<inst>/info.json   every instance                (fs/instances.py)
    /<repo>/<uuid>/<inst>/xy/<z>.png  volumes' slices               (fs/volumes.py)
    /<repo>/<uuid>/<labels>/labels/<id>/sparsevol …   label bodies  (fs/bodies.py)

`Tree` is the adapter's state shared by every entry: the core, the cache of
rendered files, and per-version extents.  Each request is answered by the
entry itself (dispatch by type); `Tree` adds what is common: the render
cache, the "committed nodes are read-only" rule, and modification times.

Every method here is synchronous and may touch the store, so
`fs/operations.py` calls them from worker threads (or inline where measured
cheap), never holding trio state.  Rendered files are cached under the core's
write generation of their (node, instance), read before rendering: a write
through any front end makes older renderings unreachable.
"""
from __future__ import annotations

import threading
import time

from dvidfs.core import Dvid
from dvidfs.errors import ReadOnlyError
from dvidfs.fs.entry import Attr, Entry
from dvidfs.geometry import Box
from dvidfs.store.cache import LRUCache
from dvidfs.versions.model import Node


class Tree:
    def __init__(self, core: Dvid, cache_bytes: int | None = None):
        self.core = core
        self.started = time.time()
        self.cache = LRUCache(core.config.render_cache if cache_bytes is None else cache_bytes)
        # (instance id, version) -> (write generation, extents): a stat or a
        # listing of a slice directory reads the extents once per write
        self._extents: dict[tuple[int, int, int], tuple[int, Box | None]] = {}
        self._extents_lock = threading.Lock()

    # ------------------------------------------------------------ shared helpers
    def mtime(self, node: Node) -> float:
        return node.updated if node.locked else max(node.updated, self.started)

    def extents(self, e: Entry) -> Box | None:
        """Extents of e's instance at e's node, remembered per write generation."""
        key = (e.obj.inst.id, e.node.version_id, getattr(e.obj, "scale", 0))  # level views: their own
        gen = self.core.generation(e.node, e.obj)
        known = self._extents.get(key)
        if known is not None and known[0] == gen:
            return known[1]
        ext = e.obj.extents(self.core.view(e.node))
        with self._extents_lock:
            self._extents[key] = (gen, ext)
        return ext

    # ------------------------------------------------------------ requests
    def lookup(self, parent: Entry, name: str) -> Entry:
        return parent.lookup(self, name)

    def list(self, e: Entry) -> list[tuple[str, Entry, Attr]]:
        """Children with their attributes (readdirplus: no getattr storm)."""
        return e.list(self)

    def attr(self, e: Entry) -> Attr:
        return e.attr(self)

    def readlink(self, e: Entry) -> str:
        return e.readlink(self)

    def read(self, e: Entry, keep: bool = True) -> bytes:
        """Whole content of a file entry.  Rendered data is cached per write
        generation (`keep=False` uses the cache but does not add to it)."""
        if not e.rendered:
            return e.read(self)
        key = (e, self.core.generation(e.node, e.obj))
        data = self.cache.get(key)
        if data is None:
            data = e.read(self)
            if keep:
                self.cache.put(key, data)
        return data

    def upload(self, e: Entry, data: bytes) -> str:
        """Store a file written through the mount when it is closed (a slice
        image, a split sparsevol).  All-or-nothing; returns what happened."""
        if e.locked:
            raise ReadOnlyError(f"node {e.uuid} is committed (read-only)")
        return e.upload(self, data)

    def upload_limit(self, e: Entry) -> int:
        return e.upload_limit(self)

    def open_stream(self, e: Entry):
        """A streamed file opened for reading (see `Entry.open_stream`)."""
        return e.open_stream(self)

    # files stored in a directory that accepts them (keys): each call is one atomic change
    def new_file(self, parent: Entry, name: str) -> Entry:
        if parent.locked:
            raise ReadOnlyError(f"node {parent.uuid} is committed (read-only)")
        return parent.new_file(self, name)

    def rename_file(self, parent: Entry, old: str, new: str, replace: bool = True) -> Entry:
        if parent.locked:
            raise ReadOnlyError(f"node {parent.uuid} is committed (read-only)")
        return parent.rename_file(self, old, new, replace)

    def remove_file(self, parent: Entry, name: str) -> None:
        if parent.locked:
            raise ReadOnlyError(f"node {parent.uuid} is committed (read-only)")
        parent.remove_file(self, name)

    def truncate(self, e: Entry, size: int) -> None:
        if e.locked:
            raise ReadOnlyError(f"node {e.uuid} is committed (read-only)")
        e.truncate(self, size)

    def control(self, e: Entry, text: str) -> str:
        """Run a text command written to a control file; returns what happened."""
        return e.control(self, text.strip())

    def mkdir(self, parent: Entry, name: str) -> Entry:
        return parent.mkdir(self, name)
