"""State after a failed write: memory equals the store, and the next operation works.

When `engine.apply` fails (a full disk), nothing may have changed in memory:
no node left locked by a failed commit, no phantom child of a failed branch or
merge, no note / log line / instance / repo that the store does not hold.

* Unit version (no disk): `FullEngine`, the in-memory engine whose `apply`
  refuses with `NoSpaceError` while its disk is "full".  Every DAG operation,
  a grayscale write and a label merge fail, leave the in-memory records equal
  to before *and* to a fresh load of the store, publish no change, then succeed
  when retried, keeping the live objects other code holds.
* Real disk: a LevelDB store on a small tmpfs (needs root for `mount`).
  - Each operation as the *first* write LevelDB refuses: the log is padded to
    a page boundary and the disk filled to its last page, so the operation's
    own log record gets ENOSPC.  It raises `NoSpaceError` (errno ENOSPC, one
    line), memory is unchanged, it is still refused after space is freed
    (LevelDB needs a reopen, see dvidfs/store/leveldb.py), and a reopened
    store shows the same DAG and data; there the operation succeeds and the
    next operations work.
  - A realistic run: a small write buffer, grayscale data written until the
    disk is full, then every operation either succeeds or raises
    `NoSpaceError` with memory unchanged; after freeing space and reopening,
    the DAG equals memory and every acknowledged write is there.
  - The engine alone: writes acknowledged after a failed one must survive a
    reopen (LevelDB loses them silently, so the engine refuses them); opening
    a store on a full disk is one readable `NoSpaceError`; other I/O errors
    (a file size limit) keep their plyvel type and later writes are refused.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dvidfs.config import Config
from dvidfs.core import Dvid
from dvidfs.errors import NoSpaceError
from dvidfs.store import keys
from dvidfs.store.engine import Batch
from dvidfs.store.leveldb import DB_DIR, LevelDBEngine
from dvidfs.store.memory import MemoryEngine
from dvidfs.versions.dag import VersionDB

PAGE = 4096  # tmpfs allocates whole pages


# ----------------------------------------------------------------------------- helpers

def dag_state(db: VersionDB):
    """Everything the DAG holds in memory, comparable with a fresh load."""
    return ({u: n.to_json() for u, n in db.nodes.items()},
            {r: repo.to_json() for r, repo in db.repos.items()},
            {v: n.uuid for v, n in db.by_version.items()},
            dict(db._anc))


def assert_no_phantoms(db: VersionDB) -> None:
    for n in db.nodes.values():
        for u in [*n.children, *n.parents]:
            assert u in db.nodes, f"node {n.uuid} names {u}, which does not exist"
        assert db.by_version[n.version_id] is n


def assert_no_space(exc: BaseException) -> None:
    assert isinstance(exc, NoSpaceError), repr(exc)
    assert exc.errno == errno.ENOSPC
    assert "disk full" in str(exc) and "\n" not in str(exc)


def build(core: Dvid) -> dict[str, str]:
    """root (committed, gray + labels data) -> a (open, master), b ("side") and
    c ("other"), both committed.  Returns their UUIDs."""
    repo = core.new_repo("r", "failed writes")
    root = core.node(repo.root)
    gray = core.new_instance(root, "gray", "grayscale", block_size=8)
    lab = core.new_instance(root, "labels", "labels", block_size=8)
    gray.write(root, (0, 0, 0), np.full((8, 8, 16), 7, np.uint8))
    sv = np.zeros((8, 8, 16), np.uint64)
    sv[..., :8], sv[..., 8:] = 1, 2
    lab.write(root, (0, 0, 0), sv)
    core.commit(root, "base")
    a = core.branch(root, note="a")
    b = core.branch(root, "side", note="b")
    c = core.branch(root, "other", note="c")
    core.commit(b)
    core.commit(c)
    return {"root": root.uuid, "a": a.uuid, "b": b.uuid, "c": c.uuid}


def n(core: Dvid, u: dict[str, str], name: str):
    return core.node_by_uuid(u[name])


# One operation each; every one writes exactly one batch.
OPS = {
    "commit": lambda core, u: core.commit(n(core, u, "a"), "done", ["l1", "l2"]),
    "branch": lambda core, u: core.branch(n(core, u, "b"), note="next on side"),
    "branch_named": lambda core, u: core.branch(n(core, u, "root"), "x", note="new branch"),
    "merge": lambda core, u: core.merge([n(core, u, "b"), n(core, u, "c")], "merged"),
    "set_note": lambda core, u: core.set_note(n(core, u, "a"), "a new note"),
    "append_log": lambda core, u: core.append_log(n(core, u, "a"), ["one", "two"]),
    "new_instance": lambda core, u: core.new_instance(n(core, u, "a"), "gray2", "grayscale",
                                                      block_size=8),
    "new_repo": lambda core, u: core.new_repo("r2", "second"),
    "gray_write": lambda core, u: core.data(n(core, u, "a"), "gray").write(
        n(core, u, "a"), (0, 0, 0), np.full((8, 8, 8), 9, np.uint8)),
    "label_merge": lambda core, u: core.data(n(core, u, "a"), "labels").merge(n(core, u, "a"), 1, [2]),
}


def data_state(core: Dvid, u: dict[str, str]) -> tuple[bytes, bytes, int]:
    a = n(core, u, "a")
    view = core.view(a)
    gray = core.data(a, "gray").read(view, (0, 0, 0), (16, 8, 8))
    labels = core.data(a, "labels")
    return gray.tobytes(), labels.read(view, (0, 0, 0), (16, 8, 8)).tobytes(), len(labels.mutations(view))


def followups(core: Dvid, u: dict[str, str]) -> None:
    """The operations after a failure (or its retry) just work."""
    b = n(core, u, "b")
    kids = len(b.children)
    child = core.branch(b, "follow-up")
    assert b.children[-1] == child.uuid and len(b.children) == kids + 1
    core.set_note(child, "works")
    core.commit(child, "committed")
    grandchild = core.branch(child)  # a same-branch child: no phantom sibling in the way
    assert core.node_by_uuid(grandchild.uuid) is grandchild
    a = n(core, u, "a")
    if not a.locked:
        core.commit(a)
    core.branch(a)
    assert_no_phantoms(core.db)


# ----------------------------------------------------------------------------- unit version (no disk)

class FullEngine(MemoryEngine):
    """The in-memory engine with a disk that can be "full": then `apply`
    refuses every batch, as LevelDBEngine does on ENOSPC (nothing applied)."""

    def __init__(self) -> None:
        super().__init__()
        self.full = False

    def apply(self, batch: Batch, sync: bool = False) -> None:
        if self.full:
            raise NoSpaceError("store (memory): disk full, nothing was written")
        super().apply(batch, sync)


@pytest.fixture
def mem():
    core = Dvid(engine=FullEngine(), config=Config())
    try:
        yield core, build(core)
    finally:
        core.close()


def everything(engine) -> list[tuple[bytes, bytes]]:
    return [(bytes(k), bytes(v)) for k, v in engine.scan(b"", b"\xff" * 64)]


@pytest.mark.parametrize("op", sorted(OPS))
def test_failed_operation_changes_nothing_in_memory(mem, op):
    core, u = mem
    a, root = n(core, u, "a"), n(core, u, "root")
    before, data_before, stored_before = dag_state(core.db), data_state(core, u), everything(core.engine)
    changes = []
    core.subscribe(changes.append)

    core.engine.full = True
    with pytest.raises(NoSpaceError) as ei:
        OPS[op](core, u)
    assert_no_space(ei.value)
    assert dag_state(core.db) == before
    assert dag_state(VersionDB(core.engine)) == before   # memory is what the store holds
    assert everything(core.engine) == stored_before
    assert data_state(core, u) == data_before
    assert changes == []
    assert_no_phantoms(core.db)

    core.engine.full = False
    OPS[op](core, u)                                      # the retry succeeds
    assert dag_state(VersionDB(core.engine)) == dag_state(core.db)
    assert dag_state(core.db) != before or op in ("gray_write", "label_merge")
    assert changes, "a successful operation is published"
    # the live objects other code holds (e.g. the mount's entries) show the change
    assert core.node_by_uuid(u["a"]) is a and core.node_by_uuid(u["root"]) is root
    if op == "commit":
        assert a.locked and a.note == "done" and a.log[-2:] == ["l1", "l2"]
    followups(core, u)
    assert dag_state(VersionDB(core.engine)) == dag_state(core.db)


def test_failed_commit_leaves_the_node_writable(mem):
    """The issue's first case, end to end: after a failed commit the node is
    still open (writes work), and the retried commit locks it."""
    core, u = mem
    a = n(core, u, "a")
    core.engine.full = True
    with pytest.raises(NoSpaceError):
        core.commit(a, "x")
    core.engine.full = False
    assert not a.locked
    core.data(a, "gray").write(a, (0, 0, 0), np.full((8, 8, 8), 5, np.uint8))
    core.commit(a, "x")
    assert a.locked and dag_state(VersionDB(core.engine)) == dag_state(core.db)


def test_failed_branch_then_branch_again(mem):
    """The issue's second case: a failed branch left a phantom child, so the
    next branch() raised KeyError (or refused a second child)."""
    core, u = mem
    b = n(core, u, "b")
    core.engine.full = True
    with pytest.raises(NoSpaceError):
        core.branch(b)
    with pytest.raises(NoSpaceError):
        core.merge([b, n(core, u, "c")])
    core.engine.full = False
    assert b.children == []
    child = core.branch(b)
    assert b.children == [child.uuid]
    assert core.merge([b, n(core, u, "c")]).parents == [b.uuid, u["c"]]
    assert_no_phantoms(core.db)


# ----------------------------------------------------------------------------- real disk (tmpfs)

@pytest.fixture
def disk(tmp_path):
    """A fresh 8 MiB tmpfs, unmounted at teardown (the test closes its stores)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    d = tmp_path / "disk"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", str(d)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield d
    finally:
        if subprocess.run(["umount", str(d)]).returncode:
            subprocess.run(["umount", "-l", str(d)])


