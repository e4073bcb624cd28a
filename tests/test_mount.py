"""Real-mount tests: real tools (ls, find, stat, cat, cp, tar, rsync, sh) and
Pillow on a live FUSE mount, compared with numpy slices of the source array."""
from __future__ import annotations

import errno
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import threading

import numpy as np
import pytest
from PIL import Image
import tifffile

from dvidfs.core import Dvid
from dvidfs.formats.images import encode_png_stored
from mounting import dvidfs, is_mounted, mounted

pytestmark = pytest.mark.mount

OFFSET = (-5, 3, -4)          # x, y, z of the first voxel: negative and not block-aligned
SHAPE = (21, 37, 45)          # z, y, x: crosses 16³ block borders on every axis


def _volume(seed=1):
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(SHAPE)
    base = ((x * 3 + y * 5 + z * 7) % 200).astype(np.uint8)
    return base + rng.integers(0, 50, SHAPE, dtype=np.uint8)


def _slice(vol, plane, coord):
    ox, oy, oz = OFFSET
    if plane == "xy":
        return vol[coord - oz]
    if plane == "xz":
        return vol[:, coord - oy, :]
    return vol[:, :, coord - ox]


def _png(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L"
        return np.asarray(im)


def _make_store(path, vol, commit=True):
    with Dvid.init(path) as s:
        r = s.new_repo("em")
        root = s.node(r.root)
        g = s.new_instance(root, "gray", "grayscale", block_size=16)
        g.write(root, OFFSET, vol)
        if commit:
            s.commit(root, "initial import")
        return root.uuid


@pytest.fixture(scope="module")
def ro_mount(tmp_path_factory):
    """A committed node, mounted once for the read-only tests."""
    base = tmp_path_factory.mktemp("ro")
    vol = _volume()
    uuid = _make_store(base / "store", vol)
    with mounted(base / "store", base / "mnt"):
        yield base / "mnt", uuid, vol


@pytest.fixture
def rw_mount(tmp_path):
    vol = _volume(2)
    uuid = _make_store(tmp_path / "store", vol, commit=False)
    with mounted(tmp_path / "store", tmp_path / "mnt"):
        yield tmp_path / "mnt", uuid, vol


def run(*cmd, **kw):
    return subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=60, **kw)


# ------------------------------------------------------------------ reading
def test_tree_listing_and_symlinks(ro_mount):
    mnt, uuid, _ = ro_mount
    assert run("ls", mnt).stdout.split() == ["em"]
    assert sorted(run("ls", mnt / "em").stdout.split()) == sorted([uuid, "master"])
    assert os.readlink(mnt / "em" / "master") == uuid
    assert run("ls", mnt / "em/master").stdout.split() == ["gray"]
    assert run("ls", mnt / "em/master/gray").stdout.split() == ["info.json", "precomputed", "xy", "xz", "yz"]
    # a unique UUID prefix resolves too
    assert os.path.isdir(mnt / "em" / uuid[:6] / "gray")
    # readdir order is coordinate order, negative coordinates included
    xy = os.listdir(mnt / f"em/{uuid}/gray/xy")
    oz = OFFSET[2]
    assert xy == [f"{z:05d}.png" for z in range(oz, oz + SHAPE[0])]
    # `ls` sorts by name itself: coordinate order for the non-negative part
    ls = run("ls", mnt / f"em/{uuid}/gray/xy").stdout.split()
    assert [n for n in ls if not n.startswith("-")] == [f"{z:05d}.png" for z in range(0, oz + SHAPE[0])]
    info = json.loads((mnt / "em/master/gray/info.json").read_text())
    assert info["Extents"]["MinPoint"] == list(OFFSET)
    assert info["Extents"]["MaxPoint"] == [OFFSET[0] + SHAPE[2] - 1, OFFSET[1] + SHAPE[1] - 1,
                                           OFFSET[2] + SHAPE[0] - 1]
    node = json.loads((mnt / "em/master/.dvid/info.json").read_text())
    assert node["UUID"] == uuid and node["Locked"] is True and node["Note"] == "initial import"


