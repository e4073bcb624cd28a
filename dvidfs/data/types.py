"""The data-type contract: what a type module gives the core, and what the core gives it.

A data type (grayscale, labels; keyvalue, annotation, ROI next) is one module
with one `DataType` subclass.  The core (`dvidfs/core.py`) registers it by
name in a `TypeRegistry` and, for every instance of it, builds one object with
a `TypeContext`: the version DAG (and through it the engine), the shared
decoded-block cache, the write-generation counters and the change publisher.
The type owns its keys; nothing above it reads or writes them.

What a type declares (class attributes, read by the registry):

* `typename` — DVID's type name, as instances record it.
* `offers` — what front ends may show for it ("volume": boxes and slices;
  "bodies": label bodies, sparsevols, merge/split).  The mount and the CLI
  pick their views from this, never from the type's name.
* `merge_rules` — key class byte -> function giving the merged value of a key
  changed on several sides of a node merge (extents: union; max label: max).
* `key_descriptions` — key class byte -> fn(TKey, Instance): a short description
  in the user's terms (voxels, slices, body ids), used when a merge is refused.
* `key_summaries` — key class byte -> fn([TKey], Instance, [MergeContext]) ->
  [phrase]: the same for all conflicting keys of the class at once (the voxels
  changed on both sides, body ids, key names), so a refusal of a merge that
  conflicts in hundreds of blocks stays one readable line.  The contexts (one
  per TKey) give the parents' and the common ancestry's values.

Adding a type: a module with a `DataType` subclass, `make_config`, `info`,
its operations, and one `registry.register(...)` line in `core.default_registry`.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, ClassVar, Mapping

from dvidfs.errors import ExistsError, InvalidInputError, NotFoundError, ReadOnlyError
from dvidfs.store.cache import LRUCache
from dvidfs.store.versioned import VersionView
from dvidfs.versions.dag import LIST_AT_MOST, MergeContext, VersionDB
from dvidfs.versions.model import Instance, Node

MergeFn = Callable[[MergeContext], "bytes | None"]
SummaryFn = Callable[[list[bytes], Instance, list[MergeContext]], list[str]]


class WriteGenerations:
    """How many writes each (instance, version) has had: the one counter of
    "this may have changed".  Caches of decoded blocks, read-ahead layers and
    rendered files put it in their keys, so a write makes what they hold
    unreachable instead of having to find and delete it.

    Bumped by writers under `VersionDB.lock` after their batch is applied;
    read without a lock (a reader takes the number *before* its snapshot, so
    what it renders is never newer-keyed than what it saw)."""

    def __init__(self) -> None:
        self._n: dict[tuple[int, int], int] = {}
        self._epoch = 0   # added to every count: `bump_all` makes everything cached unreachable
        self._lock = threading.Lock()

    def get(self, instance_id: int, version: int) -> int:
        return self._n.get((instance_id, version), 0) + self._epoch

    def bump_all(self) -> None:
        """Everything may have changed (a read-only store caught up with its
        writer without knowing which keys changed)."""
        with self._lock:
            self._epoch += 1

    def bump(self, instance_id: int, version: int) -> None:
        with self._lock:
            k = (instance_id, version)
            self._n[k] = self._n.get(k, 0) + 1


@dataclass(frozen=True)
class TypeContext:
    """What the core hands every data-type object."""

    db: VersionDB
    block_cache: LRUCache | None
    generations: WriteGenerations
    # called (outside every lock) after a write to instance `name` of `node` was
    # applied: the core publishes it to its subscribers (the mount's invalidation)
    changed: Callable[[Node, str], None]


class DataType:
    """Base of every data type: one object per instance, shared by all nodes."""

    typename: ClassVar[str]
    offers: ClassVar[frozenset[str]] = frozenset()
    merge_rules: ClassVar[Mapping[int, MergeFn]] = {}
    key_descriptions: ClassVar[Mapping[int, Callable[[bytes, Instance], str]]] = {}
    key_summaries: ClassVar[Mapping[int, SummaryFn]] = {}

    def __init__(self, ctx: TypeContext, inst: Instance):
        self.ctx = ctx
        self.db = ctx.db
        self.engine = ctx.db.engine
        self.inst = inst
        # set by the core when the instance is deleted: whoever still holds this
        # object (a request, a mount entry) can no longer write through it
        self.deleted = False

    @classmethod
    def make_config(cls, **options) -> dict:
        """The instance's stored configuration from creation options; raises
        InvalidInputError for a bad option (nothing is created then)."""
        raise NotImplementedError

    def info(self, view: VersionView) -> dict:
        """DVID's instance info JSON ("Base" and "Extended") as seen from `view`."""
        return {"Base": {"TypeName": self.typename, "Name": self.inst.name,
                         "RepoUUID": self.db.by_version[view.version].repo, "Versioned": True},
                "Extended": {}}

    def as_view(self, where: "VersionView | Node") -> VersionView:
        """Reads take a VersionView; a Node (what people have in hand) works too."""
        return self.db.view(where) if isinstance(where, Node) else where

    def check_writable(self, node: Node) -> None:
        """Every write of every type starts here: the node must be open and the
        instance must exist there (it was created in an ancestor)."""
        if self.deleted:
            raise NotFoundError(f"data instance {self.inst.name!r} was deleted")
        if node.locked:
            raise ReadOnlyError(f"node {node.uuid} is committed (read-only); make a child node with "
                                "`branch` to change data")
        if self.inst.created_in not in self.db.ancestors(node.version_id):
            raise NotFoundError(f"data instance {self.inst.name!r} does not exist at node {node.uuid}")

    def generation(self, view: VersionView) -> int:
        """Writes applied to this instance in `view`'s version so far.  Capture it
        before taking the snapshot a read uses."""
        return self.ctx.generations.get(self.inst.id, view.version)

    def _applied(self, node: Node) -> None:
        """A batch changing this instance in `node` was applied (under the lock)."""
        self.ctx.generations.bump(self.inst.id, node.version_id)

    def changed_elsewhere(self, version: int | None) -> None:
        """Another process (the writer of a store this one reads) changed this
        instance in `version` (None: in some version): forget what is held of
        it.  Caches keyed by the write generation need nothing more; a type
        keeping other per-version state drops it here."""


