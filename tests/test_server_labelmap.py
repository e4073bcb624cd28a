"""`dvidfs serve` body endpoints (server/labelmap.py) over real HTTP.

A 96x80x64 label volume at a negative offset, 16³ blocks, built here as a
numpy array of *supervoxels* plus the supervoxel -> body map of one merge done
at set-up.  Every answer is computed again from that array with numpy: voxel
counts with count_nonzero, bounds with nonzero, runs with the plain-loop
encoder of tests/reference.py, scale 1 with a mode written here (counts per
candidate label, not dvidfs' sort-and-vote), the `blocks` format with a
decoder written here.  Edits run on a fresh store each and are checked the
same way; every malformed edit must answer 400 and leave sizes, mapping,
mutations and label counters as they were.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import struct

import lz4.block
import numpy as np
import pytest
import requests

from dvidfs.core import Dvid
from reference import ref_rles
from serving import served

SHAPE = (64, 80, 96)            # z, y, x
OFF = (-32, -16, -16)           # x, y, z of vol[0, 0, 0]
BS = 16
BODIES = (1, 2, 3, 4, 5, 6, 8)  # after set-up: 7 is merged into 6
SV_OF = {6: (6, 7)}


# ---------------------------------------------------------------- the source
def _source() -> np.ndarray:
    """Supervoxels: a speckle body (4) under an ellipsoid spanning many blocks
    (1), boxes (2, 3), a small box (5), two touching boxes (6, 7: merged at
    set-up) and a single voxel inside the ellipsoid (8: gone at scale 1)."""
    rng = np.random.default_rng(7)
    z, y, x = np.indices(SHAPE)
    a = np.zeros(SHAPE, np.uint64)
    a[rng.random(SHAPE) < 0.02] = 4
    a[(x - 40) ** 2 / 900 + (y - 40) ** 2 / 600 + (z - 30) ** 2 / 400 < 1] = 1
    a[5:20, 60:75, 70:90] = 2
    a[40:60, 5:20, 10:30] = 3
    a[33:36, 50:52, 80:83] = 5
    a[50:64, 60:80, 60:80] = 6
    a[50:64, 60:80, 80:96] = 7
    a[30, 40, 40] = 8
    return a


SRC = _source()


def bodies_of(svs: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    out = svs.copy()
    for s, b in mapping.items():
        out[svs == s] = b
    return out


def rles_of(mask: np.ndarray, off=OFF) -> bytes:
    """Reference rles of a mask at `off`, cropped to its bounding box first (speed)."""
    nz = np.nonzero(mask)
    lo = [int(v.min()) for v in nz]
    hi = [int(v.max()) + 1 for v in nz]
    crop = mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    return ref_rles(crop, (off[0] + lo[2], off[1] + lo[1], off[2] + lo[0]))


def spans(rles: bytes) -> bytes:
    return rles[12:]


def clipped(mask: np.ndarray, lo, hi, off=OFF) -> np.ndarray:
    """The mask with voxels outside inclusive (x, y, z) bounds cleared (None = open)."""
    m = mask.copy()
    for axis, (l, h) in enumerate(zip(lo, hi)):
        idx = np.arange(m.shape[2 - axis]) + off[axis]
        keep = np.ones(len(idx), bool)
        if l is not None:
            keep &= idx >= l
        if h is not None:
            keep &= idx <= h
        shape = [1, 1, 1]
        shape[2 - axis] = -1
        m &= keep.reshape(shape)
    return m


def mode_half(svs: np.ndarray) -> np.ndarray:
    """2x2x2 mode: most frequent non-zero label, ties to the smaller id, all-zero 0."""
    z, y, x = svs.shape
    g = svs.reshape(z // 2, 2, y // 2, 2, x // 2, 2).transpose(0, 2, 4, 1, 3, 5).reshape(-1, 8)
    labels = [int(v) for v in np.unique(g) if v]
    counts = np.stack([(g == np.uint64(v)).sum(axis=1) for v in labels], axis=1)
    best = np.argmax(counts, axis=1)          # first maximum: the smaller id
    out = np.array(labels, np.uint64)[best]
    out[counts.max(axis=1) == 0] = 0
    return out.reshape(z // 2, y // 2, x // 2)


def decode_blocks(data: bytes):
    """DVID's binary-blocks sparsevol -> (label, gx, gy, gz, {origin xyz: [z, y, x] mask})."""
    gx, gy, gz, label = struct.unpack_from("<IIIQ", data)
    pos, blocks = 20, {}
    n = 8
    while pos < len(data):
        ox, oy, oz, flag = struct.unpack_from("<iiiB", data, pos)
        pos += 13
        mask = np.zeros((gz * n, gy * n, gx * n), bool)
        if flag == 1:
            mask[:] = True
        elif flag == 2:
            for sz in range(gz):
                for sy in range(gy):
                    for sx in range(gx):
                        f = data[pos]
                        pos += 1
                        sub = mask[sz * n:(sz + 1) * n, sy * n:(sy + 1) * n, sx * n:(sx + 1) * n]
                        if f == 1:
                            sub[:] = True
                        elif f == 2:
                            bits = [(data[pos + i // 8] >> (i % 8)) & 1 for i in range(512)]
                            sub[:] = np.array(bits, bool).reshape(n, n, n)
                            pos += 64
                        else:
                            assert f == 0
        else:
            assert flag == 0
        assert (ox, oy, oz) not in blocks
        blocks[(ox, oy, oz)] = mask
    return label, gx, gy, gz, blocks


# ---------------------------------------------------------------- fixtures
def _build(path) -> tuple[Dvid, str]:
    core = Dvid.init(path)
    repo = core.new_repo("lab", description="labelmap endpoints")
    root = core.db.node(repo.root)
    seg = core.new_instance(root, "segmentation", "labels", block_size=BS)
    seg.write(root, OFF, SRC)
    seg.merge(root, 6, [7])
    return core, repo.root


@pytest.fixture(scope="module")
def ro(tmp_path_factory):
    """Read-only server over the set-up volume: (base URL of the instance, body array)."""
    core, uuid = _build(tmp_path_factory.mktemp("ro") / "store")
    try:
        with served(core) as url:
            yield f"{url}/api/node/{uuid}/segmentation", bodies_of(SRC, {7: 6})
    finally:
        core.close()


@pytest.fixture
def rw(tmp_path):
    """A fresh store per edit test: (instance URL, core, root uuid)."""
    core, uuid = _build(tmp_path / "store")
    try:
        with served(core) as url:
            yield f"{url}/api/node/{uuid}/segmentation", core, uuid
    finally:
        core.close()


def get(url, path, **kw):
    return requests.get(f"{url}/{path}", timeout=30, **kw)


def post(url, path, **kw):
    return requests.post(f"{url}/{path}", timeout=30, **kw)


# ---------------------------------------------------------------- reads
def test_sparsevol_sizes_and_bounds_match_numpy(ro):
    url, vol = ro
    for b in BODIES:
        mask = vol == b
        r = get(url, f"sparsevol/{b}")
        assert r.status_code == 200, r.text
        assert r.content == rles_of(mask), b
        assert get(url, f"sparsevol/{b}?format=srles").content == spans(r.content)
        assert get(url, f"size/{b}").json() == {"voxels": int(np.count_nonzero(mask))}
        nz = np.nonzero(mask)
        blo = [(int(nz[2 - a].min()) + OFF[a]) // BS for a in range(3)]
        bhi = [(int(nz[2 - a].max()) + OFF[a]) // BS for a in range(3)]
        blocks = {((x + OFF[0]) // BS, (y + OFF[1]) // BS, (z + OFF[2]) // BS)
                  for z, y, x in zip(*nz)}
        assert get(url, f"sparsevol-size/{b}").json() == {
            "voxels": int(np.count_nonzero(mask)), "numblocks": len(blocks),
            "minvoxel": [v * BS for v in blo], "maxvoxel": [(v + 1) * BS - 1 for v in bhi]}
        svs = sorted(int(s) for s in np.unique(SRC[mask]))
        assert sorted(get(url, f"supervoxels/{b}").json()) == svs
        ss = get(url, f"supervoxel-sizes/{b}").json()
        assert dict(zip(ss["supervoxels"], ss["sizes"])) == {
            s: int(np.count_nonzero(SRC == np.uint64(s))) for s in svs}
    ids = list(BODIES) + [7, 99, 0, 2**64 - 1]
    want = [int(np.count_nonzero(vol == np.uint64(i))) if i else 0 for i in ids]
    assert get(url, "sizes", data=json.dumps(ids)).json() == want
    body = json.dumps([6, 7, 99]).encode()
    assert get(url, "sizes?supervoxels=true", data=body).json() == [
        int(np.count_nonzero(SRC == 6)), int(np.count_nonzero(SRC == 7)), 0]
    assert get(url, f"sizes?hash={hashlib.md5(body).hexdigest()}", data=body).status_code == 200
    assert get(url, "sizes?hash=00", data=body).status_code == 400


def test_sparsevol_bounds_exact_and_compressed(ro):
    url, vol = ro
    cases = [((-20, -5, 0), (30, 40, 20)), ((None, 0, None), (None, None, 10)),
             ((5, None, None), (None, None, None)), ((-32, -16, -16), (-17, -1, -1))]
    for b in (1, 4, 6):
        for lo, hi in cases:
            q = "&".join(f"{k}={v}" for k, v in zip(("minx", "miny", "minz", "maxx", "maxy", "maxz"),
                                                    lo + hi) if v is not None)
            m = clipped(vol == b, lo, hi)
            r = get(url, f"sparsevol/{b}?{q}&exact=false")
            if m.any():
                assert r.status_code == 200 and r.content == rles_of(m), (b, lo, hi)
            else:
                assert r.status_code == 404, (b, lo, hi)
    plain = get(url, "sparsevol/1").content
    assert lz4.block.decompress(get(url, "sparsevol/1?compression=lz4").content,
                                uncompressed_size=len(plain)) == plain
    assert gzip.decompress(get(url, "sparsevol/1?compression=gzip").content) == plain
    for bad in ("compression=zstd", "format=png", "minx=a", "scale=-1", "scale=9"):
        assert get(url, f"sparsevol/1?{bad}").status_code == 400, bad


def test_sparsevol_scale_1_is_mode_of_supervoxels_then_mapped(ro):
    url, _ = ro
    half = bodies_of(mode_half(SRC), {7: 6})
    assert (SRC == 8).any() and not (half == 8).any()     # the lone voxel is outvoted at scale 1
    off1 = tuple(o // 2 for o in OFF)
    for b in BODIES:
        m = half == b
        r = get(url, f"sparsevol/{b}?scale=1")
        if not m.any():
            assert b == 8 and r.status_code == 404
            continue
        assert r.status_code == 200 and r.content == rles_of(m, off1), b
    lo, hi = (-10, 0, -3), (12, 20, 10)          # bounds are scale-1 voxels
    m = clipped(half == 1, lo, hi, off1)
    r = get(url, "sparsevol/1?scale=1&minx=-10&miny=0&minz=-3&maxx=12&maxy=20&maxz=10")
    assert r.content == rles_of(m, off1)
    svhalf = mode_half(SRC)
    r = get(url, "sparsevol/7?scale=1&supervoxels=true")
    assert r.content == rles_of(svhalf == 7, off1)


def test_sparsevol_blocks_format(ro):
    url, vol = ro
    for b, scale in ((1, 0), (4, 0), (6, 0), (1, 1)):
        src = vol if not scale else bodies_of(mode_half(SRC), {7: 6})
        off = tuple(o >> scale for o in OFF)
        label, gx, gy, gz, blocks = decode_blocks(get(url, f"sparsevol/{b}?format=blocks&scale={scale}").content)
        assert (label, gx, gy, gz) == (b, 2, 2, 2)
        canvas = np.zeros(tuple(n + 2 * BS for n in src.shape), bool)   # blocks may start before src
        for (ox, oy, oz), mask in blocks.items():
            assert (ox % BS, oy % BS, oz % BS) == (0, 0, 0) and mask.any()
            x, y, z = ox - off[0] + BS, oy - off[1] + BS, oz - off[2] + BS
            canvas[z:z + BS, y:y + BS, x:x + BS] = mask
        inner = canvas[BS:-BS, BS:-BS, BS:-BS]
        assert canvas.sum() == inner.sum()
        assert np.array_equal(inner, src == b), (b, scale)
        assert list(blocks) == sorted(blocks, key=lambda c: (c[2], c[1], c[0]))


def test_sparsevol_coarse_and_supervoxels(ro):
    url, vol = ro
    for b in (1, 3, 6):
        nz = np.nonzero(vol == b)
        blocks = sorted({((x + OFF[0]) // BS, (y + OFF[1]) // BS, (z + OFF[2]) // BS)
                         for z, y, x in zip(*nz)}, key=lambda c: (c[2], c[1], c[0]))
        bm = np.zeros((4, 5, 6), bool)
        for x, y, z in blocks:
            bm[z + 1, y + 1, x + 2] = True
        assert get(url, f"sparsevol-coarse/{b}").content == ref_rles(bm, (-2, -1, -1))
        r = get(url, f"sparsevol-coarse/{b}?minx=0&maxy=20")      # blocks x >= 0, y <= 1
        pb = bm.copy()
        pb[:, :, :2] = False
        pb[:, 3:, :] = False
        if pb.any():
            assert r.content == ref_rles(pb, (-2, -1, -1)), b
        else:
            assert r.status_code == 404
    # supervoxels=true: only that supervoxel's voxels and counts
    m7 = SRC == 7
    assert get(url, "sparsevol/7?supervoxels=true").content == rles_of(m7)
    assert get(url, "size/7?supervoxels=true").json() == {"voxels": int(m7.sum())}
    assert get(url, "sparsevol-size/7?supervoxels=true").json()["voxels"] == int(m7.sum())
    assert get(url, "sparsevol/7").status_code == 404          # 7 is no body any more


def test_head_sparsevol_200_204(ro):
    url, vol = ro
    assert requests.head(f"{url}/sparsevol/2", timeout=30).status_code == 200
    assert requests.head(f"{url}/sparsevol/99", timeout=30).status_code == 204     # absent: 204 as DVID
    rng = np.random.default_rng(3)
    for _ in range(25):
        lo = rng.integers(-40, 70, 3)
        hi = lo + rng.integers(0, 20, 3)
        b = int(rng.choice([2, 3, 5, 8]))
        # bounds widened to whole blocks
        wlo = [(int(v) // BS) * BS for v in lo]
        whi = [(int(v) // BS + 1) * BS - 1 for v in hi]
        want = clipped(vol == b, wlo, whi).any()
        q = "&".join(f"{k}={v}" for k, v in zip(("minx", "miny", "minz", "maxx", "maxy", "maxz"),
                                                list(lo) + list(hi)))
        r = requests.head(f"{url}/sparsevol/{b}?{q}", timeout=30)
        assert r.status_code == (200 if want else 204), (b, lo, hi)


def test_absent_labels_404_and_label_0_400(ro):
    url, _ = ro
    for ep in ("sparsevol", "sparsevol-coarse", "sparsevol-size", "size", "supervoxels",
               "supervoxel-sizes", "lastmod"):
        assert get(url, f"{ep}/99").status_code == 404, ep
        assert get(url, f"{ep}/0").status_code == 400, ep
        assert get(url, f"{ep}/x1").status_code == 400, ep
        assert get(url, f"{ep}/-3").status_code == 400, ep
        assert get(url, f"{ep}/{2**64}").status_code == 400, ep
    assert get(url, "sparsevol").status_code == 400
    assert requests.head(f"{url}/sparsevol/0", timeout=30).status_code == 400
    for ep in ("sizes", "mapping"):
        for body in (b"", b"[1,", b'{"a": 1}', b"[1.5]", b"[true]", b"[-1]", b'["1"]'):
            assert get(url, ep, data=body).status_code == 400, (ep, body)


def test_mapping_listlabels_and_ids(ro):
    url, vol = ro
    assert get(url, "mapping", data="[7, 6, 1, 99, 0]").json() == [6, 6, 1, 0, 0]
    assert get(url, "mapping?nolookup=true", data="[7, 99]").json() == [6, 99]
    raw = get(url, "listlabels").content
    assert np.frombuffer(raw, "<u8").tolist() == list(BODIES)
    raw = get(url, "listlabels?start=3&number=2&sizes=true").content
    assert np.frombuffer(raw, "<u8").tolist() == [3, int((vol == 3).sum()), 4, int((vol == 4).sum())]
    assert get(url, "maxlabel").json() == {"maxlabel": 8}
    assert get(url, "nextlabel").json() == {"nextlabel": 9}
    assert get(url, "lastmod/6").json()["mutation id"] == get(url, "mutations").json()[-1]["MutationID"]
    assert get(url, "lastmod/1").json() == {"mutation id": 0, "last mod user": "", "last mod app": "",
                                           "last mod time": ""}


# ---------------------------------------------------------------- edits
def state(url) -> dict:
    """What an edit may change, as the server answers it."""
    ids = list(range(1, 20))
    return {"sizes": get(url, "sizes", data=json.dumps(ids)).json(),
            "mapping": get(url, "mapping?nolookup=true", data=json.dumps(ids)).json(),
            "mutations": get(url, "mutations").json(),
            "maxlabel": get(url, "maxlabel").json(), "nextlabel": get(url, "nextlabel").json(),
            "sv1": get(url, "sparsevol/1").content}


def test_merge_cleave_and_lastmod(rw):
    url, core, uuid = rw
    vol = bodies_of(SRC, {7: 6})
    r = post(url, "merge?u=alice&app=tests", data="[2, 3, 5]")
    assert r.status_code == 200, r.text
    mid = r.json()["MutationID"]
    vol[(vol == 3) | (vol == 5)] = 2
    assert get(url, "sizes", data="[2, 3, 5]").json() == [int((vol == 2).sum()), 0, 0]
    assert get(url, "sparsevol/2").content == rles_of(vol == 2)
    assert get(url, "sparsevol/3").status_code == 404
    assert get(url, "mapping", data="[2, 3, 5, 7]").json() == [2, 2, 2, 6]
    assert sorted(get(url, "supervoxels/2").json()) == [2, 3, 5]
    lm = get(url, "lastmod/2").json()
    assert (lm["mutation id"], lm["last mod user"], lm["last mod app"]) == (mid, "alice", "tests")
    rec = get(url, "mutations").json()[-1]
    assert {k: rec[k] for k in ("Action", "Target", "Labels", "UUID", "MutationID", "User", "App")} == {
        "Action": "merge", "Target": 2, "Labels": [3, 5], "UUID": uuid, "MutationID": mid,
        "User": "alice", "App": "tests"}
    assert get(url, "mutations?userid=alice").json() == [rec]
    # cleave supervoxel 3 back out: a new body with exactly sv 3's voxels
    r = post(url, "cleave/2?u=bob", data="[3]")
    assert r.status_code == 200, r.text
    new = r.json()["CleavedLabel"]
    assert new == 9 and r.json()["MutationID"] > mid
    assert get(url, f"sparsevol/{new}").content == rles_of(SRC == 3)
    assert get(url, "sizes", data=json.dumps([2, new])).json() == [
        int(((SRC == 2) | (SRC == 5)).sum()), int((SRC == 3).sum())]
    assert get(url, "mapping", data="[3, 5]").json() == [new, 2]
    assert get(url, f"lastmod/{new}").json()["last mod user"] == "bob"
    assert get(url, "mutations").json()[-1]["Action"] == "cleave"
    # a later write of supervoxel 3 counts for the cleaved body
    seg = core.data(core.node(uuid), "segmentation")
    seg.write(core.node(uuid), (0, 0, 0), np.full((1, 1, 1), 3, np.uint64))
    assert get(url, f"size/{new}").json()["voxels"] == int((SRC == 3).sum()) + 1


def test_split_and_nextlabel_never_overlap(rw):
    url, core, uuid = rw
    vol = bodies_of(SRC, {7: 6})
    r1 = post(url, "nextlabel/5").json()
    assert r1 == {"start": 9, "end": 13}
    assert get(url, "nextlabel").json() == {"nextlabel": 14}
    assert get(url, "maxlabel").json() == {"maxlabel": 13}
    # split the part of body 1 with z < 30 (array index) and x < 40
    part = (vol == 1)
    part[30:] = False
    part[:, :, 40:] = False
    r = post(url, "split/1?u=carol", data=rles_of(part))
    assert r.status_code == 200, r.text
    new = r.json()["label"]
    assert new == 14
    vol[part] = new
    for b in (1, new):
        assert get(url, f"sparsevol/{b}").content == rles_of(vol == b)
        assert get(url, f"size/{b}").json() == {"voxels": int((vol == b).sum())}
    assert get(url, "mutations").json()[-1]["NewLabel"] == new
    assert get(url, f"lastmod/{new}").json()["last mod user"] == "carol"
    assert get(url, "lastmod/1").json()["last mod user"] == "carol"
    r2 = post(url, "nextlabel/3").json()
    assert r2 == {"start": 15, "end": 17}
    # split across the merged body 6 (both supervoxels)
    part6 = vol == 6
    part6[:, :, :75] = False
    new6 = post(url, "split/6", data=rles_of(part6)).json()["label"]
    assert new6 == 18
    vol[part6] = new6
    assert get(url, "sizes", data=json.dumps([6, new6])).json() == [
        int((vol == 6).sum()), int((vol == new6).sum())]
    ranges = [(r1["start"], r1["end"]), (r2["start"], r2["end"]), (new, new), (new6, new6)]
    flat = [i for a, b in ranges for i in range(a, b + 1)]
    assert len(flat) == len(set(flat)) and min(flat) > 8


def test_bad_edits_are_400_and_change_nothing(rw):
    url, core, uuid = rw
    before = state(url)
    outside = np.zeros(SHAPE, bool)
    outside[0, 0, :] = True                                 # mostly background, not in body 1
    inside = SRC == 1
    bad = [("merge", b""), ("merge", b"not json"), ("merge", b"{}"), ("merge", b"[1]"),
           ("merge", b"[0, 2]"), ("merge", b"[2, 0]"), ("merge", b"[1, 1.5]"), ("merge", b"[1, true]"),
           ("merge", b"[1, 999]"), ("merge", b"[999, 1]"), ("merge", b"[1, 1]"), ("merge", b"[-1, 2]"),
           ("merge", json.dumps([1, 2**64]).encode()), ("merge", b"[1, 2, 2]"), ("merge", b"[1, 7]"),
           ("split/1", b""), ("split/1", b"garbage"), ("split/1", rles_of(outside)),
           ("split/1", rles_of(inside)[:-4]), ("split/2", rles_of(inside)), ("split/0", rles_of(inside)),
           ("split/999", rles_of(inside)), ("split/abc", rles_of(inside)), ("split", rles_of(inside)),
           ("cleave/6", b"[]"), ("cleave/6", b"[6, 7]"), ("cleave/6", b"[99]"), ("cleave/6", b"[0]"),
           ("cleave/6", b"[6, 6]"), ("cleave/6", b"x"), ("cleave/6", b"[6.0]"), ("cleave/0", b"[6]"),
           ("cleave/999", b"[6]"), ("cleave/1", b"[1]"),
           ("nextlabel/0", b""), ("nextlabel/abc", b""), ("nextlabel", b""), ("nextlabel/-1", b""),
           ("nextlabel/" + str(2**64), b""), ("nextlabel/" + str(2**64 - 1), b"")]
    for path, body in bad:
        r = post(url, path, data=body)
        assert r.status_code == 400, (path, body, r.status_code, r.text)
        assert r.text.strip(), path
    assert state(url) == before
    # a committed node refuses every edit with 400
    core.commit(core.node(uuid))
    for path, body in (("merge", b"[2, 3]"), ("split/1", rles_of(SRC == 1)), ("cleave/6", b"[7]"),
                       ("nextlabel/2", b"")):
        assert post(url, path, data=body).status_code == 400, path
    assert state(url) == before


def test_edits_on_a_branch_leave_the_parent_alone(rw):
    url, core, uuid = rw
    root = core.node(uuid)
    core.commit(root)
    child = core.branch(root, "edit")
    curl = url.replace(uuid, child.uuid)
    assert post(curl, "merge", data="[1, 2]").status_code == 200
    assert get(curl, "size/2").status_code == 404
    assert get(url, "size/2").status_code == 200
    assert len(get(curl, "mutations").json()) == len(get(url, "mutations").json()) + 1
