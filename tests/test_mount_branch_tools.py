"""What README promises of branch names (symlinks to the tip node) with real tools.

`mnt/<repo>/master` is a symlink, as README says; each tool is run the way
README tells users to (`cp -r master/`, `rsync -a master/`, `find master/`,
`tar chf … master` or `master/.`), and what it copies must be the node's
files, byte for byte, compared with the same files read through the node's
UUID directory (and a slice with the numpy array written).  The plain forms
that copy only the link are checked too, so README's warning stays true.
"""
from __future__ import annotations

import os
import subprocess
import tarfile

import numpy as np
import pytest
from PIL import Image

from dvidfs.core import Dvid
from mounting import mounted

pytestmark = pytest.mark.mount


def _files(root) -> dict[str, bytes]:
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            if not os.path.islink(p):
                out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


def run(*cmd, cwd=None):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, cwd=cwd, timeout=120)
    assert r.returncode == 0, (cmd, r.stderr.decode())
    return r


def test_copy_tools_through_a_branch_link(tmp_path):
    rng = np.random.default_rng(5)
    vol = rng.integers(0, 256, (6, 40, 48), dtype=np.uint8)
    with Dvid.init(str(tmp_path / "store")) as s:
        root = s.node(s.new_repo("em").root)
        s.new_instance(root, "gray", "grayscale", block_size=16).write(root, (0, 0, 0), vol)
        s.commit(root, "v1")
        uuid = root.uuid
    mnt = tmp_path / "mnt"
    with mounted(tmp_path / "store", mnt):
        repo = mnt / "em"
        assert os.path.islink(repo / "master") and os.readlink(repo / "master") == uuid
        want = _files(repo / uuid)
        slices = {f"gray/{p}/{i:05d}.png" for p, n in (("xy", 6), ("xz", 40), ("yz", 48)) for i in range(n)}
        assert slices <= set(want)
        assert np.array_equal(np.asarray(Image.open(repo / uuid / "gray/xy/00003.png")), vol[3])

        run("cp", "-r", "master/", tmp_path / "cp", cwd=repo)
        run("rsync", "-a", "master/", tmp_path / "rsync", cwd=repo)
        run("tar", "chf", tmp_path / "h.tar", "master", cwd=repo)
        run("tar", "cf", tmp_path / "dot.tar", "-C", repo / "master", ".")
        for name in ("h.tar", "dot.tar"):
            (tmp_path / name[:-4]).mkdir()
            with tarfile.open(tmp_path / name) as t:
                t.extractall(tmp_path / name[:-4], filter="fully_trusted")
        found = run("find", "master/", "-type", "f", cwd=repo).stdout.decode().split()
        assert sorted(os.path.relpath(f, "master") for f in found) == sorted(want)

        # control files are rendered per read (the node's own info etc.): compare the data
        data = {k: v for k, v in want.items() if not k.startswith(".dvid")}
        for copy in (tmp_path / "cp", tmp_path / "rsync", tmp_path / "h" / "master", tmp_path / "dot"):
            got = {k: v for k, v in _files(copy).items() if not k.startswith(".dvid")}
            assert got == data, copy

        # what README warns about: without the slash or -h, only the link is taken
        run("cp", "-r", "master", tmp_path / "link-only", cwd=repo)
        assert os.path.islink(tmp_path / "link-only")
        run("tar", "cf", tmp_path / "plain.tar", "master/", cwd=repo)
        with tarfile.open(tmp_path / "plain.tar") as t:
            assert [m.name for m in t.getmembers()] == ["master"] and t.getmembers()[0].issym()
