"""Deleting things (issue 15, item 7): slices in open nodes (tombstones), data
instances and repos (DVID's semantics, guarded), on a real LevelDB store, the
real CLI and a real HTTP server; and kill -9 during an instance deletion.
The mount's side (rm of slices, refused rmdir) is tests/test_mount_delete.py."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import requests

from conftest import full_scan
from dvidfs.core import Change, Dvid
from dvidfs.errors import NotFoundError, ReadOnlyError
from dvidfs.store import keys
from mounting import dvidfs
from serving import served

SHAPE = (20, 30, 40)          # z, y, x
OFF = (-3, 2, -5)             # x, y, z: not block aligned


def _vol(seed=0):
    return np.random.default_rng(seed).integers(1, 256, SHAPE, dtype=np.uint8)


def _labels(seed=1):
    return np.random.default_rng(seed).integers(0, 5, SHAPE).astype(np.uint64) * 1000


def _box():
    return OFF, (SHAPE[2], SHAPE[1], SHAPE[0])


def _store(path):
    s = Dvid.init(path)
    r = s.new_repo("em")
    root = s.node(r.root)
    s.new_instance(root, "gray", "grayscale", block_size=16).write(root, OFF, _vol())
    s.new_instance(root, "seg", "labels", block_size=16).write(root, OFF, _labels())
    kv = s.new_instance(root, "kv", "keyvalue")
    kv.put(root, "a", b"1")
    s.commit(root)
    child = s.branch(root, "edit")
    return s, r, root, child


def _keys_of(engine, iid: int) -> list[bytes]:
    out = []
    for p in (keys.instance_prefix(iid), keys.TOMBSTONED + keys.u32(iid)):
        out += list(engine.scan(p, keys.prefix_end(p), include_value=False))
    for k in engine.scan(keys.CHANGES, keys.TOMBSTONED, include_value=False):
        if keys.split_change_key(k)[1] == iid:
            out.append(k)
    return out


# ---------------------------------------------------------------- slices
@pytest.mark.parametrize("plane,coord", [("xy", OFF[2] + 7), ("xz", OFF[1]), ("yz", OFF[0] + 39)])
def test_slice_delete_equals_numpy(tmp_path, plane, coord):
    s, r, root, child = _store(tmp_path / "st")
    g = s.data(child, "gray")
    g.delete_slice(child, plane, coord)
    want = _vol()
    axis = {"xy": 0, "xz": 1, "yz": 2}[plane]
    idx = [slice(None)] * 3
    idx[axis] = coord - OFF[2 - axis]
    want[tuple(idx)] = 0
    assert np.array_equal(g.read(child, *_box()), want)
    assert np.array_equal(g.read(root, *_box()), _vol())              # the parent is unchanged
    assert g.extents(s.view(child)) == g.extents(s.view(root))       # still listed: zeros
    assert not s.data(child, "gray").read_slice(s.view(child), plane, coord).any()
    s.close()


def test_slice_delete_tombstones_emptied_blocks(tmp_path):
    """A plane that is all a block holds (1-voxel-thick volume): the block gets a
    tombstone; partly covered blocks are rewritten."""
    s = Dvid.init(tmp_path / "st")
    r = s.new_repo("em")
    root = s.node(r.root)
    g = s.new_instance(root, "gray", "grayscale", block_size=16)
    g.write(root, (0, 0, 0), np.full((2, 16, 32), 9, np.uint8))          # z 0..1: blocks (0,0,0), (1,0,0)
    g.delete_slice(root, "xy", 0)
    assert g.read(root, (0, 0, 0), (32, 16, 2))[0].max() == 0
    g.delete_slice(root, "xy", 1)                                         # now both blocks are empty
    tombs = [k for k, _ in full_scan(s.engine) if k[:1] == keys.DATA and k[-1] == keys.MARK_TOMBSTONE]
    assert len(tombs) == 2
    assert g.read(root, (0, 0, 0), (32, 16, 2)).max() == 0
    s.close()


def test_labels_slice_delete_keeps_index_right(tmp_path):
    s, r, root, child = _store(tmp_path / "st")
    seg = s.data(child, "seg")
    seg.delete_slice(child, "xz", OFF[1] + 11)
    seg.delete_slice(child, "xy", OFF[2] + 3)
    want = _labels()
    want[:, 11, :] = 0
    want[3] = 0
    view = s.view(child)
    assert np.array_equal(seg.read(view, *_box()), want)
    ids, counts = np.unique(want[want != 0], return_counts=True)
    assert sorted(int(b) for b in seg.bodies(view)) == [int(i) for i in ids]
    for body, n in zip(ids, counts):
        assert seg.size(view, int(body)) == int(n)
        mask = np.zeros_like(want, bool)
        mask[want == body] = True
        zs = np.nonzero(mask.any(axis=(1, 2)))[0]
        assert seg.bbox(view, int(body))[0][2] == OFF[2] + zs.min()
    old = _labels()
    for body in np.unique(old[old != 0]):                            # the parent's index is unchanged
        assert seg.size(s.view(root), int(body)) == int((old == body).sum())
    s.close()


def test_slice_delete_refused_in_committed_node(tmp_path):
    s, r, root, child = _store(tmp_path / "st")
    before = full_scan(s.engine)
    with pytest.raises(ReadOnlyError):
        s.data(root, "gray").delete_slice(root, "xy", OFF[2])
    with pytest.raises(NotFoundError):                                 # outside the extents
        s.data(child, "gray").delete_slice(child, "xy", OFF[2] + 100)
    assert full_scan(s.engine) == before
    s.close()


# ---------------------------------------------------------------- instances and repos
def test_delete_instance_everywhere_and_its_keys(tmp_path):
    s, r, root, child = _store(tmp_path / "st")
    changes: list[Change] = []
    s.subscribe(changes.append)
    gid = s.data(root, "gray").inst.id
    assert _keys_of(s.engine, gid)
    stale = s.data(child, "gray")
    s.delete_instance(r, "gray", wait=True)
    assert changes[-1].deleted and changes[-1].instance == "gray"
    assert set(changes[-1].nodes) == {root.uuid, child.uuid}
    for n in (root, child):
        assert "gray" not in s.instances(n)
        with pytest.raises(NotFoundError):
            s.data(n, "gray")
    assert _keys_of(s.engine, gid) == []
    assert s.pending_deletions() == 0
    with pytest.raises(NotFoundError):                                 # a stale object writes nothing
        stale.write(child, (0, 0, 0), np.ones((1, 1, 1), np.uint8))
    assert _keys_of(s.engine, gid) == []
    # the others are untouched
    assert np.array_equal(s.data(child, "seg").read(s.view(child), *_box()), _labels())
    assert s.data(child, "kv").get(s.view(child), "a") == b"1"
    # a new instance of the same name starts empty, with a new id
    g2 = s.new_instance(child, "gray", "grayscale", block_size=16)
    assert g2.inst.id != gid and g2.extents(s.view(child)) is None
    s.close()
    with Dvid(tmp_path / "st") as s2:                                   # and so after a reopen
        assert set(s2.instances(s2.node(child.uuid))) == {"gray", "kv", "seg"}
        assert s2.data(s2.node(child.uuid), "gray").extents(s2.view(s2.node(child.uuid))) is None
        assert "gray" not in s2.instances(s2.node(root.uuid))


def test_delete_repo_leaves_other_repos(tmp_path):
    s, r, root, child = _store(tmp_path / "st")
    other = s.new_repo("other")
    o = s.node(other.root)
    s.new_instance(o, "gray", "grayscale", block_size=16).write(o, OFF, _vol(5))
    ids = [i.id for i in r.instances.values()]
    s.delete_repo(r, wait=True)
    assert [x.alias for x in s.repos()] == ["other"]
    for ref in ("em", root.uuid, child.uuid):
        with pytest.raises(NotFoundError):
            s.node(ref) if ref != "em" else s.repo(ref)
    for iid in ids:
        assert _keys_of(s.engine, iid) == []
    assert not [k for k, _ in full_scan(s.engine) if root.uuid.encode() in k or child.uuid.encode() in k]
    with pytest.raises(NotFoundError):                                 # a stale node saves nothing
        s.set_note(child, "x")
    assert np.array_equal(s.data(o, "gray").read(o, *_box()), _vol(5))
    s.close()
    with Dvid(tmp_path / "st") as s2:
        assert [x.alias for x in s2.repos()] == ["other"]
        s2.new_repo("em")                                              # the name is free again


# ---------------------------------------------------------------- CLI
def test_cli_guards_and_deletes(tmp_path):
    s, r, root, child = _store(tmp_path / "st")
    s.close()
    st = tmp_path / "st"
    with Dvid(st) as s2:
        before = full_scan(s2.engine)
    out = dvidfs("-s", st, "data", "delete", "em", "gray", check=False)
    assert out.returncode == 1 and "--imsure" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = dvidfs("-s", st, "repo", "delete", "em", check=False)
    assert out.returncode == 1 and "--imsure" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    with Dvid(st) as s2:
        assert full_scan(s2.engine) == before
    assert "deleted grayscale instance 'gray'" in dvidfs("-s", st, "data", "delete", "em", "gray", "--imsure").stdout
    with Dvid(st) as s2:
        assert set(s2.instances(s2.node(child.uuid))) == {"kv", "seg"}
        assert s2.pending_deletions() == 0
    dvidfs("-s", st, "repo", "delete", "em", "--imsure")
    with Dvid(st) as s2:
        assert s2.repos() == []
        assert [k for k, _ in full_scan(s2.engine) if k[:1] != keys.META] == []


# ---------------------------------------------------------------- HTTP
def test_http_delete_instance_and_repo(tmp_path):
    s, r, root, child = _store(tmp_path / "st")
    other = s.new_repo("other")
    with served(s) as url:
        before = full_scan(s.engine)
        resp = requests.delete(f"{url}/api/repo/{root.uuid}/gray")
        assert resp.status_code == 400 and "imsure" in resp.text
        resp = requests.delete(f"{url}/api/repo/{root.uuid}")
        assert resp.status_code == 400 and "imsure" in resp.text
        resp = requests.delete(f"{url}/api/repo/{child.uuid}?imsure=true")   # not the root: DVID's 400
        assert resp.status_code == 400
        assert full_scan(s.engine) == before
        resp = requests.delete(f"{url}/api/repo/{child.uuid}/gray?imsure=true")
        assert resp.status_code == 200, resp.text
        assert requests.get(f"{url}/api/node/{child.uuid}/gray/info").status_code == 400
        assert requests.get(f"{url}/api/node/{root.uuid}/seg/info").status_code == 200
        assert requests.delete(f"{url}/api/repo/{child.uuid}/gray?imsure=true").status_code == 400
        assert requests.delete(f"{url}/api/repo/{root.uuid}?imsure=true").status_code == 200
        info = requests.get(f"{url}/api/repos/info").json()
        assert list(info) == [other.root]
        assert requests.get(f"{url}/api/node/{child.uuid}/seg/info").status_code == 400
        assert s.wait_deletions(30)
    s.close()


# ---------------------------------------------------------------- kill -9
_CHILD = textwrap.dedent(r'''
    import sys
    from dvidfs.core import Dvid
    s = Dvid(sys.argv[1])
    print("ready", flush=True)
    s.delete_instance(s.repo("em"), "gray", wait=True)
    print("done", flush=True)
    s.close()
''')


def test_kill_during_instance_delete_is_all_or_nothing(tmp_path):
    st = tmp_path / "st"
    s = Dvid.init(st)
    r = s.new_repo("em")
    root = s.node(r.root)
    big = np.random.default_rng(3).integers(0, 256, (64, 128, 256), dtype=np.uint8)
    g = s.new_instance(root, "gray", "grayscale", block_size=16)
    g.write(root, (0, 0, 0), big)
    s.new_instance(root, "kv", "keyvalue").put(root, "k", b"v")
    gid = g.inst.id
    s.close()
    outcomes = set()
    for delay in (0.0, 0.01, 0.03, 0.06, 0.12):
        trial = tmp_path / f"t{delay}"
        subprocess.run(["cp", "-r", str(st), str(trial)], check=True)     # a copy of the store per trial
        p = subprocess.Popen([sys.executable, "-c", _CHILD, str(trial)], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        time.sleep(delay)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        with Dvid(trial) as s:
            rr = s.repo("em")
            n = s.node(rr.root)
            assert s.data(n, "kv").get(s.view(n), "k") == b"v"
            if "gray" in s.instances(n):
                outcomes.add("present")
                assert np.array_equal(s.data(n, "gray").read(n, (0, 0, 0), (256, 128, 64)), big)
            else:
                outcomes.add("gone, keys left" if s.pending_deletions() else "gone")
                assert s.wait_deletions(60)                               # the rest is removed at open
                assert _keys_of(s.engine, gid) == []
    print("kill -9 trials:", sorted(outcomes))  # which ones depends on timing; each was all or nothing
