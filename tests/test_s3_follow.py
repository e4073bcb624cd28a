"""Readers of an S3 store follow its writer (issue 14: "readers in another
process see a commit made by the writer").

A `Dvid` opened on `s3://…?readonly=1` takes no lease and, every second (or on
`follow()`), catches up with the writer's log: new and changed nodes, repos
and instances, and the data the writer changed — caches of that data are
forgotten and the mount is told, so a reader never serves what it read
before.  Checked three ways:

* in one process, with `follow()` called explicitly (deterministic), against
  what the writer itself reads: writes in an open node the reader had read
  and cached (gray slices through read-ahead, label mappings after a merge),
  a commit, a branch, a new instance, a deletion, and a reader that fell
  behind a checkpoint (the log it missed was deleted, so it reloads whole);
* a real read-only mount in another process, with `ls`, `cat` and `cp`, and a
  read-only `dvidfs serve` in another process over DVID's HTTP API, each
  following a writer in this process by itself (no call from the test).
"""
from __future__ import annotations

import io
import json
import subprocess
import time

import numpy as np
import pytest
import requests
from PIL import Image

from dvidfs.core import Change, Dvid
from dvidfs.errors import ReadOnlyError
from dvidfs.samplestore import build_sample_store
from mounting import mounted
from test_server import serving
from test_s3 import bucket, engine, objects, pfx, s3, url  # noqa: F401  (fixtures)

SHAPE = (64, 64, 64)


def _reader(server, bucket_, prefix, **kw) -> Dvid:
    """A read-only core that follows only when told (refresh far away)."""
    return Dvid(engine=engine(server, bucket_, prefix, readonly=True, refresh_interval=3600, **kw))


