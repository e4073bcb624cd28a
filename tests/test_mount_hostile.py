"""The mount stays alive and bounded under hostile input (a real mount, real
syscalls): ids and names that are not numbers, huge extents, writes larger than
any slice, decompression bombs, huge splits, commands in pieces, names that
would only live in RAM.  After each, the mount still answers and the store
holds exactly what succeeded."""
from __future__ import annotations

import errno
import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dvidfs.core import Dvid
from mounting import mounted

pytestmark = pytest.mark.mount

SHAPE = (6, 20, 24)   # z, y, x


def _png(img: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(img).save(b, format="PNG")
    return b.getvalue()


def _bomb_png(w: int, h: int) -> bytes:
    """A small PNG whose header declares w x h pixels (zeros compress ~1000:1)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = zlib.compress(b"\0" * (w + 1) * min(h, 64), 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.fixture
def hostile(tmp_path):
    rng = np.random.default_rng(3)
    gray_vol = rng.integers(0, 256, SHAPE, dtype=np.uint8)
    labels = np.zeros(SHAPE, np.uint64)
    labels[:, :10] = 7
    labels[:, 10:] = 9
    with Dvid.init(tmp_path / "store") as s:
        root = s.node(s.new_repo("em").root)
        s.new_instance(root, "gray", "grayscale", block_size=8).write(root, (0, 0, 0), gray_vol)
        s.new_instance(root, "seg", "labels", block_size=8).write(root, (0, 0, 0), labels)
    with mounted(tmp_path / "store", tmp_path / "mnt") as proc:
        yield tmp_path / "mnt" / "em" / root.uuid, proc, gray_vol


def _alive(node, proc):
    assert proc.poll() is None, "the mount process died"
    assert os.path.isdir(node / ".dvid") and "gray" in os.listdir(node)


def _errno_of(fn) -> int:
    with pytest.raises(OSError) as ei:
        fn()
    return ei.value.errno


def test_names_that_are_not_ids_are_errnos_not_crashes(hostile):
    node, proc, _ = hostile
    labels = node / "seg" / "labels"
    for name in ("99999999999999999999999", str(2**64), "0", "²", "٣", "-7", "7 ", "7.0"):
        assert _errno_of(lambda: os.stat(labels / name)) == errno.ENOENT, name
        _alive(node, proc)
    assert os.stat(labels / "7").st_mode  # a real body still resolves
    for text in ("99999999999999999999999 7\n", f"{2**64} 9\n", "7 ²\n", "-7 9\n"):
        assert _errno_of(lambda: (node / "seg" / "merge").write_text(text)) == errno.EINVAL, text
        _alive(node, proc)
    for name in ("99999999999.png", "٣.png", "1e3.png", "00001.PNG"):
        assert _errno_of(lambda: os.stat(node / "gray" / "xy" / name)) == errno.ENOENT, name
    _alive(node, proc)


def test_huge_extents_list_lazily(hostile):
    """One slice written 10⁹ planes away: listing the first entries is cheap and
    the mount's memory stays put (entries are made as they are read)."""
    node, proc, gray = hostile
    xy = node / "gray" / "xy"
    (xy / f"{10**9:05d}.png").write_bytes(_png(gray[0]))
    rss = _rss_kib(proc.pid)
    with os.scandir(xy) as it:
        first = [next(it).name for _ in range(3)]
    assert first == ["00000.png", "00001.png", "00002.png"]
    assert os.stat(xy / f"{10**9:05d}.png").st_size > 0
    _alive(node, proc)
    assert _rss_kib(proc.pid) - rss < 64 * 1024  # not 10⁹ entries


def test_imagej_names_are_slices_and_other_names_are_refused(hostile):
    node, proc, gray = hostile
    xy = node / "gray" / "xy"
    new = np.full(SHAPE[1:], 77, np.uint8)
    (xy / "xy0003.png").write_bytes(_png(new))   # ImageJ's Save As > Image Sequence
    with Image.open(xy / "00003.png") as im:
        assert (np.asarray(im) == 77).all()
    assert _errno_of(lambda: (xy / "mystack.png").write_bytes(_png(new))) == errno.EINVAL
    assert _errno_of(lambda: (xy / "notes.txt").write_bytes(b"hello")) == errno.EINVAL
    assert "not a slice name" in (node / ".dvid" / "last-error").read_text()
    assert sorted(os.listdir(xy)) == [f"{z:05d}.png" for z in range(SHAPE[0])]  # nothing kept in RAM
    _alive(node, proc)


def test_writes_larger_than_a_slice_are_refused_before_buffering(hostile):
    node, proc, gray = hostile
    xy = node / "gray" / "xy"
    rss = _rss_kib(proc.pid)
    fd = os.open(xy / "00001.png", os.O_WRONLY)
    try:
        assert _errno_of(lambda: os.pwrite(fd, b"x", 1 << 30)) == errno.EFBIG
    finally:
        os.close(fd)
    fd = os.open(xy / ".00002.png.tmp", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        assert _errno_of(lambda: os.ftruncate(fd, 2 << 30)) == errno.EFBIG
    finally:
        os.close(fd)
    os.unlink(xy / ".00002.png.tmp")
    assert _rss_kib(proc.pid) - rss < 64 * 1024
    with Image.open(xy / "00001.png") as im:  # unchanged
        np.testing.assert_array_equal(np.asarray(im), gray[1])
    _alive(node, proc)


def test_decompression_bomb_is_refused_from_its_header(hostile):
    node, proc, gray = hostile
    rss = _rss_kib(proc.pid)
    bomb = _bomb_png(60000, 60000)
    assert len(bomb) < 200_000
    assert _errno_of(lambda: (node / "gray" / "xy" / "00001.png").write_bytes(bomb)) == errno.EINVAL
    assert _rss_kib(proc.pid) - rss < 64 * 1024
    with Image.open(node / "gray" / "xy" / "00001.png") as im:
        np.testing.assert_array_equal(np.asarray(im), gray[1])
    _alive(node, proc)


def test_split_bigger_than_its_body_is_refused_at_once(hostile):
    node, proc, _ = hostile
    body = node / "seg" / "labels" / "7"
    size = int((body / "size").read_text())
    huge = bytes([0, 3, 0, 0]) + struct.pack("<II", 0, 1) + struct.pack("<iiii", 0, 0, 0, 2**31 - 1)
    assert len(huge) == 28
    assert _errno_of(lambda: (body / "split").write_bytes(huge)) == errno.EINVAL
    assert "voxels" in (node / ".dvid" / "last-error").read_text()
    too_long = b"\0" * (12 + 16 * size + 16)   # more runs than the body has voxels
    assert _errno_of(lambda: (body / "split").write_bytes(too_long)) == errno.EFBIG
    assert int((body / "size").read_text()) == size
    _alive(node, proc)


def test_commands_act_when_complete(hostile):
    """A branch name written in two pieces names one branch; a note spanning
    writes is set whole at close."""
    node, proc, _ = hostile
    (node / ".dvid" / "commit").write_text("base\n")
    fd = os.open(node / ".dvid" / "branch", os.O_WRONLY)
    try:
        os.write(fd, b"piece")
        assert "piece" not in os.listdir(node.parent)
        os.write(fd, b"wise\n")
    finally:
        os.close(fd)
    assert "piecewise" in os.listdir(node.parent) and "piece" not in os.listdir(node.parent)
    child = node.parent / "piecewise"
    fd = os.open(child / ".dvid" / "note", os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, b"line one\n")
        os.write(fd, b"line two\n")
    finally:
        os.close(fd)
    assert (child / ".dvid" / "note").read_text() == "line one\nline two\n"
    fd = os.open(node / ".dvid" / "branch", os.O_WRONLY)   # no newline: acts at close
    os.write(fd, b"tail")
    os.close(fd)
    assert "tail" in os.listdir(node.parent)
    _alive(node, proc)