@pytest.mark.parametrize("plane", ["xy", "xz", "yz"])
def test_slices_equal_numpy(ro_mount, plane):
    mnt, uuid, vol = ro_mount
    axis = {"xy": 2, "xz": 1, "yz": 0}[plane]
    n = {"xy": SHAPE[0], "xz": SHAPE[1], "yz": SHAPE[2]}[plane]
    for i in (0, 1, n // 2, n - 1):  # includes block borders (offset is not aligned)
        c = OFFSET[axis] + i
        got = _png(mnt / f"em/{uuid}/gray/{plane}/{c:05d}.png")
        np.testing.assert_array_equal(got, _slice(vol, plane, c))


def test_stat_size_matches_cat_and_find(ro_mount):
    mnt, uuid, _ = ro_mount
    d = mnt / f"em/{uuid}/gray/xz"
    out = run("stat", "-c", "%s %n", *sorted(d.iterdir())[:3]).stdout.splitlines()
    for line in out:
        size, name = line.split(" ", 1)
        assert int(size) == len(subprocess.run(["cat", name], capture_output=True).stdout)
    found = run("find", f"{mnt}/em/master/", "-name", "*.png").stdout.split()
    assert len(found) == SHAPE[0] + SHAPE[1] + SHAPE[2]


def test_cp_r_and_tar(ro_mount, tmp_path):
    mnt, uuid, vol = ro_mount
    r = run("cp", "-r", mnt / f"em/{uuid}/gray", tmp_path / "copy")
    assert r.returncode == 0, r.stderr
    z = OFFSET[2] + 3
    np.testing.assert_array_equal(_png(tmp_path / f"copy/xy/{z:05d}.png"), _slice(vol, "xy", z))
    r = run("tar", "-cf", tmp_path / "gray.tar", "-C", mnt / f"em/{uuid}", "gray")
    assert r.returncode == 0, r.stderr
    with tarfile.open(tmp_path / "gray.tar") as tf:
        data = tf.extractfile(f"gray/yz/{OFFSET[0] + 7:05d}.png").read()
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), _slice(vol, "yz", OFFSET[0] + 7))


def test_committed_node_is_read_only(ro_mount):
    mnt, uuid, _ = ro_mount
    target = mnt / f"em/{uuid}/gray/xy/{OFFSET[2]:05d}.png"
    with pytest.raises(OSError) as ei:
        open(target, "wb")
    assert ei.value.errno in (errno.EROFS, errno.EACCES)
    r = run("sh", "-c", f"echo again > {mnt}/em/{uuid}/.dvid/commit")
    assert r.returncode != 0
    assert "already committed" in (mnt / f"em/{uuid}/.dvid/last-error").read_text()


