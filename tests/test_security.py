"""Security of the store directory and the mount, with real files and real mounts.

Whoever can write a store directory must not be able to make the (often root)
mounting process write through a planted link, and other users must not get
into a mount.  See docs/design.md, "Who may access a mount".
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

from dvidfs import storedir
from dvidfs.core import Dvid
from mounting import dvidfs, is_mounted, mounted

pytestmark = pytest.mark.mount

PRECIOUS = b"root's precious file\n"


def _make_store(path):
    vol = (np.arange(16 * 16 * 16) % 251).astype(np.uint8).reshape(16, 16, 16)
    with Dvid.init(path) as s:
        r = s.new_repo("em")
        root = s.node(r.root)
        g = s.new_instance(root, "gray", "grayscale", block_size=16)
        g.write(root, (0, 0, 0), vol)
        s.commit(root, "initial import")
        return root.uuid


def _victim(tmp_path):
    victim = tmp_path / "victim"
    victim.write_bytes(PRECIOUS)
    return victim


def _force_unmount(mnt):
    if is_mounted(mnt):
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ------------------------------------------------------------------ the marker
def test_marker_symlink_is_replaced_not_followed(tmp_path):
    """A link planted at mounted-at.json: the mount writes its own regular file
    there, the link's target is untouched, and the marker still explains the
    busy store; at unmount the marker goes and the target stays."""
    store, mnt = tmp_path / "store", tmp_path / "mnt"
    uuid = _make_store(store)
    victim = _victim(tmp_path)
    marker = store / storedir.MOUNT_MARKER
    marker.symlink_to(victim)
    with mounted(store, mnt) as proc:
        assert victim.read_bytes() == PRECIOUS
        st = os.lstat(marker)
        assert stat.S_ISREG(st.st_mode), "the marker is still a link"
        assert json.loads(marker.read_text()) == {"mountpoint": str(mnt), "pid": proc.pid}
        r = dvidfs("-s", store, "log", uuid, check=False)
        assert r.returncode == 1 and f"mounted at {mnt}" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert victim.read_bytes() == PRECIOUS
    assert not os.path.lexists(marker)
    assert not [n for n in os.listdir(store) if n.endswith(".tmp")]


def test_clear_mounted_removes_only_our_own_regular_file(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    marker = store / storedir.MOUNT_MARKER
    # a directory at the name: left alone, no error
    marker.mkdir()
    storedir.clear_mounted(store)
    assert marker.is_dir()
    marker.rmdir()
    # another process's marker: left alone
    other = json.dumps({"mountpoint": "/elsewhere", "pid": _dead_pid()})
    marker.write_text(other)
    storedir.clear_mounted(store)
    assert marker.read_text() == other
    # a link to a file that looks like our marker: the target is neither read
    # as ours nor removed
    victim = tmp_path / "victim.json"
    victim.write_text(json.dumps({"mountpoint": "/x", "pid": os.getpid()}))
    marker.unlink()
    marker.symlink_to(victim)
    storedir.clear_mounted(store)
    assert victim.exists() and json.loads(victim.read_text())["pid"] == os.getpid()
    marker.unlink()
    # our own marker: removed
    storedir.mark_mounted(store, tmp_path / "mnt")
    assert stat.S_ISREG(os.lstat(marker).st_mode)
    storedir.clear_mounted(store)
    assert not os.path.lexists(marker)


# ------------------------------------------------------------------ the log
def _background_mount_refused(store, mnt, what):
    """`dvidfs mount` must refuse with one line naming the log; returns that line."""
    mnt.mkdir(exist_ok=True)
    try:
        r = dvidfs("mount", store, mnt, check=False)
        mounted_anyway = is_mounted(mnt)
    finally:
        if is_mounted(mnt):
            dvidfs("umount", mnt, check=False)
        _force_unmount(mnt)
    assert not is_mounted(mnt)
    assert not mounted_anyway, f"mounted although mount.log is {what}"
    assert r.returncode == 1, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert str(store / storedir.MOUNT_LOG) in r.stderr, r.stderr
    return r.stderr


def test_log_symlink_is_refused_and_not_followed(tmp_path):
    store, mnt = tmp_path / "store", tmp_path / "mnt"
    _make_store(store)
    victim = _victim(tmp_path)
    log = store / storedir.MOUNT_LOG
    log.symlink_to(victim)
    msg = _background_mount_refused(store, mnt, "a symbolic link")
    assert "symbolic link" in msg
    assert victim.read_bytes() == PRECIOUS
    assert os.path.islink(log)
    # once the link is gone, the background mount works and writes a private regular log
    log.unlink()
    dvidfs("mount", store, mnt)
    try:
        assert is_mounted(mnt) and os.listdir(mnt) == ["em"]
    finally:
        dvidfs("umount", mnt, check=False)
        _force_unmount(mnt)
    st = os.lstat(log)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert victim.read_bytes() == PRECIOUS


def test_log_hard_link_is_refused(tmp_path):
    store, mnt = tmp_path / "store", tmp_path / "mnt"
    _make_store(store)
    victim = _victim(tmp_path)
    os.link(victim, store / storedir.MOUNT_LOG)
    msg = _background_mount_refused(store, mnt, "a hard link")
    assert "hard link" in msg
    assert victim.read_bytes() == PRECIOUS


# ------------------------------------------------------------------ the busy message
_HOLD_AND_ASK = textwrap.dedent("""
    import subprocess, sys
    from dvidfs.core import Dvid
    store = Dvid(sys.argv[1])          # a CLI-like process holds the store
    r = subprocess.run([sys.executable, "-m", "dvidfs.cli", "-s", sys.argv[1], "log", "em"],
                       capture_output=True, text=True, timeout=30)
    store.close()
    sys.stdout.write(r.stderr)
    sys.exit(r.returncode)
