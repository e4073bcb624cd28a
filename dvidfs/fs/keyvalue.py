"""keyvalue instances as directories of plain files, one per key (DVID's first FUSE mount did this).

    <kv>/<key>          the value, byte for byte; `ls -l` shows exact sizes

The instance directory holds the keys and nothing else (no `info.json`: a key
may be called that; the instance's info is `GET …/<kv>/info` over HTTP and in
the node's `.dvid/info.json` list of instances).

Names.  A key is its own file name, except where the kernel cannot show it:
  * the keys "." and ".." are the files "%." and "%..";
  * a key starting with "%" is shown with one more "%" in front ("%x" -> "%%x");
  * any other name starting with "%" stands for no key: creating it is EINVAL.
So every name stands for exactly one key and back (`key_of_name`,
`name_of_key`).  Bytes that are not UTF-8 are kept as they are.  Keys whose
name would be longer than 255 bytes (NAME_MAX; keys may have 1024) are not
shown: reach them over HTTP.  Keys never contain "/" or NUL (data/keyvalue.py).

Writes (open nodes; committed ones are EROFS):
  * a file created or opened for writing is buffered (at most MAX_VALUE bytes,
    EFBIG beyond) and stored at close, all or nothing: `cp`, `tar -x`, `>`;
    a file created and closed empty is an empty value (`touch`);
  * `mv a b` in the directory is one atomic change of the store (a large
    value's chunks are not copied), so rsync's temporary file + rename works;
    `mv` to another directory is EXDEV, so `mv` copies and removes;
  * `rm` deletes the key in this node (a tombstone: parents keep it);
  * `truncate -s N` stores the value cut or zero-padded to N bytes;
  * directories cannot be made (keys have no "/"): `cp -r dir/. kv/` copies
    a directory's files.
Reads stream: a value is read one 1 MiB chunk at a time, never held whole
(values of committed nodes go to the kernel's page cache; those of open nodes
are read from the snapshot taken at open, with direct I/O).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from dvidfs.data.keyvalue import key_bytes
from dvidfs.errors import InvalidInputError, NotFoundError, TooLargeError
from dvidfs.fs.entry import ON_CLOSE, Attr, DirEntry, Entry

if TYPE_CHECKING:
    from dvidfs.fs.tree import Tree

NAME_MAX = 255
MAX_VALUE = 1 << 30   # the most a file written through the mount may hold (it is buffered)
ESC = "%"


def name_of_key(key: str) -> str | None:
    """The file name of a key, or None if it cannot be one (too long)."""
    name = ESC + key if key in (".", "..") or key.startswith(ESC) else key
    return name if len(name.encode("utf-8", "surrogateescape")) <= NAME_MAX else None


def key_of_name(name: str) -> str | None:
    """The key a file name stands for, or None if it stands for none."""
    if not name.startswith(ESC):
        return name if name not in (".", "..") else None
    key = name[1:]
    return key if key in (".", "..") or key.startswith(ESC) else None


class KeyValueDir(DirEntry):
    """The instance directory of a keyvalue instance: its keys as files."""

    accepts_files = True

    def _key(self, name: str) -> str:
        key = key_of_name(name)
        if key is None:
            raise InvalidInputError(f"{name!r} stands for no key: names starting with '%' are '%.', '%..' "
                                    "or '%' followed by a key that starts with '%'")
        return key

    def key_file(self, name: str) -> "KeyFile":
        return self.child(KeyFile, name=name)

    def lookup(self, tree: "Tree", name: str) -> Entry:
        key = key_of_name(name)
        if key is None or len(name.encode("utf-8", "surrogateescape")) > NAME_MAX \
                or not self.obj.exists(tree.core.view(self.node), key):
            raise NotFoundError(f"no key {name!r}")
        return self.key_file(name)

    def list(self, tree: "Tree") -> Sequence[tuple[str, Entry, Attr]]:
        mtime, locked = tree.mtime(self.node), self.locked
        out = []
        for key, size in self.obj.sizes(tree.core.view(self.node)):
            name = name_of_key(key)
            if name is not None:
                out.append((name, self.key_file(name), Attr("file", size, not locked, mtime, locked)))
        return out

    def children(self, tree: "Tree"):
        return [(n, e) for n, e, _ in self.list(tree)]

    def new_file(self, tree: "Tree", name: str) -> Entry:
        self.obj.check_writable(self.node)
        key_bytes(self._key(name))  # refused now, not at close
        return self.key_file(name)

    def upload_limit(self, tree: "Tree") -> int:
        return MAX_VALUE

    def rename_file(self, tree: "Tree", old: str, new: str, replace: bool) -> Entry:
        self.obj.rename(self.node, self._key(old), self._key(new), replace)
        return self.key_file(new)

    def remove_file(self, tree: "Tree", name: str) -> None:
        if not self.obj.delete(self.node, self._key(name)):
            raise NotFoundError(f"no key {name!r}")

    def mkdir(self, tree: "Tree", name: str) -> Entry:
        if self.locked:
            return super().mkdir(tree, name)
        raise InvalidInputError(f"cannot make directory {name!r} in keyvalue instance {self.data!r}: keys have "
                                "no '/' (copy a directory's files with `cp -r dir/. …`)")

    def describe(self) -> str:
        return self.data


class KeyFile(Entry):
    """One key's value."""

    write_mode = ON_CLOSE
    starts_with_content = True   # opened for writing without O_TRUNC: keeps the value (>>)
    can_vanish = True            # deleted through HTTP: the kernel must drop the name
    streamed = True
    stores_bytes = True

    @property
    def key(self) -> str:
        return key_of_name(self.name)

    def attr(self, tree: "Tree") -> Attr:
        size = self.obj.size(tree.core.view(self.node), self.key)
        if size is None:
            raise NotFoundError(f"no key {self.name!r}")
        return Attr("file", size, not self.locked, tree.mtime(self.node), self.locked)

    def read(self, tree: "Tree") -> bytes:
        """The whole value (what a writer opening without O_TRUNC starts from)."""
        value = self.obj.get(tree.core.view(self.node), self.key)
        if value is None:
            raise NotFoundError(f"no key {self.name!r}")
        return value

    def open_stream(self, tree: "Tree"):
        v = self.obj.open_value(tree.core.view(self.node), self.key)
        if v is None:
            raise NotFoundError(f"no key {self.name!r}")
        return v

    def upload_limit(self, tree: "Tree") -> int:
        return MAX_VALUE

    def upload(self, tree: "Tree", data: bytes) -> str:
        self.obj.put(self.node, self.key, data)
        return f"stored key {self.key!r} ({len(data)} bytes)"

    def truncate(self, tree: "Tree", size: int) -> None:
        if size > MAX_VALUE:
            raise TooLargeError(f"{size} bytes is more than a file here can take ({MAX_VALUE})")
        value = self.read(tree)
        self.obj.put(self.node, self.key, value[:size] + b"\0" * max(0, size - len(value)))

    def describe(self) -> str:
        return f"{self.data}/{self.name}"
