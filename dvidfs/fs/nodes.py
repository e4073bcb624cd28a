"""Repos, nodes and their control files, as directories, links and text files.

    /<repo>/                 repo directory (mkdir at the top creates a repo)
    /<repo>/<uuid>/          every version node (a unique UUID prefix also resolves)
    /<repo>/<branch>         symlink to the branch's newest node ("master" too)
    /<repo>/<tag>            symlink to a tag's node (its branch "tag-<tag>" is a link too)
    /<repo>/<uuid>/.dvid/    control files of the node (CONTROL_FILES)

Every command goes to the core (`Dvid`); nothing here knows keys or engines.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from dvidfs.core import MergeConflict
from dvidfs.errors import ConflictError, InvalidInputError, NotFoundError, ReadOnlyError
from dvidfs.fs.entry import NOW, Attr, DirEntry, Entry, as_json
from dvidfs.fs.instances import instance_entry
from dvidfs.versions.model import UUID_RE

if TYPE_CHECKING:
    from dvidfs.fs.tree import Tree

CTRL_DIR = ".dvid"
CONTROL_FILES = {
    "commit": "write a message: commit (lock) this node",
    "branch": "write a name: new child on a new branch; write an empty line: next version on this branch",
    "merge": "write node UUIDs (prefixes): new node merging this node and them",
    "resolve": ("write node UUIDs in priority order: new node merging them (this node first unless listed), "
                "each conflicting key taken from the first that changed it"),
    "conflicts": "read: every conflicting key of the last merge or resolve refused here",
    "tag": "write a name: tag this committed node (a committed child on branch tag-NAME)",
    "newdata": ("write 'grayscale NAME [BLOCKSIZE]', 'labels NAME [BLOCKSIZE]', 'keyvalue NAME' or "
                "'roi NAME [BLOCKSIZE]': new data instance"),
    "downres": "write 'DATA [LEVELS]': store the pyramid of volume DATA (as `dvidfs downres`)",
    "note": "read/write the node's note",
    "log": "read the node's log; each line written is appended",
    "info.json": "read: the node's info as JSON (DVID field names)",
    "last-error": "read: the last failed write under this node",
}
READ_ONLY_CONTROL = frozenset({"info.json", "last-error", "conflicts"})
MULTILINE_CONTROL = frozenset({"note", "log"})   # act at close on the whole text; others at each newline
LAST_ERROR = "last-error"
_PREFIX_RE = re.compile(r"[0-9a-f]{1,31}")
# node uuid -> the full list of the last merge/resolve refused through its .dvid/ (few nodes, small texts)
_CONFLICTS: dict[str, str] = {}


class RootDir(DirEntry):
    def lookup(self, tree: "Tree", name: str) -> Entry:
        tree.core.repo_by_alias(name)
        return RepoDir(repo=name)

    def children(self, tree: "Tree"):
        return [(r.alias, RepoDir(repo=r.alias)) for r in tree.core.repos()]

    def attr(self, tree: "Tree") -> Attr:
        return Attr("dir", 0, True, tree.started, False)

    def mkdir(self, tree: "Tree", name: str) -> Entry:
        tree.core.new_repo(name)
        return RepoDir(repo=name)


ROOT = RootDir()


class RepoDir(DirEntry):
    def _node(self, node) -> "NodeDir":
        return NodeDir(repo=self.repo, uuid=node.uuid, node=node)

    def lookup(self, tree: "Tree", name: str) -> Entry:
        core = tree.core
        repo = core.repo_by_alias(self.repo)
        try:
            node = core.node_by_uuid(name) if UUID_RE.match(name) else None
        except NotFoundError:
            node = None
        if node is not None and node.repo == repo.root:
            return self._node(node)
        if name in core.branches(repo):
            return BranchLink(repo=self.repo, name=name)
        if name in core.tags(repo):
            return TagLink(repo=self.repo, name=name)
        if _PREFIX_RE.fullmatch(name):  # a unique prefix is the node itself
            return self._node(core.node(name, repo))
        raise NotFoundError(f"no node or branch {name!r} in repo {self.repo!r}")

    def children(self, tree: "Tree"):
        core = tree.core
        repo = core.repo_by_alias(self.repo)
        out: list[tuple[str, Entry]] = [(n.uuid, self._node(n)) for n in core.repo_nodes(repo)]
        branches = core.branches(repo)
        out += [(b, BranchLink(repo=self.repo, name=b)) for b in branches]
        out += [(t, TagLink(repo=self.repo, name=t)) for t in core.tags(repo) if t not in branches]
        return out

    def attr(self, tree: "Tree") -> Attr:
        return Attr("dir", 0, True, tree.core.repo_by_alias(self.repo).updated, False)


class BranchLink(Entry):
    node_level = True  # a new node on the branch moves it

    def readlink(self, tree: "Tree") -> str:
        core = tree.core
        return core.branch_tip(core.repo_by_alias(self.repo), self.name).uuid

    def attr(self, tree: "Tree") -> Attr:
        return Attr("link", len(self.readlink(tree)), False, tree.started, False)


class TagLink(Entry):
    """`<repo>/<tag>`: symlink to the tag's node (it never moves; a branch of the
    same name, made later, takes the name)."""

    node_level = True

    def readlink(self, tree: "Tree") -> str:
        node = tree.core.tags(tree.core.repo_by_alias(self.repo)).get(self.name)
        if node is None:
            raise NotFoundError(f"no tag {self.name!r} in repo {self.repo!r}")
        return node.uuid

    def attr(self, tree: "Tree") -> Attr:
        return Attr("link", len(self.readlink(tree)), False, tree.started, False)


class NodeDir(DirEntry):
    node_level = True  # its children list changes with merges and new instances

    def lookup(self, tree: "Tree", name: str) -> Entry:
        if name == CTRL_DIR:
            return self.child(ControlDir)
        if name in tree.core.instances(self.node):
            return instance_entry(tree, self, name)
        raise NotFoundError(f"no data instance {name!r}")

    def children(self, tree: "Tree"):
        out: list[tuple[str, Entry]] = [(CTRL_DIR, self.child(ControlDir))]
        out += [(name, instance_entry(tree, self, name)) for name in tree.core.instances(self.node)]
        return out

    def mkdir(self, tree: "Tree", name: str) -> Entry:
        """Refused: a directory name cannot say which type to create, and a
        guessed instance would stay in the repo for good (DVID deletes none
        without an admin guard).  The control file names the type."""
        if self.node.locked:
            raise ReadOnlyError(f"node {self.node.uuid} is committed: create data instances in an open node")
        raise InvalidInputError(f"mkdir does not create data instances: write 'grayscale {name}', "
                                f"'labels {name}', 'keyvalue {name}' or 'roi {name}' to .dvid/newdata")


class ControlDir(DirEntry):
    settable_when_locked = True

    def lookup(self, tree: "Tree", name: str) -> Entry:
        if name in CONTROL_FILES:
            return self.child(ControlFile, name=name)
        raise NotFoundError(f"no control file {name!r}")

    def children(self, tree: "Tree"):
        return [(n, self.child(ControlFile, name=n)) for n in CONTROL_FILES]

    def attr(self, tree: "Tree") -> Attr:
        return Attr("dir", 0, True, self.node.updated, False)

    def mkdir(self, tree: "Tree", name: str) -> Entry:
        raise InvalidInputError("directories can be made only at the top (a repo); data instances are made "
                                "through .dvid/newdata")


class ControlFile(Entry):
    """A node's command file: commands act at each write(), so the writer gets the errno."""

    write_mode = NOW
    node_level = True  # info.json shows children made by branch/merge commands elsewhere

    @property
    def read_only(self) -> bool:  # type: ignore[override]
        return self.name in READ_ONLY_CONTROL

    @property
    def is_last_error(self) -> bool:  # type: ignore[override]
        return self.name == LAST_ERROR

    @property
    def multiline(self) -> bool:  # type: ignore[override]
        return self.name in MULTILINE_CONTROL

    def attr(self, tree: "Tree") -> Attr:
        return Attr("file", len(self.read(tree)), not self.read_only, self.node.updated, False)

    def read(self, tree: "Tree") -> bytes:
        node = self.node
        if self.name == "info.json":
            return as_json(tree.core.node_info(node))
        if self.name == "log":
            return "".join(line + "\n" for line in node.log).encode()
        if self.name == "note":
            return (node.note + "\n").encode() if node.note else b""
        if self.name == "conflicts":
            return _CONFLICTS.get(node.uuid, "").encode()
        return b""  # write-only control files; last-error is served by operations

    def control(self, tree: "Tree", text: str) -> str:
        fn = _COMMANDS.get(self.name)
        if fn is None:
            raise InvalidInputError(f"{CTRL_DIR}/{self.name} is read-only")
        return fn(tree.core, self.node, text)


