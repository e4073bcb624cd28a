"""The `dvidfs` command end to end (subprocess), against numpy and the store.

User errors must print exactly one line, no traceback, exit 1, and change nothing."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from PIL import Image

from dvidfs.core import Dvid


def dv(*args, store=None, check=True):
    cmd = [sys.executable, "-m", "dvidfs.cli"] + (["-s", str(store)] if store else []) + list(map(str, args))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def one_line_error(r, needle):
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dvidfs: error:"), r.stderr
    assert needle in lines[0], lines[0]


def snapshot(store_path):
    with Dvid(store_path) as s:
        return [(bytes(k), bytes(v)) for k, v in s.engine.scan(b"", b"\xff" * 64)]


@pytest.fixture
def st(tmp_path):
    p = tmp_path / "store"
    dv("init", p)
    root = dv("repo", "new", "em", store=p).stdout.strip()
    dv("data", "new", "em", "gray", "--block-size", "16", store=p)
    return p, root


def _stack(dirpath, vol):
    dirpath.mkdir()
    for i, plane in enumerate(vol):
        # natural order: z2 before z10 even without zero padding
        Image.fromarray(plane).save(dirpath / f"z{i}.png")


def test_import_export_round_trip(st, tmp_path):
    p, root = st
    vol = np.random.default_rng(0).integers(0, 256, (12, 20, 30), dtype=np.uint8)
    _stack(tmp_path / "stack", vol)
    r = dv("import", "em", "gray", tmp_path / "stack", "--offset", "-3,4,5", store=p)
    assert "30x20x12" in r.stdout
    dv("export", "em", "gray", tmp_path / "out.npy", store=p)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), vol)
    dv("export", "em", "gray", tmp_path / "out.tif", store=p)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out.tif"), vol)
    dv("export", "em", "gray", tmp_path / "pngs", "--offset", "-3,4,7", "--size", "30,20,2", store=p)
    names = sorted(os.listdir(tmp_path / "pngs"))
    assert names == ["00007.png", "00008.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "pngs/00008.png")), vol[3])
    # .npy and multi-page TIFF sources
    np.save(tmp_path / "v.npy", vol[:4])
    dv("import", "em", "gray", tmp_path / "v.npy", "--offset", "-3,4,40", store=p)
    tifffile.imwrite(tmp_path / "v.tif", vol[4:8], photometric="minisblack")
    dv("import", "em", "gray", tmp_path / "v.tif", "--offset", "-3,4,50", store=p)
    with Dvid(p) as s:
        g = s.data(s.node("em"), "gray")
        view = s.db.view(s.node("em"))
        np.testing.assert_array_equal(g.read(view, (-3, 4, 40), (30, 20, 4)), vol[:4])
        np.testing.assert_array_equal(g.read(view, (-3, 4, 50), (30, 20, 4)), vol[4:8])


def test_commit_branch_merge_log(st):
    p, root = st
    dv("commit", "em", "-m", "import done", store=p)
    a = dv("branch", "em", "--name", "alice", store=p).stdout.strip()
    b = dv("branch", root[:6], "--name", "bob", store=p).stdout.strip()
    assert a != b and len(a) == 32
    with Dvid(p) as s:
        ga = s.data(s.node(a), "gray")
        ga.write(s.node(a), (0, 0, 0), np.full((1, 1, 1), 5, np.uint8))
        s.data(s.node(b), "gray").write(s.node(b), (100, 0, 0), np.full((1, 1, 1), 6, np.uint8))
    dv("commit", "em:alice", "-m", "a", store=p)
    dv("commit", "em:bob", "-m", "b", store=p)
    m = dv("merge", a, b, "-m", "join", store=p).stdout.strip()
    log = dv("log", m, store=p).stdout
    assert log.index(m) < log.index(a) and root in log and "import done" in log
    dag = dv("dag", "em", store=p).stdout.splitlines()
    assert len(dag) == 4 and any(m in l and "<- alice" in l for l in dag)
    with Dvid(p) as s:
        g = s.data(s.node(m), "gray")
        v = s.db.view(s.node(m))
        assert g.read(v, (0, 0, 0), (1, 1, 1))[0, 0, 0] == 5
        assert g.read(v, (100, 0, 0), (1, 1, 1))[0, 0, 0] == 6


@pytest.mark.parametrize("case", ["corrupt", "corrupt-late", "mismatched", "unknown-uuid", "committed",
                                  "not-a-source"])
def test_bad_input_one_line_and_nothing_written(st, tmp_path, case):
    p, root = st
    vol = np.zeros((3, 8, 8), np.uint8) + 9
    _stack(tmp_path / "stack", vol)
    if case == "committed":
        dv("commit", "em", store=p)
    before = snapshot(p)
    if case == "corrupt":
        (tmp_path / "stack" / "z1.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        r = dv("import", "em", "gray", tmp_path / "stack", store=p, check=False)
        one_line_error(r, "z1.png")
    elif case == "corrupt-late":  # a bad file far into a stack: refused before the first slab is written
        for i in range(3, 40):
            Image.fromarray(vol[0]).save(tmp_path / "stack" / f"z{i}.png")
        (tmp_path / "stack" / "z37.png").write_bytes(b"not an image at all")
        r = dv("import", "em", "gray", tmp_path / "stack", store=p, check=False)
        one_line_error(r, "z37.png")
    elif case == "mismatched":
        Image.fromarray(np.zeros((9, 8), np.uint8)).save(tmp_path / "stack" / "z2.png")
        r = dv("import", "em", "gray", tmp_path / "stack", store=p, check=False)
        one_line_error(r, "z2.png")
    elif case == "unknown-uuid":
        r = dv("import", "0123abcd", "gray", tmp_path / "stack", store=p, check=False)
        one_line_error(r, "0123abcd")
    elif case == "committed":
        r = dv("import", "em", "gray", tmp_path / "stack", store=p, check=False)
        one_line_error(r, "committed")
    else:
        r = dv("import", "em", "gray", tmp_path / "nope", store=p, check=False)
        one_line_error(r, "nope")
    assert snapshot(p) == before


def test_missing_store_and_labels_cli(tmp_path):
    r = dv("log", "x", store=tmp_path / "none", check=False)
    one_line_error(r, "no dvidfs store")
    p = tmp_path / "s"
    dv("init", p)
    dv("repo", "new", "seg", store=p)
    dv("data", "new", "seg", "bodies", "--type", "labels", store=p)
    lab = np.zeros((10, 10, 10), np.uint64)
    lab[:, :, :5] = 11
    lab[:, :, 5:] = 12
    np.save(tmp_path / "lab.npy", lab)
    dv("import", "seg", "bodies", tmp_path / "lab.npy", store=p)
    assert dv("labels", "list", "seg", "bodies", "--sizes", store=p).stdout.split() == ["11", "500", "12", "500"]
    dv("labels", "merge", "seg", "bodies", "11", "12", store=p)
    assert dv("labels", "size", "seg", "bodies", "11", store=p).stdout.strip() == "1000"
    one_line_error(dv("labels", "size", "seg", "bodies", "12", store=p, check=False), "does not exist")
    sv = dv("labels", "sparsevol", "seg", "bodies", "11", "-o", tmp_path / "b.rles", store=p)
    assert sv.returncode == 0 and (tmp_path / "b.rles").stat().st_size == 12 + 16 * 100
    new = int(dv("labels", "split", "seg", "bodies", "11", tmp_path / "b.rles", store=p).stdout)
    assert new == 13
    assert '"split"' in dv("labels", "mutations", "seg", "bodies", store=p).stdout


def test_import_is_all_or_nothing_when_the_last_slice_is_broken(st, tmp_path):
    """Headers all fine, the last slice's pixels truncated: nothing is imported."""
    p, root = st
    vol = np.random.default_rng(5).integers(0, 256, (40, 20, 30), dtype=np.uint8)
    _stack(tmp_path / "stack", vol)
    last = tmp_path / "stack" / "z39.png"
    last.write_bytes(last.read_bytes()[:-40])   # IEND and the end of the pixel data gone
    before = snapshot(p)
    one_line_error(dv("import", "em", "gray", tmp_path / "stack", store=p, check=False), "z39.png")
    assert snapshot(p) == before
    np.save(tmp_path / "big.npy", np.arange(40 * 20 * 30, dtype=np.int32).reshape(40, 20, 30) % 300)
    one_line_error(dv("import", "em", "gray", tmp_path / "big.npy", store=p, check=False), "do not fit")
    assert snapshot(p) == before


