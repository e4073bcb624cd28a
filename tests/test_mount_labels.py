"""Real-mount tests of label volumes: uint64 TIFF and colour slices, body files,
merge and split from the shell; expected values computed with numpy."""
from __future__ import annotations

import json
import os
import struct
import subprocess

import numpy as np
import pytest
import tifffile
from PIL import Image

from dvidfs.core import Dvid
from dvidfs.formats.images import label_colors
from mounting import mounted
from reference import ref_rles

pytestmark = pytest.mark.mount

OFFSET = (-3, 2, 5)       # x, y, z
SHAPE = (20, 26, 30)      # z, y, x; 16³ blocks -> crosses block borders


def _labels():
    z, y, x = np.indices(SHAPE)
    lab = np.where(x < 12, 7, 9).astype(np.uint64)
    lab[(z > 10) & (y < 8)] = 2**40 + 3
    lab[:, :, 25:] = 0
    return lab


@pytest.fixture
def lab_mount(tmp_path):
    lab = _labels()
    with Dvid.init(tmp_path / "store") as s:
        root = s.node(s.new_repo("seg").root)
        s.new_instance(root, "bodies", "labels", block_size=16).write(root, OFFSET, lab)
    with mounted(tmp_path / "store", tmp_path / "mnt"):
        yield tmp_path / "mnt" / "seg" / "master" / "bodies", lab


def run(*cmd):
    return subprocess.run(list(map(str, cmd)), capture_output=True, timeout=60)


def _tif(path):
    return tifffile.imread(path)


def test_label_slices_and_listing(lab_mount):
    d, lab = lab_mount
    assert sorted(os.listdir(d)) == ["info.json", "labels", "merge", "mutations.jsonl", "precomputed",
                                     "xy", "xy-fiji", "xy-rgb", "xz", "xz-fiji", "xz-rgb", "yz", "yz-fiji", "yz-rgb"]
    z = OFFSET[2] + 11
    got = _tif(d / f"xy/{z:05d}.tif")
    assert got.dtype == np.uint64
    np.testing.assert_array_equal(got, lab[z - OFFSET[2]])
    y = OFFSET[1] + 3
    np.testing.assert_array_equal(_tif(d / f"xz/{y:05d}.tif"), lab[:, y - OFFSET[1], :])
    with Image.open(d / f"yz-rgb/{OFFSET[0] + 4:05d}.png") as im:
        assert im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), label_colors(lab[:, :, 4]))
    # stat sizes are exact
    p = d / f"xy/{z:05d}.tif"
    assert os.stat(p).st_size == len(p.read_bytes())
    ids = sorted(int(n) for n in os.listdir(d / "labels"))
    assert ids == sorted(int(i) for i in np.unique(lab) if i)


def test_body_files(lab_mount):
    d, lab = lab_mount
    big = 2**40 + 3
    b = d / "labels" / str(big)
    assert sorted(os.listdir(b)) == ["bbox.json", "blocks.json", "size", "sparsevol",
                                     "sparsevol-coarse", "split", "supervoxels"]
    assert int((b / "size").read_text()) == int((lab == big).sum())
    assert (b / "sparsevol").read_bytes() == ref_rles(lab == big, OFFSET)
    assert os.stat(b / "sparsevol").st_size == len((b / "sparsevol").read_bytes())
    zz, yy, xx = np.nonzero(lab == big)
    bbox = json.loads((b / "bbox.json").read_text())
    assert bbox == {"MinPoint": [int(xx.min()) + OFFSET[0], int(yy.min()) + OFFSET[1], int(zz.min()) + OFFSET[2]],
                    "MaxPoint": [int(xx.max()) + OFFSET[0], int(yy.max()) + OFFSET[1], int(zz.max()) + OFFSET[2]]}
    assert (b / "supervoxels").read_text().split() == [str(big)]
    assert not (d / "labels" / "12345").exists()


def test_merge_and_split_from_the_shell(lab_mount, tmp_path):
    d, lab = lab_mount
    r = run("sh", "-c", f"echo '7 9' > {d}/merge")
    assert r.returncode == 0, r.stderr
    merged = np.where(lab == 9, 7, lab)
    z = OFFSET[2] + 4
    np.testing.assert_array_equal(_tif(d / f"xy/{z:05d}.tif"), merged[4])
    assert "9" not in os.listdir(d / "labels")
    assert int((d / "labels/7/size").read_text()) == int((merged == 7).sum())
    assert (d / "labels/7/sparsevol").read_bytes() == ref_rles(merged == 7, OFFSET)
    rec = json.loads((d / "mutations.jsonl").read_text().splitlines()[-1])
    assert rec["Action"] == "merge" and rec["Target"] == 7 and rec["Labels"] == [9]
    # split: cut a box out of body 7 (which now includes former body 9)
    cut = np.zeros(SHAPE, bool)
    cut[2:6, 10:20, 5:20] = True
    cut &= merged == 7
    (tmp_path / "cut.rles").write_bytes(ref_rles(cut, OFFSET))
    r = run("cp", tmp_path / "cut.rles", d / "labels/7/split")
    assert r.returncode == 0, r.stderr
    rec = json.loads((d / "mutations.jsonl").read_text().splitlines()[-1])
    assert rec["Action"] == "split" and rec["Target"] == 7 and rec["Voxels"] == int(cut.sum())
    new = rec["NewLabel"]
    assert new == 2**40 + 4          # max label + 1
    after = merged.copy()
    after[cut] = new
    for zi in (2, 5, 6):
        np.testing.assert_array_equal(_tif(d / f"xy/{OFFSET[2] + zi:05d}.tif"), after[zi])
    assert int((d / f"labels/{new}/size").read_text()) == int(cut.sum())