def fill(d, leave: int = 0):
    """A filler file takes the free space of `d` but about `leave` bytes (with
    0: every last page).  Returns its path; deleting it frees the space."""
    path = d / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        st = os.statvfs(d)
        todo = st.f_bavail * st.f_frsize - leave
        step = 1 << 20
        while todo > 0 or (leave == 0 and step >= PAGE):
            try:
                todo -= os.write(fd, b"\0" * (min(step, todo) if todo > 0 else step))
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if leave:
                    break
                step //= 4   # every page, down to the last one
    finally:
        os.close(fd)
    if leave == 0:
        assert os.statvfs(d).f_bavail == 0
    return path


def newest_log(store_path) -> str:
    db = os.path.join(store_path, DB_DIR)
    return os.path.join(db, max(f for f in os.listdir(db) if f.endswith(".log")))


def pad_log_to_page(engine, store_path, room: int = 0) -> None:
    """Append junk records (a metadata key nothing reads) until LevelDB's log
    ends `room` bytes before a page boundary: with no free page left, the next
    record of any size (0) or longer than `room` then fails.  (Log record:
    7-byte header; batch: 12-byte header, a tag byte, varint lengths, key, value.)"""
    key = keys.meta_key("test-pad")
    for _ in range(20):
        need = (-os.path.getsize(newest_log(store_path)) - room) % PAGE
        if need == 0:
            return
        if need < 64:
            need += PAGE
        vlen = need - (7 + 12 + 1 + 1 + len(key) + 2)
        b = Batch()
        b.put(key, b"p" * vlen)
        engine.apply(b, sync=True)
    raise AssertionError("could not end the log on a page boundary")