def test_out_of_range_ids_names_and_voxel_sizes_are_one_line_errors(st, tmp_path):
    p, root = st
    dv("data", "new", "em", "seg", "--type", "labels", "--block-size", "8", store=p)
    before = snapshot(p)
    for label in (str(2**64), str(10**30)):
        one_line_error(dv("labels", "size", "em", "seg", label, store=p, check=False), "uint64")
    one_line_error(dv("labels", "merge", "em", "seg", "5", str(2**64), store=p, check=False), "label")
    one_line_error(dv("labels", "size", "em", "seg", "--", "-5", store=p, check=False), "uint64")
    for bad in ("nan,8,8", "inf,8,8", "8,8,-1"):
        one_line_error(dv("data", "new", "em", "v", "--voxel-size", bad, store=p, check=False), "voxel size")
    one_line_error(dv("repo", "new", "evil\n", store=p, check=False), "not a valid repo name")
    one_line_error(dv("data", "new", "em", "x\n", store=p, check=False), "not a valid data instance name")
    assert snapshot(p) == before  # nothing written by the refused commands above
    dv("commit", "em", store=p)
    one_line_error(dv("branch", "em", "--name", "evil\n", store=p, check=False), "not a valid branch name")
    with Dvid(p) as s:
        assert [r.alias for r in s.repos()] == ["em"]
        assert list(s.branches(s.repo("em"))) == ["master"]


