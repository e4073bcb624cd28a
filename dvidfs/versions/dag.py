"""Repos and the version DAG: nodes, commit, branch, merge, resolve, tags, log,
UUID resolution.

All metadata lives in a few small JSON records (one per repo, one per node)
held in memory and written through to the engine.  Commit, branch and merge
write O(1) records and never touch voxel data.

Concurrency: every mutating call takes `self.lock` (an RLock shared with the
data types' writers), so "check the node is open, then write" cannot race a
commit.  Reads of the in-memory records need no lock: a record's fields are
replaced (a new list or dict), never changed in place.

Failed writes: memory changes only after the batch is applied.  A mutation
stages *copies* of the records it changes (`dataclasses.replace`, new lists),
applies the batch, and only then copies the new field values onto the live
`Node` / `Repo` objects (`_adopt`: other code keeps references to them, e.g.
the mount reads `node.locked` later) and registers new nodes.  So when
`engine.apply` raises (a full disk: `NoSpaceError`) memory still equals the
store, and the operation can simply be retried.  Counters (`_next_id`) live
in the store alone, so a failed batch leaves them as they were too.
"""
from __future__ import annotations

import json
import re
import struct
import threading
from dataclasses import dataclass, field, fields, replace
from typing import Callable, Iterable, Protocol

from dvidfs.errors import (AmbiguousError, ConflictError, ExistsError, InvalidInputError,
                           NotFoundError, ReadOnlyError)
from dvidfs.store import keys, versioned
from dvidfs.store.engine import Batch, OrderedKV, Reader
from dvidfs.store.versioned import VersionView
from dvidfs.versions.model import (MASTER, NAME_RE, TAG_BRANCH, UUID_RE, Instance, Node, Repo, new_uuid,
                                   now)

_REF_RE = re.compile(r"^(?P<prefix>[^:~]*)(?::(?P<branch>[^~]+))?(?:~(?P<back>\d+))?$")
_HEX_RE = re.compile(r"^[0-9a-f]+$")
# metadata key prefix of a deleted instance whose data keys are still being removed
DELETING = "deleting:"

@dataclass
class MergeContext:
    """What a merge function sees for one key changed on several sides."""

    reader: Reader
    instance_id: int
    tkey: bytes
    parents: list[VersionView]   # each parent's view
    base: VersionView            # the common ancestry (nearest value below all parents)

    def parent_values(self) -> list[bytes | None]:
        return [versioned.get(self.reader, self.instance_id, self.tkey, v) for v in self.parents]

    def base_value(self) -> bytes | None:
        return versioned.get(self.reader, self.instance_id, self.tkey, self.base)


class MergeRules(Protocol):
    """What a merge asks of the data types (the core's type registry answers).

    Keys several sides of a merge may change that have a natural merged value
    (extents: union box; max label: max; a body's label index: base + each
    side's change) have a rule: fn(MergeContext) -> merged value (None =
    deleted), raising ConflictError when it cannot merge."""

    def merge_rule(self, key_class: int) -> Callable[[MergeContext], bytes | None] | None:
        """The rule for TKeys of this class byte, or None (then differing values conflict)."""

    def describe(self, tk: bytes, inst: Instance) -> str:
        """A short human description of a TKey of `inst`, for conflict messages."""

    def summarize(self, tks: list[bytes], inst: Instance, contexts: list[MergeContext]) -> list[str]:
        """A few phrases for the conflicting TKeys of `inst` (`contexts` aligned
        with them): what a person edited (the voxels changed on both sides, body
        ids, key names), not key bytes."""


class _NoRules:
    def merge_rule(self, key_class: int):
        return None

    def describe(self, tk: bytes, inst: Instance) -> str:
        return f"key class {tk[0]} {tk[1:].hex()}"

    def summarize(self, tks: list[bytes], inst: Instance, contexts: list[MergeContext]) -> list[str]:
        return [self.describe(tk, inst) for tk in tks[:LIST_AT_MOST]] + (
            [f"and {len(tks) - LIST_AT_MOST} more"] if len(tks) > LIST_AT_MOST else [])


# A refusal lists every key of a kind when there are this few; more are summarised.
LIST_AT_MOST = 5


class MergeConflict(ConflictError):
    """A refused merge.  Its message is short (what and where, per instance, in
    the user's terms); `lines` is the full list, one conflicting key a line
    ("<instance>: <description>"), for a front end to show on request."""

    def __init__(self, summary: str, lines: list[str]):
        super().__init__(summary)
        self.lines = lines


