"""The neuroglancer precomputed view (data/precomputed.py), read by CloudVolume.

A sample node (EM-like grayscale and labels, not block multiples, a body merge,
and a grayscale copy at a negative, unaligned offset) gets its pyramids built
and is committed; then CloudVolume (`cloud-volume` from PyPI) reads every
scale of every instance
  * through a real `dvidfs mount` with `file://…/<inst>/precomputed`, and
  * through `dvidfs serve` with `precomputed://http://127.0.0.1:PORT/precomputed/…`,
with `fill_missing=False`, and each is compared with numpy: the reference
halvings of test_pyramid.py (mean, and a vectorised mode written here),
the merge applied after the mode of supervoxels.  Also: exact sizes in `stat`
and listings, read-only views, open nodes never stale, HTTP 404s and CORS.
"""
from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
import requests

from dvidfs.core import Dvid
from dvidfs.sample import iter_sample
from dvidfs.samplestore import build_sample_store
from mounting import mounted, mounted_in_process
from serving import served
from test_pyramid import _groups, ref_halve_mean, ref_halve_mode

cloudvolume = pytest.importorskip("cloudvolume")

SIZE = (200, 136, 100)            # x, y, z: no block multiple (32 gray, 64 labels)
SHIFT = (-37, -5, -20)            # where the copy "shifted" starts
SHIFT_SHAPE = (40, 50, 70)        # z, y, x


