"""keyvalue instances through a real mount with real tools (cp -r, rsync -a,
tar, rm, mv, truncate, ls -l), across branches, read-only once committed, and
equal to what `dvidfs serve` answers for the same store at the same time.

The store is mounted and served from this process (`mounted_in_process`,
`served`), so writes through either face are checked through the other.
Expected contents are the source files on disk, never our own output.
"""
from __future__ import annotations

import errno
import os
import subprocess

import pytest
import requests

from dvidfs.core import Dvid
from dvidfs.fs.keyvalue import key_of_name, name_of_key
from mounting import mounted_in_process
from serving import served

pytestmark = pytest.mark.mount

MIB = 1 << 20


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(map(str, cmd)), capture_output=True, timeout=120, **kw)


def ok(*cmd, **kw) -> subprocess.CompletedProcess:
    r = run(*cmd, **kw)
    assert r.returncode == 0, f"{cmd}: {r.stderr.decode(errors='replace')}"
    return r


def _errno_of(fn) -> int:
    with pytest.raises(OSError) as ei:
        fn()
    return ei.value.errno


def _tree(path) -> dict[bytes, bytes]:
    """name -> content of the plain files in a directory (names as bytes)."""
    out = {}
    for name in os.listdir(os.fsencode(path)):
        with open(os.path.join(os.fsencode(path), name), "rb") as f:
            out[name] = f.read()
    return out


def _write_tree(path, files: dict[bytes, bytes]) -> None:
    """Files dated 2001, so rsync's size + mtime check never takes them for ours."""
    os.makedirs(path, exist_ok=True)
    for name, data in files.items():
        p = os.path.join(os.fsencode(path), name)
        with open(p, "wb") as f:
            f.write(data)
        os.utime(p, (10**9, 10**9))


def _http_keys(url, node, inst="kv") -> list[str]:
    r = requests.get(f"{url}/api/node/{node}/{inst}/keys")
    assert r.status_code == 200, r.text
    return r.json()


def _http_value(url, node, key, inst="kv"):
    r = requests.get(f"{url}/api/node/{node}/{inst}/key/{requests.utils.quote(key, safe='')}")
    return r.content if r.status_code == 200 else r.status_code


@pytest.fixture
def world(tmp_path):
    with Dvid.init(tmp_path / "store") as core:
        root = core.node(core.new_repo("em").root)
        core.new_instance(root, "kv", "keyvalue")
        with served(core) as url, mounted_in_process(core, tmp_path / "mnt") as ops:
            yield core, root, url, tmp_path / "mnt" / "em", ops


def _sources(seed: int) -> dict[bytes, bytes]:
    rng = __import__("random").Random(seed)
    files = {f"body{i}.json".encode(): f'{{"body": {i}, "seed": {seed}}}'.encode() for i in range(40)}
    files.update({
        b"empty": b"",
        b"123456.ngmesh": rng.randbytes(3 * MIB + 17),     # chunked: > 1 MiB
        b"inline-edge": rng.randbytes(4096),
        b"just-over": rng.randbytes(4097),
        b".hidden": b"a key may start with a dot",
        b"with space \xc3\xa9": b"utf-8 name",
        b"caf\xe9": b"a name that is not UTF-8",
        b"100%": b"percent inside",
    })
    return files