class VersionDB:
    def __init__(self, engine: OrderedKV):
        self.engine = engine
        self.lock = threading.RLock()
        self.repos: dict[str, Repo] = {}
        self.nodes: dict[str, Node] = {}
        self.by_version: dict[int, Node] = {}
        self._anc: dict[int, frozenset[int]] = {}
        self._load()

    # ---------------------------------------------------------------- loading
    def _load(self) -> None:
        self.repos, nodes = self._read_records()
        for n in sorted(nodes.values(), key=lambda n: n.version_id):  # parents first
            self._register(n)

    def _read_records(self) -> tuple[dict[str, Repo], dict[str, Node]]:
        """Every repo record and node record in the store, by root / UUID."""
        p = keys.META + b"repo:"
        repos = {r.root: r for r in (Repo.from_json(json.loads(v))
                                     for _, v in self.engine.scan(p, keys.prefix_end(p)))}
        p = keys.META + b"node:"
        nodes = {n.uuid: n for n in (Node(**json.loads(v)) for _, v in self.engine.scan(p, keys.prefix_end(p)))}
        return repos, nodes

    def follow(self) -> "Followed":
        """Read the records again after another process (the writer of a shared
        object store) changed them, for a store opened read-only: new repos
        and nodes are registered, changed ones take their new field values
        (`_adopt`: the objects everyone holds stay the live ones), deleted ones
        leave.  Dicts are replaced, not changed in place, so lock-free readers
        iterating them are safe.  Returns what changed, for the core to tell
        its caches and subscribers."""
        with self.lock:
            repos, nodes = self._read_records()
            out = Followed()
            live_repos: dict[str, Repo] = {}
            for root, r in repos.items():
                old = self.repos.get(root)
                if old is None:
                    live_repos[root] = r
                    out.new_repos.append(r)
                    continue
                out.gone_instances += [(old, i) for name, i in old.instances.items() if name not in r.instances]
                out.new_instances += [(old, i) for name, i in r.instances.items() if name not in old.instances]
                if old.to_json() != r.to_json():
                    out.changed_repos.append(old)
                    _adopt(old, r)
                live_repos[root] = old
            out.gone_repos = [(r, [n for n in self.nodes.values() if n.repo == r.root])
                              for root, r in self.repos.items() if root not in repos]
            live_nodes: dict[str, Node] = {}
            by_version = dict(self.by_version)
            anc = dict(self._anc)
            for n in sorted(nodes.values(), key=lambda n: n.version_id):  # parents first
                old = self.nodes.get(n.uuid)
                if old is None:
                    live_nodes[n.uuid] = n
                    by_version[n.version_id] = n
                    anc[n.version_id] = _ancestry(n, anc, nodes)
                    out.new_nodes.append(n)
                    continue
                if old.to_json() != n.to_json():
                    out.changed_nodes.append((old, old.locked))
                    _adopt(old, n)
                live_nodes[n.uuid] = old
            self._anc, self.by_version = anc, by_version
            self.repos, self.nodes = live_repos, live_nodes
            return out

    # ------------------------------------------------------------- ancestry
    def ancestors(self, version: int) -> frozenset[int]:
        """Ancestor version ids of `version`, itself included.  Precomputed when a
        node is registered (parents always have smaller version ids), so this is
        a dict lookup however deep the DAG is."""
        return self._anc[version]

    def _index_ancestry(self, node: Node) -> None:
        self._anc[node.version_id] = _ancestry(node, self._anc, self.nodes)

    def view(self, node: Node | str) -> VersionView:
        n = self.node(node) if isinstance(node, str) else node
        return VersionView(n.version_id, self)

    # ------------------------------------------------------------- lookups
    def repo(self, name_or_uuid: str) -> Repo:
        """A repo by alias, by root UUID, or by any node UUID (prefix) in it."""
        for r in self.repos.values():
            if r.alias == name_or_uuid:
                return r
        if name_or_uuid in self.repos:
            return self.repos[name_or_uuid]
        try:
            return self.repos[self.node(name_or_uuid).repo]
        except (NotFoundError, InvalidInputError):
            raise NotFoundError(f"no repo named {name_or_uuid!r}") from None

    def repo_nodes(self, repo: Repo) -> list[Node]:
        return sorted((n for n in self.nodes.values() if n.repo == repo.root),
                      key=lambda n: n.version_id)

    def node(self, ref: str, repo: Repo | None = None) -> Node:
        """Resolve DVID's node references: a unique hex prefix, `prefix:branch`
        (that branch's newest node in the prefix's repo), `:branch` (only with
        one repo, or within `repo`), and `~N` (N-th first-parent ancestor).
        dvidfs also takes a repo name where DVID takes the prefix: `myrepo` is
        its master tip and `myrepo:name` the tip of branch `name`.  A tag name
        stands for its node (DVID's tags are node UUIDs): `v1`, `v1~1` (the
        tagged version), and `myrepo:v1` when no branch is named `v1`."""
        m = _REF_RE.match(ref.strip())
        if not m:
            raise InvalidInputError(f"{ref!r} is not a node reference (UUID prefix, prefix:branch, ~N)")
        prefix, branch, back = m.group("prefix"), m.group("branch"), m.group("back")
        named = [r for r in self.repos.values() if r.alias == prefix]
        # tags have a non-hex character, so a UUID prefix (every request's) never scans for one
        tagged = self.tags().get(prefix) if prefix and not named and not _HEX_RE.match(prefix.lower()) else None
        if tagged is not None and repo is not None and tagged.repo != repo.root:
            tagged = None
        if named:
            repo, prefix, branch = named[0], "", branch or MASTER
        elif tagged is not None and branch is None:
            return self._back(ref, tagged, back)
        elif tagged is not None:
            repo, prefix = self.repos[tagged.repo], ""
        elif prefix and not _HEX_RE.match(prefix.lower()):
            raise NotFoundError(f"no repo or tag named {prefix!r} and not a UUID prefix")
        prefix = prefix.lower()
        if branch is None:
            if not prefix:
                raise InvalidInputError("empty node reference")
            node = self._by_prefix(prefix, repo)
        else:
            if prefix:
                repo = self.repos[self._by_prefix(prefix, repo).repo]
            elif repo is None:
                if len(self.repos) != 1:
                    raise AmbiguousError(f"{ref!r}: `:branch` needs a UUID prefix when the store has "
                                         f"{len(self.repos)} repos")
                repo = next(iter(self.repos.values()))
            node = self._branch_or_tag(repo, branch)
        return self._back(ref, node, back)

    def _branch_or_tag(self, repo: Repo, name: str) -> Node:
        """`:name` is a branch's newest node, else the node tagged `name` in the repo
        (a tag is also the branch "tag-<name>", which `:tag-<name>` names)."""
        try:
            return self.branch_tip(repo, name)
        except NotFoundError:
            node = self.tags().get(name)
            if node is None or node.repo != repo.root:
                raise
            return node

    def _back(self, ref: str, node: Node, back: str | None) -> Node:
        for _ in range(int(back or 0)):
            if not node.parents:
                raise NotFoundError(f"{ref!r}: node {node.uuid} has no parent")
            node = self.nodes[node.parents[0]]
        return node

    def _by_prefix(self, prefix: str, repo: Repo | None) -> Node:
        if UUID_RE.match(prefix) and prefix in self.nodes:
            found = [self.nodes[prefix]]
        else:
            found = [n for u, n in self.nodes.items() if u.startswith(prefix)]
        if repo is not None:
            found = [n for n in found if n.repo == repo.root]
        if not found:
            raise NotFoundError(f"no node with UUID {prefix!r}")
        if len(found) > 1:
            raise AmbiguousError(f"UUID prefix {prefix!r} matches {len(found)} nodes: "
                                 + ", ".join(sorted(n.uuid for n in found)[:5]))
        return found[0]

    def branches(self, repo: Repo) -> dict[str, Node]:
        """Branch name -> newest node of that branch ("master" for the default)."""
        tips: dict[str, Node] = {}
        for n in self.repo_nodes(repo):  # ascending version id = creation order
            tips[n.branch_name] = n
        return tips

    def tags(self, repo: Repo | None = None) -> dict[str, Node]:
        """Tag name -> its node (of one repo, or of the store: tags are unique in it,
        as DVID's, which are node UUIDs)."""
        return {n.tag: n for n in self.nodes.values() if n.tag and (repo is None or n.repo == repo.root)}

    def branch_tip(self, repo: Repo, branch: str) -> Node:
        tip = self.branches(repo).get(branch)
        if tip is None:
            raise NotFoundError(f"no branch {branch!r} in repo {repo.alias!r}")
        return tip

    # ------------------------------------------------------------- writing
    def _next_id(self, batch: Batch, counter: str) -> int:
        k = keys.meta_key("counter:" + counter)
        nxt = self.last_id(counter) + 1
        # batches are applied under self.lock, so no other writer sees the old value
        batch.put(k, struct.pack(">I", nxt))
        return nxt

    def last_id(self, counter: str) -> int:
        """The newest id handed out by counter `counter` (0 if none yet)."""
        raw = self.engine.get(keys.meta_key("counter:" + counter))
        return struct.unpack(">I", raw)[0] if raw else 0

    def _save(self, batch: Batch, obj: Repo | Node) -> None:
        if isinstance(obj, Repo):
            batch.put(keys.meta_key("repo:" + obj.root), json.dumps(obj.to_json()).encode())
        else:
            batch.put(keys.meta_key("node:" + obj.uuid), json.dumps(obj.to_json()).encode())

    def _add_node(self, batch: Batch, repo: Repo, parents: list[Node], branch: str, note: str,
                  uuid: str | None, log: list[str] | None = None, locked: bool = False,
                  tag: str = "") -> tuple[Node, list[Node]]:
        """Stage a new node and its parents' new `children`: returns the node
        (not registered yet) and staged copies of the parents, for `_link`
        once the batch is applied.  Nothing in memory changes here."""
        for p in parents:
            self._check_live(p)
        uid = (uuid or new_uuid()).lower()
        if not UUID_RE.match(uid):
            raise InvalidInputError(f"{uid!r} is not a UUID (32 lowercase hex characters)")
        if uid in self.nodes:
            raise ExistsError(f"node {uid} already exists")
        node = Node(uuid=uid, version_id=self._next_id(batch, "version"), repo=repo.root,
                    branch=branch, note=note, parents=[p.uuid for p in parents], log=list(log or ()),
                    locked=locked, tag=tag)
        staged = [replace(p, children=[*p.children, uid], updated=now()) for p in parents]
        for p in staged:
            self._save(batch, p)
        self._save(batch, node)
        return node, staged

    def _link(self, node: Node, parents: list[Node], staged: list[Node]) -> None:
        """After the batch of `_add_node` was applied: the live parents take their
        staged records and the node is registered."""
        for p, s in zip(parents, staged):
            _adopt(p, s)
        self._register(node)

    def _register(self, node: Node) -> None:
        self.nodes[node.uuid] = node
        self.by_version[node.version_id] = node
        self._index_ancestry(node)

    def new_repo(self, alias: str, description: str = "", root: str | None = None) -> Repo:
        if not NAME_RE.match(alias) or _HEX_RE.match(alias.lower()):
            raise InvalidInputError(f"{alias!r} is not a valid repo name (letters, digits, _ . + -, and "
                                    "at least one non-hex character so it cannot be taken for a UUID prefix)")
        with self.lock:
            if any(r.alias == alias for r in self.repos.values()):
                raise ExistsError(f"a repo named {alias!r} already exists")
            if alias in self.tags():
                raise ExistsError(f"{alias!r} is a tag: a repo name must differ from every tag")
            batch = Batch()
            # both records are new objects: nothing in memory changes until the apply succeeds
            repo = Repo(root="", alias=alias, description=description)
            node, _ = self._add_node(batch, repo, [], "", "root", root)
            node.repo = repo.root = node.uuid
            self._save(batch, node)
            self._save(batch, repo)
            self.engine.apply(batch, sync=True)
            self.repos[repo.root] = repo
            self._register(node)
            return repo

    def commit(self, node: Node, note: str = "", log: Iterable[str] = ()) -> Node:
        with self.lock:
            if node.locked:
                raise ReadOnlyError(f"node {node.uuid} is already committed")
            staged = replace(node, locked=True, note=note or node.note,
                             log=[*node.log, *log], updated=now())
            return self._save_node(node, staged)

    def branch(self, parent: Node, name: str | None = None, note: str = "",
               uuid: str | None = None) -> Node:
        """A child of a committed node.  With `name`: a new branch (unique name);
        without: a new version on the parent's branch (one per parent)."""
        with self.lock:
            if not parent.locked:
                raise InvalidInputError(f"node {parent.uuid} is open: commit it before making a child "
                                        "(children can only come from committed nodes)")
            repo = self.repos[parent.repo]
            if name is None or name == parent.branch_name:
                branch = parent.branch
                same = [c for c in parent.children if self.nodes[c].branch == branch]
                if same:
                    raise ExistsError(f"node {parent.uuid} already has a child on branch "
                                      f"{parent.branch_name!r} ({same[0]}); name a new branch instead")
            else:
                if not NAME_RE.match(name) or UUID_RE.match(name) or name == MASTER:
                    raise InvalidInputError(f"{name!r} is not a valid branch name")
                if name in self.branches(repo):
                    raise ExistsError(f"branch {name!r} already exists in repo {repo.alias!r}")
                branch = name
            batch = Batch()
            node, staged = self._add_node(batch, repo, [parent], branch, note, uuid)
            self.engine.apply(batch, sync=True)
            self._link(node, [parent], staged)
            return node

    def tag(self, parent: Node, name: str, note: str = "", uuid: str | None = None) -> Node:
        """DVID's tag: a committed child of committed `parent` on branch "tag-<name>",
        made in one batch.  DVID makes the tag string the child's UUID; here UUIDs
        stay 32 hex digits and the name is the node's `tag`, which node
        references resolve (`name`, `repo:name`, `prefix:name`, `name~1`)."""
        with self.lock:
            if not parent.locked:
                raise InvalidInputError(f"node {parent.uuid} is open: commit it before tagging it "
                                        "(a tag names a version that can no longer change)")
            if not NAME_RE.match(name) or _HEX_RE.match(name.lower()):
                raise InvalidInputError(f"{name!r} is not a valid tag (letters, digits, _ . + -, and at least "
                                        "one non-hex character so it cannot be taken for a UUID prefix)")
            if name in self.tags():
                raise ExistsError(f"tag {name!r} already names node {self.tags()[name].uuid}")
            if any(r.alias == name for r in self.repos.values()):
                raise ExistsError(f"{name!r} is a repo name: a tag must differ from every repo name")
            repo = self.repos[parent.repo]
            branch = TAG_BRANCH + name
            if branch in self.branches(repo) or name in self.branches(repo):
                raise ExistsError(f"repo {repo.alias!r} already has a branch named {name!r} or {branch!r}")
            batch = Batch()
            node, staged = self._add_node(batch, repo, [parent], branch,
                                          note or f"Tag of version {parent.uuid} with {name!r}", uuid,
                                          locked=True, tag=name)
            self.engine.apply(batch, sync=True)
            self._link(node, [parent], staged)
            return node

    def merge(self, parents: list[Node], note: str = "", uuid: str | None = None,
              rules: MergeRules | None = None) -> Node:
        """A new open node whose parents are all `parents` (committed, same repo).
        Refused, naming the keys, when a key was changed on more than one side
        since the common ancestor and the sides' values differ (unless `rules`
        has a merge rule for its class, in which case the merged value is
        written in the new node)."""
        rules = rules or _NoRules()
        with self.lock:
            self._check_mergeable(parents)
            merged_values, conflicts, _ = self._merge_plan(parents, rules)
            if conflicts:
                raise self._conflict_error(parents, conflicts, rules)
            return self._write_merge(parents, merged_values, note, uuid)

    def _check_mergeable(self, parents: list[Node]) -> None:
        if len(parents) < 2 or len({p.uuid for p in parents}) != len(parents):
            raise InvalidInputError("a merge needs two or more different parent nodes")
        for p in parents:
            if not p.locked:
                raise InvalidInputError(f"node {p.uuid} is open: commit it before merging")
            if p.repo != parents[0].repo:
                raise InvalidInputError("merge parents must be in the same repo")

    def _conflict_error(self, parents: list[Node], conflicts: list[tuple[int, bytes]],
                        rules: MergeRules, what: str = "merge") -> MergeConflict:
        """The refusal: per instance, what the data types say of its conflicting
        keys (read from the parents and the common ancestry), and the full list."""
        by_id = {i.id: i for i in self.repos[parents[0].repo].instances.values()}
        lines = [f"{by_id[inst].name}: {rules.describe(tk, by_id[inst])}" for inst, tk in conflicts]
        per_inst: dict[int, list[bytes]] = {}
        for inst, tk in conflicts:
            per_inst.setdefault(inst, []).append(tk)
        shown: list[str] = []
        sides = [self.ancestors(p.version_id) for p in parents]
        base = _FutureMerge(self, frozenset.intersection(*sides)).view
        views = [self.view(p) for p in parents]
        with self.engine.snapshot() as snap:
            for inst, tks in per_inst.items():
                ctxs = [MergeContext(snap, inst, tk, views, base) for tk in tks]
                shown += [f"{by_id[inst].name}: {s}" for s in rules.summarize(tks, by_id[inst], ctxs)]
        return MergeConflict(f"{what} refused: {len(conflicts)} key(s) changed differently on more than "
                             f"one side: " + "; ".join(shown), lines)

    def merge_conflicts(self, parents: list[Node], rules: MergeRules | None = None) -> list[str]:
        """What a merge of `parents` would be refused for, one key a line (empty:
        the merge would succeed).  Writes nothing."""
        rules = rules or _NoRules()
        with self.lock:
            self._check_mergeable(parents)
            _, conflicts, _ = self._merge_plan(parents, rules)
            return self._conflict_error(parents, conflicts, rules).lines if conflicts else []

    def resolve(self, parents: list[Node], note: str = "", uuid: str | None = None,
                rules: MergeRules | None = None, data: Iterable[str] | None = None,
                resolvable: Callable[[Instance], str | None] | None = None) -> Node:
        """DVID's resolve: a merge node of `parents` given in priority order, where
        each conflicting key takes its value from the first parent (in that order)
        whose side changed it — the losing sides' conflicting keys are dropped.
        `data`: the instance names to resolve (default: all); a conflict in any
        other instance refuses the whole resolve, as a merge would be refused.
        `resolvable(instance)` may name why an instance cannot be resolved key by
        key (derived keys such as a label index would go stale): then a conflict
        in it refuses too.  DVID commits a deletion node per losing parent first;
        here the winners are written straight into the one new node, which reads
        the same and leaves the parents' branches as they were."""
        rules = rules or _NoRules()
        with self.lock:
            self._check_mergeable(parents)
            repo = self.repos[parents[0].repo]
            by_name = self.instances_at(parents[0])
            for p in parents[1:]:
                by_name.update(self.instances_at(p))
            names = set(by_name) if data is None else set(data)
            for n in names:
                if n not in by_name:
                    raise NotFoundError(f"no data instance {n!r} in the parents of this resolve")
            chosen = {by_name[n].id for n in names}
            merged_values, conflicts, changed = self._merge_plan(parents, rules)
            by_id = {i.id: i for i in repo.instances.values()}
            refused = [(i, tk) for i, tk in conflicts if i not in chosen]
            why = {}
            if resolvable is not None:
                for i in {i for i, _ in conflicts if i in chosen}:
                    reason = resolvable(by_id[i])
                    if reason:
                        why[by_id[i].name] = reason
                        refused += [(j, tk) for j, tk in conflicts if j == i]
            if refused:
                err = self._conflict_error(parents, sorted(refused), rules, "resolve")
                if why:
                    err = MergeConflict(err.message + " — cannot resolve " + "; ".join(
                        f"{n}: {r}" for n, r in sorted(why.items())), err.lines)
                raise err
            with self.engine.snapshot() as snap:  # under the lock: the store is as _merge_plan saw it
                for inst, tk in conflicts:
                    winner = next(i for i, c in enumerate(changed) if (inst, tk) in c)
                    merged_values[(inst, tk)] = versioned.get(snap, inst, tk, self.view(parents[winner]))
            log = [f"resolve of {', '.join(p.uuid for p in parents)} (priority order): "
                   f"{len(conflicts)} conflicting key(s) taken from the first parent that changed them"]
            return self._write_merge(parents, merged_values, note, uuid, log)

    def _write_merge(self, parents: list[Node], merged_values: dict, note: str, uuid: str | None,
                     log: list[str] | None = None) -> Node:
        """Stage the merge node and the merged values, apply, link (under the lock)."""
        repo = self.repos[parents[0].repo]
        batch = Batch()
        node, staged = self._add_node(batch, repo, parents, parents[0].branch, note, uuid, log)
        for (inst, tk), value in merged_values.items():
            if value is None:
                versioned.delete(batch, inst, tk, node.version_id)
            else:
                versioned.put(batch, inst, tk, node.version_id, value)
        self.engine.apply(batch, sync=True)
        self._link(node, parents, staged)
        return node

    def _merge_plan(self, parents: list[Node], rules: MergeRules):
        """Keys changed on 2+ sides since the common ancestors are read exactly as
        the future merge node would read them (DVID's lazy rule); those whose
        nearest values still differ are conflicts, or get a merged value.
        Returns (merged values, conflicts, the keys each side changed)."""
        sides = [self.ancestors(p.version_id) for p in parents]
        common = frozenset.intersection(*sides)
        future = _FutureMerge(self, frozenset.union(*sides))
        base = _FutureMerge(self, common)
        touched: dict[tuple[int, bytes], int] = {}
        changed: list[set[tuple[int, bytes]]] = []
        with self.engine.snapshot() as snap:
            for side in sides:
                seen: set[tuple[int, bytes]] = set()
                for v in side - common:
                    seen.update(versioned.changed_keys(snap, v))
                for k in seen:
                    touched[k] = touched.get(k, 0) + 1
                changed.append(seen)
            merged, conflicts = {}, []
            for (inst, tk), count in sorted(touched.items()):
                if count < 2:
                    continue
                try:
                    versioned.get(snap, inst, tk, future.view)
                    continue
                except ConflictError:
                    pass
                fn = rules.merge_rule(tk[0])
                if fn is None:
                    conflicts.append((inst, tk))
                    continue
                try:
                    merged[(inst, tk)] = fn(MergeContext(snap, inst, tk, [self.view(p) for p in parents],
                                                         base.view))
                except ConflictError:
                    conflicts.append((inst, tk))
        return merged, conflicts, changed

    def append_log(self, node: Node, lines: Iterable[str]) -> Node:
        """Log lines may be added to committed nodes too (DVID issue #133 asked for it)."""
        with self.lock:
            return self._save_node(node, replace(node, log=[*node.log, *(l for l in lines if l)],
                                                 updated=now()))

    def update_repo(self, repo: Repo, alias: str | None = None, description: str | None = None,
                    log: Iterable[str] = ()) -> Repo:
        """Rename or re-describe a repo, or append lines to its log (DVID's
        POST repo info / repo log)."""
        with self.lock:
            self._check_live(repo)
            changes: dict = {"updated": now()}
            if alias is not None and alias != repo.alias:
                if not NAME_RE.match(alias) or _HEX_RE.match(alias.lower()):
                    raise InvalidInputError(f"{alias!r} is not a valid repo name")
                if any(r.alias == alias for r in self.repos.values()):
                    raise ExistsError(f"a repo named {alias!r} already exists")
                if alias in self.tags():
                    raise ExistsError(f"{alias!r} is a tag: a repo name must differ from every tag")
                changes["alias"] = alias
            if description is not None:
                changes["description"] = description
            lines = [l for l in log if l]
            if lines:
                changes["log"] = [*repo.log, *lines]
            staged = replace(repo, **changes)
            batch = Batch()
            self._save(batch, staged)
            self.engine.apply(batch, sync=True)
            _adopt(repo, staged)
            return repo

    def set_note(self, node: Node, note: str) -> Node:
        with self.lock:
            return self._save_node(node, replace(node, note=note, updated=now()))

    def _save_node(self, node: Node, staged: Node) -> Node:
        """Write `staged` (a changed copy of live `node`), then let `node` take it.
        Synced like every DAG record, so memory shows only what is on disk."""
        self._check_live(node)
        batch = Batch()
        self._save(batch, staged)
        self.engine.apply(batch, sync=True)
        _adopt(node, staged)
        return node

    def new_instance(self, node: Node, name: str, typename: str, config: dict) -> Instance:
        """Instances are created in an open node and seen by it and its descendants."""
        with self.lock:
            if node.locked:
                raise ReadOnlyError(f"node {node.uuid} is committed: create data instances in an open node")
            if not NAME_RE.match(name) or UUID_RE.match(name):
                raise InvalidInputError(f"{name!r} is not a valid data instance name")
            self._check_live(node)
            repo = self.repos[node.repo]
            if name in repo.instances:
                raise ExistsError(f"repo {repo.alias!r} already has a data instance named {name!r}")
            batch = Batch()
            inst = Instance(name=name, id=self._next_id(batch, "instance"), typename=typename,
                            created_in=node.version_id, config=config)
            staged = replace(repo, instances={**repo.instances, name: inst}, updated=now())
            self._save(batch, staged)
            self.engine.apply(batch, sync=True)
            _adopt(repo, staged)
            return inst

    # ------------------------------------------------------------- deletion
    def _check_live(self, obj: Node | Repo) -> None:
        """Refuse to write the record of a node or repo that was deleted (a stale
        object someone still holds): saving it would bring back a node whose
        repo is gone."""
        live = self.nodes.get(obj.uuid) if isinstance(obj, Node) else self.repos.get(obj.root)
        if live is not obj:
            what = f"node {obj.uuid}" if isinstance(obj, Node) else f"repo {obj.alias!r}"
            raise NotFoundError(f"{what} was deleted")

    def pending_deletions(self) -> dict[int, list[int]]:
        """Instance id -> version ids of its repo, for every deleted instance whose
        data keys may still be in the store (DELETING markers)."""
        p = keys.meta_key(DELETING)
        out = {}
        for _, v in self.engine.scan(p, keys.prefix_end(p)):
            d = json.loads(v)
            out[int(d["instance"])] = [int(x) for x in d["versions"]]
        return out

    def _stage_deletion(self, batch: Batch, repo: Repo, inst: Instance) -> None:
        """The marker that makes the data keys of `inst` garbage: written in the
        batch that removes its metadata, removed once its keys are gone."""
        versions = [n.version_id for n in self.repo_nodes(repo)]
        batch.put(keys.meta_key(f"{DELETING}{inst.id:010d}"),
                  json.dumps({"instance": inst.id, "repo": repo.root, "name": inst.name,
                              "versions": versions}).encode())

    def delete_instance(self, repo: Repo, name: str) -> Instance:
        """DVID's data deletion: instance `name` leaves the repo in every node, in
        one synced batch that also records a DELETING marker; its data keys are
        removed afterwards (`purge_instance`).  Ids are never reused, so keys
        left behind by a crash are never visible again."""
        with self.lock:
            self._check_live(repo)
            inst = repo.instances.get(name)
            if inst is None:
                raise NotFoundError(f"no data instance {name!r} in repo {repo.alias!r}")
            batch = Batch()
            staged = replace(repo, instances={k: v for k, v in repo.instances.items() if k != name},
                             log=[*repo.log, f"deleted data instance {name!r} ({inst.typename})"],
                             updated=now())
            self._save(batch, staged)
            self._stage_deletion(batch, repo, inst)
            self.engine.apply(batch, sync=True)
            _adopt(repo, staged)
            return inst

    def delete_repo(self, repo: Repo) -> list[Node]:
        """DVID's repo deletion: the repo record, every node record and a DELETING
        marker per instance, in one synced batch; returns the deleted nodes."""
        with self.lock:
            self._check_live(repo)
            nodes = self.repo_nodes(repo)
            batch = Batch()
            for inst in repo.instances.values():
                self._stage_deletion(batch, repo, inst)
            for n in nodes:
                batch.delete(keys.meta_key("node:" + n.uuid))
            batch.delete(keys.meta_key("repo:" + repo.root))
            self.engine.apply(batch, sync=True)
            del self.repos[repo.root]
            # by_version and the ancestry index keep the old versions (small): a
            # lock-free read already under way in a deleted node still resolves
            for n in nodes:
                self.nodes.pop(n.uuid, None)
            return nodes

    def purge_instance(self, instance_id: int, versions: list[int], budget: int = 10_000,
                       stop: Callable[[], bool] = lambda: False) -> bool:
        """Remove the data keys of deleted instance `instance_id` in batches of at
        most `budget` keys (its blocks, tombstone markers, change-index entries
        of `versions` and its max-label record), then its DELETING marker.
        Returns False if `stop()` said to stop first (the marker stays: the rest
        is removed at the next open).  Each batch takes the lock only to apply."""
        iid = keys.u32(instance_id)
        ranges = [(p, keys.prefix_end(p)) for p in
                  [keys.instance_prefix(instance_id), keys.TOMBSTONED + iid,
                   *(keys.change_prefix(v) + iid for v in versions)]]
        for lo, hi in ranges:
            while True:
                if stop():
                    return False
                batch = Batch()
                for k in self.engine.scan(lo, hi, include_value=False):
                    batch.delete(k)
                    if len(batch) >= budget:
                        break
                if not len(batch):
                    break
                with self.lock:
                    self.engine.apply(batch)
                if len(batch) < budget:
                    break
                lo = batch.ops[-1][0] + b"\x00"  # go on after the last key removed
        batch = Batch()
        batch.delete(keys.meta_key(f"maxlabel:{instance_id}"))
        batch.delete(keys.meta_key(f"{DELETING}{instance_id:010d}"))
        with self.lock:
            self.engine.apply(batch, sync=True)
        return True

    def instances_at(self, node: Node) -> dict[str, Instance]:
        anc = self.ancestors(node.version_id)
        return {k: v for k, v in sorted(self.repos[node.repo].instances.items())
                if v.created_in in anc}

    def history(self, node: Node) -> list[Node]:
        """The node and its ancestors, newest first (DVID's log walk, all parents)."""
        return sorted((self.by_version[v] for v in self.ancestors(node.version_id)),
                      key=lambda n: -n.version_id)


