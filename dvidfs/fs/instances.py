"""A data instance's directory: `info.json`, plus what its type offers.

The one dispatch table of the mount: a data type declares what it offers
(`DataType.offers`), and `OFFER_VIEWS` maps each offer to the files that show
it.  A new type with a new offer is one module of entries and one line here;
a type with no view yet still gets its directory and `info.json`.  An offer
whose files *are* the instance directory (keyvalue's keys: any name may be a
key, so there is no room for `info.json`) names that directory's class in
`OFFER_DIRS` instead.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from dvidfs.errors import NotFoundError
from dvidfs.fs.annotation import annotation_children
from dvidfs.fs.bodies import body_children
from dvidfs.fs.entry import Attr, DirEntry, Entry, as_json
from dvidfs.fs.keyvalue import KeyValueDir
from dvidfs.fs.roi import roi_children
from dvidfs.fs.volumes import volume_children

if TYPE_CHECKING:
    from dvidfs.fs.tree import Tree

OFFER_VIEWS: dict[str, Callable[[Entry, "Tree"], list[tuple[str, Entry]]]] = {
    "volume": volume_children,
    "bodies": body_children,
    "roi": roi_children,
    "annotation": annotation_children,
}
OFFER_DIRS: dict[str, type[DirEntry]] = {"keys": KeyValueDir}


def instance_entry(tree: "Tree", node_dir: Entry, name: str) -> DirEntry:
    obj = tree.core.data(node_dir.node, name)
    cls = next((OFFER_DIRS[o] for o in sorted(obj.offers) if o in OFFER_DIRS), InstanceDir)
    return node_dir.child(cls, data=name, obj=obj)


class InstanceDir(DirEntry):
    def children(self, tree: "Tree") -> list[tuple[str, Entry]]:
        out: list[tuple[str, Entry]] = [("info.json", self.child(InfoFile, name="info.json"))]
        for offer in sorted(self.obj.offers):
            view = OFFER_VIEWS.get(offer)
            if view is not None:
                out += view(self, tree)
        return out

    def lookup(self, tree: "Tree", name: str) -> Entry:
        for n, child in self.children(tree):
            if n == name:
                return child
        raise NotFoundError(f"no {name!r} in data instance {self.data!r}")


class InfoFile(Entry):
    def attr(self, tree: "Tree") -> Attr:
        return Attr("file", len(self.read(tree)), False, tree.mtime(self.node), self.locked)

    def read(self, tree: "Tree") -> bytes:
        return as_json(self.obj.info(tree.core.view(self.node)))
