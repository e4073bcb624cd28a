"""The mount's inode table: entries <-> inode numbers, kernel references, and
the indexes that make an invalidation cost what changed.

The kernel holds a reference for every entry it was given (a `lookup`,
`create`, `mkdir` reply, or a `readdirplus` entry it accepted) and gives them
back with FORGET; an inode whose references are all returned is dropped, so
walking 10⁶ names does not keep 10⁶ entries for the life of the mount.  A
later lookup of the same path simply gets a new number.

Indexes, kept in step with the table:
  * by node and instance: a write to instance I of node N invalidates exactly
    the inodes under (N, I); a commit of N, every inode under N;
  * node-level entries (node directories, branch links, control files) and the
    entries above nodes (root, repos, links), which node-level changes touch.

Only the trio thread uses this (see operations.py): no locks.
"""
from __future__ import annotations

from typing import Callable, Iterable

from dvidfs.fs.entry import Entry


class InodeTable:
    def __init__(self, root: Entry, root_ino: int):
        self.root_ino = root_ino
        self._ino_of: dict[Entry, int] = {root: root_ino}
        self._entry_of: dict[int, Entry] = {root_ino: root}
        self._refs: dict[int, int] = {}
        self._next = root_ino + 1
        self.parent_of: dict[int, tuple[int, bytes]] = {}   # ino -> (parent ino, name): dentry invalidation
        self._by_node: dict[str, dict[str, set[int]]] = {"": {"": {root_ino}}}  # uuid -> instance -> inos
        self.node_level: set[int] = set()

    def __len__(self) -> int:
        return len(self._entry_of)

    def entry(self, ino: int) -> Entry | None:
        return self._entry_of.get(ino)

    def ino(self, e: Entry) -> int:
        """The inode number of `e`, allocated at first sight."""
        ino = self._ino_of.get(e)
        if ino is None:
            ino = self._next
            self._next += 1
            self._ino_of[e] = ino
            self._entry_of[ino] = e
            self._by_node.setdefault(e.uuid, {}).setdefault(e.data, set()).add(ino)
            if e.node_level:
                self.node_level.add(ino)
        return ino

    def remember(self, parent_ino: int, name: bytes, e: Entry) -> int:
        ino = self.ino(e)
        self.parent_of[ino] = (parent_ino, name)
        return ino

    def move(self, old: Entry, new: Entry, parent_ino: int, name: bytes) -> None:
        """A rename: the inode of `old` (if any) now stands for `new`, as the
        kernel's dentry moved with it.  Same node and instance (same index)."""
        ino = self._ino_of.pop(old, None)
        if ino is None:
            return
        self._ino_of[new] = ino
        self._entry_of[ino] = new
        self.parent_of[ino] = (parent_ino, name)

    # ------------------------------------------------------------ kernel references
    def ref(self, ino: int) -> None:
        """The kernel was given this inode once more."""
        self._refs[ino] = self._refs.get(ino, 0) + 1

    def forget(self, ino: int, n: int, pinned: Callable[[int], bool]) -> None:
        """The kernel gave back `n` references; drop the inode at zero unless
        `pinned` (open handles, temporary files) or the root."""
        left = self._refs.get(ino, 0) - n
        if left > 0:
            self._refs[ino] = left
            return
        self._refs.pop(ino, None)
        if ino != self.root_ino and not pinned(ino):
            self._drop(ino)

    def _drop(self, ino: int) -> None:
        e = self._entry_of.pop(ino, None)
        if e is None:
            return
        if self._ino_of.get(e) == ino:
            del self._ino_of[e]
        self.parent_of.pop(ino, None)
        self.node_level.discard(ino)
        insts = self._by_node.get(e.uuid)
        if insts is not None:
            inos = insts.get(e.data)
            if inos is not None:
                inos.discard(ino)
                if not inos:
                    del insts[e.data]
            if not insts and e.uuid:
                del self._by_node[e.uuid]

    # ------------------------------------------------------------ what a change touches
    def of_instance(self, uuid: str, data: str) -> Iterable[int]:
        """Inodes under instance `data` of node `uuid` ("" data: the node's own
        directory and control files; "" uuid: root, repos, links)."""
        return tuple(self._by_node.get(uuid, {}).get(data, ()))

    def of_node(self, uuid: str) -> Iterable[int]:
        return tuple(ino for inos in self._by_node.get(uuid, {}).values() for ino in inos)