def ref_mode_fast(a: np.ndarray, lo):
    """The mode rule, vectorised differently from dvidfs: for every voxel of a
    group, how many of the group share its value; the winners are the non-zero
    values with the most votes, the smallest of them is taken."""
    p, lo2 = _groups(a, lo)
    z, y, x = (n // 2 for n in p.shape)
    g = p.reshape(z, 2, y, 2, x, 2).transpose(0, 2, 4, 1, 3, 5).reshape(-1, 8)
    votes = np.stack([(g == g[:, j:j + 1]).sum(axis=1) for j in range(8)], axis=1)
    votes[g == 0] = 0
    best = votes.max(axis=1, keepdims=True)
    out = np.where((votes == best) & (best > 0), g, np.uint64(2**64 - 1)).min(axis=1)
    out[best[:, 0] == 0] = 0
    return out.reshape(z, y, x), lo2


def test_fast_mode_reference_agrees_with_the_counter_one():
    rng = np.random.default_rng(7)
    for _ in range(5):
        a = rng.integers(0, 4, (9, 7, 11)).astype(np.uint64)
        lo = tuple(int(v) for v in rng.integers(-5, 5, 3))
        fa, fl = ref_mode_fast(a, lo)
        ca, cl = ref_halve_mode(a, lo)
        assert fl == cl and np.array_equal(fa, ca)


class Sample:
    """The committed sample node and the numpy levels expected of each instance."""

    def __init__(self, tmp):
        self.path = tmp / "store"
        with Dvid.init(self.path) as core:
            self.uuid = build_sample_store(core, SIZE, commit=False)
            node = core.node(self.uuid)
            gray = np.zeros(SIZE[::-1], np.uint8)
            svs = np.zeros(SIZE[::-1], np.uint64)
            for z0, g, lab in iter_sample(SIZE[::-1], seed=0, slab=32):
                gray[z0:z0 + g.shape[0]] = g
                svs[z0:z0 + lab.shape[0]] = lab
            shifted = gray[:SHIFT_SHAPE[0], :SHIFT_SHAPE[1], :SHIFT_SHAPE[2]]
            core.new_instance(node, "shifted", "grayscale").write(node, SHIFT, shifted)
            seg = core.data(node, "segmentation")
            ids = [int(i) for i in np.unique(svs) if i]
            self.target, self.merged = ids[0], ids[1:3]
            seg.merge(node, self.target, self.merged)
            self.levels = {}
            for name in ("grayscale", "segmentation", "shifted"):
                self.levels[name] = core.data(node, name).build_pyramid(node)
            core.commit(node, "sample with pyramids")
        self.want = {}
        for name, arr, lo, halve in (("grayscale", gray, (0, 0, 0), ref_halve_mean),
                                     ("segmentation", svs, (0, 0, 0), ref_mode_fast),
                                     ("shifted", shifted, SHIFT, ref_halve_mean)):
            out = [(arr, lo)]
            for _ in range(self.levels[name]):
                out.append(halve(*out[-1]))
            if name == "segmentation":   # the mapping applies after the mode of supervoxels
                out = [(np.where(np.isin(a, self.merged), self.target, a).astype(np.uint64), l) for a, l in out]
            self.want[name] = out


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return Sample(tmp_path_factory.mktemp("precomputed"))


def check_cloudvolume(cv, want, name, absent=()):
    """Every scale of `cv` equals the numpy levels `want` [(array, lo)] (zeros
    outside them: the view's grid starts at a block boundary); no id of
    `absent` (merged away) shows anywhere."""
    assert len(cv.scales) == len(want), name
    for mip, (arr, lo) in enumerate(want):
        cv.mip = mip
        bb = cv.bounds
        got = np.asarray(cv[bb.minpt[0]:bb.maxpt[0], bb.minpt[1]:bb.maxpt[1], bb.minpt[2]:bb.maxpt[2]])[..., 0]
        exp = np.zeros(tuple(int(s) for s in bb.size3()), arr.dtype)          # x, y, z
        sl = tuple(slice(l - int(m), l - int(m) + n) for l, m, n in zip(lo, bb.minpt, arr.shape[::-1]))
        exp[sl] = arr.transpose(2, 1, 0)
        assert got.shape == exp.shape, (name, mip)
        assert np.array_equal(got, exp), f"{name} scale {mip} differs from numpy"
        # the grid: voxel_offset on a block boundary, the upper edge at the extents' edge
        assert all(int(m) % c == 0 for m, c in zip(bb.minpt, cv.chunk_size)), (name, mip)
        assert [int(m) + int(s) for m, s in zip(bb.minpt, bb.size3())] == \
            [l + n for l, n in zip(lo, arr.shape[::-1])], (name, mip)
        if absent:
            assert not np.isin(got, np.array(absent, np.uint64)).any(), (name, mip)


def test_cloudvolume_reads_every_scale_through_the_mount(sample, tmp_path):
    mnt = tmp_path / "mnt"
    with mounted(sample.path, mnt):
        node = mnt / "sample" / sample.uuid
        for name in ("grayscale", "segmentation", "shifted"):
            root = node / name / "precomputed"
            info = json.loads((root / "info").read_text())
            assert [s["key"] for s in info["scales"]] == [f"s{n}" for n in range(sample.levels[name] + 1)]
            cv = cloudvolume.CloudVolume(f"file://{root}", fill_missing=False, progress=False)
            check_cloudvolume(cv, sample.want[name], name, sample.merged if name == "segmentation" else ())
            # the mount's own slices of a level are that level too
            arr, lo = sample.want[name][1]
            ext = "tif" if name == "segmentation" else "png"
            names = os.listdir(node / name / "s1" / "xy")   # coordinate order
            assert names[0] == f"{lo[2]:05d}.{ext}" and len(names) == arr.shape[0]
        info = json.loads((node / "segmentation" / "info.json").read_text())
        assert info["Extended"]["MaxDownresLevel"] == sample.levels["segmentation"]
        # exact sizes: listings and stat agree with the bytes, for raw and compressed chunks
        for name in ("grayscale", "segmentation"):
            d = node / name / "precomputed" / "s1"
            for entry in os.scandir(d):
                data = (d / entry.name).read_bytes()
                assert entry.stat().st_size == len(data) == os.stat(d / entry.name).st_size
                if name == "grayscale":
                    x, y, z = (int(b) - int(a) for a, b in map(_range, entry.name.split("_")))
                    assert len(data) == x * y * z
        # read-only, committed: no writes, no new files, no level slices
        for path in (node / "grayscale" / "precomputed" / "info", node / "grayscale" / "s1" / "xy" / "00000.png",
                     node / "grayscale" / "precomputed" / "s0" / "0-32_0-32_0-32"):
            with pytest.raises(OSError) as exc:
                open(path, "r+b")
            assert exc.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM), path
        with pytest.raises(OSError):
            open(node / "grayscale" / "precomputed" / "s0" / "new", "wb")
        # names that are not chunks of the grid are absent
        for bad in ("0-32_0-32_0-31", "0-31_0-32_0-32", "00-32_0-32_0-32", "192-224_0-32_0-32", "x"):
            assert not (node / "grayscale" / "precomputed" / "s0" / bad).exists(), bad


def _range(r: str) -> tuple[str, str]:
    """'a-b' with either side maybe negative -> (a, b)."""
    i = r.index("-", 1)
    return r[:i], r[i + 1:]