def test_small_frictions(st, tmp_path):
    """-s after the subcommand; export to an unknown extension refused (not a PNG
    folder by surprise); a missing mount point named; a 16-bit slice says how to convert."""
    p, root = st
    vol = np.random.default_rng(2).integers(0, 256, (4, 8, 8), dtype=np.uint8)
    _stack(tmp_path / "stack", vol)
    dv("import", "em", "gray", tmp_path / "stack", "-s", p)
    assert root in dv("log", "em", "--store", p).stdout
    one_line_error(dv("export", "em", "gray", tmp_path / "x.zarr", store=p, check=False), ".zarr")
    assert not (tmp_path / "x.zarr").exists()
    one_line_error(dv("mount", p, tmp_path / "nope", check=False), "mkdir -p")
    Image.fromarray(np.full((8, 8), 4000, np.uint16)).save(tmp_path / "deep.png")
    (tmp_path / "deep").mkdir()
    (tmp_path / "deep.png").rename(tmp_path / "deep" / "z0.png")
    one_line_error(dv("import", "em", "gray", tmp_path / "deep", store=p, check=False), "8-bit")


def test_repo_log_read_and_append(st):
    """DVID's repo-level log (GET/POST /api/repo/<uuid>/log) from the command line;
    it is the repo's, not any node's."""
    p, root = st
    assert dv("repo", "log", "em", store=p).stdout == ""
    dv("repo", "log", "em", "--append", "imported stack 1", "--append", "checked", store=p)
    dv("repo", "log", root[:6], "--append", "by prefix", store=p)
    assert dv("repo", "log", "em", store=p).stdout.splitlines() == ["imported stack 1", "checked", "by prefix"]
    with Dvid(p) as s:
        assert s.repo("em").log == ["imported stack 1", "checked", "by prefix"]
        assert s.node("em").log == []
    one_line_error(dv("repo", "log", "nosuch", store=p, check=False), "no repo named 'nosuch'")