""")


def _busy_message(store) -> str:
    r = subprocess.run([sys.executable, "-c", _HOLD_AND_ASK, str(store)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert len(r.stdout.strip().splitlines()) == 1 and "Traceback" not in r.stdout, r.stdout
    return r.stdout


@pytest.mark.parametrize("marker", [
    pytest.param("dead-pid", id="dead-pid"),
    pytest.param("live-pid-not-mounted", id="live-pid-not-mounted"),
    pytest.param(b"{not json", id="garbage"),
    pytest.param(b"[1, 2]", id="json-list"),
    pytest.param(b'{"mountpoint": ["/a"], "pid": "12"}', id="wrong-types"),
    pytest.param(b"\xff\xfe\x00", id="binary"),
])
def test_busy_message_does_not_blame_a_mount_that_is_not_there(tmp_path, marker):
    store, mnt = tmp_path / "store", tmp_path / "mnt"
    _make_store(store)
    mnt.mkdir()
    if marker == "dead-pid":
        marker = json.dumps({"mountpoint": str(mnt), "pid": _dead_pid()}).encode()
    elif marker == "live-pid-not-mounted":
        marker = json.dumps({"mountpoint": str(mnt), "pid": os.getpid()}).encode()
    (store / storedir.MOUNT_MARKER).write_bytes(marker)
    msg = _busy_message(store)
    assert "in use by another process" in msg, msg
    assert "mounted at" not in msg and str(mnt) not in msg, msg


def test_busy_message_does_not_hang_on_a_fifo_marker(tmp_path):
    store = tmp_path / "store"
    _make_store(store)
    os.mkfifo(store / storedir.MOUNT_MARKER)
    try:
        msg = _busy_message(store)
    except subprocess.TimeoutExpired:
        pytest.fail("reading a FIFO planted at the marker blocked")
    assert "in use by another process" in msg, msg


# ------------------------------------------------------------------ other users
def test_other_users_cannot_enter_the_mount():
    """No allow_other: a user other than the one who mounted gets EACCES even
    where the mode bits would let them in, while the mounting user (root) can
    list it.  The mount lives in a directory everyone may traverse, so the
    refusal comes from the mount and not from the path to it."""
    base = tempfile.mkdtemp(prefix="dvidfs-sec-", dir="/tmp")
    try:
        os.chmod(base, 0o755)
        store, mnt = os.path.join(base, "store"), os.path.join(base, "mnt")
        uuid = _make_store(store)
        os.makedirs(mnt)
        os.chmod(mnt, 0o755)
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        with mounted(store, mnt):
            root_ls = subprocess.run(["ls", mnt], capture_output=True, text=True, timeout=30)
            assert root_ls.returncode == 0 and root_ls.stdout.split() == ["em"], root_ls.stderr
            slice_file = os.path.join(mnt, "em", uuid, "gray", "xy", "00003.png")
            assert os.path.getsize(slice_file) > 0
            mode = os.stat(mnt).st_mode
            assert mode & stat.S_IROTH and mode & stat.S_IXOTH, oct(mode)  # the modes would allow it
            control = subprocess.run([*nobody, "ls", base], capture_output=True, text=True, timeout=30)
            assert control.returncode == 0 and "mnt" in control.stdout.split(), control.stderr
            for cmd in (["ls", mnt], ["cat", slice_file], ["stat", mnt]):
                r = subprocess.run([*nobody, *cmd], capture_output=True, text=True, timeout=30)
                assert r.returncode != 0, f"{cmd} as nobody succeeded: {r.stdout[:200]!r}"
                assert "Permission denied" in r.stderr, r.stderr
    finally:
        _force_unmount(os.path.join(base, "mnt"))
        shutil.rmtree(base, ignore_errors=True)


def test_root_refuses_a_store_another_user_can_write(tmp_path):
    """LevelDB follows links it finds in leveldb/: as root, a store someone else
    could have prepared is refused with one line, and nothing is written there."""
    from dvidfs.core import Dvid
    from dvidfs.errors import DvidfsError
    path = tmp_path / "shared"
    Dvid.init(path).close()
    for target, change in ((path / "leveldb", lambda p: os.chmod(p, 0o777)),
                           (path, lambda p: os.chown(p, 65534, 65534))):
        before = sorted(os.listdir(path / "leveldb"))
        mode, st = os.stat(target).st_mode, os.stat(target)
        change(target)
        try:
            with pytest.raises(DvidfsError) as ei:
                Dvid(path)
            assert "refusing to open" in str(ei.value) and "\n" not in str(ei.value)
            assert sorted(os.listdir(path / "leveldb")) == before
        finally:
            os.chmod(target, mode & 0o7777)
            os.chown(target, st.st_uid, st.st_gid)
    Dvid(path).close()
