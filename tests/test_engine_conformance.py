"""One conformance suite for every ordered key/value engine (`OrderedKV`).

Each test runs against every engine in `KINDS` through the `engine` fixture,
and compares what the engine returns with an independent Python computation
(a dict and `sorted()`, integer tuples, a parent-walking version model), so a
new engine is covered by adding one entry to `KINDS`.  Capabilities that not
every engine has are either read from the engine (`atomic_batches`) or are
properties of the kind (`persistent`); tests that need one skip without it.
The `s3` kind runs on the session's SeaweedFS (tests/seaweed.py), a fresh
prefix per test.
LevelDB-only behaviour (process lock, missing store) is at the end.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import random
import sys
import threading
from dataclasses import dataclass, field
from typing import Callable

import pytest

from dvidfs.errors import NotFoundError, StoreBusyError
from dvidfs.store import keys, versioned
from dvidfs.store.engine import Batch, Cursor, OrderedKV, Reader
from dvidfs.store.leveldb import DB_DIR, LevelDBEngine
from dvidfs.store.memory import MemoryEngine
from seaweed import s3_engine

END = b"\xff" * 64   # above every key these tests write


@dataclass(frozen=True)
class Kind:
    name: str
    open: Callable  # (path, create) -> engine
    capabilities: frozenset = field(default_factory=frozenset)


KINDS = [
    Kind("leveldb", lambda path, create: LevelDBEngine(path, create=create), frozenset({"persistent"})),
    Kind("memory", lambda path, create: MemoryEngine()),
    # the same engine cut into chunks of 4-8 keys: every test crosses chunk
    # boundaries, splits chunks and empties them
    Kind("memory-small-chunks", lambda path, create: MemoryEngine(chunk_size=4)),
    # the S3 object-store engine on a real SeaweedFS (bound to the server by the fixture);
    # values of 36+ bytes get their own objects (about one in eight of the random values
    # here), so both inline values and fetched ones are checked; tests/test_s3.py covers
    # checkpoints, garbage collection and crashes
    Kind("s3", None, frozenset({"persistent", "seaweedfs"})),
]


@pytest.fixture(params=KINDS, ids=lambda k: k.name)
def kind(request) -> Kind:
    k = request.param
    if "seaweedfs" in k.capabilities:
        server = request.getfixturevalue("seaweedfs")
        k = dataclasses.replace(k, open=lambda path, create: s3_engine(
            server, path, create, inline_max=36, checkpoint_entries=64))
    return k


@pytest.fixture
def engine(kind, tmp_path):
    e = kind.open(tmp_path / "store", True)
    try:
        yield e
    finally:
        e.close()


def needs(kind: Kind, capability: str) -> None:
    if capability not in kind.capabilities:
        pytest.skip(f"{kind.name} engine is not {capability}")


def needs_atomic(engine) -> None:
    if not type(engine).atomic_batches:
        pytest.skip(f"{type(engine).__name__} does not claim atomic batches")


# ------------------------------------------------------------------ helpers
def random_key(rng: random.Random) -> bytes:
    # short keys over a small alphabet that includes 0x00 and 0xff, so prefixes,
    # extensions and the extreme bytes all occur
    return bytes(rng.choice((0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff)) for _ in range(rng.randint(1, 6)))


def random_model(rng: random.Random, n: int) -> dict[bytes, bytes]:
    return {random_key(rng): rng.randbytes(rng.randint(0, 40)) for _ in range(n)}


def write(engine, model: dict[bytes, bytes], rng: random.Random | None = None, batches: int = 1) -> None:
    """Put every item of `model` into `engine`, split into `batches` batches."""
    items = list(model.items())
    if rng is not None:
        rng.shuffle(items)
    size = max(1, -(-len(items) // batches))
    for i in range(0, len(items), size):
        b = Batch()
        for k, v in items[i:i + size]:
            b.put(k, v)
        engine.apply(b)


def everything(reader) -> list[tuple[bytes, bytes]]:
    return [(bytes(k), bytes(v)) for k, v in reader.scan(b"", END)]


# ------------------------------------------------------------------ protocol
def test_engine_satisfies_the_protocol(engine):
    assert isinstance(engine, OrderedKV)
    assert isinstance(engine, Reader)
    assert isinstance(type(engine).atomic_batches, bool)
    with engine.cursor() as it:
        assert isinstance(it, Cursor)
        assert not it.valid()           # unpositioned until the first seek
    with engine.snapshot() as snap:
        assert isinstance(snap, Reader)
        assert snap.get(b"x") is None


# ------------------------------------------------------------------ point reads
def test_get_missing_key_is_none(engine):
    rng = random.Random(1)
    assert engine.get(b"anything") is None
    model = random_model(rng, 300)
    write(engine, model, rng, batches=3)
    probes = {random_key(rng) for _ in range(600)}
    probes |= {k + b"\x00" for k in model} | {k[:-1] for k in model if len(k) > 1}
    missing = probes - model.keys()
    assert missing
    for k in missing:
        assert engine.get(k) is None, k
    for k, v in model.items():
        got = engine.get(k)
        assert type(got) is bytes and got == v


def test_delete(engine):
    rng = random.Random(2)
    model = random_model(rng, 400)
    write(engine, model, rng)
    doomed = rng.sample(sorted(model), len(model) // 3)
    b = Batch()
    for k in doomed:
        b.delete(k)
    b.delete(b"\x42never-written")  # deleting a missing key is a no-op
    engine.apply(b)
    for k in doomed:
        del model[k]
        assert engine.get(k) is None
    assert engine.get(b"\x42never-written") is None
    assert everything(engine) == sorted(model.items())


def test_overwrite_and_order_within_a_batch(engine):
    rng = random.Random(3)
    model = random_model(rng, 100)
    write(engine, model)
    ks = sorted(model)
    b = Batch()
    for k in ks[:30]:                       # overwrite
        model[k] = rng.randbytes(9)
        b.put(k, model[k])
    for k in ks[30:40]:                     # put twice: the last put wins
        b.put(k, b"first")
        model[k] = rng.randbytes(5)
        b.put(k, model[k])
    for k in ks[40:50]:                     # put then delete: gone
        b.put(k, b"short-lived")
        b.delete(k)
        del model[k]
    for k in ks[50:60]:                     # delete then put: there
        b.delete(k)
        model[k] = rng.randbytes(3)
        b.put(k, model[k])
    engine.apply(b, sync=True)
    engine.apply(Batch())                   # an empty batch changes nothing
    assert everything(engine) == sorted(model.items())
    assert {k: engine.get(k) for k in ks} == {k: model.get(k) for k in ks}


def test_many_small_batches(engine):
    """Churn: hundreds of small batches of puts, overwrites and deletes (one
    of them removing a long run of neighbouring keys), checked against a dict
    after each, with seeks from random places."""
    rng = random.Random(16)
    model = random_model(rng, 1500)
    write(engine, model, rng, batches=10)
    for round_ in range(300):
        b = Batch()
        ordered = sorted(model)
        if round_ == 150:                    # a long run of neighbours disappears
            i = rng.randrange(len(ordered) // 2)
            for k in ordered[i:i + len(ordered) // 3]:
                b.delete(k)
                del model[k]
        for _ in range(rng.randint(1, 12)):
            r = rng.random()
            if r < 0.3 and model:
                k = rng.choice(ordered)
                b.delete(k)
                model.pop(k, None)
            else:
                k = rng.choice(ordered) if r < 0.6 else random_key(rng)
                model[k] = rng.randbytes(rng.randint(0, 8))
                b.put(k, model[k])
        engine.apply(b)
        if round_ % 25 == 0 or round_ == 150:
            assert everything(engine) == sorted(model.items())
        ordered = sorted(model)
        probe = random_key(rng)
        want = [(k, model[k]) for k in ordered if k >= probe][:3]
        with engine.cursor() as it:
            it.seek(probe)
            got = []
            while it.valid() and len(got) < 3:
                got.append((it.key(), it.value()))
                it.next()
        assert got == want
    assert everything(engine) == sorted(model.items())


# ------------------------------------------------------------------ scans
def test_scan_is_in_byte_order(engine):
    rng = random.Random(4)
    model = random_model(rng, 5000)         # several thousand keys: many memory chunks
    write(engine, model, rng, batches=7)
    assert everything(engine) == sorted(model.items())
    assert all(type(k) is bytes and type(v) is bytes for k, v in engine.scan(b"", END))


def test_keys_only_scan(engine):
    rng = random.Random(5)
    model = random_model(rng, 500)
    write(engine, model, rng, batches=2)
    got = list(engine.scan(b"", END, include_value=False))
    assert got == sorted(model)
    assert all(type(k) is bytes for k in got)


def test_scan_bounds_are_half_open(engine):
    rng = random.Random(6)
    model = random_model(rng, 800)
    write(engine, model, rng, batches=4)
    ordered = sorted(model)
    bounds = ordered + [random_key(rng) for _ in range(50)] + [b"", END]
    for _ in range(300):
        start, stop = rng.choice(bounds), rng.choice(bounds)
        want = [k for k in ordered if start <= k < stop]
        assert list(engine.scan(start, stop, include_value=False)) == want, (start, stop)
        assert list(engine.scan(start, stop)) == [(k, model[k]) for k in want]
    k = rng.choice(ordered)
    assert list(engine.scan(k, k)) == []
    assert list(engine.scan(k, k + b"\x00", include_value=False)) == [k]


def test_scan_lazy_fetches_only_what_is_asked_while_current(engine):
    rng = random.Random(7)
    model = random_model(rng, 3000)
    write(engine, model, rng, batches=3)
    ordered = sorted(model)
    for reader_ctx in (None, engine.snapshot):
        def run(reader):
            seen, fetched = [], {}
            for i, (k, fetch) in enumerate(reader.scan_lazy(b"", END)):
                seen.append(k)
                if i % 3 == 0:                   # ask for some values, skip others
                    fetched[k] = fetch()
                    assert fetch() == fetched[k]  # valid until the next item
            assert seen == ordered
            assert fetched == {k: model[k] for k in ordered[::3]}
            # a scan abandoned half-way releases its cursor; the next one is fresh
            lo = ordered[len(ordered) // 2]
            for n, (k, fetch) in enumerate(reader.scan_lazy(lo, END)):
                if n == 5:
                    break
            hi = ordered[len(ordered) // 2 + 40]
            assert [(k, f()) for k, f in reader.scan_lazy(ordered[10], hi)] == \
                [(k, model[k]) for k in ordered if ordered[10] <= k < hi]
            # interleaved scans on one reader do not disturb each other
            a = reader.scan(ordered[0], END, include_value=False)
            b = reader.scan(ordered[100], END, include_value=False)
            pairs = [(next(a), next(b)) for _ in range(50)]
            assert pairs == list(zip(ordered[:50], ordered[100:150]))
        if reader_ctx is None:
            run(engine)
        else:
            with reader_ctx() as snap:
                run(snap)


def test_block_keys_with_negative_coordinates_sort_numerically(engine):
    rng = random.Random(8)
    big = 2**31 - 1
    pts = {(rng.randint(-4, 4), rng.randint(-4, 4), rng.randint(-4, 4)) for _ in range(300)}
    pts |= {(rng.randint(-big - 1, big), rng.randint(-big - 1, big), rng.randint(-big - 1, big))
            for _ in range(200)}
    pts |= {(-big - 1, 0, 0), (big, 0, 0), (0, -1, 0), (0, 0, -1), (-1, -1, -1)}
    inst, version = 9, 3
    b = Batch()
    for p in pts:
        b.put(keys.data_key(inst, keys.tkey(keys.CLASS_GRAY_BLOCK, keys.izyx(*p)), version),
              repr(p).encode())
    b.put(keys.data_key(inst + 1, keys.tkey(keys.CLASS_GRAY_BLOCK, keys.izyx(0, 0, 0)), version), b"other")
    engine.apply(b)

    prefix = keys.instance_prefix(inst)
    got = []
    for k, v in engine.scan(prefix, keys.prefix_end(prefix)):
        _, tk, ver, tomb = keys.split_data_key(k)
        p = keys.parse_izyx(tk[1:])
        assert (ver, tomb, v) == (version, False, repr(p).encode())
        got.append(p)
    assert got == sorted(pts, key=lambda p: (p[2], p[1], p[0]))

    # one scan along x covers a row of blocks, negative x included
    small = [p for p in pts if max(map(abs, p)) <= 4]
    _, y, z = rng.choice(small)
    x0, x1 = -3, 2
    head = prefix + bytes((keys.CLASS_GRAY_BLOCK,))
    row = [keys.parse_izyx(keys.split_data_key(k)[1][1:])
           for k in engine.scan(head + keys.izyx(x0, y, z), head + keys.izyx(x1 + 1, y, z),
                                include_value=False)]
    assert row == sorted(p for p in pts if p[1] == y and p[2] == z and x0 <= p[0] <= x1)


# ------------------------------------------------------------------ cursors
def test_cursor_seek_lands_on_the_next_key(engine):
    rng = random.Random(9)
    model = random_model(rng, 4000)
    write(engine, model, rng, batches=5)
    ordered = sorted(model)
    with engine.cursor() as it:
        with pytest.raises(Exception):
            it.key()                         # not positioned yet
        probes = [random_key(rng) for _ in range(300)] + rng.sample(ordered, 100) + [b"", END]
        for probe in probes:                 # one cursor, many seeks, backwards too
            it.seek(probe)
            after = [k for k in ordered if k >= probe]
            assert it.valid() == bool(after)
            if after:
                assert it.key() == after[0]
                assert it.value() == model[after[0]]
                walked = []
                for _ in range(min(5, len(after))):
                    walked.append((it.key(), it.value()))
                    it.next()
                assert walked == [(k, model[k]) for k in after[:5]]
        it.seek(ordered[-1])
        it.next()
        assert not it.valid()                # past the last key
        for op in (it.key, it.value, it.next):
            with pytest.raises(Exception):
                op()


def test_cursor_reads_the_view_it_was_created_on(engine):
    rng = random.Random(10)
    model = random_model(rng, 200)
    write(engine, model)
    ordered = sorted(model)
    with engine.cursor() as it:
        b = Batch()
        b.delete(ordered[0])
        b.put(ordered[1], b"changed")
        b.put(b"\x00\x00\x00\x00\x00\x00\x00", b"new")
        engine.apply(b)
        it.seek(b"")
        got = []
        while it.valid():
            got.append((it.key(), it.value()))
            it.next()
    assert got == sorted(model.items())
    model.pop(ordered[0])
    model[ordered[1]] = b"changed"
    model[b"\x00\x00\x00\x00\x00\x00\x00"] = b"new"
    assert everything(engine) == sorted(model.items())


# ------------------------------------------------------------------ snapshots
def test_snapshot_is_isolated_from_later_writes(engine):
    rng = random.Random(11)
    before = random_model(rng, 1500)
    write(engine, before, rng, batches=2)
    after = dict(before)
    with engine.snapshot() as snap:
        ordered = sorted(before)
        for round_ in range(3):              # several batches after the snapshot
            b = Batch()
            for k in rng.sample(ordered, 100):
                if k in after and rng.random() < 0.5:
                    b.delete(k)
                    after.pop(k)
                else:
                    after[k] = b"r%d" % round_
                    b.put(k, after[k])
            for _ in range(100):
                k = random_key(rng) + b"\x99"
                after[k] = b"new"
                b.put(k, b"new")
            engine.apply(b)
            assert everything(snap) == sorted(before.items())
            assert everything(engine) == sorted(after.items())
        for k in after.keys() | before.keys():
            assert snap.get(k) == before.get(k)
            assert engine.get(k) == after.get(k)
        with snap.cursor() as it:            # the snapshot's raw cursor too
            it.seek(b"")
            assert (it.key(), it.value()) == min(before.items())
    assert before != after
    assert everything(engine) == sorted(after.items())


# ------------------------------------------------------------------ atomicity
class _InterruptingOps(list):
    """Batch operations whose iteration fails after `n` of them."""

    def __init__(self, ops, n):
        super().__init__(ops)
        self.n = n

    def __iter__(self):
        for i, op in enumerate(list.__iter__(self)):
            if i == self.n:
                raise RuntimeError("interrupted")
            yield op


def test_interrupted_batch_writes_nothing(engine):
    needs_atomic(engine)
    rng = random.Random(12)
    model = random_model(rng, 300)
    write(engine, model)
    ordered = sorted(model)
    ops = [(k, b"half") for k in ordered[:100]] + [(k, None) for k in ordered[100:200]]
    ops += [(b"\x33fresh%d" % i, b"x") for i in range(50)]
    rng.shuffle(ops)
    b = Batch()
    b.ops = _InterruptingOps(ops, len(ops) // 2)
    with pytest.raises(RuntimeError, match="interrupted"):
        engine.apply(b)
    assert everything(engine) == sorted(model.items())
    # a bad value half-way is refused the same way
    b = Batch()
    for k, v in ops[:100]:
        b.ops.append((k, v))
    b.put(b"\x33bad", "not bytes")
    b.put(b"\x33after", b"x")
    with pytest.raises(TypeError):
        engine.apply(b)
    assert everything(engine) == sorted(model.items())
    # and the same operations without the interruption do land
    b = Batch()
    b.ops = list(ops)
    engine.apply(b)
    for k, v in ops:
        if v is None:
            model.pop(k, None)
        else:
            model[k] = v
    assert everything(engine) == sorted(model.items())


def test_concurrent_readers_never_see_part_of_a_batch(engine):
    """A writer alternates two sets of N keys in one batch each (put one set
    with the generation number, delete the other); readers taking snapshots
    (and plain scans, one cursor each) must always see exactly one whole set."""
    needs_atomic(engine)
    n, generations = 40, 300
    a_keys = [b"\x10a%03d" % i for i in range(n)]
    b_keys = [b"\x10b%03d" % i for i in range(n)]

    def batch_for(g: int) -> Batch:
        b = Batch()
        puts, dels = (a_keys, b_keys) if g % 2 == 0 else (b_keys, a_keys)
        for i in range(n):                   # interleave puts and deletes
            b.put(puts[i], b"%d" % g)
            b.delete(dels[i])
        return b

    def check(items: list[tuple[bytes, bytes]]) -> int:
        ks = [k for k, _ in items]
        vals = {v for _, v in items}
        g = int(next(iter(vals))) if len(vals) == 1 else -1
        want = a_keys if g % 2 == 0 else b_keys
        if len(vals) != 1 or ks != want:
            failures.append((len(ks), sorted(vals)[:3]))
        return g

    engine.apply(batch_for(0))
    failures: list = []
    seen: set[int] = set()
    started, done = threading.Event(), threading.Event()

    def reader():
        try:
            while True:
                finished = done.is_set()
                with engine.snapshot() as snap:
                    g = check(list(snap.scan(b"\x10", b"\x11")))
                    check([(k, snap.get(k)) for k in a_keys + b_keys if snap.get(k) is not None])
                seen.add(g)
                seen.add(check(list(engine.scan(b"\x10", b"\x11"))))
                started.set()
                if finished:
                    return
        except BaseException as exc:         # pragma: no cover - reported below
            failures.append(repr(exc))
            started.set()

    def writer():
        started.wait(10)
        for g in range(1, generations + 1):
            engine.apply(batch_for(g))
        done.set()

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)              # make the threads interleave often
    try:
        threads = [threading.Thread(target=reader), threading.Thread(target=reader),
                   threading.Thread(target=writer)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        sys.setswitchinterval(old)
    assert not failures, failures[:5]
    assert {0, generations} <= seen          # readers saw the first and the last state
    assert everything(engine) == sorted((k, b"%d" % generations) for k in a_keys)


def test_concurrent_writers_lose_nothing(engine):
    """Writers in several threads, each with its own keys and many small
    batches (plus one shared counter key each batch overwrites): every key
    written ends up stored, nothing is lost to a racing batch."""
    threads_n, batches_n, per = 4, 60, 5
    errors: list = []

    def writer(t: int):
        try:
            for i in range(batches_n):
                b = Batch()
                for j in range(per):
                    b.put(b"\x20t%d-%03d-%d" % (t, i, j), b"%d" % (i * per + j))
                b.put(b"\x21shared", b"%d" % t)
                engine.apply(b)
        except BaseException as exc:         # pragma: no cover - reported below
            errors.append(repr(exc))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        threads = [threading.Thread(target=writer, args=(t,)) for t in range(threads_n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
    finally:
        sys.setswitchinterval(old)
    assert not errors, errors[:3]
    want = sorted((b"\x20t%d-%03d-%d" % (t, i, j), b"%d" % (i * per + j))
                  for t in range(threads_n) for i in range(batches_n) for j in range(per))
    assert list(engine.scan(b"\x20", b"\x21")) == want
    assert engine.get(b"\x21shared") in {b"%d" % t for t in range(threads_n)}


# ------------------------------------------------------------------ versioned layer
class TreeAncestry:
    """Ancestry stub: a version tree given as child -> parent."""

    def __init__(self, parents: dict[int, int | None]) -> None:
        self.parents = parents

    def chain(self, v: int) -> list[int]:
        out = []
        while v is not None:
            out.append(v)
            v = self.parents[v]
        return out

    def ancestors(self, version: int) -> frozenset[int]:
        return frozenset(self.chain(version))


def test_versioned_tombstones(engine):
    rng = random.Random(13)
    tree = TreeAncestry({1: None, 2: 1, 3: 2, 70000: 2, 5: 1, 2**32 - 2: 70000})
    versions = list(tree.parents)
    insts = (7, 8)                           # adjacent ids: the prefix bound matters
    pts = [(x, y, z) for x in (-2, -1, 0, 1) for y in (-1, 0) for z in (-1, 1)]
    tks = [keys.tkey(keys.CLASS_GRAY_BLOCK, keys.izyx(*p)) for p in pts]
    ops: dict[tuple[int, bytes, int], bytes | None] = {}  # (inst, tk, version) -> value or None (deleted)
    changed: dict[int, set] = {v: set() for v in versions}
    for _ in range(12):
        b = Batch()
        for _ in range(rng.randint(1, 25)):
            inst, tk, v = rng.choice(insts), rng.choice(tks), rng.choice(versions)
            if rng.random() < 0.35:
                versioned.delete(b, inst, tk, v)
                ops[inst, tk, v] = None
            else:
                val = rng.randbytes(rng.randint(1, 12))
                versioned.put(b, inst, tk, v, val)
                ops[inst, tk, v] = val
            changed[v].add((inst, tk))
        engine.apply(b)

    def expected(inst, tk, v):               # nearest op walking up the parent chain
        for u in tree.chain(v):
            if (inst, tk, u) in ops:
                return ops[inst, tk, u]
        return None

    assert any(val is None for val in ops.values())
    lo, hi = keys.tkey(keys.CLASS_GRAY_BLOCK, b"\x00" * 12), keys.tkey(keys.CLASS_GRAY_BLOCK, b"\xff" * 12)
    with engine.snapshot() as snap:
        for reader in (engine, snap):
            for v in versions:
                view = versioned.VersionView(v, tree)
                for inst in insts:
                    want = {tk: expected(inst, tk, v) for tk in tks}
                    for tk in tks:
                        assert versioned.get(reader, inst, tk, view) == want[tk], (inst, tk, v)
                    live = sorted((tk, val) for tk, val in want.items() if val is not None)
                    assert list(versioned.scan(reader, inst, lo, hi, view)) == live
                    a, z = sorted(rng.sample(tks, 2))
                    assert list(versioned.scan(reader, inst, a, z, view)) == \
                        [(tk, val) for tk, val in live if a <= tk <= z]
                    assert versioned.has_tombstones(reader, inst, v) == \
                        any(i == inst and u == v and val is None for (i, _, u), val in ops.items())
                assert sorted(versioned.changed_keys(reader, v)) == sorted(changed[v])


# ------------------------------------------------------------------ persistence
def test_reopen_keeps_data(kind, tmp_path):
    needs(kind, "persistent")
    rng = random.Random(14)
    model = random_model(rng, 2000)
    e = kind.open(tmp_path / "store", True)
    write(e, model, rng, batches=3)
    b = Batch()
    for k in sorted(model)[::4]:
        b.delete(k)
        del model[k]
    e.apply(b, sync=True)
    e.close()
    e.close()                                # idempotent
    e = kind.open(tmp_path / "store", False)
    try:
        assert everything(e) == sorted(model.items())
    finally:
        e.close()


# ------------------------------------------------------------------ LevelDB only
def test_leveldb_second_open_is_busy(tmp_path):
    path = tmp_path / "store"
    first = LevelDBEngine(path, create=True)
    try:
        b = Batch()
        b.put(b"k", b"v")
        first.apply(b)
        for create in (False, True):
            with pytest.raises(StoreBusyError) as ei:
                LevelDBEngine(path, create=create)
            assert ei.value.errno == errno.EBUSY
            assert str(path) in str(ei.value) and "in use" in str(ei.value)
        assert first.get(b"k") == b"v"       # the first handle still works
    finally:
        first.close()
    again = LevelDBEngine(path)
    try:
        assert again.get(b"k") == b"v"
    finally:
        again.close()


def test_leveldb_missing_store_is_not_found(tmp_path):
    path = tmp_path / "nope"
    with pytest.raises(NotFoundError) as ei:
        LevelDBEngine(path)
    assert ei.value.errno == errno.ENOENT
    assert not path.exists()
    e = LevelDBEngine(path, create=True)
    e.close()
    assert os.path.isdir(path / DB_DIR)


def test_leveldb_options_are_accepted(tmp_path):
    rng = random.Random(15)
    model = random_model(rng, 3000)
    e = LevelDBEngine(tmp_path / "store", create=True, write_buffer_size=64 << 10,
                      block_size=4 << 10, lru_cache_size=1 << 20)
    try:
        write(e, model, rng, batches=30)     # a small write buffer: several compactions
        assert everything(e) == sorted(model.items())
    finally:
        e.close()