def _slab(seed: int, shape=(8, 64, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


def test_a_reader_follows_writes_commits_branches_and_deletions(s3, bucket, pfx):
    with Dvid(engine=engine(s3, bucket, pfx, create=True)) as w:
        root_uuid = build_sample_store(w, SHAPE, block_size=16, commit=False)
        wroot = w.node(root_uuid)
        wgray, wseg = w.data(wroot, "grayscale"), w.data(wroot, "segmentation")
        with _reader(s3, bucket, pfx) as r:
            seen: list[Change] = []
            r.subscribe(seen.append)
            assert r.readonly and not w.readonly
            rroot = r.node(root_uuid)
            rgray, rseg = r.data(rroot, "grayscale"), r.data(rroot, "segmentation")
            for z in (9, 10, 11):                    # read (and cache, read-ahead) before the writer writes
                np.testing.assert_array_equal(r.read_slice(rroot, rgray, "xy", z),
                                              w.read_slice(wroot, wgray, "xy", z))
            before_seg = rseg.read(r.view(rroot), (0, 0, 0), SHAPE)
            assert not r.follow()                    # nothing new yet

            # writes in the open root: gray voxels, then a label merge
            wgray.write(wroot, (0, 0, 8), _slab(1))
            bodies = [int(b) for b in wseg.bodies(w.view(wroot))][:3]
            wseg.merge(wroot, bodies[0], bodies[1:])
            np.testing.assert_array_equal(rseg.read(r.view(rroot), (0, 0, 0), SHAPE), before_seg)  # not yet
            assert r.follow()
            for z in (9, 10, 11):
                np.testing.assert_array_equal(r.read_slice(rroot, rgray, "xy", z),
                                              w.read_slice(wroot, wgray, "xy", z))
            merged = rseg.read(r.view(rroot), (0, 0, 0), SHAPE)
            np.testing.assert_array_equal(merged, wseg.read(w.view(wroot), (0, 0, 0), SHAPE))
            assert not np.array_equal(merged, before_seg)
            assert rseg.size(r.view(rroot), bodies[0]) == wseg.size(w.view(wroot), bodies[0])
            assert {(c.node, c.instance) for c in seen} >= {(root_uuid, "grayscale"), (root_uuid, "segmentation")}

            # commit, a branch with a new instance and writes, a new repo
            w.commit(wroot, "done")
            child = w.branch(wroot, "edit", "edits")
            w.new_instance(child, "notes", "keyvalue")
            w.data(child, "notes").put(child, "a", b"hello")
            wgray.write(child, (0, 0, 20), _slab(2))
            w.new_repo("second")
            seen.clear()
            assert rroot.locked is False
            assert r.follow()
            assert rroot.locked is True              # the object everyone holds took the new state
            assert r.node(child.uuid).parents == [root_uuid] and rroot.children == [child.uuid]
            assert r.branch_tip(r.repo("sample"), "edit").uuid == child.uuid
            rchild = r.node(child.uuid)
            assert "notes" in r.instances(rchild) and "notes" not in r.instances(rroot)
            assert r.data(rchild, "notes").get(r.view(rchild), "a") == b"hello"
            np.testing.assert_array_equal(r.read_slice(rchild, rgray, "xy", 21),
                                          w.read_slice(child, wgray, "xy", 21))
            assert [x.alias for x in r.repos()] == ["sample", "second"]
            assert Change(wroot.repo, root_uuid, committed=True) in seen
            assert Change(wroot.repo, child.uuid, "grayscale") in seen

            # the reader writes nothing, with a message saying why
            for attempt in (lambda: r.data(rchild, "grayscale").write(rchild, (0, 0, 0), _slab(3)),
                            lambda: r.branch(rroot, "mine"),
                            lambda: r.new_repo("mine")):
                with pytest.raises(ReadOnlyError, match="read-only"):
                    attempt()
            assert [n.uuid for n in w.repo_nodes(w.repo("sample"))] == [root_uuid, child.uuid]

            # a deleted instance leaves the reader too
            w.delete_instance(w.repo("sample"), "notes", wait=True)
            seen.clear()
            assert r.follow()
            assert "notes" not in r.instances(rchild)
            assert any(c.deleted and c.instance == "notes" for c in seen)
            assert not r.follow()


def test_a_reader_behind_a_checkpoint_reloads_and_forgets_its_caches(s3, bucket, pfx):
    """The writer folds the log into a checkpoint and deletes the entries the
    reader has not read: the reader loads the checkpoint and, not knowing
    what changed, forgets every cached block and mapping."""
    with Dvid(engine=engine(s3, bucket, pfx, create=True, grace=0, checkpoint_entries=10**6)) as w:
        root_uuid = build_sample_store(w, SHAPE, block_size=16, commit=False)
        wroot = w.node(root_uuid)
        wgray, wseg = w.data(wroot, "grayscale"), w.data(wroot, "segmentation")
        with _reader(s3, bucket, pfx, grace=0) as r:
            rroot = r.node(root_uuid)
            rgray, rseg = r.data(rroot, "grayscale"), r.data(rroot, "segmentation")
            r.read_slice(rroot, rgray, "xy", 10)
            rseg.read(r.view(rroot), (0, 0, 0), SHAPE)
            seen_seq = r.engine._cur.seq
            wgray.write(wroot, (0, 0, 8), _slab(4))
            bodies = [int(b) for b in wseg.bodies(w.view(wroot))][:2]
            wseg.merge(wroot, bodies[0], bodies[1:])
            w.engine.checkpoint()
            w.engine.checkpoint()                    # the second one deletes what the first replaced
            logs = [n for n in objects(s3, bucket, pfx) if n.startswith("log/")]
            assert f"log/{seen_seq + 1:016x}" not in logs   # the entries the reader missed are gone
            assert r.follow()
            np.testing.assert_array_equal(r.read_slice(rroot, rgray, "xy", 10),
                                          w.read_slice(wroot, wgray, "xy", 10))
            np.testing.assert_array_equal(rseg.read(r.view(rroot), (0, 0, 0), SHAPE),
                                          wseg.read(w.view(wroot), (0, 0, 0), SHAPE))


def _wait_for(what: str, check, timeout: float = 20.0):
    """Poll `check()` until it returns a true value (the reader follows every second)."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"the read-only mount did not show {what} within {timeout} s")
        time.sleep(0.2)


def _png(path) -> np.ndarray | None:
    r = subprocess.run(["cat", path], capture_output=True)
    if r.returncode != 0:
        return None
    return np.asarray(Image.open(io.BytesIO(r.stdout)))


@pytest.mark.mount
def test_a_read_only_mount_in_another_process_follows_the_writer(s3, bucket, pfx, tmp_path):
    where = url(s3, bucket, pfx)
    with Dvid.init(where) as w:
        root_uuid = build_sample_store(w, SHAPE, block_size=16)
        wroot = w.node(root_uuid)
        wgray = w.data(wroot, "grayscale")
        mnt = tmp_path / "mnt"
        with mounted(where + "&readonly=1", mnt):
            repo = mnt / "sample"
            assert subprocess.run(["ls", repo], capture_output=True, text=True,
                                  check=True).stdout.split() == [root_uuid, "master"]
            np.testing.assert_array_equal(_png(repo / root_uuid / "grayscale/xy/00010.png"),
                                          w.read_slice(wroot, wgray, "xy", 10))

            child = w.branch(wroot, "edit")
            new = _slab(5)
            wgray.write(child, (0, 0, 8), new)
            _wait_for("the new branch", lambda: child.uuid in subprocess.run(
                ["ls", repo], capture_output=True, text=True, check=True).stdout.split())
            slice10 = repo / child.uuid / "grayscale/xy/00010.png"
            np.testing.assert_array_equal(_png(slice10), new[2])

            # writes are refused by the kernel: the mount is read-only
            Image.fromarray(255 - new[2]).save(tmp_path / "mine.png")
            cp = subprocess.run(["cp", tmp_path / "mine.png", slice10], capture_output=True, text=True)
            assert cp.returncode != 0 and "Read-only file system" in cp.stderr
            mount_line = [ln for ln in open("/proc/mounts") if f" {mnt} " in ln][0]
            assert " ro," in mount_line

            # the writer rewrites the slice the reader has read, then commits
            again = _slab(6)
            wgray.write(child, (0, 0, 8), again)
            _wait_for("the rewritten slice", lambda: np.array_equal(_png(slice10), again[2]))
            w.commit(child, "seen from afar")
            info = repo / child.uuid / ".dvid/info.json"
            _wait_for("the commit", lambda: json.loads(subprocess.run(
                ["cat", info], capture_output=True, text=True, check=True).stdout)["Locked"])


def test_a_read_only_server_in_another_process_follows_the_writer(s3, bucket, pfx):
    """`dvidfs serve s3://…&readonly=1`: DVID's HTTP API of a reader shows the
    writer's new node and its voxels, and refuses writes."""
    where = url(s3, bucket, pfx)
    with Dvid.init(where) as w:
        root_uuid = build_sample_store(w, SHAPE, block_size=16)
        wroot = w.node(root_uuid)
        wgray = w.data(wroot, "grayscale")
        with serving(where + "&readonly=1") as (_proc, http):
            dag = requests.get(f"{http}/api/repo/{root_uuid}/info").json()["DAG"]["Nodes"]
            assert list(dag) == [root_uuid]
            child = w.branch(wroot, "edit")
            new = _slab(7)
            wgray.write(child, (0, 0, 8), new)
            _wait_for("the new node over HTTP", lambda: child.uuid in requests.get(
                f"{http}/api/repo/{root_uuid}/info").json()["DAG"]["Nodes"])
            raw = requests.get(f"{http}/api/node/{child.uuid}/grayscale/raw/0_1/64_64/0_0_10")
            assert raw.status_code == 200
            np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(raw.content))), new[2])  # DVID: 2-D is PNG
            r = requests.post(f"{http}/api/node/{child.uuid}/grayscale/raw/0_1_2/64_64_1/0_0_10",
                              data=bytes(64 * 64))
            assert r.status_code >= 400 and "read-only" in r.text
            np.testing.assert_array_equal(w.read_slice(child, wgray, "xy", 10), new[2])