def test_bad_label_edits_change_nothing(lab_mount, tmp_path):
    d, lab = lab_mount
    before = {n: (d / f"xy/{n}").read_bytes() for n in sorted(os.listdir(d / "xy"))[:5]}
    (tmp_path / "bad.rles").write_bytes(b"\x00\x03\x00\x00" + b"\x00" * 4 + struct.pack("<I", 5) + b"\x01" * 7)
    r = run("cp", tmp_path / "bad.rles", d / "labels/7/split")
    assert r.returncode != 0 and b"Invalid argument" in r.stderr
    # voxels outside the body
    not7 = np.zeros(SHAPE, bool)
    not7[0, 0, 10:14] = True        # x=10,11 are 7; 12,13 are 9
    (tmp_path / "mixed.rles").write_bytes(ref_rles(not7, OFFSET))
    r = run("cp", tmp_path / "mixed.rles", d / "labels/7/split")
    assert r.returncode != 0
    assert "not in body 7" in (d.parent / ".dvid/last-error").read_text()
    for text in ("7 7", "7 12345", "seven 9"):
        assert run("sh", "-c", f"echo '{text}' > {d}/merge").returncode != 0
    assert (d / "mutations.jsonl").read_text() == ""
    assert {n: (d / f"xy/{n}").read_bytes() for n in before} == before
    assert int((d / "labels/9/size").read_text()) == int((lab == 9).sum())


def test_write_uint64_tiff_slice(lab_mount, tmp_path):
    d, lab = lab_mount
    z = OFFSET[2] + 1
    img = np.full(SHAPE[1:], 2**50 + 11, np.uint64)
    img[:, :3] = 7
    tifffile.imwrite(tmp_path / "s.tif", img)
    r = run("cp", tmp_path / "s.tif", d / f"xy/{z:05d}.tif")
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(_tif(d / f"xy/{z:05d}.tif"), img)
    assert int((d / f"labels/{2**50 + 11}/size").read_text()) == int((img == 2**50 + 11).sum())
    # colour views are read-only
    assert run("cp", tmp_path / "s.tif", d / f"xy-rgb/{z:05d}.png").returncode != 0


def test_committed_labels_refuse_edits(lab_mount):
    d, lab = lab_mount
    node = d.parent
    assert run("sh", "-c", f"echo done > {node}/.dvid/commit").returncode == 0
    r = run("sh", "-c", f"echo '7 9' > {d}/merge")
    assert r.returncode != 0
    assert "committed" in (node / ".dvid/last-error").read_text()
    assert "9" in os.listdir(d / "labels")


def test_body_file_sizes_are_what_tools_read(lab_mount, tmp_path):
    """`ls -l`, `stat`, `tar` and `cp` agree with `cat` on every body file: sizes
    come from the label index and counted runs, never from a guess."""
    d, lab = lab_mount
    ls = run("sh", "-c", f"cd {d} && ls -l labels/*/sparsevol")
    assert ls.returncode == 0, ls.stderr
    lines = ls.stdout.decode().splitlines()
    assert len(lines) == len(os.listdir(d / "labels"))
    for line in lines:
        f = line.split()
        assert int(f[4]) == len((d / f[-1]).read_bytes()), line
    script = ("for f in labels/*/*; do printf '%s %s %s\\n' \"$f\" \"$(stat -c %s \"$f\")\" "
              "\"$(cat \"$f\" | wc -c)\"; done")
    r = run("sh", "-c", f"cd {d} && {script}")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.decode().splitlines()]
    assert len(rows) == 7 * len(os.listdir(d / "labels"))
    assert all(a == b for _, a, b in rows), [row for row in rows if row[1] != row[2]]
    # tar trusts st_size (a wrong one is "file shrank" or padding); cp -r copies bytes
    r = run("tar", "cf", tmp_path / "l.tar", "-C", d, "labels")
    assert r.returncode == 0, r.stderr
    (tmp_path / "x").mkdir()
    assert run("tar", "xf", tmp_path / "l.tar", "-C", tmp_path / "x").returncode == 0
    for body in os.listdir(d / "labels"):
        for name in ("sparsevol", "bbox.json", "blocks.json", "supervoxels", "size", "sparsevol-coarse"):
            assert (tmp_path / "x/labels" / body / name).read_bytes() == (d / "labels" / body / name).read_bytes()
