"""Changes made through the core API (not FUSE) while the store is mounted in
the same process reach the kernel: the mount follows `Dvid.subscribe`.

The kernel keeps entries and attributes of this mount for an hour, so without
the subscription a `stat` after such a write keeps the old size and mode."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from PIL import Image

from dvidfs.core import Dvid
from dvidfs.formats.images import png_size
from mounting import mounted_in_process

pytestmark = pytest.mark.mount


def _png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def test_core_writes_while_mounted_are_seen_by_the_next_stat_and_cat(tmp_path):
    rng = np.random.default_rng(11)
    first = rng.integers(0, 256, (8, 20, 24), dtype=np.uint8)     # z, y, x
    more = rng.integers(0, 256, (8, 20, 24), dtype=np.uint8)
    with Dvid.init(tmp_path / "store") as core:
        root = core.node(core.new_repo("em").root)
        gray = core.new_instance(root, "gray", "grayscale", block_size=16)
        gray.write(root, (0, 0, 0), first)
        with mounted_in_process(core, tmp_path / "mnt"):
            node = tmp_path / "mnt" / "em" / root.uuid
            xz = node / "gray" / "xz" / "00003.png"
            assert os.stat(xz).st_size == png_size(24, 8)
            np.testing.assert_array_equal(_png(xz), first[:, 3, :])
            assert sorted(os.listdir(node / "gray" / "xy")) == [f"{z:05d}.png" for z in range(8)]
            assert os.stat(xz).st_mode & 0o222  # an open node: writable

            # a write through the core API (what the HTTP server will do) grows the extents
            gray.write(root, (0, 0, 8), more)
            assert os.stat(xz).st_size == png_size(24, 16)
            np.testing.assert_array_equal(_png(xz), np.concatenate([first, more])[:, 3, :])
            assert os.stat(node / "gray" / "xy" / "00012.png").st_size == png_size(24, 20)
            info = json.loads((node / "gray" / "info.json").read_text())
            assert info["Extended"]["MaxPoint"] == [23, 19, 15]

            # a node-level change through the core: the node is committed, files turn read-only
            core.commit(root, "via the core")
            assert not os.stat(xz).st_mode & 0o222
            assert json.loads((node / ".dvid" / "info.json").read_text())["Locked"] is True
            # a branch made through the core is a new node directory and link at once
            child = core.branch(root, "side")
            assert os.readlink(tmp_path / "mnt" / "em" / "side") == child.uuid
            assert child.uuid in os.listdir(tmp_path / "mnt" / "em")


def test_forgotten_inodes_are_dropped_and_invalidation_touches_what_changed(tmp_path):
    """A walk over many slices grows the inode table; once the kernel forgets them
    (drop_caches) the table shrinks back.  A note touches no slice's inode."""
    with Dvid.init(tmp_path / "store") as core:
        root = core.node(core.new_repo("em").root)
        gray = core.new_instance(root, "gray", "grayscale", block_size=8)
        gray.write(root, (0, 0, 0), np.zeros((3000, 4, 4), np.uint8))
        with mounted_in_process(core, tmp_path / "mnt") as ops:
            xy = tmp_path / "mnt" / "em" / root.uuid / "gray" / "xy"
            base = len(ops.inodes)
            sizes = {os.stat(xy / name).st_size for name in os.listdir(xy)}
            assert sizes == {png_size(4, 4)} and len(ops.inodes) >= base + 3000
            touched = []
            real = ops._invalidate

            async def spy(candidates, pred):
                candidates = list(candidates)
                touched.append(len(candidates))
                await real(candidates, pred)

            ops._invalidate = spy
            core.set_note(root, "a note")
            assert touched and max(touched) < 100   # the node's own entries and the links, not 3000 slices
            ops._invalidate = real
            for _ in range(20):
                with open("/proc/sys/vm/drop_caches", "w") as f:
                    f.write("2\n")
                if len(ops.inodes) < base + 100:
                    break
                time.sleep(0.1)
            assert len(ops.inodes) < base + 100, len(ops.inodes)
            assert os.stat(xy / "02999.png").st_size == png_size(4, 4)  # looked up afresh