class TypeRegistry:
    """Data types by name, and the merge rules and key descriptions they declare
    (the `MergeRules` the version DAG asks when it merges nodes)."""

    def __init__(self) -> None:
        self._types: dict[str, type[DataType]] = {}
        self._rules: dict[int, MergeFn] = {}
        self._describe: dict[int, Callable[[bytes, Instance], str]] = {}
        self._summarize: dict[int, SummaryFn] = {}

    def register(self, cls: type[DataType]) -> type[DataType]:
        name = cls.typename
        if name in self._types:
            raise ExistsError(f"data type {name!r} is already registered")
        for table, mine, what in ((self._rules, cls.merge_rules, "merge rule"),
                                  (self._describe, cls.key_descriptions, "key description"),
                                  (self._summarize, cls.key_summaries, "key summary")):
            for key_class, fn in mine.items():
                if table.get(key_class, fn) is not fn:
                    raise ExistsError(f"{name}: key class {key_class} already has another {what}")
        self._types[name] = cls
        self._rules.update(cls.merge_rules)
        self._describe.update(cls.key_descriptions)
        self._summarize.update(cls.key_summaries)
        return cls

    def get(self, typename: str) -> type[DataType]:
        cls = self._types.get(typename)
        if cls is None:
            raise InvalidInputError(f"unknown data type {typename!r} (known: {', '.join(self.names())})")
        return cls

    def names(self) -> list[str]:
        return sorted(self._types)

    # -- MergeRules (versions/dag.py) --
    def merge_rule(self, key_class: int) -> MergeFn | None:
        return self._rules.get(key_class)

    def describe(self, tk: bytes, inst: Instance) -> str:
        fn = self._describe.get(tk[0])
        return fn(tk, inst) if fn else f"key class {tk[0]} {tk[1:].hex()}"

    def summarize(self, tks: list[bytes], inst: Instance, contexts: list[MergeContext]) -> list[str]:
        """Phrases for the conflicting `tks` of `inst` (`contexts` aligned with
        them), per key class: the class's summary, else each key's description
        when few, else the first three and how many more."""
        by_class: dict[int, tuple[list[bytes], list[MergeContext]]] = {}
        for tk, ctx in zip(tks, contexts):
            group = by_class.setdefault(tk[0], ([], []))
            group[0].append(tk)
            group[1].append(ctx)
        out: list[str] = []
        for key_class, (group, ctxs) in by_class.items():
            fn = self._summarize.get(key_class)
            if fn is not None:
                out += fn(group, inst, ctxs)
            elif len(group) <= LIST_AT_MOST:
                out += [self.describe(tk, inst) for tk in group]
            else:
                out.append(", ".join(self.describe(tk, inst) for tk in group[:3])
                           + f" and {len(group) - 3} more")
        return out