def test_cp_rsync_tar_rm_mv_and_http_agree(world, tmp_path):
    core, root, url, em, ops = world
    kv = em / root.uuid / "kv"
    src = tmp_path / "src"
    files = _sources(1)
    _write_tree(src, files)

    ok("cp", "-r", f"{src}/.", f"{kv}/")
    assert _tree(kv) == files
    out = ok("ls", "-lA", kv).stdout.splitlines()[1:]
    sizes = {line.split(maxsplit=8)[8]: int(line.split()[4]) for line in out}
    assert sizes == {n: len(d) for n, d in files.items()}               # ls -l: exact sizes
    for name, data in files.items():
        assert os.stat(os.path.join(os.fsencode(kv), name)).st_size == len(data)
    # what HTTP serves is what the mount shows
    assert _http_keys(url, root.uuid) == sorted((os.fsdecode(n) for n in files),
                                                key=lambda k: k.encode("utf-8", "surrogateescape"))
    for name, data in files.items():
        if name != b"caf\xe9":  # (a URL path is UTF-8)
            assert _http_value(url, root.uuid, name.decode()) == data

    # rsync -a: temporary file + rename for every file; changed and new files
    files2 = {**_sources(2), b"only-in-2": b"new"}
    _write_tree(tmp_path / "src2", files2)
    ok("rsync", "-a", f"{tmp_path / 'src2'}/", f"{kv}/")
    assert _tree(kv) == files2
    assert not any(n.startswith(b".") and n != b".hidden" for n in os.listdir(os.fsencode(kv)))
    assert set(_http_keys(url, root.uuid)) == {os.fsdecode(n) for n in files2}

    # tar out of the mount and back into another instance through the mount
    ok("tar", "-C", kv, "-cf", tmp_path / "kv.tar", ".")
    ok("mkdir", tmp_path / "untar")
    ok("tar", "-C", tmp_path / "untar", "-xf", tmp_path / "kv.tar")
    assert _tree(tmp_path / "untar") == files2
    core.new_instance(root, "kv2", "keyvalue")
    ok("tar", "-C", em / root.uuid / "kv2", "-xf", tmp_path / "kv.tar")
    assert _tree(em / root.uuid / "kv2") == files2
    assert _http_keys(url, root.uuid, "kv2") == _http_keys(url, root.uuid)

    # rm is a delete, mv a rename (one atomic change, the inode moves with it)
    ok("rm", kv / "body0.json", kv / "empty")
    assert _http_value(url, root.uuid, "body0.json") == 404
    assert _errno_of(lambda: os.stat(kv / "empty")) == errno.ENOENT
    ok("mv", kv / "123456.ngmesh", kv / "654321.ngmesh")
    assert (kv / "654321.ngmesh").read_bytes() == files2[b"123456.ngmesh"]
    assert os.stat(kv / "654321.ngmesh").st_size == len(files2[b"123456.ngmesh"])
    assert not (kv / "123456.ngmesh").exists()
    assert _http_value(url, root.uuid, "654321.ngmesh") == files2[b"123456.ngmesh"]
    ok("mv", kv / "body1.json", kv / "body2.json")                        # replaces body2.json
    assert (kv / "body2.json").read_bytes() == files2[b"body1.json"]
    ok("mv", kv / "body3.json", em / root.uuid / "kv2" / "moved.json")    # EXDEV: copy + remove
    assert (em / root.uuid / "kv2" / "moved.json").read_bytes() == files2[b"body3.json"]
    assert not (kv / "body3.json").exists()

    # >, >>, truncate and touch store what they leave
    (kv / "note").write_bytes(b"hello")
    with open(kv / "note", "ab") as f:
        f.write(b" world")
    assert _http_value(url, root.uuid, "note") == b"hello world"
    ok("truncate", "-s", "5", kv / "note")
    assert (kv / "note").read_bytes() == b"hello" and _http_value(url, root.uuid, "note") == b"hello"
    ok("sh", "-c", f": > '{kv}/note'")
    assert _http_value(url, root.uuid, "note") == b""
    ok("touch", kv / "touched")
    assert _http_value(url, root.uuid, "touched") == b""

    # writes through HTTP are seen by the next stat / cat (the kernel's caches are dropped)
    assert requests.post(f"{url}/api/node/{root.uuid}/kv/key/note", data=b"from http").status_code == 200
    assert os.stat(kv / "note").st_size == 9 and (kv / "note").read_bytes() == b"from http"
    assert requests.delete(f"{url}/api/node/{root.uuid}/kv/key/note").status_code == 200
    assert _errno_of(lambda: os.stat(kv / "note")) == errno.ENOENT

    # no directories in a key space; names that stand for no key are refused
    assert _errno_of(lambda: os.mkdir(kv / "sub")) == errno.EINVAL
    assert _errno_of(lambda: (kv / "%odd").write_bytes(b"x")) == errno.EINVAL
    assert "stands for no key" in (em / root.uuid / ".dvid" / "last-error").read_text()
    assert set(_http_keys(url, root.uuid)) == {key_of_name(os.fsdecode(n)) for n in os.listdir(os.fsencode(kv))}


def test_names_of_keys_the_kernel_cannot_show(world):
    core, root, url, em, _ = world
    kv = em / root.uuid / "kv"
    data = core.data(root, "kv")
    for key in ("%", "%x", "%%y", "a%b"):
        assert requests.post(f"{url}/api/node/{root.uuid}/kv/key/{requests.utils.quote(key, safe='')}",
                             data=key.encode() * 2).status_code == 200
    data.put(root, ".", b"dot")      # (a URL cannot carry "." or ".." as a segment)
    data.put(root, "..", b"dotdot")
    data.put(root, "x" * 300, b"too long for a file name")
    assert sorted(os.listdir(kv)) == ["%%", "%%%y", "%%x", "%.", "%..", "a%b"]
    assert (kv / "%.").read_bytes() == b"dot" and (kv / "%..").read_bytes() == b"dotdot"
    assert (kv / "%%x").read_bytes() == b"%x%x" and (kv / "a%b").read_bytes() == b"a%ba%b"
    (kv / "%.").write_bytes(b"new dot")
    assert data.get(root, ".") == b"new dot"
    (kv / "%%new").write_bytes(b"p")
    assert data.get(root, "%new") == b"p"
    for key in (".", "..", "%", "%x", "a", "a%b", ".hidden", "x" * 255):
        assert key_of_name(name_of_key(key)) == key
    assert name_of_key("x" * 300) is None and key_of_name("%x") is None and key_of_name(".") is None


