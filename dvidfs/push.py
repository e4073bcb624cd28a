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

Diverged history: a node present in both stores with different parents, repo
or tag, or open in dst, is refused with its UUID named; so is a repo name that
dst gives a different repo, or an instance whose type or creating node differs.
Tags (a committed node on branch "tag-NAME" with `tag` NAME): tag names are
unique in a store and differ from every repo name, so a node to send whose tag
dst gives another node (or a repo) is refused, naming the tag and both UUIDs,
before anything is written (and again by the receiver's `finish`); the same tag
node already in dst is present like any other.

Sender and receiver.  `transfer(sender, receiver)` is the one implementation:
a `Sender` describes the source (`plan`: the nodes to send as JSON records,
their repos and instances with the source's ids, the counters) and streams a
node's records in the source's ids (`page`: change-index entries, values,
chunks, tombstone marks, in bounded pages; a page's values are announced to
the engine before they are read (`prefetch`, `plan`), so from an S3 store they
come ahead, in parallel, neighbours in one GET); a `Receiver` reports what the
destination has (`state`), reserves ids (`reserve`), writes raw key batches
in its own ids (`put`, refused unless every key belongs to a reserved,
unfinished version) and finishes a node in one batch (`finish`).  All id
mapping (`_send_node`, `_map_records`) happens in `transfer`.  `LocalSender`
and `LocalReceiver` wrap a `Dvid`; `HttpSender` and `HttpReceiver`
(dvidfs/server/transfer.py) call the endpoints of a `dvidfs serve`, which runs
a `LocalSender`/`LocalReceiver` on the served store: pushing into (or pulling
from) a served store maps ids in the client, and the served store's DAG in
memory, its HTTP API and its mount see each finished node at once.
"""
from __future__ import annotations

import json
import re
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol

from dvidfs.core import Change, Dvid
from dvidfs.data import keyvalue as kvmod
from dvidfs.errors import ConflictError, InvalidInputError, NotFoundError
from dvidfs.store import keys, versioned
from dvidfs.store.engine import Batch
from dvidfs.versions.model import UUID_RE, Instance, Node, Repo

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
    return transfer(LocalSender(src), LocalReceiver(dst), [n.uuid for n in nodes] if nodes else None,
                    branch, progress, repo)


def pull(src: Dvid, dst: Dvid, nodes: list[Node] | None = None, branch: str | None = None,
         progress: Progress | None = None, repo: str | None = None) -> PushReport:
    """`dst` fetches from `src`: the same transfer as push (git's naming)."""
    return push(src, dst, nodes, branch, progress, repo)


def transfer(sender: "Sender", receiver: "Receiver", refs: list[str] | None = None,
             branch: str | None = None, progress: Progress | None = None,
             repo: str | None = None) -> PushReport:
    """The one implementation of a push: `sender` describes and streams the
    source's nodes in its own ids, `receiver` is the destination; every id is
    mapped here, on the side that runs this call (see the module doc)."""
    plan = sender.plan(refs, branch, repo)
    state = receiver.state()
    report = PushReport()
    send: list[dict] = []
    for n in plan["nodes"]:
        if _check_present(n, state):
            report.present.append(n["uuid"])
        else:
            send.append(n)
    _check_repos(plan, state, send)
    _check_tags(plan, state, send)
    counts = sender.count([n["uuid"] for n in send]) if send else []
    total = sum(counts)
    if progress:
        progress(0, total)
    for n in send:
        if _send_node(sender, receiver, plan, state, n, report, progress, total):
            report.repos_created.append(n["repo"])
        report.sent.append(n["uuid"])
        state = receiver.state()
    return report


def _check_present(n: dict, state: dict) -> bool:
    d = state["nodes"].get(n["uuid"])
    if d is None:
        return False
    if d["repo"] != n["repo"] or list(d["parents"]) != list(n["parents"]):
        raise ConflictError(f"diverged history: node {n['uuid']} has parents "
                            f"{', '.join(d['parents']) or 'none'} in the destination but "
                            f"{', '.join(n['parents']) or 'none'} in the source; refusing to overwrite")
    if not d["locked"]:
        raise ConflictError(f"diverged history: node {n['uuid']} is open in the destination (it may hold "
                            "changes the source lacks); refusing to overwrite")
    if "tag" in d and d["tag"] != n.get("tag", ""):
        raise ConflictError(f"diverged history: node {n['uuid']} is tagged {d['tag']!r} in the destination "
                            f"but {n.get('tag', '')!r} in the source; refusing to overwrite")
    return True


def _check_tags(plan: dict, state: dict, send: list[dict]) -> None:
    """Tag names are unique in a store (and differ from every repo name): a node
    to send whose tag the destination gives another node is refused, before
    anything is written.  (The same tag node already there is simply present.)"""
    dtags = {d["tag"]: u for u, d in state["nodes"].items() if d.get("tag")}
    aliases = {r["alias"]: root for root, r in state["repos"].items()}
    for n in send:
        tag = n.get("tag") or ""
        if not tag:
            continue
        other = dtags.get(tag)
        if other is not None and other != n["uuid"]:
            raise ConflictError(f"tag {tag!r} names node {other} in the destination but node {n['uuid']} "
                                "in the source (tag names are unique in a store); refusing to overwrite")
        if tag in aliases:
            raise ConflictError(f"tag {tag!r} of node {n['uuid']} is the name of repo {aliases[tag]} in the "
                                "destination (a tag must differ from every repo name)")
    for root in {n["repo"] for n in send}:
        alias = plan["repos"][root]["alias"]
        if root not in state["repos"] and alias in dtags:
            raise ConflictError(f"repo {alias!r} ({root}) is the name of a tag of node {dtags[alias]} "
                                "in the destination (a repo name must differ from every tag)")


def _check_repos(plan: dict, state: dict, send: list[dict]) -> None:
    for root in {n["repo"] for n in send}:
        r = plan["repos"][root]
        for oroot, other in state["repos"].items():
            if other["alias"] == r["alias"] and oroot != root:
                raise ConflictError(f"the destination has a different repo named {r['alias']!r} "
                                    f"(root {oroot}, the source's is {root})")
        d = state["repos"].get(root)
        if d is None:
            continue
        for name, inst in r["instances"].items():
            di = d["instances"].get(name)
            if di is None:
                continue
            if di["typename"] != inst["typename"] or di["created_in"] != inst["created_in"]:
                raise ConflictError(f"diverged history: data instance {name!r} of repo {r['alias']!r} "
                                    f"differs in the destination (type {di['typename']}, created in "
                                    f"{di['created_in'] or '?'}; the source's: "
                                    f"{inst['typename']}, created in {inst['created_in']})")


def _ancestors(plan: dict, uuid: str) -> set[str]:
    """The node and its ancestors (all in the plan: it is closed under parents)."""
    by_uuid = {n["uuid"]: n for n in plan["nodes"]}
    out, todo = set(), [uuid]
    while todo:
        u = todo.pop()
        if u not in out:
            out.add(u)
            todo.extend(by_uuid[u]["parents"])
    return out


def _send_node(sender: "Sender", receiver: "Receiver", plan: dict, state: dict, n: dict,
               report: PushReport, progress: Progress | None, total: int) -> bool:
    """Reserve ids, send the node's keys mapped into the destination's ids, finish it.
    True when this created the repo in the destination."""
    uuid, root = n["uuid"], n["repo"]
    srepo = plan["repos"][root]
    src_version = {m["uuid"]: m["version_id"] for m in plan["nodes"]}
    vmap: dict[int, int] = {}
    for a in _ancestors(plan, uuid) - {uuid}:
        d = state["nodes"].get(a)
        if d is None:
            raise NotFoundError(f"ancestor {a} of {uuid} is not in the destination")
        vmap[src_version[a]] = d["version_id"]
    dstate = state["repos"].get(root)
    imap = {name: i["id"] for name, i in (dstate["instances"].items() if dstate else ())}
    for name, i in state["reserved"].get(root, {}).items():
        imap.setdefault(name, i)
    created = [name for name, i in srepo["instances"].items() if i["created_in"] == uuid]
    want = [name for name in created if name not in imap]
    got = receiver.reserve([(f"version:{uuid}", "version")] +
                           [(f"instance:{root}:{name}", "instance") for name in want])
    v = got[0]
    vmap[n["version_id"]] = v
    imap.update(zip(want, got[1:]))
    ids = {i["id"]: imap[name] for name, i in srepo["instances"].items() if name in imap}
    kv = {i["id"] for i in srepo["instances"].values() if i["typename"] == kvmod.KeyValue.typename}

    # one put in flight while the next page is read and mapped (over HTTP the
    # two sides then work at once); progress is told once a put is applied
    with ThreadPoolExecutor(1, thread_name_prefix="dvidfs-push") as pool:
        after: bytes | None = b""
        pending = None
        while after is not None:
            pairs, after, changes = sender.page(uuid, after or None, BATCH_KEYS, BATCH_BYTES)
            out = _map_records(pairs, uuid, n["version_id"], vmap, ids, kv, report)
            if pending is not None:
                _applied(pending, progress, total)
            pending = (pool.submit(receiver.put, out) if out else None, changes)
        if pending is not None:
            _applied(pending, progress, total)

    maxlabel = {}
    for name, i in srepo["instances"].items():
        s = plan["maxlabel"].get(str(i["id"]))
        if i["typename"] == "labels" and name in imap and s is not None:
            maxlabel[str(imap[name])] = s
    spec = {"node": n, "version": v, "repo": {k: srepo[k] for k in _REPO_FIELDS},
            "created": [{"name": name, "id": imap[name], "typename": srepo["instances"][name]["typename"],
                         "config": srepo["instances"][name]["config"]} for name in created],
            "counters": dict(plan["counters"]), "maxlabel": maxlabel}
    return bool(receiver.finish(spec).get("repo_created"))


def _applied(pending: tuple, progress: Progress | None, total: int) -> None:
    future, changes = pending
    if future is not None:
        future.result()
    if progress and changes:
        progress(changes, total)


def _map_records(pairs: list[tuple[bytes, bytes]], uuid: str, sv: int, vmap: dict[int, int],
                 ids: dict[int, int], kv: set[int], report: PushReport) -> list[tuple[bytes, bytes]]:
    """Source records of node `uuid` (version `sv`) -> the same records in the
    destination's ids, rewritten field by field on the bytes (hot: every key).
    A keyvalue head (a data key of the change entry just before it) has its
    manifest's blob version mapped; other data keys of a keyvalue instance
    there are the blob's chunks, copied as they are."""
    S = keys.SUFFIX_LEN
    sv_b, v_b = _U32.pack(sv), _U32.pack(vmap[sv])
    ids_b = {_U32.pack(s): _U32.pack(d) for s, d in ids.items()}
    kv_b = {_U32.pack(i) for i in kv}
    suffix = {keys.MARK_DATA: keys.data_suffix(vmap[sv]), keys.MARK_TOMBSTONE: keys.data_suffix(vmap[sv], True)}
    client = _U32.pack(keys.CLIENT_ID)
    out = []
    append = out.append
    current = None          # instance | TKey of the last change-index entry
    nkeys = nbytes = 0
    try:
        for k, val in pairs:
            kind = k[0] if k else 0
            if kind == 3 and len(k) >= 10:                                  # 0x03 | version | instance | TKey
                if k[1:5] != sv_b or val:
                    raise InvalidInputError("a change-index key of another version")
                current = k[5:]
                append((b"\x03" + v_b + ids_b[k[5:9]] + k[9:], b""))
            elif kind == 1 and len(k) >= 6 + S:                             # 0x01 | instance | TKey | suffix
                mark = k[-1]
                if k[-S:-5] != sv_b or k[-5:-1] != client or mark not in suffix:
                    raise InvalidInputError("a data key of another version")
                inst = k[1:5]
                if mark == keys.MARK_DATA and inst in kv_b and k[1:-S] == current:
                    m = kvmod._Manifest.parse(val)
                    if m is not None:
                        if m.version not in vmap:
                            raise ConflictError(f"a large value refers to version {m.version}, which is "
                                                "not an ancestor being pushed; the source store is "
                                                "inconsistent")
                        val = kvmod._Manifest(m.size, m.chunk, vmap[m.version], m.blob).encode()
                append((b"\x01" + ids_b[inst] + k[5:-S] + suffix[mark], val))
                nkeys += 1
                nbytes += len(val)
            elif kind == 4 and len(k) == 9:                                 # 0x04 | instance | version
                if k[5:9] != sv_b or val:
                    raise InvalidInputError("a tombstone mark of another version")
                append((b"\x04" + ids_b[k[1:5]] + v_b, b""))
            else:
                raise InvalidInputError(f"not a data, change or tombstone key: {k[:16].hex()}")
    except KeyError as exc:
        raise ConflictError(f"node {uuid} writes to instance id {_U32.unpack(exc.args[0])[0]} that its "
                            "repo does not name; the source store is inconsistent") from None
    except InvalidInputError as exc:
        raise ConflictError(f"node {uuid}: the source sent {exc}; the source store is inconsistent") from None
    report.keys += nkeys
    report.bytes += nbytes
    return out


# ---------------------------------------------------------------- the sender
_REPO_FIELDS = ("root", "alias", "description", "log", "created", "updated")


class Sender(Protocol):
    """The source side of a transfer, in the source's own ids."""

    def plan(self, refs: list[str] | None, branch: str | None, repo: str | None) -> dict: ...
    def count(self, uuids: list[str]) -> list[int]: ...
    def page(self, uuid: str, after: bytes | None, max_keys: int,
             max_bytes: int) -> tuple[list[tuple[bytes, bytes]], bytes | None, int]: ...


class LocalSender:
    """A `Dvid` as the source (also what `dvidfs serve` runs for a pull)."""

    def __init__(self, dvid: Dvid):
        self.dvid = dvid

    def plan(self, refs: list[str] | None = None, branch: str | None = None,
             repo: str | None = None) -> dict:
        """The nodes to send (`select`, oldest first) as JSON records, their
        repos and instances (creating node by UUID), and the counters a value
        may depend on (mutation ids, each labels instance's max label)."""
        s = self.dvid
        nodes = select(s, [s.node(r) for r in refs] if refs else None, branch, repo)
        repos, maxlabel = {}, {}
        for root in dict.fromkeys(n.repo for n in nodes):
            r = s.db.repos[root]
            d = {k: v for k, v in r.to_json().items() if k in _REPO_FIELDS}
            d["instances"] = {}
            for name, i in r.instances.items():
                creator = s.db.by_version.get(i.created_in)
                d["instances"][name] = {"id": i.id, "typename": i.typename, "config": i.config,
                                        "created_in": creator.uuid if creator else None}
                raw = s.engine.get(keys.meta_key(f"maxlabel:{i.id}")) if i.typename == "labels" else None
                if raw:
                    maxlabel[str(i.id)] = _Q.unpack(raw)[0]
            repos[root] = d
        return json.loads(json.dumps({"nodes": [n.to_json() for n in nodes], "repos": repos,
                                      "counters": {"mutation": s.db.last_id("mutation")},
                                      "maxlabel": maxlabel}))

    def count(self, uuids: list[str]) -> list[int]:
        out = []
        for u in uuids:
            p = keys.change_prefix(self._node(u).version_id)
            out.append(sum(1 for _ in self.dvid.engine.scan(p, keys.prefix_end(p), include_value=False)))
        return out

    def page(self, uuid: str, after: bytes | None, max_keys: int = BATCH_KEYS,
             max_bytes: int = BATCH_BYTES) -> tuple[list[tuple[bytes, bytes]], bytes | None, int]:
        """The node's records after change key `after` (None: from the start):
        each change-index entry, then its data value and tombstone, then the
        chunks of a large value this version owns; up to `max_keys` entries or
        `max_bytes` value bytes.  Returns (records, the change key to continue
        after or None when this was the last page, change entries in the page).
        The last page ends with the version's "has tombstones" marks."""
        s, n = self.dvid, self._node(uuid)
        srepo = s.db.repos[n.repo]
        by_id = {i.id: i for i in srepo.instances.values()}
        p = keys.change_prefix(n.version_id)
        if after is not None and not after.startswith(p):
            raise InvalidInputError(f"continuation key {after[:16].hex()} is not one of node {uuid}")
        out: list[tuple[bytes, bytes]] = []
        count = size = 0
        with s.engine.snapshot() as snap:
            # the page's change entries first (keys only), then their values
            # announced before they are read: a remote engine (S3) fetches them
            # ahead, in parallel, neighbours in one request (LevelDB has no
            # `prefetch` and reads as before)
            entries = []
            for ck in snap.scan(p if after is None else after + b"\x00", keys.prefix_end(p),
                                include_value=False):
                _, inst_id, tk = keys.split_change_key(ck)
                entries.append((ck, inst_id, [keys.data_key(inst_id, tk, n.version_id, tomb)
                                              for tomb in (False, True)]))
                if len(entries) >= max_keys:
                    break
            prefetch = getattr(snap, "prefetch", None)
            if prefetch is not None and entries:
                prefetch([dk for _, _, dks in entries for dk in dks])
            for ck, inst_id, dks in entries:
                out.append((ck, b""))
                count += 1
                for tomb, dk in enumerate(dks):
                    val = snap.get(dk)
                    if val is None:
                        continue
                    out.append((dk, val))
                    size += len(val)
                    inst = by_id.get(inst_id)
                    if not tomb and inst is not None and inst.typename == kvmod.KeyValue.typename:
                        size += _own_chunks(snap, out, inst_id, n.version_id, val, prefetch is not None)
                if count >= max_keys or len(out) >= 4 * max_keys or size >= max_bytes:
                    return out, ck, count
            mine = s.db.ancestors(n.version_id)
            for i in srepo.instances.values():
                tk = keys.tombstoned_key(i.id, n.version_id)
                if i.created_in in mine and snap.get(tk) is not None:
                    out.append((tk, b""))
        return out, None, count

    def _node(self, uuid: str) -> Node:
        n = self.dvid.db.nodes.get(uuid) if isinstance(uuid, str) else None
        if n is None:
            raise NotFoundError(f"no node {uuid!r} in the source")
        if not n.locked:
            raise InvalidInputError(f"node {uuid} is open: only committed nodes travel")
        return n


def _own_chunks(snap, out: list, inst_id: int, version: int, head: bytes, remote: bool = False) -> int:
    """The chunks of a large value whose blob `version` owns (not in the change
    index).  `remote` (an engine that fetches ahead): read them with a cursor
    whose `plan` names their key range, so they come in parallel without
    disturbing the snapshot's announced reads of the page."""
    m = kvmod._Manifest.parse(head)
    if m is None or m.version != version:
        return 0
    want = [m.chunk_key(inst_id, i) for i in range(m.nchunks)]
    size = 0
    if remote and want:
        with snap.cursor() as c:
            plan = getattr(c, "plan", None)
            if plan is not None:
                plan([(want[0], keys.prefix_end(want[-1]))])
            for k in want:
                c.seek(k)
                if c.valid() and c.key() == k:
                    chunk = c.value()
                    out.append((k, chunk))
                    size += len(chunk)
        return size
    for k in want:
        chunk = snap.get(k)
        if chunk is not None:
            out.append((k, chunk))
            size += len(chunk)
    return size


# ---------------------------------------------------------------- the receiver
class Receiver(Protocol):
    """The destination side of a transfer, in the destination's own ids."""

    def state(self) -> dict: ...
    def reserve(self, names: list[tuple[str, str]]) -> list[int]: ...
    def put(self, pairs: list[tuple[bytes, bytes]]) -> int: ...
    def finish(self, spec: dict) -> dict: ...


_RESERVATION = re.compile(r"\A(version:[0-9a-f]{32}|instance:[0-9a-f]{32}:[A-Za-z0-9][A-Za-z0-9_.+-]{0,127})\Z")


class LocalReceiver:
    """A `Dvid` as the destination (also what `dvidfs serve` runs for a push).
    It trusts nothing it is sent: keys go only to versions reserved and not yet
    finished, and a node is finished only under its reserved id."""

    def __init__(self, dvid: Dvid):
        self.dvid = dvid

    def state(self) -> dict:
        """Its nodes, repos (instances with their ids and creating node) and the
        instance ids reserved by unfinished pushes."""
        db = self.dvid.db
        with db.lock:
            nodes = {u: {"version_id": n.version_id, "repo": n.repo, "parents": list(n.parents),
                         "locked": n.locked, "tag": n.tag} for u, n in db.nodes.items()}
            repos = {}
            for root, r in db.repos.items():
                insts = {}
                for name, i in r.instances.items():
                    creator = db.by_version.get(i.created_in)
                    insts[name] = {"id": i.id, "typename": i.typename,
                                   "created_in": creator.uuid if creator else None}
                repos[root] = {"alias": r.alias, "instances": insts}
        reserved: dict[str, dict[str, int]] = {}
        for name, i in self._reservations("instance:").items():
            root, _, inst = name.partition(":")
            reserved.setdefault(root, {})[inst] = i
        return {"nodes": nodes, "repos": repos, "reserved": reserved}

    def _reservations(self, kind: str) -> dict[str, int]:
        p = keys.meta_key("push:" + kind)
        return {k[len(p):].decode(): _U32.unpack(raw)[0]
                for k, raw in self.dvid.engine.scan(p, keys.prefix_end(p))}

    def reserve(self, names: list[tuple[str, str]]) -> list[int]:
        """A destination id for each (reservation name, counter), reserved once:
        counter bumps and reservations in one batch, so a re-run after a crash
        gets the same ids."""
        for name, counter in names:
            if not isinstance(name, str) or not _RESERVATION.match(name) or \
                    counter != name.partition(":")[0]:
                raise InvalidInputError(f"not a reservation: {name!r} of counter {counter!r}")
        dst = self.dvid
        out: list[int] = []
        with dst.db.lock:
            batch, last, mine = Batch(), {}, {}
            for name, counter in names:
                k = keys.meta_key("push:" + name)
                raw = dst.engine.get(k)
                if raw is not None:
                    out.append(_U32.unpack(raw)[0])
                elif name in mine:
                    out.append(mine[name])
                else:
                    new = last.get(counter, dst.db.last_id(counter)) + 1
                    last[counter] = mine[name] = new
                    batch.put(keys.meta_key("counter:" + counter), _U32.pack(new))
                    batch.put(k, _U32.pack(new))
                    out.append(new)
            if batch:
                dst.engine.apply(batch, sync=True)
        return out

    def put(self, pairs: list[tuple[bytes, bytes]]) -> int:
        """Write data, change-index and tombstone-mark keys of reserved versions
        (plain puts: invisible until the node is finished).  All or nothing:
        every key is checked before any is written."""
        db = self.dvid.db
        with db.lock:
            versions = {_U32.pack(v) for v in self._reservations("version:").values() if v not in db.by_version}
            inst_ids = {_U32.pack(i.id) for r in db.repos.values() for i in r.instances.values()}
        inst_ids |= {_U32.pack(i) for i in self._reservations("instance:").values()}
        S = keys.SUFFIX_LEN
        marks = (keys.MARK_DATA, keys.MARK_TOMBSTONE)
        client = _U32.pack(keys.CLIENT_ID)
        batch = Batch()
        for k, val in pairs:
            kind = k[0] if k else 0
            if kind == 1 and len(k) >= 6 + S:                   # 0x01 | instance | TKey | version | client | mark
                inst, ver, ok = k[1:5], k[-S:-5], k[-5:-1] == client and k[-1] in marks
            elif kind == 3 and len(k) >= 10:                    # 0x03 | version | instance | TKey
                inst, ver, ok = k[5:9], k[1:5], not val
            elif kind == 4 and len(k) == 9:                     # 0x04 | instance | version
                inst, ver, ok = k[1:5], k[5:9], not val
            else:
                raise InvalidInputError(f"key {k[:16].hex()} is not a data, change-index or tombstone key")
            if not ok:
                raise InvalidInputError(f"key {k[:16].hex()} is malformed")
            if ver not in versions:
                raise InvalidInputError(f"key {k[:16].hex()} writes version {_U32.unpack(ver)[0]}, which is "
                                        "not reserved by an unfinished push")
            if inst not in inst_ids:
                raise InvalidInputError(f"key {k[:16].hex()} writes instance id {_U32.unpack(inst)[0]}, "
                                        "which is neither a data instance nor reserved")
            batch.put(k, val)
        if batch:
            self.dvid.engine.apply(batch)
        return len(batch)

    def finish(self, spec: dict) -> dict:
        """One batch that makes the node exist: its record, its parents' new
        `children`, the repo (when new) and the instances it created, the raised
        counters, and the reservations removed.  Then memory follows and the
        change is published (to the mount of a served store)."""
        try:
            return self._finish(spec)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidInputError(f"malformed finish request: {exc!r}") from None

    def _finish(self, spec: dict) -> dict:
        dst = self.dvid
        db = dst.db
        nj, v, rj = spec["node"], int(spec["version"]), spec["repo"]
        uuid = nj["uuid"]
        if not isinstance(uuid, str) or not UUID_RE.match(uuid) or rj["root"] != nj["repo"]:
            raise InvalidInputError("malformed finish request: node UUID or repo")
        if nj.get("locked") is not True:
            raise InvalidInputError(f"node {uuid} is open: only committed nodes travel")
        strings = lambda x: isinstance(x, list) and all(isinstance(y, str) for y in x)
        if not (isinstance(nj.get("branch"), str) and isinstance(nj.get("note"), str)
                and strings(nj.get("log")) and strings(nj.get("parents")) and strings(rj.get("log"))
                and isinstance(nj.get("tag", ""), str)
                and all(isinstance(nj.get(t), (int, float)) for t in ("created", "updated"))):
            raise InvalidInputError(f"malformed finish request: fields of node {uuid}")
        with db.lock:
            if uuid in db.nodes:
                raise ConflictError(f"node {uuid} already exists in the destination")
            tag = nj.get("tag", "")
            if tag:
                other = db.tags().get(tag)
                if other is not None:
                    raise ConflictError(f"tag {tag!r} names node {other.uuid} in the destination but node "
                                        f"{uuid} in the source (tag names are unique in a store)")
                if any(r.alias == tag for r in db.repos.values()):
                    raise ConflictError(f"tag {tag!r} of node {uuid} is a repo name in the destination")
            if self._reservations(f"version:{uuid}").get("") != v:
                raise InvalidInputError(f"version id {v} is not the one reserved for node {uuid}")
            drepo = db.repos.get(rj["root"])
            new_repo = drepo is None
            if new_repo:
                if nj["parents"]:
                    raise NotFoundError(f"repo {rj['root']} of node {uuid} is not in the destination")
                if any(r.alias == rj["alias"] for r in db.repos.values()):
                    raise ConflictError(f"the destination has a different repo named {rj['alias']!r}")
                if rj["alias"] in db.tags():
                    raise ConflictError(f"repo name {rj['alias']!r} is a tag in the destination")
                drepo = Repo(root=rj["root"], alias=str(rj["alias"]), description=str(rj["description"]),
                             log=[str(x) for x in rj["log"]], created=float(rj["created"]),
                             updated=float(rj["updated"]))
            parents = []
            for p in nj["parents"]:
                pn = db.nodes.get(p)
                if pn is None or pn.repo != drepo.root:
                    raise NotFoundError(f"parent {p} of node {uuid} is not in the destination")
                parents.append(pn)
            batch = Batch()
            staged_repo = None
            created = spec["created"]
            if created:
                reserved = self._reservations(f"instance:{drepo.root}:")
                insts = dict(drepo.instances)
                for c in created:
                    name, iid = c["name"], int(c["id"])
                    if name in insts or reserved.get(name) != iid or c["typename"] not in dst.types.names():
                        raise InvalidInputError(f"data instance {name!r} (id {iid}) was not reserved, "
                                                "exists already, or has an unknown type")
                    insts[name] = Instance(name=name, id=iid, typename=c["typename"], created_in=v,
                                           config=json.loads(json.dumps(c["config"])))
                staged_repo = replace(drepo, instances=insts)
                db._save(batch, staged_repo)
            elif new_repo:
                db._save(batch, drepo)
            node = Node(**{**json.loads(json.dumps(nj)), "version_id": v, "children": []})
            staged_parents = [replace(p, children=[*p.children, uuid]) for p in parents]
            for p in staged_parents:
                db._save(batch, p)
            db._save(batch, node)
            # repo-wide counters values may depend on: never lower dst's
            s = int(spec["counters"].get("mutation", 0))
            if s > db.last_id("mutation"):
                batch.put(keys.meta_key("counter:mutation"), _U32.pack(s))
            known = {i.id for i in (staged_repo or drepo).instances.values() if i.typename == "labels"}
            for iid, value in spec["maxlabel"].items():
                if int(iid) not in known:
                    continue
                draw = dst.engine.get(keys.meta_key(f"maxlabel:{int(iid)}"))
                if not draw or _Q.unpack(draw)[0] < int(value):
                    batch.put(keys.meta_key(f"maxlabel:{int(iid)}"), _Q.pack(int(value)))
            batch.delete(keys.meta_key(f"push:version:{uuid}"))
            for c in created:
                batch.delete(keys.meta_key(f"push:instance:{drepo.root}:{c['name']}"))
            db.engine.apply(batch, sync=True)
            # memory follows the store
            if new_repo:
                db.repos[drepo.root] = drepo
            if staged_repo is not None:
                from dvidfs.versions.dag import _adopt
                _adopt(db.repos[drepo.root], staged_repo)
            db._link(node, parents, staged_parents)
        # told after the lock is released (subscribers may read the store)
        if new_repo:
            dst._publish(Change(drepo.root))
        dst._node_changed(node)
        for p in parents:
            dst._node_changed(p)
        return {"node": uuid, "version": v, "repo_created": new_repo}


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