def open_store(path, **cfg) -> Dvid:
    return Dvid(path, config=Config(block_cache=1 << 20, readahead=0, leveldb_cache=1 << 20, **cfg))


@pytest.mark.parametrize("op", sorted(OPS))
def test_operation_as_the_write_that_finds_the_disk_full(disk, op):
    path = disk / "store"
    core = Dvid(path, create=True, config=Config(block_cache=1 << 20, readahead=0, leveldb_cache=1 << 20))
    try:
        u = build(core)
        before, data_before = dag_state(core.db), data_state(core, u)
        pad_log_to_page(core.engine, path)
        filler = fill(disk)

        with pytest.raises(NoSpaceError) as ei:
            OPS[op](core, u)
        assert_no_space(ei.value)
        assert "nothing was written" in str(ei.value) and str(path) in str(ei.value)
        assert dag_state(core.db) == before
        assert data_state(core, u) == data_before          # reads still work
        assert_no_phantoms(core.db)

        # free space is not enough: LevelDB needs a reopen after a failed write
        filler.unlink()
        with pytest.raises(NoSpaceError) as ei:
            OPS[op](core, u)
        assert "reopen" in str(ei.value)
        assert dag_state(core.db) == before
        core.close()

        core = open_store(path)
        assert dag_state(core.db) == before                 # the failed write did not land
        assert data_state(core, u) == data_before
        OPS[op](core, u)                                    # the retry works after the reopen
        after = dag_state(core.db)
        core.close()
        core = open_store(path)
        assert dag_state(core.db) == after
        followups(core, u)
        after = dag_state(core.db)
        core.close()
        core = open_store(path)
        assert dag_state(core.db) == after
    finally:
        core.close()