def _commit(core, node, text: str) -> str:
    core.commit(node, text)
    return f"committed {node.uuid}"


def _branch(core, node, text: str) -> str:
    child = core.branch(node, text or None)
    return f"created node {child.uuid} on branch {child.branch_name}"


def _refs(core, node, text: str, what: str) -> list:
    refs = [r for r in re.split(r"[\s,]+", text) if r]
    if not refs:
        raise InvalidInputError(f"write the UUIDs of the nodes to {what} with this one")
    repo = core.repo_of(node)
    return [core.node(r, repo) for r in refs]


def _refused(node, exc: MergeConflict) -> ConflictError:
    """Keep the full list in .dvid/conflicts; the error (last-error) says where it is."""
    _CONFLICTS[node.uuid] = "".join(line + "\n" for line in exc.lines)
    return ConflictError(f"{exc} — all {len(exc.lines)}: {CTRL_DIR}/conflicts")


def _merge(core, node, text: str) -> str:
    others = _refs(core, node, text, "merge")
    try:
        child = core.merge([node] + others, f"merge of {node.uuid[:8]} and "
                           + ", ".join(o.uuid[:8] for o in others))
    except MergeConflict as exc:
        raise _refused(node, exc) from None
    _CONFLICTS.pop(node.uuid, None)
    return f"created merge node {child.uuid}"


