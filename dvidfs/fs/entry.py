"""What every path of the mount is: an `Entry`, and its attributes.

An entry is a small immutable value naming a path (repo name, node UUID,
instance, plane, coordinate or body id, file name) plus the objects that path
resolved to when it was looked up (the `Node`, the data-type object), so no
later request resolves them again.  Equality and hashing use the path fields
and the entry's class only, so the same path always maps to an equal entry:
the inode table keys on that.  The resolved objects stay current: nodes and
data-type objects are the core's own, updated in place (a commit locks the
same `Node`).

Each kind of path is a subclass that answers for itself (`lookup`,
`children`, `attr`, `read`, `control`, `upload`): the filesystem dispatches on
the entry's type, never on strings.  The kinds live beside the data they
show: `fs/nodes.py` (repos, nodes, control files), `fs/volumes.py`
(instances, slices), `fs/bodies.py` (label bodies).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from dvidfs.errors import InvalidInputError, NotFoundError, ReadOnlyError
from dvidfs.versions.model import Node

if TYPE_CHECKING:  # only for annotations: the tree is the adapter above the entries
    from dvidfs.data.types import DataType
    from dvidfs.fs.tree import Tree

# How a file takes writes: at each write() (text commands: the writer gets the
# errno of `echo … > commit` directly), or when closed (uploads: a slice image,
# a split sparsevol, all-or-nothing at close()).
NOW, ON_CLOSE = "now", "close"


@dataclass
class Attr:
    kind: str          # "dir" | "file" | "link"
    size: int
    writable: bool
    mtime: float
    immutable: bool    # content can never change: let the kernel cache it


@dataclass(frozen=True)
class Entry:
    repo: str = ""     # repo name
    uuid: str = ""     # node UUID
    data: str = ""     # instance name
    plane: str = ""    # "xy" .. or "xy-rgb" ..
    coord: int = 0     # slice coordinate, or body id
    name: str = ""     # branch, control or body file name
    scale: int = 0     # pyramid level of a volume's slices and precomputed chunks
    node: Node | None = field(default=None, compare=False, repr=False)
    obj: "DataType | None" = field(default=None, compare=False, repr=False)

    is_dir: ClassVar[bool] = False
    write_mode: ClassVar[str | None] = None
    rendered: ClassVar[bool] = False        # content comes from data: render cache, lazy in committed nodes
    accepts_temp_files: ClassVar[bool] = False  # rsync/editor temp files may be created here
    can_vanish: ClassVar[bool] = False      # may stop existing (merged bodies): names get invalidated
    node_level: ClassVar[bool] = False      # changes with commands on other nodes of the repo
    slow_attr: ClassVar[bool] = False       # its size needs real work: stat it in a worker thread
    starts_with_content: ClassVar[bool] = False  # opened for writing without O_TRUNC: holds its content
    read_only: ClassVar[bool] = False       # a NOW file that takes no writes (info.json, last-error)
    multiline: ClassVar[bool] = False       # a NOW file whose text acts at close, not at each newline
    is_last_error: ClassVar[bool] = False   # served by the operations layer, which keeps the messages
    volatile_in_listing: ClassVar[bool] = False  # a listing cannot give its size: the kernel must ask (lookup)
    accepts_files: ClassVar[bool] = False   # a directory of stored files (keys): create, rename, unlink
    streamed: ClassVar[bool] = False        # read in pieces through `open_stream`, never whole
    stores_bytes: ClassVar[bool] = False    # the file is its bytes (keys): `truncate`, `> f` and an
                                            # empty create store what they leave, 0 bytes too

    # ------------------------------------------------------------ building
    def child(self, cls: type["Entry"], **changes) -> "Entry":
        """An entry of kind `cls` below this one (inherits path and resolved objects)."""
        base = {f: getattr(self, f) for f in ("repo", "uuid", "data", "plane", "coord", "scale", "node", "obj")}
        base.update(changes)
        return cls(**base)

    @property
    def settable_when_locked(self) -> bool:
        """setattr (truncate, times) is accepted in committed nodes: command files."""
        return self.write_mode == NOW

    @property
    def locked(self) -> bool:
        return bool(self.node is not None and self.node.locked)

    # ------------------------------------------------------------ what a kind answers
    def lookup(self, tree: "Tree", name: str) -> "Entry":
        raise NotFoundError(f"{name!r}: not a directory")

    def children(self, tree: "Tree") -> list[tuple[str, "Entry"]]:
        raise NotFoundError("not a directory")

    def list(self, tree: "Tree") -> list[tuple[str, "Entry", Attr]]:
        """Children with their attributes (readdirplus: no getattr storm)."""
        out = sorted(self.children(tree), key=lambda t: t[0])
        return [(name, c, c.attr(tree)) for name, c in out]

    def attr(self, tree: "Tree") -> Attr:
        raise NotFoundError(f"no attributes for {self.describe() or 'this entry'}")

    def read(self, tree: "Tree") -> bytes:
        raise NotFoundError("not a file")

    def readlink(self, tree: "Tree") -> str:
        raise InvalidInputError("not a symbolic link")

    def control(self, tree: "Tree", text: str) -> str:
        """A text command written to a NOW file; returns what happened."""
        raise InvalidInputError("this file is read-only")

    def upload(self, tree: "Tree", data: bytes) -> str:
        """Content written to an ON_CLOSE file, at close; all-or-nothing."""
        raise InvalidInputError("this file is read-only")

    def upload_limit(self, tree: "Tree") -> int:
        """The most bytes an ON_CLOSE file may be given (EFBIG beyond): known
        before anything is buffered."""
        return 0

    def truncate(self, tree: "Tree", size: int) -> None:
        """`truncate` of a path no one has open for writing (`stores_bytes` files)."""
        raise InvalidInputError("this file cannot be truncated")

    def open_stream(self, tree: "Tree"):
        """A `streamed` file opened for reading: an object with `size`,
        `read(offset, n)`, `in_memory` and `close()`."""
        raise NotFoundError("not a file")

    # directories that accept files (`accepts_files`): names map to entries one to one
    def new_file(self, tree: "Tree", name: str) -> "Entry":
        """The entry a file created as `name` will be (InvalidInputError: not a valid name)."""
        raise InvalidInputError("files cannot be created here")

    def rename_file(self, tree: "Tree", old: str, new: str, replace: bool) -> "Entry":
        """Rename a stored file in this directory; returns the new entry."""
        raise InvalidInputError("files cannot be renamed here")

    def remove_file(self, tree: "Tree", name: str) -> None:
        raise InvalidInputError("files cannot be removed here")

    def mkdir(self, tree: "Tree", name: str) -> "Entry":
        if self.locked:
            raise ReadOnlyError("cannot create directories in a committed node")
        raise InvalidInputError("directories can be made at the top (a repo) or in a node (a grayscale instance)")

    def describe(self) -> str:
        """The path below the node, for error messages."""
        return "/".join(p for p in (self.data, f"s{self.scale}" if self.scale else "", self.plane, self.name) if p)


class EditableFile(Entry):
    """A rendered file that open nodes take whole, at close (spans.json,
    elements.jsonl): it shows the stored state, an editor opening it without
    O_TRUNC starts from that content, and what is written is handed to
    `upload` all or nothing.  Subclasses give `read`, `upload` and `max_upload`."""

    rendered = True
    starts_with_content = True
    max_upload: ClassVar[int] = 0

    @property
    def write_mode(self) -> str | None:  # type: ignore[override]
        return ON_CLOSE

    def attr(self, tree: "Tree") -> Attr:
        return Attr("file", len(tree.read(self)), not self.locked, tree.mtime(self.node), self.locked)

    def upload_limit(self, tree: "Tree") -> int:
        return self.max_upload


class DirEntry(Entry):
    is_dir = True

    def attr(self, tree: "Tree") -> Attr:
        return Attr("dir", 0, not self.locked, tree.mtime(self.node), self.locked)


def as_json(obj) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()
