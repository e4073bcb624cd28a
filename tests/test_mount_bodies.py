"""Body directories at segmentation scale (issue 15, item 1), through real mounts
and real tools: every body file's `stat` size is the length `cat` reads; a
`stat` encodes no sparsevol and reads no block for the index-derived files;
`labels/` lists a bounded page of bodies, the rest are reachable by id and
through `@more` pages that tree walkers do not follow."""
from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from dvidfs.core import Dvid
from dvidfs.data.volume import BlockVolume
from dvidfs.data.labels import Labels
from dvidfs.formats import sparsevol as svfmt
from dvidfs.fs.bodies import BODY_FILES
from mounting import mounted, mounted_in_process
from reference import ref_rles

pytestmark = pytest.mark.mount

OFFSET = (-13, 2, -5)         # x, y, z: negative, not block-aligned
SHAPE = (18, 21, 40)          # z, y, x; 8³ blocks: bodies cross block borders on x


def _labels() -> np.ndarray:
    """Bodies of many shapes: slabs crossing x block borders (runs join across
    blocks), a checkerboard (one run per voxel), stripes of two supervoxels
    that get merged (runs fuse only through the mapping), many 2³ cubes."""
    z, y, x = np.indices(SHAPE)
    lab = np.zeros(SHAPE, np.uint64)
    lab[:, :5, :] = 11                                   # long runs across 5 blocks
    board = np.where((x + y + z) % 2, 12, 13)
    lab[:, 5:9, :] = board[:, 5:9, :]                    # checkerboard: a run per voxel
    stripes = np.where((x // 3) % 2, 21, 22)
    lab[:, 9:12, :] = stripes[:, 9:12, :]                # stripes; 22 merged into 21 below
    cubes = 1000 + (z // 2) * 1000 + (y // 2) * 50 + x // 2
    lab[:, 12:, :30] = cubes[:, 12:, :30]
    lab[3, 14, 33] = 2**40 + 7                           # a single voxel, big id
    return lab


def _store(path, lab, commit=False):
    with Dvid.init(path) as s:
        root = s.node(s.new_repo("seg").root)
        seg = s.new_instance(root, "bodies", "labels", block_size=8)
        seg.write(root, OFFSET, lab)
        seg.merge(root, 21, [22])
        if commit:
            s.commit(root, "done")
        return root.uuid


def _merged(lab):
    return np.where(lab == 22, 21, lab)


def sh(cmd, cwd=None):
    r = subprocess.run(["sh", "-c", cmd], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _stat_vs_cat(d):
    """{path: (stat size, bytes cat reads)} of every file under labels/<id>/ (split excluded)."""
    stat = sh("stat -c '%n %s' labels/*/*", cwd=d)
    cat = sh("for f in labels/*/*; do printf '%s %s\\n' \"$f\" \"$(cat \"$f\" | wc -c)\"; done", cwd=d)
    a = dict(line.rsplit(" ", 1) for line in stat.splitlines())
    b = dict(line.rsplit(" ", 1) for line in cat.splitlines())
    assert a.keys() == b.keys()
    return {k: (int(a[k]), int(b[k])) for k in a}


@pytest.mark.parametrize("commit", [False, True], ids=["open", "committed"])
def test_every_body_file_stat_size_is_what_cat_reads(tmp_path, commit):
    lab = _labels()
    uuid = _store(tmp_path / "store", lab, commit)
    merged = _merged(lab)
    ids = sorted(int(i) for i in np.unique(merged) if i)
    with mounted(tmp_path / "store", tmp_path / "mnt"):
        d = tmp_path / "mnt" / "seg" / uuid / "bodies"
        assert sorted(int(n) for n in os.listdir(d / "labels")) == ids
        sizes = _stat_vs_cat(d)
        assert len(sizes) == len(ids) * len(BODY_FILES)
        bad = {k: v for k, v in sizes.items() if v[0] != v[1]}
        assert not bad, f"stat size != cat length: {sorted(bad.items())[:5]}"
        # and the content is right: the sparsevol of bodies whose runs join across
        # blocks, a run per voxel, runs fused only through the merge mapping
        for b in (11, 12, 21, 2**40 + 7, 1300):
            assert (d / "labels" / str(b) / "sparsevol").read_bytes() == ref_rles(merged == b, OFFSET)
        # ls -l of every body's sparsevol (a fresh mount: the sizes come from
        # lookups, not from reads) agrees with the bytes
        out = sh("ls -l labels/*/sparsevol", cwd=d)
        for line in out.splitlines():
            f = line.split()
            assert int(f[4]) == len((d / f[-1]).read_bytes()), line


def test_sizes_stay_exact_after_merge_split_and_writes(tmp_path):
    lab = _labels()
    uuid = _store(tmp_path / "store", lab)
    with mounted(tmp_path / "store", tmp_path / "mnt"):
        d = tmp_path / "mnt" / "seg" / uuid / "bodies"
        before = os.stat(d / "labels/12/sparsevol").st_size
        sh(f"echo '12 13' > {d}/merge")      # checkerboard merged: one run per row
        after = os.stat(d / "labels/12/sparsevol").st_size
        assert after == len((d / "labels/12/sparsevol").read_bytes()) < before
        merged = np.where(_merged(lab) == 13, 12, _merged(lab))
        cut = np.zeros(SHAPE, bool)
        cut[2:5, 0:3, 4:30] = True
        (tmp_path / "cut.rles").write_bytes(ref_rles(cut, OFFSET))
        sh(f"cp {tmp_path}/cut.rles {d}/labels/11/split")
        sizes = _stat_vs_cat(d)
        bad = {k: v for k, v in sizes.items() if v[0] != v[1]}
        assert not bad, sorted(bad.items())[:5]
        rest = merged == 11
        rest[cut] = False
        assert (d / "labels/11/sparsevol").read_bytes() == ref_rles(rest, OFFSET)


def test_stat_encodes_no_sparsevol_and_index_files_read_no_block(tmp_path, monkeypatch):
    """Counted through the real code paths of an in-process mount: the old
    `stat` rendered every body file (sparsevol encoded, bbox from its runs), so
    each of these counters moved on every body."""
    lab = _labels()
    calls = {"encode": 0, "runs": 0, "block": 0, "iter_blocks": 0, "decode": 0}

    def spy(owner, name, counter):
        real = getattr(owner, name)

        def wrapper(*a, **k):
            calls[counter] += 1
            return real(*a, **k)
        monkeypatch.setattr(owner, name, wrapper)

    spy(svfmt, "encode_rles", "encode")
    spy(Labels, "sparsevol_runs", "runs")
    spy(BlockVolume, "block", "block")
    spy(BlockVolume, "iter_blocks", "iter_blocks")
    spy(Labels, "decode_block", "decode")
    uuid = _store(tmp_path / "store", lab, commit=True)
    with Dvid(tmp_path / "store") as core:          # reopened: no block decoded yet
        root = core.node(uuid)
        zyx = np.argwhere(lab != 0) + np.array(OFFSET[::-1])
        n_blocks = len(np.unique(zyx // 8, axis=0))           # stored 8³ blocks
        with mounted_in_process(core, tmp_path / "mnt") as ops:
            d = tmp_path / "mnt" / "seg" / root.uuid / "bodies" / "labels"
            ids = sorted(os.listdir(d))
            assert len(ids) > 40
            for k in calls:
                calls[k] = 0
            for b in ids:
                for n in BODY_FILES:
                    if n != "sparsevol":
                        os.stat(d / b / n)
            assert calls == dict.fromkeys(calls, 0), calls       # the index only
            for b in ids:
                os.stat(d / b / "sparsevol")
            # sparsevol sizes: runs counted, never encoded; no block decoded twice
            assert calls["encode"] == 0 and calls["runs"] == 0, calls
            assert 0 < calls["decode"] <= n_blocks, (calls, n_blocks)
            assert ops.tree.body_caches.runs.analysed <= n_blocks
            seen = dict(calls)
            for b in ids:                        # stat again: nothing read, nothing counted
                os.stat(d / b / "sparsevol")
            assert calls == seen
            # the spies do see renders: reading a sparsevol encodes it
            assert len((d / ids[0] / "sparsevol").read_bytes()) == os.stat(d / ids[0] / "sparsevol").st_size
            assert calls["encode"] >= 1 and calls["runs"] >= 1


def _pages(labels_dir):
    """Body ids of the listing, then of each `@more` page, in order."""
    out, d = [], labels_dir
    while True:
        names = os.listdir(d)
        more = "@more" in names
        out += [int(n) for n in names if n != "@more"]
        if not more:
            return out
        d = type(d)(os.path.realpath(d / "@more"))   # labels/@from-<id>: no 40-link chain


def test_listing_is_bounded_pages_and_lookup_reach_every_body(tmp_path, monkeypatch):
    monkeypatch.setenv("DVIDFS_BODY_LISTING", "7")      # the mount subprocess inherits it
    lab = _labels()
    uuid = _store(tmp_path / "store", lab, commit=True)
    ids = sorted(int(i) for i in np.unique(_merged(lab)) if i)
    assert len(ids) > 3 * 7
    with mounted(tmp_path / "store", tmp_path / "mnt"):
        node = tmp_path / "mnt" / "seg" / uuid
        d = node / "bodies" / "labels"
        top = os.listdir(d)
        assert top == [str(i) for i in ids[:7]] + ["@more"]
        assert os.readlink(d / "@more") == f"@from-{ids[7]}"
        assert os.readlink(d / "@more" / str(ids[8])) == f"../{ids[8]}"
        assert _pages(d) == ids                           # every body, once, in order
        # a body beyond the listing is there by id, and through its page
        far = ids[-1]
        assert int((d / str(far) / "size").read_text()) == int((_merged(lab) == far).sum())
        page = d / f"@from-{ids[14]}"
        assert (page / str(ids[15]) / "size").read_text() == (d / str(ids[15]) / "size").read_text()
        assert not (d / "@from-x").exists() and not (d / "999999").exists()
        # tree walkers see the bounded listing only (symlinks are not followed)
        assert int(sh("find bodies/labels -type f | wc -l", cwd=node)) == 7 * len(BODY_FILES)
        assert int(sh("find bodies/labels -type l | wc -l", cwd=node)) == 1
        du = int(sh("du -sb bodies/labels", cwd=node).split()[0])
        assert du > 0
        out = tmp_path / "copy"
        sh(f"rsync -a {node}/ {out}/")
        assert sorted(os.listdir(out / "bodies" / "labels")) == sorted([str(i) for i in ids[:7]] + ["@more"])
        assert os.path.islink(out / "bodies" / "labels" / "@more")
        for b in ids[:7]:
            for n in BODY_FILES:
                assert (out / "bodies/labels" / str(b) / n).read_bytes() == \
                    (d / str(b) / n).read_bytes()


def test_bench_bodies_smoke(tmp_path, monkeypatch):
    """scripts/bench_bodies.py runs end to end (a small store, a small listing
    bound): every measurement a positive number, the listing bounded, nothing
    left mounted.  No timing assertions: the numbers are for the report."""
    import json
    import sys
    from pathlib import Path

    monkeypatch.setenv("DVIDFS_BODY_LISTING", "300")
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, str(root / "scripts" / "bench_bodies.py"), "--quick", "--bodies", "3000",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=root,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    res = json.loads((tmp_path / "bodies.json").read_text())
    assert res["meta"]["bodies"] >= 3000 and res["meta"]["listing_limit"] == 300
    assert res["meta"]["ls_labels_entries"] == 301                    # 300 bodies + @more
    assert res["meta"]["find_labels_files"] == 300 * len(BODY_FILES)
    assert all(isinstance(v, float) and v > 0 for v in res["measurements"].values()), res["measurements"]
    assert all(v > 0 for v in res["ratios"].values())
    with open("/proc/mounts") as f:
        assert not [line for line in f if str(tmp_path) in line]
    assert not list(tmp_path.glob("run-*"))


def test_bench_bodies_sample_smoke(tmp_path):
    """scripts/bench_bodies.py --sample (reading every body's files of a small
    sample, in-process and through real mounts) runs end to end: every
    measurement a positive number, nothing left mounted.  No timing assertions."""
    import json
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, str(root / "scripts" / "bench_bodies.py"), "--sample", "--sample-size",
                        "96,64,64", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600,
                       cwd=root, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    res = json.loads((tmp_path / "bodies-sample.json").read_text())
    assert res["meta"]["bodies"] > 10
    m = res["measurements"]
    assert {"inproc.walk_per_body_ms", "mount.this.rsync_cold_s", "mount.this.cat_cold_s"} <= m.keys()
    assert all(isinstance(v, float) and v > 0 for v in m.values()), m
    with open("/proc/mounts") as f:
        assert not [line for line in f if str(tmp_path) in line]
    assert not list(tmp_path.glob("run-*"))