def _resolve(core, node, text: str) -> str:
    """The parents in priority order: as written when this node is among them,
    else this node first (as `merge`, it merges this node with those)."""
    listed = _refs(core, node, text, "resolve")
    parents = listed if any(p.uuid == node.uuid for p in listed) else [node] + listed
    try:
        child = core.resolve(parents, "resolve of " + ", ".join(p.uuid[:8] for p in parents))
    except MergeConflict as exc:
        raise _refused(node, exc) from None
    _CONFLICTS.pop(node.uuid, None)
    return f"created resolved merge node {child.uuid}"


def _tag(core, node, text: str) -> str:
    if not text:
        raise InvalidInputError("write the tag's name")
    child = core.tag(node, text)
    return f"tagged {node.uuid} as {text} (node {child.uuid})"


def _newdata(core, node, text: str) -> str:
    parts = text.split()
    if len(parts) not in (2, 3):
        raise InvalidInputError("write 'TYPE NAME [BLOCKSIZE]', e.g. 'grayscale em' or 'labels seg'")
    try:
        bs = int(parts[2]) if len(parts) == 3 else None
    except ValueError:
        raise InvalidInputError(f"block size {parts[2]!r} is not a number") from None
    core.new_instance(node, parts[1], parts[0], block_size=bs)
    return f"created {parts[0]} instance {parts[1]}"


def _downres(core, node, text: str) -> str:
    """`dvidfs downres` through the mount (the store is the mount's while mounted)."""
    parts = text.split()
    if len(parts) not in (1, 2):
        raise InvalidInputError("write 'DATA [LEVELS]', e.g. 'grayscale' or 'grayscale 3'")
    data = core.data(node, parts[0])
    if "volume" not in data.offers:
        raise InvalidInputError(f"{parts[0]!r} is a {data.typename} instance: only volumes have a pyramid")
    try:
        levels = int(parts[1]) if len(parts) == 2 else None
    except ValueError:
        raise InvalidInputError(f"levels {parts[1]!r} is not a number") from None
    n = data.build_pyramid(node, levels)
    return f"{parts[0]!r}: levels 1..{n} stored"


def _note(core, node, text: str) -> str:
    core.set_note(node, text)
    return "note set"


def _log(core, node, text: str) -> str:
    core.append_log(node, text.splitlines())
    return "log appended"


_COMMANDS = {"commit": _commit, "branch": _branch, "merge": _merge, "resolve": _resolve, "tag": _tag,
             "newdata": _newdata, "downres": _downres, "note": _note, "log": _log}