def test_full_disk_run(disk):
    """The brief's scenario: fill the disk with grayscale data, then try every
    operation; each succeeds or raises NoSpaceError and leaves memory as a
    reopened store shows it."""
    path = disk / "store"
    cfg = dict(leveldb_write_buffer=128 << 10)
    core = Dvid(path, create=True, config=Config(block_cache=1 << 20, readahead=0,
                                                 leveldb_cache=1 << 20, **cfg))
    try:
        u = build(core)
        filler = fill(disk, leave=1 << 20)
        a = n(core, u, "a")
        gray = core.data(a, "gray")
        rng = np.random.default_rng(1)
        written = {}
        for z in range(16, 10_000, 8):           # random voxels: lz4 cannot shrink them
            slab = rng.integers(0, 256, (8, 64, 64), np.uint8)
            try:
                gray.write(a, (0, 0, z), slab)
            except NoSpaceError as exc:
                assert_no_space(exc)
                failed_z = z
                break
            written[z] = slab
        else:
            pytest.fail("the disk never filled up")
        assert written, "the first write already failed: leave more room"

        outcomes = {}
        for op in ["gray_write", "label_merge", "set_note", "append_log", "new_instance",
                   "branch", "merge", "new_repo", "branch_named", "commit"]:  # `a` open until the end
            before = dag_state(core.db)
            try:
                OPS[op](core, u)
                outcomes[op] = "ok"
            except NoSpaceError as exc:
                assert_no_space(exc)
                assert dag_state(core.db) == before, op
                outcomes[op] = "ENOSPC"
            assert_no_phantoms(core.db)
        assert "ENOSPC" in outcomes.values()
        last = dag_state(core.db)

        filler.unlink()
        core.close()
        core = open_store(path, **cfg)
        assert dag_state(core.db) == last
        a = n(core, u, "a")
        view = core.view(a)
        gray = core.data(a, "gray")
        for z, slab in written.items():             # every acknowledged write is there
            assert np.array_equal(gray.read(view, (0, 0, z), (64, 64, 8)), slab)
        assert not gray.read(view, (0, 0, failed_z), (64, 64, 8)).any()   # the failed one is not
        followups(core, u)
        after = dag_state(core.db)
        core.close()
        core = open_store(path, **cfg)
        assert dag_state(core.db) == after
    finally:
        core.close()