def test_cloudvolume_reads_every_scale_over_http(sample):
    with Dvid(sample.path) as core, served(core) as url:
        for name in ("grayscale", "segmentation", "shifted"):
            cv = cloudvolume.CloudVolume(f"precomputed://{url}/precomputed/sample/{sample.uuid[:8]}/{name}",
                                         fill_missing=False, progress=False)
            check_cloudvolume(cv, sample.want[name], name, sample.merged if name == "segmentation" else ())
        base = f"{url}/precomputed/sample/{sample.uuid}/grayscale"
        r = requests.get(base + "/info")
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
        assert "immutable" in r.headers["cache-control"]
        r = requests.get(base + "/s0/0-32_0-32_0-32")
        assert r.status_code == 200 and len(r.content) == 32 ** 3
        assert requests.head(base + "/s0/0-32_0-32_0-32").headers["content-length"] == str(32 ** 3)
        for bad in ("/s0/0-32_0-32_0-31", "/s9/0-32_0-32_0-32", "/provenance", "/s0"):
            assert requests.get(base + bad).status_code == 404, bad
        assert requests.get(f"{url}/precomputed/sample/{'f' * 32}/grayscale/info").status_code == 404
        assert requests.get(f"{url}/precomputed/sample/{sample.uuid}/nothing/info").status_code == 404
        # the labelmap scale=N reads come from the same pyramid
        arr, lo = sample.want["segmentation"][2]
        r = requests.get(f"{url}/api/node/{sample.uuid}/segmentation/raw/0_1_2/"
                         f"{arr.shape[2]}_{arr.shape[1]}_{arr.shape[0]}/0_0_0?scale=2")
        assert np.array_equal(np.frombuffer(r.content, "<u8").reshape(arr.shape), arr)
        info = requests.get(f"{url}/api/node/{sample.uuid}/segmentation/info").json()
        assert info["Extended"]["StoredDownresLevel"] == sample.levels["segmentation"]
        assert info["Extended"]["MaxDownresLevel"] >= sample.levels["segmentation"]


def test_open_node_views_are_never_stale(tmp_path):
    """Writes to an open node (through the core, in the mount's process) show
    at once in the chunks, their sizes and the level slices."""
    with Dvid.init(tmp_path / "s") as core:
        repo = core.new_repo("r")
        node = core.node(repo.root)
        seg = core.new_instance(node, "seg", "labels", block_size=16)
        gray = core.new_instance(node, "g", "grayscale", block_size=16)
        seg.write(node, (0, 0, 0), np.ones((32, 32, 32), np.uint64))
        gray.write(node, (0, 0, 0), np.full((32, 32, 32), 10, np.uint8))
        seg.build_pyramid(node)
        gray.build_pyramid(node)
        with mounted_in_process(core, tmp_path / "mnt"):
            base = tmp_path / "mnt" / "r" / node.uuid
            chunk = base / "seg" / "precomputed" / "s1" / "0-16_0-16_0-16"
            gchunk = base / "g" / "precomputed" / "s1" / "0-16_0-16_0-16"
            first = chunk.read_bytes()
            assert os.stat(chunk).st_size == len(first)
            assert set(gchunk.read_bytes()) == {10}
            rng = np.random.default_rng(0)
            seg.write(node, (0, 0, 0), rng.integers(1, 50, (16, 16, 16)).astype(np.uint64))
            gray.write(node, (0, 0, 0), np.full((2, 2, 2), 250, np.uint8))
            second = chunk.read_bytes()
            assert second != first and os.stat(chunk).st_size == len(second)
            want, _ = ref_mode_fast(seg.read(node, (0, 0, 0), (32, 32, 32), supervoxels=True), (0, 0, 0))
            import compressed_segmentation as cs
            got = cs.decompress(second, (16, 16, 16), np.uint64, (8, 8, 8), order="F")
            assert np.array_equal(np.asarray(got).reshape(16, 16, 16, order="F").transpose(2, 1, 0), want[:16, :16, :16])
            g = np.frombuffer(gchunk.read_bytes(), np.uint8).reshape(16, 16, 16)
            assert g[0, 0, 0] == (250 * 8 + 4) // 8 and g[1, 1, 1] == 10
            # the level slices follow too, and cannot be written
            from PIL import Image
            img = np.asarray(Image.open(base / "g" / "s1" / "xy" / "00000.png"))
            assert img[0, 0] == 250 and img[1, 1] == 10
            with pytest.raises(OSError):
                open(base / "g" / "s1" / "xy" / "00000.png", "r+b")
            with pytest.raises(OSError):
                open(base / "g" / "s1" / "xy" / "00099.png", "wb")
