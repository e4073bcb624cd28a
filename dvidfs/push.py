"""push / pull of committed versions between two stores, and diff of two versions.

push(src, dst, ...) sends the committed nodes of a repo that `dst` lacks, with
exactly the keys those versions wrote (read from the `changes` index of each
version, never a whole volume), keeping UUIDs.  `pull` is the same call with
the roles named the other way round.

Ids.  Version ids and instance ids are per-store counters, and data keys embed
both (`0x01 | instance u32 | TKey | version u32 | …`, `0x03 | version u32 |
instance u32 | TKey`, `0x04 | instance u32 | version u32`).  So a pushed node
gets a fresh version id from dst's counter, a pushed instance a fresh instance
id, and every key is rewritten field by field while copied.  Values are copied
byte for byte, with one exception: a keyvalue manifest (a large value's head)
names the version of its blob, which is mapped too; the blob's chunks (not in
the change index) are sent with the version that owns them.  DVID's repo-wide
counters a value may depend on (the mutation id counter, each labels
instance's repo-wide max label) are raised in dst to at least src's.

Resumability.  Nodes are sent oldest first (version id order = creation order,
so parents before children).  Before a node's keys are sent, its dst version
id (and the ids of instances it created) are reserved in one batch that bumps
dst's counters and records `push:…` reservation keys; a re-run reuses them.
Its keys then go in batches of plain puts (idempotent); they are invisible in
dst because no node of dst has that version id yet.  Last, one batch writes the
node record, its parent's new `children`, the instances it created, the
counters, and removes the reservations.  Killed anywhere, a re-run finds the
node absent (or present and complete), reuses the same ids and re-puts the
same keys: it completes and duplicates nothing.

Diverged history: a node present in both stores with different parents or
repo, or open in dst, is refused with its UUID named; so is a repo name that
dst gives a different repo, or an instance whose type or creating node differs.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field, replace
from typing import Callable

from dvidfs.core import Dvid
from dvidfs.data import keyvalue as kvmod
from dvidfs.errors import ConflictError, InvalidInputError, NotFoundError
from dvidfs.store import keys, versioned
from dvidfs.store.engine import Batch
from dvidfs.versions.model import Instance, Node, Repo

BATCH_KEYS = 2000            # change-index entries per batch (at most)
BATCH_BYTES = 32 << 20       # value bytes per batch (at most, but for one oversized value)
_U32 = struct.Struct(">I")
_Q = struct.Struct("<Q")


@dataclass
class PushReport:
    sent: list[str] = field(default_factory=list)      # UUIDs of nodes sent, oldest first
    present: list[str] = field(default_factory=list)   # UUIDs dst already had
    keys: int = 0                                      # data/tombstone/index keys written
    bytes: int = 0                                     # value bytes written
    repos_created: list[str] = field(default_factory=list)


Progress = Callable[[int, int], None]   # (entries done in this step, total entries)


# ---------------------------------------------------------------- choosing nodes
def _closure(src: Dvid, nodes: list[Node]) -> list[Node]:
    """The nodes and all their ancestors, oldest first."""
    out: dict[str, Node] = {}
    for n in nodes:
        for v in src.db.ancestors(n.version_id):
            a = src.db.by_version[v]
            out[a.uuid] = a
    return sorted(out.values(), key=lambda n: n.version_id)


def select(src: Dvid, nodes: list[Node] | None = None, branch: str | None = None,
           repo: str | None = None) -> list[Node]:
    """The src nodes a push sends (with their ancestors), oldest first: `nodes`,
    or the tip of `branch` (in `repo`, or the only repo), or every committed
    node (of `repo`, or of every repo)."""
    if nodes:
        chosen = list(nodes)
    elif branch is not None:
        repos = [src.repo(repo)] if repo else src.repos()
        if len(repos) != 1:
            raise InvalidInputError(f"--branch needs --repo: the store has {len(repos)} repos")
        n = src.branch_tip(repos[0], branch)
        # the tip of a branch is usually open: send the branch's newest committed node
        while not n.locked and n.parents and src.node_by_uuid(n.parents[0]).branch == n.branch:
            n = src.node_by_uuid(n.parents[0])
        if not n.locked:
            raise InvalidInputError(f"branch {branch!r} has no committed node to push")
        chosen = [n]
    else:
        repos = [src.repo(repo)] if repo else src.repos()
        chosen = [n for r in repos for n in src.repo_nodes(r) if n.locked]
    for n in chosen:
        if not n.locked:
            raise InvalidInputError(f"node {n.uuid} is open: commit it before pushing "
                                    "(only committed nodes travel)")
    return _closure(src, chosen)


# ---------------------------------------------------------------- the push
def push(src: Dvid, dst: Dvid, nodes: list[Node] | None = None, branch: str | None = None,
         progress: Progress | None = None, repo: str | None = None) -> PushReport:
    """Send the committed `nodes` (and their ancestors), or the tip of `branch`,
    or every committed node, from `src` to `dst` (see the module doc)."""
    todo = select(src, nodes, branch, repo)
    report = PushReport()
    send: list[Node] = []
    for n in todo:
        if _check_present(src, dst, n):
            report.present.append(n.uuid)
        else:
            send.append(n)
    _check_repos(src, dst, send)
    total = sum(_count_changes(src, n) for n in send)
    if progress:
        progress(0, total)
    for n in send:
        _send_node(src, dst, n, report, progress, total)
    return report


def pull(src: Dvid, dst: Dvid, nodes: list[Node] | None = None, branch: str | None = None,
         progress: Progress | None = None, repo: str | None = None) -> PushReport:
    """`dst` fetches from `src`: the same transfer as push (git's naming)."""
    return push(src, dst, nodes, branch, progress, repo)


def _check_present(src: Dvid, dst: Dvid, n: Node) -> bool:
    d = dst.db.nodes.get(n.uuid)
    if d is None:
        return False
    if d.repo != n.repo or list(d.parents) != list(n.parents):
        raise ConflictError(f"diverged history: node {n.uuid} has parents "
                            f"{', '.join(d.parents) or 'none'} in the destination but "
                            f"{', '.join(n.parents) or 'none'} in the source; refusing to overwrite")
    if not d.locked:
        raise ConflictError(f"diverged history: node {n.uuid} is open in the destination (it may hold "
                            "changes the source lacks); refusing to overwrite")
    return True


def _check_repos(src: Dvid, dst: Dvid, send: list[Node]) -> None:
    for root in {n.repo for n in send}:
        r = src.db.repos[root]
        for other in dst.db.repos.values():
            if other.alias == r.alias and other.root != root:
                raise ConflictError(f"the destination has a different repo named {r.alias!r} "
                                    f"(root {other.root}, the source's is {root})")
        d = dst.db.repos.get(root)
        if d is None:
            continue
        for name, inst in r.instances.items():
            di = d.instances.get(name)
            if di is None:
                continue
            creator = src.db.by_version[inst.created_in].uuid
            dcreator = dst.db.by_version.get(di.created_in)
            if di.typename != inst.typename or dcreator is None or dcreator.uuid != creator:
                raise ConflictError(f"diverged history: data instance {name!r} of repo {r.alias!r} "
                                    f"differs in the destination (type {di.typename}, created in "
                                    f"{dcreator.uuid if dcreator else '?'}; the source's: "
                                    f"{inst.typename}, created in {creator})")


def _count_changes(src: Dvid, n: Node) -> int:
    p = keys.change_prefix(n.version_id)
    return sum(1 for _ in src.engine.scan(p, keys.prefix_end(p), include_value=False))


def _reserve(dst: Dvid, name: str, counter: str) -> int:
    """A dst id for `name` (a reservation key), reserved once: counter bump and
    reservation in one batch, so a re-run after a crash gets the same id."""
    k = keys.meta_key("push:" + name)
    with dst.db.lock:
        raw = dst.engine.get(k)
        if raw is not None:
            return _U32.unpack(raw)[0]
        batch = Batch()
        new = dst.db._next_id(batch, counter)
        batch.put(k, _U32.pack(new))
        dst.engine.apply(batch, sync=True)
        return new


def _send_node(src: Dvid, dst: Dvid, n: Node, report: PushReport, progress: Progress | None,
               total: int) -> None:
    srepo = src.db.repos[n.repo]
    vmap = _version_map(src, dst, n)
    v = _reserve(dst, f"version:{n.uuid}", "version")
    vmap[n.version_id] = v
    created = [i for i in srepo.instances.values() if i.created_in == n.version_id]
    imap = _instance_map(dst, n.repo)
    for inst in created:
        if inst.name not in imap:
            imap[inst.name] = _reserve(dst, f"instance:{n.repo}:{inst.name}", "instance")
    by_id = {i.id: i for i in srepo.instances.values()}
    ids = {i.id: imap[i.name] for i in srepo.instances.values() if i.name in imap}

    # the keys, in batches of plain puts (invisible in dst until the node record exists)
    p = keys.change_prefix(n.version_id)
    batch, count, size, seen_inst = Batch(), 0, 0, set()
    with src.engine.snapshot() as snap:
        for ck in snap.scan(p, keys.prefix_end(p), include_value=False):
            _, inst_id, tk = keys.split_change_key(ck)
            if inst_id not in ids:
                raise ConflictError(f"node {n.uuid} writes to instance id {inst_id} that its repo "
                                    "does not name; the source store is inconsistent")
            di = ids[inst_id]
            seen_inst.add(inst_id)
            before = report.bytes
            batch.put(keys.change_key(v, di, tk), b"")
            for tomb in (False, True):
                val = snap.get(keys.data_key(inst_id, tk, n.version_id, tomb))
                if val is None:
                    continue
                if not tomb and by_id[inst_id].typename == kvmod.KeyValue.typename:
                    val = _keyvalue_head(snap, batch, report, inst_id, di, n.version_id, val, vmap)
                batch.put(keys.data_key(di, tk, v, tomb), val)
                report.bytes += len(val)
                report.keys += 1
            count += 1
            size += report.bytes - before
            if count >= BATCH_KEYS or len(batch) >= 4 * BATCH_KEYS or size >= BATCH_BYTES:
                dst.engine.apply(batch)
                if progress:
                    progress(count, total)
                batch, count, size = Batch(), 0, 0
        # the last batch: the remaining keys, then the records that make the node exist
        for inst_id in seen_inst:
            if snap.get(keys.tombstoned_key(inst_id, n.version_id)) is not None:
                batch.put(keys.tombstoned_key(ids[inst_id], v), b"")
        if batch:
            dst.engine.apply(batch)
            batch = Batch()
        if progress and count:
            progress(count, total)
        with dst.db.lock:
            _finish(src, dst, n, v, srepo, created, imap, batch, report)


def _keyvalue_head(snap, batch: Batch, report: PushReport, inst_id: int, di: int, version: int,
                   head: bytes, vmap: dict[int, int]) -> bytes:
    """A keyvalue head with its manifest's blob version mapped; a blob owned
    by this version is sent with it (its chunks are not in the change index)."""
    m = kvmod._Manifest.parse(head)
    if m is None:
        return head
    if m.version not in vmap:
        raise ConflictError(f"a large value refers to version {m.version}, which is not an ancestor "
                            "being pushed; the source store is inconsistent")
    if m.version == version:
        for i in range(m.nchunks):
            chunk = snap.get(m.chunk_key(inst_id, i))
            if chunk is None:
                continue
            dm = kvmod._Manifest(m.size, m.chunk, vmap[version], m.blob)
            batch.put(dm.chunk_key(di, i), chunk)
            report.bytes += len(chunk)
            report.keys += 1
    return kvmod._Manifest(m.size, m.chunk, vmap[m.version], m.blob).encode()


def _version_map(src: Dvid, dst: Dvid, n: Node) -> dict[int, int]:
    """src version id -> dst version id for the node's ancestors (all in dst by now)."""
    out = {}
    for a in src.db.ancestors(n.version_id):
        if a == n.version_id:
            continue
        d = dst.db.nodes.get(src.db.by_version[a].uuid)
        if d is None:
            raise NotFoundError(f"ancestor {src.db.by_version[a].uuid} of {n.uuid} is not in the "
                                "destination")
        out[a] = d.version_id
    return out


def _instance_map(dst: Dvid, root: str) -> dict[str, int]:
    """Instance name -> dst instance id: dst's instances, and reservations of an unfinished push."""
    out: dict[str, int] = {}
    r = dst.db.repos.get(root)
    if r is not None:
        out.update({name: i.id for name, i in r.instances.items()})
    p = keys.meta_key(f"push:instance:{root}:")
    for k, raw in dst.engine.scan(p, keys.prefix_end(p)):
        out.setdefault(k[len(p):].decode(), _U32.unpack(raw)[0])
    return out


def _finish(src: Dvid, dst: Dvid, n: Node, v: int, srepo: Repo, created: list[Instance],
            imap: dict[str, int], batch: Batch, report: PushReport) -> None:
    """One batch that makes the node exist in dst (under dst.db.lock)."""
    db = dst.db
    drepo = db.repos.get(n.repo)
    new_repo = drepo is None
    if new_repo:
        drepo = Repo(root=srepo.root, alias=srepo.alias, description=srepo.description,
                     log=list(srepo.log), created=srepo.created, updated=srepo.updated)
    staged_repo = None
    if created:
        insts = dict(drepo.instances)
        for i in created:
            insts[i.name] = Instance(name=i.name, id=imap[i.name], typename=i.typename,
                                     created_in=v, config=json.loads(json.dumps(i.config)))
        staged_repo = replace(drepo, instances=insts)
        db._save(batch, staged_repo)
    elif new_repo:
        db._save(batch, drepo)
    node = Node(**{**json.loads(json.dumps(n.to_json())), "version_id": v, "children": []})
    parents = [db.nodes[p] for p in n.parents]
    staged_parents = [replace(p, children=[*p.children, n.uuid]) for p in parents]
    for p in staged_parents:
        db._save(batch, p)
    db._save(batch, node)
    # repo-wide counters values may depend on: never lower dst's
    for counter in ("mutation",):
        s, d = src.db.last_id(counter), db.last_id(counter)
        if s > d:
            batch.put(keys.meta_key("counter:" + counter), _U32.pack(s))
    for i in srepo.instances.values():
        if i.typename == "labels" and i.name in imap:
            sraw = src.engine.get(keys.meta_key(f"maxlabel:{i.id}"))
            draw = dst.engine.get(keys.meta_key(f"maxlabel:{imap[i.name]}"))
            if sraw and (not draw or _Q.unpack(sraw)[0] > _Q.unpack(draw)[0]):
                batch.put(keys.meta_key(f"maxlabel:{imap[i.name]}"), sraw)
    batch.delete(keys.meta_key(f"push:version:{n.uuid}"))
    for i in created:
        batch.delete(keys.meta_key(f"push:instance:{n.repo}:{i.name}"))
    db.engine.apply(batch, sync=True)
    # memory follows the store
    if new_repo:
        db.repos[drepo.root] = drepo
        report.repos_created.append(drepo.root)
    if staged_repo is not None:
        from dvidfs.versions.dag import _adopt
        _adopt(db.repos[drepo.root], staged_repo)
    db._link(node, parents, staged_parents)
    report.sent.append(n.uuid)
    dst._node_changed(node)


# ---------------------------------------------------------------- diff
@dataclass
class InstanceDiff:
    """What changed in one data instance between two versions, in user terms."""

    typename: str
    blocks: list[tuple[int, int, int]] = field(default_factory=list)   # scale-0 block coordinates
    scaled_blocks: dict[int, list[tuple[int, int, int]]] = field(default_factory=dict)
    bodies: list[int] = field(default_factory=list)                    # label index keys
    keys: list[str] = field(default_factory=list)                      # keyvalue keys
    other: list[str] = field(default_factory=list)                     # described by the type

    def empty(self) -> bool:
        return not (self.blocks or self.scaled_blocks or self.bodies or self.keys or self.other)


_BLOCK_CLASSES = (keys.CLASS_GRAY_BLOCK, keys.CLASS_GRAY_LEVEL, keys.CLASS_LABEL_BLOCK)


def diff(store: Dvid, node_a: Node, node_b: Node, instance: str | None = None) -> dict[str, InstanceDiff]:
    """Instance name -> what differs between the two versions: the keys changed
    on either side since their common ancestors (from the change index) whose
    values, read at each node, differ."""
    db = store.db
    if node_a.repo != node_b.repo:
        raise InvalidInputError("diff needs two nodes of the same repo")
    sa, sb = db.ancestors(node_a.version_id), db.ancestors(node_b.version_id)
    common = sa & sb
    va, vb = db.view(node_a), db.view(node_b)
    repo = db.repos[node_a.repo]
    by_id = {i.id: i for i in repo.instances.values()}
    if instance is not None and instance not in repo.instances:
        raise NotFoundError(f"no data instance {instance!r} in repo {repo.alias!r}")
    touched: set[tuple[int, bytes]] = set()
    out: dict[str, InstanceDiff] = {}
    with store.engine.snapshot() as snap:
        for v in (sa | sb) - common:
            touched.update(versioned.changed_keys(snap, v))
        for inst_id, tk in sorted(touched):
            inst = by_id.get(inst_id)
            if inst is None or (instance is not None and inst.name != instance):
                continue
            if tk[0] == keys.CLASS_KEYVALUE and len(tk) > 1 and tk[1] == 0:
                continue  # a blob chunk (never in the index, but be safe)
            try:
                a = versioned.get(snap, inst_id, tk, va) if inst.created_in in sa else None
                b = versioned.get(snap, inst_id, tk, vb) if inst.created_in in sb else None
                if a == b:
                    continue
                if (inst.typename == kvmod.KeyValue.typename and a is not None and b is not None
                        and kvmod._same_value(snap, inst_id, a, b)):
                    continue
            except ConflictError:   # unresolved below a merge on one side: it differs
                pass
            d = out.setdefault(inst.name, InstanceDiff(inst.typename))
            _classify(store, d, inst, tk)
    return dict(sorted(out.items()))


def _classify(store: Dvid, d: InstanceDiff, inst: Instance, tk: bytes) -> None:
    cls = tk[0]
    if cls in _BLOCK_CLASSES and len(tk) in (13, 14):
        scale = tk[1] if len(tk) == 14 else 0
        xyz = keys.parse_izyx(tk[-12:])
        if scale == 0:
            d.blocks.append(xyz)
        else:
            d.scaled_blocks.setdefault(scale, []).append(xyz)
    elif cls == keys.CLASS_LABEL_INDEX and len(tk) == 9:
        d.bodies.append(struct.unpack(">Q", tk[1:])[0])
    elif cls == keys.CLASS_KEYVALUE and len(tk) > 2:
        d.keys.append(kvmod.key_str(tk[1:-1]))
    else:
        d.other.append(store.types.describe(tk, inst))