@dataclass
class Followed:
    """What `VersionDB.follow` found changed by another process."""

    new_repos: list[Repo] = field(default_factory=list)
    changed_repos: list[Repo] = field(default_factory=list)
    new_instances: list[tuple[Repo, Instance]] = field(default_factory=list)
    gone_repos: list[tuple[Repo, list[Node]]] = field(default_factory=list)   # with their nodes
    new_nodes: list[Node] = field(default_factory=list)
    changed_nodes: list[tuple[Node, bool]] = field(default_factory=list)      # (node, was locked)
    gone_instances: list[tuple[Repo, Instance]] = field(default_factory=list)


def _ancestry(node: Node, anc: dict[int, frozenset[int]], nodes: dict[str, Node]) -> frozenset[int]:
    """`node`'s version and its ancestors', given the ancestry of its parents."""
    s = {node.version_id}
    for p in node.parents:
        s |= anc[nodes[p].version_id]
    return frozenset(s)


def _adopt(live: Node | Repo, staged: Node | Repo) -> None:
    """Give the live record (the object everyone holds) the staged record's
    field values: each field is replaced whole, never changed in place, so a
    lock-free reader sees the old or the new value of a field."""
    for f in fields(live):
        setattr(live, f.name, getattr(staged, f.name))


class _FutureMerge:
    """The ancestry a merge node of these parents would have, before it exists."""

    SENTINEL = -1

    def __init__(self, db: VersionDB, union: frozenset[int]):
        self.db, self.union = db, union | {self.SENTINEL}
        self.view = VersionView(self.SENTINEL, self)

    def ancestors(self, version: int) -> frozenset[int]:
        return self.union if version == self.SENTINEL else self.db.ancestors(version)