def test_concurrent_readers(ro_mount):
    mnt, uuid, vol = ro_mount
    errors = []

    def reader(plane, axis, n):
        try:
            for i in range(n):
                c = OFFSET[axis] + i
                np.testing.assert_array_equal(_png(mnt / f"em/{uuid}/gray/{plane}/{c:05d}.png"),
                                              _slice(vol, plane, c))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    ts = [threading.Thread(target=reader, args=a) for a in
          (("xy", 2, SHAPE[0]), ("yz", 0, SHAPE[2]), ("xz", 1, SHAPE[1]))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors


def test_busy_store_names_the_mount(ro_mount):
    mnt, uuid, _ = ro_mount
    r = dvidfs("-s", mnt.parent / "store", "log", uuid, check=False)
    assert r.returncode == 1
    assert str(mnt) in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ writing
def test_cp_png_into_open_node_and_corrupt_png(rw_mount, tmp_path):
    mnt, uuid, vol = rw_mount
    z = OFFSET[2] + 2
    new = (255 - _slice(vol, "xy", z)).astype(np.uint8)
    src = tmp_path / "new.png"
    Image.fromarray(new).save(src)
    target = mnt / f"em/{uuid}/gray/xy/{z:05d}.png"
    r = run("cp", src, target)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(_png(target), new)
    # the other planes see it too
    np.testing.assert_array_equal(_png(mnt / f"em/{uuid}/gray/xz/{OFFSET[1]:05d}.png")[z - OFFSET[2]],
                                  new[0])
    before = {p.name: p.read_bytes() for p in (mnt / f"em/{uuid}/gray/xy").iterdir()}
    bad = tmp_path / "bad.png"
    bad.write_bytes(src.read_bytes()[:200])
    r = run("cp", bad, target)
    assert r.returncode != 0 and "Invalid argument" in r.stderr
    wrong = tmp_path / "wrong.png"
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(wrong)
    assert run("cp", wrong, target).returncode != 0
    assert "5x5" in (mnt / f"em/{uuid}/.dvid/last-error").read_text()
    after = {p.name: p.read_bytes() for p in (mnt / f"em/{uuid}/gray/xy").iterdir()}
    assert before == after


def test_write_beyond_extents_extends_them(rw_mount, tmp_path):
    mnt, uuid, vol = rw_mount
    img = np.full((SHAPE[1], SHAPE[2]), 77, np.uint8)
    src = tmp_path / "s.png"
    Image.fromarray(img).save(src)
    z = OFFSET[2] + SHAPE[0] + 3
    xz = mnt / f"em/{uuid}/gray/xz/{OFFSET[1]:05d}.png"
    size_before = os.stat(xz).st_size          # now cached by the kernel (long timeout)
    assert run("cp", src, mnt / f"em/{uuid}/gray/xy/{z}.png").returncode == 0
    names = run("ls", mnt / f"em/{uuid}/gray/xy").stdout.split()
    assert names[-1] == f"{z:05d}.png" and len(names) == SHAPE[0] + 4
    np.testing.assert_array_equal(_png(mnt / f"em/{uuid}/gray/xy/{z:05d}.png"), img)
    # the gap reads as background 0
    assert _png(mnt / f"em/{uuid}/gray/xy/{z - 1:05d}.png").max() == 0
    # xz slices grew by 4 rows: the cached size was invalidated, stat agrees with the bytes
    assert os.stat(xz).st_size > size_before
    assert os.stat(xz).st_size == len(xz.read_bytes())
    assert _png(xz).shape == (SHAPE[0] + 4, SHAPE[2])


def test_rsync_stack_into_slices(rw_mount, tmp_path):
    if shutil.which("rsync") is None:
        pytest.skip("rsync not installed")
    mnt, uuid, vol = rw_mount
    stack = tmp_path / "stack"
    stack.mkdir()
    want = {}
    for i in range(3):
        z = OFFSET[2] + i
        img = np.full((SHAPE[1], SHAPE[2]), 10 * i + 5, np.uint8)
        img[i, :] = 200
        Image.fromarray(img).save(stack / f"{z:05d}.png")
        want[z] = img
    r = run("rsync", "-a", f"{stack}/", f"{mnt}/em/{uuid}/gray/xy/")
    assert r.returncode == 0, r.stderr
    for z, img in want.items():
        np.testing.assert_array_equal(_png(mnt / f"em/{uuid}/gray/xy/{z:05d}.png"), img)
    # no temp files left behind
    assert all(n.endswith(".png") and not n.startswith(".")
               for n in os.listdir(mnt / f"em/{uuid}/gray/xy"))


def test_commit_branch_merge_from_the_shell(rw_mount, tmp_path):
    mnt, uuid, vol = rw_mount
    node = mnt / "em" / uuid
    assert run("sh", "-c", f"echo 'first import' > {node}/.dvid/commit").returncode == 0
    assert json.loads((node / ".dvid/info.json").read_text())["Locked"] is True
    z = OFFSET[2]
    r = run("cp", "/dev/null", node / f"gray/xy/{z:05d}.png")
    assert r.returncode != 0
    # two branches
    for name in ("alice", "bob"):
        assert run("sh", "-c", f"echo {name} > {node}/.dvid/branch").returncode == 0
    children = json.loads((node / ".dvid/info.json").read_text())["Children"]
    assert len(children) == 2
    a_uuid, b_uuid = os.readlink(mnt / "em/alice"), os.readlink(mnt / "em/bob")
    assert sorted(children) == sorted([a_uuid, b_uuid])
    # alice edits slice z, bob edits slice z+20 (different blocks)
    h, w = SHAPE[1], SHAPE[2]
    a_img, b_img = np.full((h, w), 1, np.uint8), np.full((h, w), 2, np.uint8)
    Image.fromarray(a_img).save(tmp_path / "a.png")
    Image.fromarray(b_img).save(tmp_path / "b.png")
    assert run("cp", tmp_path / "a.png", mnt / f"em/alice/gray/xy/{z:05d}.png").returncode == 0
    assert run("cp", tmp_path / "b.png", mnt / f"em/bob/gray/xy/{z + 20:05d}.png").returncode == 0
    np.testing.assert_array_equal(_png(node / f"gray/xy/{z:05d}.png"), _slice(vol, "xy", z))
    np.testing.assert_array_equal(_png(mnt / f"em/bob/gray/xy/{z:05d}.png"), _slice(vol, "xy", z))
    for name in ("alice", "bob"):
        assert run("sh", "-c", f"echo done > {mnt}/em/{name}/.dvid/commit").returncode == 0
    r = run("sh", "-c", f"echo {b_uuid} > {mnt}/em/{a_uuid}/.dvid/merge")
    assert r.returncode == 0, r.stderr
    merged = json.loads((mnt / f"em/{a_uuid}/.dvid/info.json").read_text())["Children"][0]
    assert os.readlink(mnt / "em/alice") == merged
    np.testing.assert_array_equal(_png(mnt / f"em/{merged}/gray/xy/{z:05d}.png"), a_img)
    np.testing.assert_array_equal(_png(mnt / f"em/{merged}/gray/xy/{z + 20:05d}.png"), b_img)
    # log from the shell
    assert run("sh", "-c", f"echo 'checked by carol' >> {mnt}/em/{merged}/.dvid/log").returncode == 0
    assert "checked by carol" in (mnt / f"em/{merged}/.dvid/log").read_text()


def test_failed_control_write_gives_errno_and_message(rw_mount):
    mnt, uuid, _ = rw_mount
    r = run("sh", "-c", f"echo feature > {mnt}/em/{uuid}/.dvid/branch")  # node is still open
    assert r.returncode != 0
    msg = (mnt / f"em/{uuid}/.dvid/last-error").read_text()
    assert "commit it before" in msg
    assert json.loads((mnt / f"em/{uuid}/.dvid/info.json").read_text())["Children"] == []
    r = run("sh", "-c", f"echo 0123456789abcdef > {mnt}/em/{uuid}/.dvid/merge")
    assert r.returncode != 0


def test_mkdir_repo_and_instance(rw_mount, tmp_path):
    mnt, uuid, _ = rw_mount
    assert run("mkdir", mnt / "newrepo").returncode == 0
    root = os.readlink(mnt / "newrepo/master")
    # mkdir cannot know the type: refused, nothing created, and last-error says what to do
    assert run("mkdir", mnt / f"newrepo/{root}/em").returncode != 0
    assert "em" not in os.listdir(mnt / f"newrepo/{root}")
    assert ".dvid/newdata" in (mnt / f"newrepo/{root}/.dvid/last-error").read_text()
    assert run("sh", "-c", f"echo 'grayscale em' > {mnt}/newrepo/{root}/.dvid/newdata").returncode == 0
    img = np.arange(24 * 10, dtype=np.uint8).reshape(10, 24)
    Image.fromarray(img).save(tmp_path / "0.png")
    assert run("cp", tmp_path / "0.png", mnt / f"newrepo/{root}/em/xy/0.png").returncode == 0
    np.testing.assert_array_equal(_png(mnt / f"newrepo/{root}/em/xy/00000.png"), img)
    assert run("mkdir", mnt / "newrepo").returncode != 0  # exists
    # a labels instance through the control file; a bad type is refused with a message
    assert run("sh", "-c", f"echo 'labels seg 16' > {mnt}/newrepo/{root}/.dvid/newdata").returncode == 0
    assert sorted(os.listdir(mnt / f"newrepo/{root}/seg")) == [
        "info.json", "labels", "merge", "mutations.jsonl", "precomputed", "xy", "xy-fiji", "xy-rgb", "xz",
        "xz-fiji", "xz-rgb", "yz", "yz-fiji", "yz-rgb"]
    assert json.loads((mnt / f"newrepo/{root}/seg/info.json").read_text())["Extended"]["BlockSize"] == [16] * 3
    assert run("sh", "-c", f"echo 'voxels v' > {mnt}/newrepo/{root}/.dvid/newdata").returncode != 0
    assert "unknown data type" in (mnt / f"newrepo/{root}/.dvid/last-error").read_text()
    assert sorted(os.listdir(mnt / f"newrepo/{root}")) == [".dvid", "em", "seg"]


def test_reader_during_writes(rw_mount, tmp_path):
    """Readers racing a writer always get a whole slice: old or new, never torn."""
    mnt, uuid, vol = rw_mount
    z = OFFSET[2] + 5
    path = mnt / f"em/{uuid}/gray/xy/{z:05d}.png"
    old = _slice(vol, "xy", z)
    news = [np.full(old.shape, v, np.uint8) for v in (11, 22, 33)]
    valid = [old] + news
    stop = threading.Event()
    bad = []

    def reader():
        while not stop.is_set():
            try:
                got = _png(path)
            except Exception as exc:  # noqa: BLE001 - a torn read is a failure too
                bad.append(exc)
                continue
            if not any(np.array_equal(got, v) for v in valid):
                bad.append(got)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for img in news:
            with open(path, "wb") as f:
                f.write(encode_png_stored(img))
    finally:
        stop.set()
        t.join()
    assert not bad
    np.testing.assert_array_equal(_png(path), news[-1])


def test_sigterm_unmounts_cleanly(tmp_path):
    _make_store(tmp_path / "store", _volume(), commit=False)
    with mounted(tmp_path / "store", tmp_path / "mnt") as proc:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        assert proc.returncode == 0
        assert not is_mounted(tmp_path / "mnt")
    # the store is usable again by another process
    assert dvidfs("-s", tmp_path / "store", "log", "em").returncode == 0


def test_background_mount_passes_its_tuning_flags(tmp_path):
    """`dvidfs mount` (background) hands its flags to the mount process; a bad
    value is one line on stderr and mounts nothing."""
    vol = _volume()
    uuid = _make_store(tmp_path / "store", vol)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = dvidfs("mount", "--render-threads", "0", tmp_path / "store", mnt, check=False)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "at least 1" in r.stderr
    assert not is_mounted(mnt)
    dvidfs("mount", "--render-threads", "2", "--readahead", "0", "--render-cache", "8M",
           tmp_path / "store", mnt)
    try:
        marker = json.loads((tmp_path / "store" / "mounted-at.json").read_text())
        with open(f"/proc/{marker['pid']}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        for flag, value in ((b"--render-threads", b"2"), (b"--readahead", b"0"),
                            (b"--render-cache", str(8 << 20).encode())):
            assert argv[argv.index(flag) + 1] == value
        np.testing.assert_array_equal(_png(mnt / f"em/{uuid}/gray/xy/{OFFSET[2] + 3:05d}.png"),
                                      _slice(vol, "xy", OFFSET[2] + 3))
    finally:
        dvidfs("umount", mnt, check=False)
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    assert not is_mounted(mnt)


# ------------------------------------------------------------------ label views for ImageJ/Fiji and Pillow
LSHAPE = (9, 14, 17)   # z, y, x
LOFFSET = (2, -3, 1)   # x, y, z


def _small_ids():
    """Ids ImageJ's 32-bit float holds exactly, beyond 16 bits, 2**24 itself, and 0."""
    z, y, x = np.indices(LSHAPE)
    lab = (1 + x + 17 * y + 300 * z).astype(np.uint64)
    lab[:, :4] = 2**24
    lab[:, 4:6] = 70001
    lab[2, 3:9, 5:11] = 0
    return lab


def _labels_store(path, lab, commit=True):
    with Dvid.init(path) as s:
        root = s.node(s.new_repo("seg").root)
        s.new_instance(root, "bodies", "labels", block_size=16).write(root, LOFFSET, lab)
        if commit:
            s.commit(root, "labels")
        return root.uuid


def test_label_views_read_by_pillow_exactly(tmp_path):
    """`xy-fiji/` (32-bit float TIFF) holds the ids themselves, `xy-rgb/` their
    colours; Pillow reads both (it cannot read `xy/`'s uint64)."""
    from dvidfs.formats.images import label_colors, label_float_tiff_size, voxel_spec
    lab = _small_ids()
    _labels_store(tmp_path / "store", lab)
    with mounted(tmp_path / "store", tmp_path / "mnt"):
        d = tmp_path / "mnt/seg/master/bodies"
        assert {"xy", "xy-fiji", "xy-rgb", "xz-fiji", "yz-fiji"} <= set(os.listdir(d))
        ox, oy, oz = LOFFSET
        for plane, coord, expect in (("xy", oz + 2, lab[2]), ("xz", oy + 5, lab[:, 5, :]),
                                     ("yz", ox + 16, lab[:, :, 16])):
            p = d / f"{plane}-fiji/{coord:05d}.tif"
            voxel = voxel_spec((8, 8, 8), "nanometers")   # the instance's (isotropic): tagged in the TIFF
            assert os.stat(p).st_size == label_float_tiff_size(expect.shape[1], expect.shape[0], voxel)
            with Image.open(p) as im:
                assert im.mode == "F"
                got = np.asarray(im)
            np.testing.assert_array_equal(got.astype(np.uint64), expect)
            assert (got == expect.astype(np.float64)).all()   # exact, not rounded
            with Image.open(d / f"{plane}-rgb/{coord:05d}.png") as im:
                assert im.mode == "RGB"
                np.testing.assert_array_equal(np.asarray(im), label_colors(expect))
        # the view is read-only: slices go to xy/ (uint64)
        r = run("cp", d / f"xy-fiji/{oz:05d}.tif", d / f"xy-fiji/{oz + 1:05d}.tif")
        assert r.returncode != 0


def test_label_fiji_view_is_nan_where_an_id_does_not_fit(tmp_path):
    """An id above 2**24 has no exact 32-bit float: its pixels are NaN in the
    view, never a neighbouring id; the other pixels keep their ids."""
    lab = _small_ids()
    uuid = _labels_store(tmp_path / "store", lab, commit=False)
    with mounted(tmp_path / "store", tmp_path / "mnt"):
        d = tmp_path / "mnt/seg" / uuid / "bodies"
        z = LOFFSET[2] + 1
        bigger = lab[1].copy()
        bigger[0, :3] = (2**24 + 1, 2**40 + 3, 2**64 - 1)
        tifffile.imwrite(tmp_path / "s.tif", bigger)
        assert run("cp", tmp_path / "s.tif", d / f"xy/{z:05d}.tif").returncode == 0
        np.testing.assert_array_equal(tifffile.imread(d / f"xy/{z:05d}.tif"), bigger)
        with Image.open(d / f"xy-fiji/{z:05d}.tif") as im:
            got = np.asarray(im)
        assert np.isnan(got[0, :3]).all() and not np.isnan(got[:, 3:]).any() and not np.isnan(got[1:]).any()
        fits = ~np.isnan(got)
        np.testing.assert_array_equal(got[fits].astype(np.uint64), bigger[fits])