def test_a_reader_reading_while_following_never_sees_a_torn_or_older_write(s3, bucket, pfx):
    """The writer fills an open node's volume with 1, 2, 3 … (one batch each)
    while a reader follows (its thread and explicit calls) and reads the whole
    volume over and over: every read is one value (never half of two batches),
    and never older than one it read before (no stale cache after a newer read)."""
    import threading
    shape = (32, 32, 32)
    with Dvid(engine=engine(s3, bucket, pfx, create=True)) as w:
        root = w.node(w.new_repo("em").root)
        wgray = w.new_instance(root, "gray", "grayscale", block_size=16)
        wgray.write(root, (0, 0, 0), np.zeros(shape, np.uint8))
        with Dvid(engine=engine(s3, bucket, pfx, readonly=True, refresh_interval=0.05)) as r:
            rroot = r.node(root.uuid)
            rgray = r.data(rroot, "gray")
            done = threading.Event()
            seen: list[int] = []
            problems: list[str] = []

            def read_loop():
                while not done.is_set() or not seen or seen[-1] != 40:
                    r.follow()
                    for got in (rgray.read(r.view(rroot), (0, 0, 0), shape), r.read_slice(rroot, rgray, "xy", 17)):
                        values = np.unique(got)
                        if len(values) != 1:
                            problems.append(f"torn read: {values.tolist()}")
                        elif seen and values[0] < seen[-1]:
                            problems.append(f"read {values[0]} after {seen[-1]}")
                        else:
                            seen.append(int(values[0]))
                    if problems or len(seen) > 10_000:
                        return

            t = threading.Thread(target=read_loop)
            t.start()
            for v in range(1, 41):
                wgray.write(root, (0, 0, 0), np.full(shape, v, np.uint8))
            done.set()
            t.join(60)
            assert not t.is_alive() and not problems, problems[:3]
            assert seen[-1] == 40 and len(set(seen)) > 2