def test_engine_acknowledges_no_write_it_would_lose(disk):
    """After LevelDB failed to append to its log half-way (part of the record
    fitted in the log's last page), a later write it accepts is silently
    dropped by the next open: the reader meets the broken record and skips
    the rest of that log block.  The engine must refuse those writes instead:
    whatever it acknowledges survives a reopen."""
    path = disk / "store"
    engine = LevelDBEngine(path, create=True)
    try:
        first = Batch()
        first.put(b"k-first", b"v" * 100)
        engine.apply(first, sync=True)
        pad_log_to_page(engine, path, room=200)
        filler = fill(disk)
        b = Batch()
        b.put(b"k-failed", b"v" * 3000)                 # 200 bytes of it reach the log
        with pytest.raises(NoSpaceError) as ei:
            engine.apply(b, sync=True)
        assert_no_space(ei.value)
        assert engine.get(b"k-failed") is None and engine.get(b"k-first") == b"v" * 100
        assert -os.path.getsize(newest_log(path)) % PAGE == 0   # the partial record is in the log

        filler.unlink()
        acknowledged = []
        for i in range(5):
            b = Batch()
            b.put(b"k-after-%d" % i, b"w" * 100)
            try:
                engine.apply(b, sync=True)
                acknowledged.append(b"k-after-%d" % i)
            except NoSpaceError as exc:
                assert "reopen" in str(exc)
        engine.close()

        engine = LevelDBEngine(path)
        assert {k for k in acknowledged if engine.get(k) is None} == set(), "acknowledged, then lost"
        assert engine.get(b"k-failed") is None and engine.get(b"k-first") == b"v" * 100
        b = Batch()
        b.put(b"k-reopened", b"x")
        engine.apply(b, sync=True)                 # writes work again after the reopen
        assert engine.get(b"k-reopened") == b"x"
    finally:
        engine.close()


def test_open_on_a_full_disk(disk):
    """LevelDB writes a new MANIFEST (and log) on every open, even to read: on
    a full disk the store cannot be opened.  That is one NoSpaceError line,
    and the store opens intact once there is room."""
    path = disk / "store"
    core = Dvid(path, create=True, config=Config(block_cache=1 << 20, readahead=0, leveldb_cache=1 << 20))
    try:
        u = build(core)
        before = dag_state(core.db)
    finally:
        core.close()
    filler = fill(disk)
    with pytest.raises(NoSpaceError) as ei:
        open_store(path)
    assert_no_space(ei.value)
    assert str(path) in str(ei.value) and "cannot open" in str(ei.value)
    with pytest.raises(NoSpaceError):
        open_store(path)                           # again: a failed open changed nothing
    filler.unlink()
    core = open_store(path)
    try:
        assert dag_state(core.db) == before
        OPS["commit"](core, u)
    finally:
        core.close()


# ----------------------------------------------------------------------------- other I/O errors

_FSIZE_SCRIPT = textwrap.dedent("""
    import json, os, resource, signal, sys
    import plyvel
    from dvidfs.errors import DvidfsError
    from dvidfs.store.engine import Batch
    from dvidfs.store.leveldb import LevelDBEngine
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit is EFBIG, not a signal
    engine = LevelDBEngine(sys.argv[1], create=True)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
    out = []
    for i in range(40):
        b = Batch()
        b.put(b"k%d" % i, os.urandom(5000))
        try:
            engine.apply(b)
        except Exception as exc:
            out.append([type(exc).__module__ + "." + type(exc).__name__,
                        isinstance(exc, plyvel.IOError), isinstance(exc, DvidfsError),
                        getattr(exc, "errno", None), str(exc)])
            if len(out) == 2:
                break
    engine.close()
    print(json.dumps(out))
""")


def test_other_io_errors_keep_their_type(tmp_path):
    """A write failing for another reason (here: a file size limit, EFBIG) is
    not called a full disk: plyvel's IOError passes through, and the writes
    after it are refused (EIO) until the store is reopened."""
    r = subprocess.run([sys.executable, "-c", _FSIZE_SCRIPT, str(tmp_path / "store")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    (first, second) = json.loads(r.stdout)
    assert first[1] and not first[2] and "File too large" in first[4]
    assert second[2] and not second[1] and second[3] == errno.EIO
    assert "reopen" in second[4] and "File too large" in second[4] and "\n" not in second[4]
    with contextlib.closing(LevelDBEngine(tmp_path / "store")) as engine:
        b = Batch()
        b.put(b"again", b"x")
        engine.apply(b)
        assert engine.get(b"again") == b"x"
