"""`Dvid`: the one object every front end talks to (the mount, the CLI, the HTTP server).

It owns the engine, the version DAG, the data-type registry, the caches
(decoded blocks, read-ahead layers), the write generations and the change
publisher, and offers every operation a front end needs, in nodes, instance
names and numpy arrays — never keys:

* repos: `new_repo`, `repos`, `repo`, `repo_of`, `branches`, `branch_tip`, `repo_nodes`
* nodes: `node` (DVID's refs), `node_by_uuid`, `view`, `commit`, `branch`,
  `merge`, `merge_conflicts`, `resolve`, `tag`, `tags`, `set_note`,
  `append_log`, `history`, `node_info` (DVID's JSON)
* instances: `new_instance`, `instances`, `data`, `instance_info`
* data: the type objects `data()` returns (each type's own operations), plus
  `read_slice` (with read-ahead) and `generation` (for caches of renderings)
* changes: `subscribe(callback)` -> unsubscribe; every applied change,
  from any front end, is published as a `Change`.
* deletion (DVID's, guarded by the front ends): `delete_instance`,
  `delete_repo`, `wait_deletions`.  The metadata goes in one synced batch with
  a marker per deleted instance; a background thread then removes the data
  keys in bounded batches and finally the marker, and resumes at the next
  open after a crash (an instance id is never reused, so leftover keys are
  never visible again).

Concurrency: every mutation runs under `VersionDB.lock` (the DAG's and the data
types' writers share it); reads take no lock.  Subscribers are called in the
thread that made the change, after its batch is applied and outside every
lock, so a subscriber may read the store; it must not block for long (the
mount only queues invalidations).
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from dvidfs import storedir
from dvidfs.config import Config
from dvidfs.data.annotation import Annotation, LabelSz
from dvidfs.data.grayscale import Grayscale
from dvidfs.data.keyvalue import KeyValue
from dvidfs.data.labels import Labels
from dvidfs.data.readahead import ReadAhead
from dvidfs.data.roi import Roi
from dvidfs.data.types import DataType, TypeContext, TypeRegistry, WriteGenerations
from dvidfs.errors import DvidfsError, NotFoundError, StoreBusyError
from dvidfs.store.cache import LRUCache
from dvidfs.store.engine import OrderedKV
from dvidfs.store.open import is_remote, open_engine
from dvidfs.store.versioned import VersionView
from dvidfs.timestamps import iso
from dvidfs.store import keys
from dvidfs.versions.dag import Followed, MergeConflict, VersionDB  # noqa: F401  (MergeConflict: for front ends)
from dvidfs.versions.model import Instance, Node, Repo

log = logging.getLogger("dvidfs.core")


def default_registry() -> TypeRegistry:
    """The data types dvidfs knows.  A new type is a module and one line here."""
    reg = TypeRegistry()
    reg.register(Grayscale)
    reg.register(Labels)
    reg.register(KeyValue)
    reg.register(Roi)
    reg.register(Annotation)
    reg.register(LabelSz)
    return reg


@dataclass(frozen=True)
class Change:
    """Something changed in a repo: `node` (UUID) is None for a repo-level
    change (a new repo); `instance` is None for a node-level change (commit,
    note, log, a new instance, a new child node), else the instance whose data
    changed in `node`.  `committed`: the change locked `node` (everything
    under it turned read-only)."""

    repo: str                     # root UUID of the repo
    node: str | None = None
    instance: str | None = None
    committed: bool = False
    # a deletion (node None): `instance` left the repo in every node, or (no
    # instance) the whole repo is gone; `nodes` are the repo's node UUIDs and
    # `alias` its name as they were, since the core no longer knows them
    deleted: bool = False
    nodes: tuple[str, ...] = ()
    alias: str = ""


class Dvid:
    """A store: open with `Dvid(path)`, create with `Dvid.init(path)`, or run
    on any `OrderedKV` engine with `Dvid(engine=...)` (e.g. the in-memory one)."""

    def __init__(self, path: str | os.PathLike | None = None, *, create: bool = False,
                 config: Config | None = None, registry: TypeRegistry | None = None,
                 engine: OrderedKV | None = None):
        self.config = config or Config.load()
        self.path = os.fspath(path) if path is not None else None
        if engine is None:
            if self.path is None:
                raise ValueError("Dvid needs a store path or an engine")
            engine = self._open_engine(create)
        self.engine = engine
        self.db = VersionDB(engine)
        self.types = registry or default_registry()
        self.block_cache = LRUCache(self.config.block_cache) if self.config.block_cache else None
        self.readahead = ReadAhead(self.config.readahead) if self.config.readahead else None
        self.generations = WriteGenerations()
        self._ctx = TypeContext(self.db, self.block_cache, self.generations, self._data_changed)
        self._objects: dict[int, DataType] = {}
        self._objects_lock = threading.Lock()
        self._subscribers: list[Callable[[Change], None]] = []
        self._purger: threading.Thread | None = None
        self._purge_wake = threading.Condition()
        self._closing = False
        self._follow_lock = threading.Lock()
        self._follower: threading.Thread | None = None
        if self.readonly:
            self._start_follower()
        elif self.db.pending_deletions():  # a deletion a crash or an exit interrupted
            self._start_purger()

    def _open_engine(self, create: bool) -> OrderedKV:
        """LevelDB in a store directory, or an object store for an s3:// path
        (dvidfs/store/open.py).  The store directory's safety check and mount
        marker concern local directories only: an object store has neither (its
        busy message comes from its writer lease)."""
        if is_remote(self.path):
            return open_engine(self.path, create, self.config)
        storedir.check_safe_to_open(self.path)
        try:
            return open_engine(self.path, create, self.config)
        except StoreBusyError:
            raise StoreBusyError(storedir.busy_message(self.path)) from None

    @property
    def local_dir(self) -> str | None:
        """The store directory on this machine (None for an object store or an engine)."""
        return self.path if self.path and not is_remote(self.path) else None

    @classmethod
    def init(cls, path: str | os.PathLike, config: Config | None = None) -> "Dvid":
        return cls(path, create=True, config=config)

    def close(self) -> None:
        with self._purge_wake:
            self._closing = True
            self._purge_wake.notify_all()
        for t in (self._purger, self._follower):
            if t is not None and t is not threading.current_thread():
                t.join()  # the purger stops between two bounded batches: the rest is removed at the next open
        self.engine.close()

    def __enter__(self) -> "Dvid":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ changes
    def subscribe(self, callback: Callable[[Change], None]) -> Callable[[], None]:
        """Call `callback(change)` after every change; returns the unsubscriber."""
        self._subscribers = [*self._subscribers, callback]

        def unsubscribe() -> None:
            self._subscribers = [s for s in self._subscribers if s is not callback]
        return unsubscribe

    def _publish(self, change: Change) -> None:
        for fn in self._subscribers:
            try:
                fn(change)
            except Exception:  # a subscriber's bug must not turn a stored change into an error
                log.exception("change subscriber failed on %s", change)

    def _data_changed(self, node: Node, instance: str) -> None:
        self._publish(Change(node.repo, node.uuid, instance))

    def _node_changed(self, node: Node) -> None:
        self._publish(Change(node.repo, node.uuid))

    # ------------------------------------------------------------ following the writer
    @property
    def readonly(self) -> bool:
        """Opened as a reader of a store another process writes (an object store
        opened with `readonly=1`): writes are refused and `follow` keeps this
        process current."""
        return bool(getattr(self.engine, "readonly", False))

    def _start_follower(self) -> None:
        interval = float(getattr(self.engine, "refresh_interval", 1.0))

        def run() -> None:
            while True:
                with self._purge_wake:   # close() notifies it
                    if not self._closing:
                        self._purge_wake.wait(interval)
                    if self._closing:
                        return
                try:
                    self.follow()
                except DvidfsError as exc:   # an unreachable store: serve what is known, try again
                    log.warning("cannot follow the writer of %s: %s", self.path, exc)
                except Exception:
                    log.exception("following the writer of %s failed", self.path)
        self._follower = threading.Thread(target=run, name="dvidfs-follow", daemon=True)
        self._follower.start()

    def follow(self) -> bool:
        """Catch up with the commits the writer made since the last call (a
        read-only store; a background thread calls this every second): the DAG
        takes new and changed nodes, repos and instances; caches forget the
        (instance, version) pairs the writer changed; subscribers (the mount's
        invalidation) hear a `Change` for each.  True if anything changed."""
        if not self.readonly:
            return False
        with self._follow_lock:
            self.engine.refresh()
            changed = self.engine.take_changes()
            if changed is not None and not changed:
                return False
            meta = changed is None or any(k[:1] == keys.META for k in changed)
            followed = self.db.follow() if meta else Followed()
            out: list[Change] = []
            for repo, nodes in followed.gone_repos:
                self._retire(list(repo.instances.values()))
                out.append(Change(repo.root, deleted=True, nodes=tuple(n.uuid for n in nodes), alias=repo.alias))
            for repo, inst in followed.gone_instances:
                self._retire([inst])
                out.append(Change(repo.root, None, inst.name, deleted=True,
                                  nodes=tuple(n.uuid for n in self.repo_nodes(repo)), alias=repo.alias))
            out += [Change(r.root) for r in (*followed.new_repos, *followed.changed_repos)]
            for repo, inst in followed.new_instances:
                n = self.db.by_version.get(inst.created_in)
                if n is not None:
                    out.append(Change(repo.root, n.uuid))
            out += [Change(n.repo, n.uuid) for n in followed.new_nodes]
            out += [Change(n.repo, n.uuid, committed=n.locked and not was_locked)
                    for n, was_locked in followed.changed_nodes]
            out += self._forget_written(changed)
        for c in out:
            self._publish(c)
        return True

    def _forget_written(self, changed: set[bytes] | None) -> list[Change]:
        """Make the caches forget the data the writer changed (`changed`: its
        keys, None if unknown) and name it in Changes."""
        with self._objects_lock:
            objects = dict(self._objects)
        if changed is None:
            self.generations.bump_all()
            for obj in objects.values():
                obj.changed_elsewhere(None)
            return [Change(n.repo, n.uuid, name) for n in list(self.db.nodes.values())
                    for name in self.db.instances_at(n)]
        written = set()
        for k in changed:
            if k[:1] == keys.DATA:
                iid, _tk, version, _tomb = keys.split_data_key(k)
                written.add((iid, version))
        names = {i.id: (r.root, i.name) for r in list(self.db.repos.values()) for i in r.instances.values()}
        out = []
        for iid, version in sorted(written):
            self.generations.bump(iid, version)
            if iid in objects:
                objects[iid].changed_elsewhere(version)
            node = self.db.by_version.get(version)
            if iid in names and node is not None:
                out.append(Change(names[iid][0], node.uuid, names[iid][1]))
        return out

    # ------------------------------------------------------------ repos
    def new_repo(self, alias: str, description: str = "", root: str | None = None) -> Repo:
        """A repo with one open root node (`root`: its UUID, if the caller chooses it)."""
        repo = self.db.new_repo(alias, description, root)
        self._publish(Change(repo.root))
        return repo

    def repos(self) -> list[Repo]:
        return sorted(self.db.repos.values(), key=lambda r: r.alias)

    def repo(self, name_or_uuid: str) -> Repo:
        """A repo by name, root UUID, or any node UUID (prefix) in it."""
        return self.db.repo(name_or_uuid)

    def repo_by_alias(self, alias: str) -> Repo:
        """A repo by its name only (how the mount names repo directories)."""
        for r in self.db.repos.values():
            if r.alias == alias:
                return r
        raise NotFoundError(f"no repo {alias!r}")

    def update_repo(self, repo: Repo, alias: str | None = None, description: str | None = None,
                    log_lines: Iterable[str] = ()) -> Repo:
        self.db.update_repo(repo, alias, description, log_lines)
        self._publish(Change(repo.root))
        return repo

    def repo_info(self, repo: Repo, instance_info: Callable[[Node, str], dict] | None = None) -> dict:
        """DVID's repo-info JSON: instances as seen from the master tip (each
        described by `instance_info`, default `self.instance_info`), and the
        DAG with parents/children as version ids (as DVID gives them)."""
        instance_info = instance_info or self.instance_info
        nodes = self.repo_nodes(repo)
        uuid_of = {n.uuid: n.version_id for n in nodes}
        dag = {}
        for n in nodes:
            d = n.info()
            d["Branch"] = n.branch  # DVID: "" is master
            d["Parents"] = [uuid_of[p] for p in n.parents]
            d["Children"] = [uuid_of[c] for c in n.children]
            dag[n.uuid] = d
        tip = self.branches(repo).get("master") or nodes[0]
        return {"Root": repo.root, "Alias": repo.alias, "Description": repo.description,
                "Log": list(repo.log), "Properties": {},
                "DataInstances": {name: instance_info(tip, name) for name in self.instances(tip)},
                "DAG": {"Root": repo.root, "Nodes": dag},
                "MutationID": self.db.last_id("mutation"), "SavedMutationID": self.db.last_id("mutation"),
                "Created": iso(repo.created), "Updated": iso(repo.updated)}

    def repo_of(self, node: Node) -> Repo:
        return self.db.repos[node.repo]

    def repo_nodes(self, repo: Repo) -> list[Node]:
        """Every node of the repo, oldest first."""
        return self.db.repo_nodes(repo)

    def branches(self, repo: Repo) -> dict[str, Node]:
        """Branch name -> newest node of that branch."""
        return self.db.branches(repo)

    def branch_tip(self, repo: Repo, branch: str) -> Node:
        return self.db.branch_tip(repo, branch)

    # ------------------------------------------------------------ nodes
    def node(self, ref: str, repo: Repo | None = None) -> Node:
        """DVID's node references: UUID prefix, prefix:branch, :branch, ~N, or a repo name."""
        return self.db.node(ref, repo)

    def node_by_uuid(self, uuid: str) -> Node:
        n = self.db.nodes.get(uuid)
        if n is None:
            raise NotFoundError(f"no node {uuid}")
        return n

    def view(self, node: Node) -> VersionView:
        return self.db.view(node)

    def commit(self, node: Node, note: str = "", log_lines: Iterable[str] = ()) -> Node:
        self.db.commit(node, note, log_lines)
        self._publish(Change(node.repo, node.uuid, committed=True))
        return node

    def branch(self, parent: Node, name: str | None = None, note: str = "",
               uuid: str | None = None) -> Node:
        """A child of committed `parent`: a new branch `name`, or (no name) the
        next version on the parent's branch.  `uuid`: DVID lets a client choose it."""
        child = self.db.branch(parent, name, note, uuid)
        self._node_changed(parent)
        self._node_changed(child)
        return child

    def merge(self, parents: list[Node], note: str = "", uuid: str | None = None) -> Node:
        """A new open node merging committed `parents` (refused on conflicts the
        data types' merge rules cannot resolve, naming the keys)."""
        child = self.db.merge(parents, note, uuid, rules=self.types)
        for n in (*parents, child):
            self._node_changed(n)
        return child

    def merge_conflicts(self, parents: list[Node]) -> list[str]:
        """Why a merge of `parents` would be refused: one conflicting key a line
        ("<instance>: <description>"); empty when it would succeed."""
        return self.db.merge_conflicts(parents, rules=self.types)

    def resolve(self, parents: list[Node], note: str = "", uuid: str | None = None,
                data: Iterable[str] | None = None) -> Node:
        """DVID's resolve: merge committed `parents` given in priority order; each
        conflicting key of the instances `data` (default all) takes the value of
        the first parent that changed it.  Instances offering label bodies are
        refused when they conflict: their label index is derived from the blocks."""
        def resolvable(inst: Instance) -> str | None:
            if "bodies" in self.types.get(inst.typename).offers:
                return "its label index is derived from the blocks and resolve does not rebuild it"
            return None
        child = self.db.resolve(parents, note, uuid, rules=self.types, data=data, resolvable=resolvable)
        for n in (*parents, child):
            self._node_changed(n)
        return child

    def tag(self, node: Node, name: str, note: str = "") -> Node:
        """DVID's tag: a committed child of committed `node` on branch "tag-<name>";
        `name` then resolves as a node reference."""
        child = self.db.tag(node, name, note)
        self._node_changed(node)
        self._node_changed(child)
        return child

    def tags(self, repo: Repo | None = None) -> dict[str, Node]:
        """Tag name -> tagged node (the tag's own committed node)."""
        return self.db.tags(repo)

    def set_note(self, node: Node, note: str) -> Node:
        self.db.set_note(node, note)
        self._node_changed(node)
        return node

    def append_log(self, node: Node, lines: Iterable[str]) -> Node:
        self.db.append_log(node, lines)
        self._node_changed(node)
        return node

    def history(self, node: Node) -> list[Node]:
        """The node and its ancestors, newest first."""
        return self.db.history(node)

    def node_info(self, node: Node, instance_info: bool = False) -> dict:
        """DVID's node JSON plus "Repo" (name) and "DataInstances": type names,
        or with `instance_info` each instance's info as seen from the node."""
        out = node.info()
        out["Repo"] = self.repo_of(node).alias
        insts = self.instances(node)
        out["DataInstances"] = ({name: self.instance_info(node, name) for name in insts} if instance_info
                                else {name: inst.typename for name, inst in insts.items()})
        return out

    # ------------------------------------------------------------ instances
    def new_instance(self, node: Node, name: str, typename: str, **options) -> DataType:
        """Create instance `name` of `typename` in open `node` (options: the type's
        `make_config`, e.g. block_size, voxel_size, voxel_units)."""
        cls = self.types.get(typename)
        config = cls.make_config(**{k: v for k, v in options.items() if v is not None})
        self.db.new_instance(node, name, typename, config)
        self._node_changed(node)
        return self.data(node, name)

    def instances(self, node: Node) -> dict[str, Instance]:
        """Instances visible from `node`, by name (sorted)."""
        return self.db.instances_at(node)

    def data(self, node: Node, name: str) -> DataType:
        """The type object of instance `name` as visible from `node`."""
        inst = self.db.instances_at(node).get(name)
        if inst is None:
            raise NotFoundError(f"no data instance {name!r} at node {node.uuid}")
        return self._object(inst)

    def _object(self, inst: Instance) -> DataType:
        obj = self._objects.get(inst.id)
        if obj is None:
            with self._objects_lock:  # one object per instance: it holds per-instance caches
                obj = self._objects.get(inst.id)
                if obj is None:
                    obj = self._objects[inst.id] = self.types.get(inst.typename)(self._ctx, inst)
        return obj

    def instance_info(self, node: Node, name: str) -> dict:
        return self.data(node, name).info(self.view(node))

    # ------------------------------------------------------------ deletion
    def delete_instance(self, repo: Repo, name: str, wait: bool = False) -> Instance:
        """Delete data instance `name` of `repo` in every node (DVID's semantics:
        the instance, not a version of it).  Its metadata goes at once, in one
        synced batch; its data keys are removed in the background (`wait`: before
        returning).  Front ends put a guard before this (`--imsure`, `?imsure=true`)."""
        inst = self.db.delete_instance(repo, name)
        self._retire([inst])
        self._publish(Change(repo.root, None, name, deleted=True,
                             nodes=tuple(n.uuid for n in self.repo_nodes(repo)), alias=repo.alias))
        self._start_purger()
        if wait:
            self.wait_deletions()
        return inst

    def delete_repo(self, repo: Repo, wait: bool = False) -> None:
        """Delete `repo`: every node and every instance, metadata in one synced
        batch, data keys in the background (`wait`: before returning)."""
        insts = list(repo.instances.values())
        nodes = self.db.delete_repo(repo)
        self._retire(insts)
        self._publish(Change(repo.root, deleted=True, nodes=tuple(n.uuid for n in nodes), alias=repo.alias))
        self._start_purger()
        if wait:
            self.wait_deletions()

    def _retire(self, insts: list[Instance]) -> None:
        """Objects of deleted instances refuse every later write (someone may still
        hold one: a request or a mount entry resolved before the deletion), so
        nothing of a deleted id is written once its keys are being removed."""
        with self._objects_lock:
            objs = [self._objects.pop(i.id, None) for i in insts]
        for obj in objs:
            if obj is not None:
                obj.deleted = True

    def pending_deletions(self) -> int:
        """How many deleted instances still have data keys in the store."""
        return len(self.db.pending_deletions())

    def wait_deletions(self, timeout: float | None = None) -> bool:
        """Wait until every deleted instance's keys are removed; False on timeout
        (or when the store is closing and the rest is left for the next open)."""
        t = self._purger
        while t is not None:
            t.join(timeout)
            if t.is_alive():
                break
            t = self._purger if self._purger is not t else None
        return not self.db.pending_deletions()

    def _start_purger(self) -> None:
        with self._purge_wake:
            if self._closing or self._purger is not None:
                return  # a running purger looks for pending deletions before it ends
            self._purger = threading.Thread(target=self._purge, name="dvidfs-delete", daemon=True)
            self._purger.start()

    def _purge(self) -> None:
        """Remove the data keys of every pending deletion, then end (a later
        deletion starts another thread).  "Nothing pending" is decided under the
        same lock `_start_purger` takes, so no deletion is left waiting."""
        try:
            while True:
                with self._purge_wake:
                    pending = {} if self._closing else self.db.pending_deletions()
                    if not pending:
                        self._purger = None
                        return
                for iid, versions in pending.items():
                    if not self.db.purge_instance(iid, versions, stop=lambda: self._closing):
                        break
                    log.info("removed the data of deleted instance id %d", iid)
        except Exception:  # the marker stays: the next open tries again
            log.exception("removing the data of a deleted instance failed")
            with self._purge_wake:
                self._purger = None

    # ------------------------------------------------------------ data helpers shared by front ends
    def generation(self, node: Node, data: DataType) -> int:
        """Writes applied to `data` in `node` so far: put it in the key of anything
        rendered from them.  Read it before rendering."""
        return self.generations.get(data.inst.id, node.version_id)

    def read_slice(self, node: Node, data: DataType, plane: str, coord: int) -> np.ndarray:
        """A 2-D slice of a volume instance; neighbouring reads use read-ahead layers."""
        view = self.view(node)
        if self.readahead is None:
            return data.read_slice(view, plane, coord)
        return self.readahead.read_slice(data, view, plane, coord)

    # ------------------------------------------------------------ the store directory
    def mark_mounted(self, mountpoint: str | None, url: str | None = None) -> None:
        """Say, in the store directory, where this process mounts and/or serves it
        (local stores only: an object store has no directory to say it in)."""
        if self.local_dir:
            storedir.mark_mounted(self.path, mountpoint, url)

    def clear_mounted(self) -> None:
        if self.local_dir:
            storedir.clear_mounted(self.path)