def test_branches_and_committed_nodes(world, tmp_path):
    core, root, url, em, _ = world
    kv = em / root.uuid / "kv"
    for i in range(5):
        (kv / f"k{i}").write_bytes(f"root {i}".encode())
    big = os.urandom(2 * MIB + 3)
    (kv / "big").write_bytes(big)
    ok("sh", "-c", f"echo 'first keys' > {em / root.uuid / '.dvid' / 'commit'}")

    # committed: every change is EROFS, nothing changes
    assert _errno_of(lambda: (kv / "k0").write_bytes(b"x")) == errno.EROFS
    assert _errno_of(lambda: (kv / "new").write_bytes(b"x")) == errno.EROFS
    assert _errno_of(lambda: os.unlink(kv / "k1")) == errno.EROFS
    assert _errno_of(lambda: os.rename(kv / "k1", kv / "k9")) == errno.EROFS
    assert _errno_of(lambda: os.truncate(kv / "k2", 0)) == errno.EROFS
    (tmp_path / "host").write_bytes(b"h")
    assert run("cp", tmp_path / "host", kv / "host").returncode != 0
    assert run("rm", "-f", kv / "k3").returncode != 0
    assert not os.stat(kv / "k0").st_mode & 0o222
    assert sorted(os.listdir(kv)) == ["big", "k0", "k1", "k2", "k3", "k4"]
    assert (kv / "big").read_bytes() == big

    # two branches change their own copies; the parent keeps its own
    left = core.branch(root, "left")
    right = core.branch(root, "right")
    lkv, rkv = em / left.uuid / "kv", em / right.uuid / "kv"
    ok("rm", lkv / "k0", lkv / "big")
    (lkv / "k1").write_bytes(b"left 1")
    ok("mv", rkv / "big", rkv / "big-renamed")
    (rkv / "k1").write_bytes(b"right 1")
    assert sorted(os.listdir(lkv)) == ["k1", "k2", "k3", "k4"]
    assert sorted(os.listdir(rkv)) == ["big-renamed", "k0", "k1", "k2", "k3", "k4"]
    assert sorted(os.listdir(kv)) == ["big", "k0", "k1", "k2", "k3", "k4"]
    assert (kv / "k1").read_bytes() == b"root 1" and (lkv / "k1").read_bytes() == b"left 1"
    assert (rkv / "big-renamed").read_bytes() == big == (kv / "big").read_bytes()
    for node, path in ((root, kv), (left, lkv), (right, rkv)):
        assert _http_keys(url, node.uuid) == sorted(os.listdir(path))
        for name in os.listdir(path):
            assert _http_value(url, node.uuid, name) == (path / name).read_bytes()
    # a merge of the branches is refused, naming the key both changed
    core.commit(left)
    core.commit(right)
    r = run("sh", "-c", f"echo {right.uuid} > {em / left.uuid / '.dvid' / 'merge'}")
    assert r.returncode != 0
    assert "kv: key 'k1'" in (em / left.uuid / ".dvid" / "last-error").read_text()


def test_a_64_mib_value_streams_through_the_mount(world, tmp_path):
    core, root, url, em, ops = world
    kv = em / root.uuid / "kv"
    src = tmp_path / "mesh.bin"
    src.write_bytes(os.urandom(64 * MIB))
    ok("cp", src, kv / "mesh.ngmesh")
    assert os.stat(kv / "mesh.ngmesh").st_size == 64 * MIB
    ok("cmp", src, kv / "mesh.ngmesh")
    # an open reader holds a stream, not the value: at most one 1 MiB piece
    with open(kv / "mesh.ngmesh", "rb") as f:
        assert f.read(10) == src.read_bytes()[:10]
        held = [h for h in ops.handles.values() if h.stream is not None]
        assert len(held) == 1 and held[0].data is None and not held[0].stream.in_memory
    r = requests.get(f"{url}/api/node/{root.uuid}/kv/key/mesh.ngmesh", headers={"Range": "bytes=1048570-1048585"})
    assert r.status_code == 206 and r.content == src.read_bytes()[1048570:1048586]
    assert requests.get(f"{url}/api/node/{root.uuid}/kv/key/mesh.ngmesh").content == src.read_bytes()
    # 64 MiB posted over HTTP, read through the mount
    other = os.urandom(64 * MIB)
    assert requests.post(f"{url}/api/node/{root.uuid}/kv/key/other", data=other).status_code == 200
    assert os.stat(kv / "other").st_size == len(other) and (kv / "other").read_bytes() == other
    core.commit(root)
    ok("cmp", src, kv / "mesh.ngmesh")      # committed: read through the page cache
