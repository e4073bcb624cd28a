"""Deleting through a real mount: `rm` of slices in open nodes (real `rm`,
compared with numpy), refusals (committed nodes, `rm -r` of planes and
instances: the store stays byte-identical), and deletions of instances and
repos made through the core while the kernel holds the mount's entries."""
from __future__ import annotations

import os
import subprocess
import time

import numpy as np
import pytest
import tifffile
from PIL import Image

from conftest import full_scan
from dvidfs.core import Dvid
from mounting import mounted, mounted_in_process

pytestmark = pytest.mark.mount

SHAPE = (21, 37, 45)          # z, y, x
OFF = (-5, 3, -4)             # x, y, z


def _vol(seed=1):
    return np.random.default_rng(seed).integers(1, 256, SHAPE, dtype=np.uint8)


def _labels(seed=2):
    return np.random.default_rng(seed).integers(0, 4, SHAPE).astype(np.uint64) * 7


def _make(path):
    s = Dvid.init(path)
    r = s.new_repo("em")
    root = s.node(r.root)
    s.new_instance(root, "gray", "grayscale", block_size=16).write(root, OFF, _vol())
    s.new_instance(root, "seg", "labels", block_size=16).write(root, OFF, _labels())
    s.commit(root)
    child = s.branch(root, "edit")
    return s, r, root, child


def _png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _sh(*args):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=60)


def test_rm_slices_in_open_node(tmp_path):
    s, r, root, child = _make(tmp_path / "st")
    s.close()
    mnt = tmp_path / "mnt"
    want, lwant = _vol(), _labels()
    with mounted(tmp_path / "st", mnt):
        node = mnt / "em" / child.uuid
        for plane, coord, axis in (("xy", OFF[2] + 4, 0), ("xz", OFF[1] + 36, 1), ("yz", OFF[0], 2)):
            f = node / "gray" / plane / f"{coord:05d}.png"
            assert _sh("rm", f).returncode == 0
            idx = [slice(None)] * 3
            idx[axis] = coord - OFF[2 - axis]
            want[tuple(idx)] = 0
            assert f.exists() and not _png(f).any()                      # still listed: all zeros
            assert f"{coord:05d}.png" in os.listdir(node / "gray" / plane)
        for z in range(SHAPE[0]):                                         # every xy slice equals numpy
            assert np.array_equal(_png(node / "gray" / "xy" / f"{OFF[2] + z:05d}.png"), want[z])
        # the parent is unchanged
        assert np.array_equal(_png(mnt / "em" / root.uuid / "gray" / "xy" / f"{OFF[2] + 4:05d}.png"), _vol()[4])
        # labels: through the labels type's write path (index kept right)
        assert _sh("rm", node / "seg" / "xy" / f"{OFF[2] + 2:05d}.tif").returncode == 0
        lwant[2] = 0
        got = tifffile.imread(node / "seg" / "xy" / f"{OFF[2] + 2:05d}.tif")
        assert not got.any()
        # a view (colours) is not where slices are removed
        r_ = _sh("rm", node / "seg" / "xy-rgb" / f"{OFF[2] + 3:05d}.png")
        assert r_.returncode != 0
    with Dvid(tmp_path / "st") as s:
        c = s.node(child.uuid)
        assert np.array_equal(s.data(c, "gray").read(c, OFF, SHAPE[::-1]), want)
        seg = s.data(c, "seg")
        assert np.array_equal(seg.read(s.view(c), OFF, SHAPE[::-1]), lwant)
        for body in (7, 14, 21):
            assert seg.size(s.view(c), body) == int((lwant == body).sum())


def test_guards_leave_the_store_byte_identical(tmp_path):
    s, r, root, child = _make(tmp_path / "st")
    before = full_scan(s.engine)
    s.close()
    mnt = tmp_path / "mnt"
    with mounted(tmp_path / "st", mnt):
        committed = mnt / "em" / root.uuid
        r_ = _sh("rm", committed / "gray" / "xy" / f"{OFF[2]:05d}.png")
        assert r_.returncode != 0 and "Read-only file system" in r_.stderr
        node = mnt / "em" / child.uuid
        r_ = _sh("rm", "-r", node / "gray" / "xy")
        assert r_.returncode != 0 and "Operation not permitted" in r_.stderr
        err = (node / ".dvid" / "last-error").read_text()
        assert "rm -r" in err and "dvidfs data delete" in err
        r_ = _sh("rm", "-rf", node / "gray")
        assert r_.returncode != 0
        r_ = _sh("rmdir", node / "seg")
        assert r_.returncode != 0 and "Operation not permitted" in r_.stderr
        err = (node / ".dvid" / "last-error").read_text()
        assert "every node" in err and "--imsure" in err and "imsure=true" in err
        r_ = _sh("find", node / "seg" / "xz", "-name", "*.tif", "-delete")
        assert r_.returncode != 0
        assert len(os.listdir(node / "gray" / "xy")) == SHAPE[0]
        assert np.array_equal(_png(node / "gray" / "xy" / f"{OFF[2] + 1:05d}.png"), _vol()[1])
    with Dvid(tmp_path / "st") as s:
        assert full_scan(s.engine) == before


def _eventually(fn, seconds=5.0):
    deadline = time.time() + seconds
    while True:
        try:
            return fn()
        except FileNotFoundError:
            if time.time() > deadline:
                raise
            time.sleep(0.02)


def test_mount_sees_instance_and_repo_deletion_at_once(tmp_path):
    s, r, root, child = _make(tmp_path / "st")
    other = s.new_repo("other")
    mnt = tmp_path / "mnt"
    try:
        with mounted_in_process(s, mnt):
            node = mnt / "em" / child.uuid
            f = node / "gray" / "xy" / f"{OFF[2] + 4:05d}.png"
            assert np.array_equal(_png(f), _vol()[4])                     # cached by the kernel now
            assert sorted(os.listdir(node)) == [".dvid", "gray", "seg"]
            s.delete_instance(r, "gray")
            assert not (node / "gray").exists() and not f.exists()
            assert sorted(os.listdir(node)) == [".dvid", "seg"]
            assert "gray" not in os.listdir(mnt / "em" / root.uuid)
            # a new instance of the same name starts empty and shows its own data
            g2 = s.new_instance(child, "gray", "grayscale", block_size=16)
            # the kernel drops the old name through pyfuse3's asynchronous queue (as for
            # every vanishing name): until it has, the old directory answers ENOENT
            assert _eventually(lambda: os.listdir(node / "gray" / "xy")) == []
            g2.write(child, OFF, _vol(9))
            assert np.array_equal(_png(f), _vol(9)[4])
            assert s.wait_deletions(30)
            s.delete_repo(r)
            assert sorted(os.listdir(mnt)) == ["other"]
            assert not node.exists() and not (mnt / "em").exists()
            assert sorted(os.listdir(mnt / "other")) == sorted([other.root, "master"])
    finally:
        s.close()


def test_a_second_mount_in_the_same_process_still_drops_names(tmp_path):
    """pyfuse3's own name-invalidation queue stops for good when the first
    `pyfuse3.main()` of a process returns: a second mount would keep showing a
    deleted instance.  The mount's own worker (fs/invalidation.py) lives and
    ends with each mount."""
    for i in range(2):
        (tmp_path / str(i)).mkdir()
        test_mount_sees_instance_and_repo_deletion_at_once(tmp_path / str(i))
