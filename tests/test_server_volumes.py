"""`dvidfs serve` voxel endpoints (server/volumes.py) over real HTTP.

One server for the module, over a store holding numpy arrays written here:
`gray` (uint8, smooth so JPEG stays close) at a negative offset and `seg`
(uint64 labels, ids above 2^32 and one with its top 16 bits set, one
supervoxel merged into another) in a committed root; POSTs go to instances
made in an open child.  Every reply is decoded independently of dvidfs'
encoders (Pillow, zlib, lz4, the compressed_segmentation package, and small
decoders written below for the 64-bit PNG, DVID's label blocks and the block
record stream) and compared with the numpy source.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import zlib
from collections import Counter
from types import SimpleNamespace

import compressed_segmentation as cseg
import lz4.block
import numpy as np
import pytest
import requests
from PIL import Image

from dvidfs.core import Dvid
from dvidfs.formats.images import label_colors
from serving import served

GRAY_OFF = (-16, -8, 0)      # x, y, z of gray[0, 0, 0]
SEG_OFF = (0, 0, 0)
SHAPE = (32, 48, 64)         # z, y, x of both sources
BS = 16


# ---------------------------------------------------------------- sources
def _gray_source() -> np.ndarray:
    z, y, x = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    g = 128 + 60 * np.sin(x / 7) + 40 * np.cos(y / 9) + 20 * np.sin(z / 5)
    return np.clip(g, 0, 255).astype(np.uint8)


def _seg_source() -> tuple[np.ndarray, np.ndarray]:
    z, y, x = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    small = ((x // 5) + 7 * (y // 6) + 31 * (z // 3)) % 29
    small[(x + y + z) % 11 == 0] = 0            # scattered background: ties and empty groups
    ids = np.array([0] + [i * 1000003 + (1 << 40) * (i % 3 == 0) for i in range(1, 29)], np.uint64)
    ids[7] = np.uint64(0xFFFF000000000005)      # top 16 bits set (the PNG alpha channel)
    return ids[small], ids


def expect(src: np.ndarray, src_off, offset, size) -> np.ndarray:
    """The [z, y, x] box at `offset` of `size` from a source placed at `src_off`, 0 elsewhere."""
    out = np.zeros(size[::-1], src.dtype)
    lo = [max(o, s) for o, s in zip(offset, src_off)]
    hi = [min(o + n, s + m) for o, n, s, m in zip(offset, size, src_off, src.shape[::-1])]
    if all(l < h for l, h in zip(lo, hi)):
        out[tuple(slice(l - o, h - o) for l, h, o in zip(lo[::-1], hi[::-1], offset[::-1]))] = \
            src[tuple(slice(l - s, h - s) for l, h, s in zip(lo[::-1], hi[::-1], src_off[::-1]))]
    return out


def mode_halve(vol: np.ndarray) -> np.ndarray:
    """Independent 2x mode: most frequent non-zero label per 2x2x2, ties to the
    smaller id, all-zero stays 0 (the rule in dvidfs/data/downres.py)."""
    z, y, x = vol.shape
    out = np.zeros((z // 2, y // 2, x // 2), np.uint64)
    for k in range(z // 2):
        for j in range(y // 2):
            for i in range(x // 2):
                votes = Counter(int(v) for v in vol[2 * k:2 * k + 2, 2 * j:2 * j + 2, 2 * i:2 * i + 2].ravel()
                                if v != 0)
                if votes:
                    top = max(votes.values())
                    out[k, j, i] = min(v for v, n in votes.items() if n == top)
    return out


def expect_scaled(src, offset, size, scale, mapping=None) -> np.ndarray:
    f = 1 << scale
    vol = expect(src, SEG_OFF, tuple(o * f for o in offset), tuple(s * f for s in size))
    for _ in range(scale):
        vol = mode_halve(vol)
    return mapping(vol) if mapping else vol


# ---------------------------------------------------------------- independent decoders
def decode_png_rgba16(buf: bytes) -> np.ndarray:
    """A 16-bit RGBA PNG -> (h, w, 8) bytes per pixel in file order (all filter types)."""
    assert buf[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, ihdr = 8, b"", None
    while pos < len(buf):
        n, kind = struct.unpack(">I4s", buf[pos:pos + 8])
        data = buf[pos + 8:pos + 8 + n]
        assert struct.unpack(">I", buf[pos + 8 + n:pos + 12 + n])[0] == zlib.crc32(kind + data)
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", data)
        elif kind == b"IDAT":
            idat += data
        pos += 12 + n
    w, h, depth, ctype, _, _, interlace = ihdr
    assert (depth, ctype, interlace) == (16, 6, 0)
    raw, stride, bpp = zlib.decompress(idat), w * 8, 8
    out = np.zeros((h, stride), np.int64)
    for r in range(h):
        f = raw[r * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, r * (stride + 1) + 1).astype(np.int64)
        prev = out[r - 1] if r else np.zeros(stride, np.int64)
        cur = out[r]
        for i in range(stride):
            a = cur[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 0:
                p = 0
            elif f == 1:
                p = a
            elif f == 2:
                p = b
            elif f == 3:
                p = (a + b) // 2
            else:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                p = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            cur[i] = (line[i] + p) & 0xFF
    return out.astype(np.uint8).reshape(h, w, 8)


def labels_of_png(buf: bytes) -> np.ndarray:
    """DVID's contract: the 8 bytes of each pixel are the label's little-endian bytes."""
    px = decode_png_rgba16(buf)
    return np.ascontiguousarray(px).view("<u8")[..., 0]


def parse_records(buf: bytes) -> list[tuple[tuple[int, int, int], bytes]]:
    out, pos = [], 0
    while pos < len(buf):
        bx, by, bz, n = struct.unpack_from("<4i", buf, pos)
        out.append(((bx, by, bz), buf[pos + 16:pos + 16 + n]))
        pos += 16 + n
    assert pos == len(buf)
    return out


def decode_dvid_label_block(b: bytes) -> np.ndarray:
    """DVID's compressed label block (labels.Block serialization), written from its spec."""
    gx, gy, gz, n = struct.unpack_from("<4I", b, 0)
    labels = np.frombuffer(b, "<u8", n, 16)
    out = np.zeros((gz * 8, gy * 8, gx * 8), np.uint64)
    if n == 1:
        out[:] = labels[0]
        return out
    nsb = gx * gy * gz
    pos = 16 + 8 * n
    ns = np.frombuffer(b, "<u2", nsb, pos).astype(int)
    pos += 2 * nsb
    idx = np.frombuffer(b, "<u4", int(ns.sum()), pos)
    pos += 4 * int(ns.sum())
    k = 0
    for s in range(nsb):
        sz, rem = divmod(s, gx * gy)
        sy, sx = divmod(rem, gx)
        m, sub = ns[s], idx[k:k + ns[s]]
        k += m
        if m == 0:
            vals = np.uint64(0)
        elif m == 1:
            vals = labels[sub[0]]
        else:
            bits = int(m - 1).bit_length()
            packed = np.unpackbits(np.frombuffer(b, np.uint8, 64 * bits, pos)).reshape(512, bits)
            pos += 64 * bits
            vals = labels[sub[packed.astype(int) @ (1 << np.arange(bits - 1, -1, -1))]].reshape(8, 8, 8)
        out[sz * 8:sz * 8 + 8, sy * 8:sy * 8 + 8, sx * 8:sx * 8 + 8] = vals
    return out


def decode_cseg(buf: bytes, size_xyz, block=(8, 8, 8)) -> np.ndarray:
    """neuroglancer compressed_segmentation, one channel, from its spec (slow: small volumes)."""
    sx, sy, sz = size_xyz
    bx, by, bz = block
    w = np.frombuffer(buf, "<u4")
    base = int(w[0])
    gx, gy, gz = -(-sx // bx), -(-sy // by), -(-sz // bz)
    out = np.zeros((sz, sy, sx), np.uint64)
    for k in range(gz):
        for j in range(gy):
            for i in range(gx):
                n = (k * gy + j) * gx + i
                w0, w1 = int(w[base + 2 * n]), int(w[base + 2 * n + 1])
                table, bits, vals = base + (w0 & 0xFFFFFF), w0 >> 24, base + w1
                for z in range(min(bz, sz - k * bz)):
                    for y in range(min(by, sy - j * by)):
                        for x in range(min(bx, sx - i * bx)):
                            ix = x + bx * (y + by * z)
                            e = ((int(w[vals + ix * bits // 32]) >> (ix * bits % 32)) & ((1 << bits) - 1)
                                 if bits else 0)
                            out[k * bz + z, j * by + y, i * bx + x] = \
                                int(w[table + 2 * e]) | (int(w[table + 2 * e + 1]) << 32)
    return out


# ---------------------------------------------------------------- the server
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    store = Dvid.init(tmp_path_factory.mktemp("volumes") / "store")
    repo = store.new_repo("vol", "voxel endpoint tests")
    root = store.node(repo.root)
    gray = store.new_instance(root, "gray", "grayscale", block_size=BS, voxel_size=(4.0, 4.0, 8.0))
    seg = store.new_instance(root, "seg", "labels", block_size=BS)
    G = _gray_source()
    L, ids = _seg_source()
    gray.write(root, GRAY_OFF, G)
    seg.write(root, SEG_OFF, L)
    seg.merge(root, int(ids[5]), [int(ids[2])])
    store.commit(root, "sources")
    child = store.branch(store.node(repo.root), "work")
    a, b = ids[5], ids[2]

    def mapped(v):
        return np.where(v == b, a, v)

    with served(store) as url:
        yield SimpleNamespace(url=url, store=store, root=repo.root, child=child.uuid, G=G, L=L,
                              M=mapped(L), mapped=mapped, ids=ids)
    store.close()


def api(env, name: str, path: str, node: str | None = None) -> str:
    return f"{env.url}/api/node/{node or env.root}/{name}/{path}"


def get(env, name, path, node=None, **kw) -> requests.Response:
    return requests.get(api(env, name, path, node), timeout=30, **kw)


def ok(r: requests.Response) -> requests.Response:
    assert r.status_code == 200, r.text
    return r


def bad(r: requests.Response, *words: str) -> str:
    assert r.status_code == 400, (r.status_code, r.content[:200])
    for w in words:
        assert w.lower() in r.text.lower(), r.text
    return r.text


# ---------------------------------------------------------------- uint8blk raw
@pytest.mark.parametrize("offset,size", [((-16, -8, 0), (64, 48, 32)), ((-21, -3, 5), (37, 19, 11)),
                                         ((40, 30, 20), (13, 25, 17)), ((-100, -100, -100), (5, 6, 7))])
def test_gray_3d_octets(env, offset, size):
    r = ok(get(env, "gray", f"raw/0_1_2/{'_'.join(map(str, size))}/{'_'.join(map(str, offset))}"))
    assert r.headers["Content-Type"] == "application/octet-stream"
    got = np.frombuffer(r.content, np.uint8).reshape(size[::-1])
    np.testing.assert_array_equal(got, expect(env.G, GRAY_OFF, offset, size))


PLANES = {"xy": (0, 1, 2), "0_1": (0, 1, 2), "xz": (0, 2, 1), "0_2": (0, 2, 1), "yz": (1, 2, 0),
          "1_2": (1, 2, 0)}


def _slice_expect(src, src_off, dims, w, h, offset):
    wa, ha, fixed = PLANES[dims]
    size = [1, 1, 1]
    size[wa], size[ha] = w, h
    return expect(src, src_off, offset, tuple(size)).reshape(h, w)  # one voxel thick: rows, columns


@pytest.mark.parametrize("dims", list(PLANES))
def test_gray_slices_every_plane(env, dims):
    offset, w, h = (-13, -5, 3), 41, 23
    want = _slice_expect(env.G, GRAY_OFF, dims, w, h, offset)
    base = f"raw/{dims}/{w}_{h}/{'_'.join(map(str, offset))}"
    for fmt in ("", "/png", "/tif", "/bmp"):
        r = ok(get(env, "gray", base + fmt))
        img = np.array(Image.open(io.BytesIO(r.content)))
        np.testing.assert_array_equal(img, want, err_msg=f"{dims} {fmt}")
    assert ok(get(env, "gray", base)).headers["Content-Type"] == "image/png"
    for fmt in ("/jpg", "/jpeg:95"):
        r = ok(get(env, "gray", base + fmt))
        assert r.headers["Content-Type"] == "image/jpeg"
        img = np.array(Image.open(io.BytesIO(r.content))).astype(int)
        diff = np.abs(img - want.astype(int))
        assert diff.mean() < 3 and diff.max() < 40, (fmt, diff.mean(), diff.max())


def test_gray_3d_jpeg_is_one_tall_image(env):
    """neuroglancer's uint8blk chunk: raw/0_1_2/64_64_64/x_y_z/jpeg, sx wide, sy*sz tall."""
    offset, size = (-16, -8, 0), (64, 48, 32)
    r = ok(get(env, "gray", "raw/0_1_2/64_48_32/-16_-8_0/jpeg"))
    assert r.headers["Content-Type"] == "image/jpeg"
    img = np.array(Image.open(io.BytesIO(r.content))).astype(int)
    assert img.shape == (48 * 32, 64)
    want = expect(env.G, GRAY_OFF, offset, size).reshape(48 * 32, 64).astype(int)
    diff = np.abs(img - want)
    assert diff.mean() < 3 and diff.max() < 40


def test_isotropic_stretches_coarse_axis(env):
    """gray voxels are 4 x 4 x 8: an xz slice of h rows covers h/2 z-planes, each shown twice."""
    offset, w, h = (-10, 4, 2), 30, 20
    r = ok(get(env, "gray", f"isotropic/xz/{w}_{h}/-10_4_2"))
    img = np.array(Image.open(io.BytesIO(r.content)))
    src = _slice_expect(env.G, GRAY_OFF, "xz", w, h // 2, offset)
    np.testing.assert_array_equal(img, src[np.arange(h) // 2])
    r = ok(get(env, "gray", f"isotropic/xy/{w}_{h}/-10_4_2"))   # square pixels already
    np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(r.content))),
                                  _slice_expect(env.G, GRAY_OFF, "xy", w, h, offset))
    r = ok(get(env, "seg", "isotropic/0_1_2/8_8_8/3_4_5"))    # 3-D: as raw
    np.testing.assert_array_equal(np.frombuffer(r.content, "<u8").reshape(8, 8, 8),
                                  expect(env.M, SEG_OFF, (3, 4, 5), (8, 8, 8)))


def test_head_raw(env):
    r = requests.head(api(env, "gray", "raw/0_1_2/10_10_10/0_0_0"), timeout=30)
    assert r.status_code == 200 and r.content == b"" and r.headers["Content-Length"] == "1000"
    assert requests.head(api(env, "gray", "raw/0_1_2/10_10/0_0_0"), timeout=30).status_code == 400


# ---------------------------------------------------------------- labelmap raw
@pytest.mark.parametrize("offset,size", [((0, 0, 0), (64, 48, 32)), ((-5, 7, -3), (29, 17, 13))])
def test_labels_3d_octets_and_compressions(env, offset, size):
    path = f"raw/0_1_2/{'_'.join(map(str, size))}/{'_'.join(map(str, offset))}"
    want = expect(env.M, SEG_OFF, offset, size)
    n = int(np.prod(size)) * 8
    r = ok(get(env, "seg", path))
    np.testing.assert_array_equal(np.frombuffer(r.content, "<u8").reshape(want.shape), want)
    r = ok(get(env, "seg", path, params={"compression": "lz4"}))
    raw = lz4.block.decompress(r.content, uncompressed_size=n)   # a raw lz4 block, no size prefix
    np.testing.assert_array_equal(np.frombuffer(raw, "<u8").reshape(want.shape), want)
    r = ok(get(env, "seg", path, params={"compression": "gzip"}))
    np.testing.assert_array_equal(np.frombuffer(gzip.decompress(r.content), "<u8").reshape(want.shape), want)
    r = ok(get(env, "seg", path, params={"compression": "google"}))
    assert "Content-Encoding" not in r.headers
    got = cseg.decompress(r.content, size, np.uint64, block_size=(8, 8, 8), order="F").T
    np.testing.assert_array_equal(got, want)
    r = ok(get(env, "seg", path, params={"compression": "googlegzip", "scale": "0"}))
    assert r.headers["Content-Encoding"] == "gzip"      # requests undid it, as browsers do
    got = cseg.decompress(r.content, size, np.uint64, block_size=(8, 8, 8), order="F").T
    np.testing.assert_array_equal(got, want)
    r = ok(get(env, "seg", path, params={"supervoxels": "true"}))
    np.testing.assert_array_equal(np.frombuffer(r.content, "<u8").reshape(want.shape),
                                  expect(env.L, SEG_OFF, offset, size))


def test_google_layout_matches_the_spec(env):
    """Block order x-fastest, voxels x-fastest, header word 1: decoded by hand."""
    r = ok(get(env, "seg", "raw/0_1_2/24_16_8/-4_10_3", params={"compression": "google"}))
    assert struct.unpack_from("<I", r.content)[0] == 1
    np.testing.assert_array_equal(decode_cseg(r.content, (24, 16, 8)),
                                  expect(env.M, SEG_OFF, (-4, 10, 3), (24, 16, 8)))


@pytest.mark.parametrize("dims", list(PLANES))
def test_label_png_every_plane(env, dims):
    offset, w, h = (-3, 5, 2), 37, 21
    r = ok(get(env, "seg", f"raw/{dims}/{w}_{h}/{'_'.join(map(str, offset))}"))
    assert r.headers["Content-Type"] == "image/png"
    np.testing.assert_array_equal(labels_of_png(r.content), _slice_expect(env.M, SEG_OFF, dims, w, h, offset))
    r = ok(get(env, "seg", f"raw/{dims}/{w}_{h}/{'_'.join(map(str, offset))}/png",
               params={"supervoxels": "true"}))
    np.testing.assert_array_equal(labels_of_png(r.content), _slice_expect(env.L, SEG_OFF, dims, w, h, offset))


def test_label_png_keeps_top_bits(env):
    top = env.ids[7]
    zz, yy, xx = np.argwhere(env.L == top)[0]
    r = ok(get(env, "seg", f"raw/xy/1_1/{xx}_{yy}_{zz}"))
    assert labels_of_png(r.content)[0, 0] == top


@pytest.mark.parametrize("scale", [1, 2])
def test_labels_scaled_equal_mode_of_source(env, scale):
    offset, size = (-2, 1, 0), (19, 14, 9)
    path = f"raw/0_1_2/{'_'.join(map(str, size))}/{'_'.join(map(str, offset))}"
    r = ok(get(env, "seg", path, params={"scale": scale, "supervoxels": "true"}))
    sv = expect_scaled(env.L, offset, size, scale)
    np.testing.assert_array_equal(np.frombuffer(r.content, "<u8").reshape(sv.shape), sv)
    r = ok(get(env, "seg", path, params={"scale": scale}))   # mapping after the mode, as DVID
    np.testing.assert_array_equal(np.frombuffer(r.content, "<u8").reshape(sv.shape), env.mapped(sv))
    r = ok(get(env, "seg", f"raw/xz/{size[0]}_{size[2]}/{offset[0]}_{offset[1]}_{offset[2]}",
               params={"scale": scale}))
    np.testing.assert_array_equal(labels_of_png(r.content), env.mapped(sv[:, 0, :]))


def test_pseudocolor(env):
    offset, w, h = (-4, 3, 7), 40, 30
    r = ok(get(env, "seg", f"pseudocolor/xy/{w}_{h}/-4_3_7"))
    assert r.headers["Content-Type"] == "image/png"
    rgb = np.array(Image.open(io.BytesIO(r.content)))
    labels = _slice_expect(env.M, SEG_OFF, "xy", w, h, offset)
    assert rgb.shape == (h, w, 3)
    assert (rgb[labels == 0] == 0).all() and (rgb[labels != 0].max(axis=1) > 0).all()
    for lab in np.unique(labels):          # one colour per label
        assert len(np.unique(rgb[labels == lab], axis=0)) == 1
    np.testing.assert_array_equal(rgb, label_colors(labels))   # the documented colour rule
    bad(get(env, "seg", "pseudocolor/0_1_2/4_4_4/0_0_0"), "2-D")


# ---------------------------------------------------------------- label points
def test_label_and_labels(env):
    rng = np.random.default_rng(7)
    pts = rng.integers([-10, -10, -10], [74, 58, 42], size=(10_000, 3))
    padded_off = (-10, -10, -10)
    padded = expect(env.M, SEG_OFF, padded_off, (84, 68, 52))
    want = padded[pts[:, 2] + 10, pts[:, 1] + 10, pts[:, 0] + 10]
    body = json.dumps(pts.tolist())
    r = ok(get(env, "seg", "labels", data=body))
    assert r.json() == want.tolist()
    r = ok(get(env, "seg", "labels", data=body, params={"hash": hashlib.md5(body.encode()).hexdigest()}))
    assert r.json() == want.tolist()
    bad(get(env, "seg", "labels", data=body, params={"hash": "0" * 32}), "hash")
    sv = ok(get(env, "seg", "labels", data=body, params={"supervoxels": "true"})).json()
    assert sv == expect(env.L, SEG_OFF, padded_off, (84, 68, 52))[pts[:, 2] + 10, pts[:, 1] + 10,
                                                                   pts[:, 0] + 10].tolist()
    x, y, z = (int(v) for v in pts[0])
    assert ok(get(env, "seg", f"label/{x}_{y}_{z}")).json() == {"Label": int(want[0])}
    merged = np.argwhere(env.L == env.ids[2])[0]
    z, y, x = (int(v) for v in merged)
    assert get(env, "seg", f"label/{x}_{y}_{z}").json() == {"Label": int(env.ids[5])}
    assert get(env, "seg", f"label/{x}_{y}_{z}", params={"supervoxels": "true"}).json() == \
        {"Label": int(env.ids[2])}
    assert ok(get(env, "seg", "labels", data="[]")).json() == []


@pytest.mark.parametrize("scale", [1, 2])
def test_labels_scaled_points(env, scale):
    size = tuple(s >> scale for s in SHAPE[::-1])
    sv = expect_scaled(env.L, (0, 0, 0), size, scale)
    pts = [[x, y, z] for z in range(0, size[2], 3) for y in range(0, size[1], 2) for x in range(size[0])]
    r = ok(get(env, "seg", "labels", data=json.dumps(pts), params={"scale": scale}))
    assert r.json() == [int(env.mapped(sv[z, y, x])) for x, y, z in pts]
    x, y, z = pts[-1]
    assert get(env, "seg", f"label/{x}_{y}_{z}", params={"scale": scale, "supervoxels": "true"}).json() \
        == {"Label": int(sv[z, y, x])}


# ---------------------------------------------------------------- block streams
def _gray_block(env, b):
    return expect(env.G, GRAY_OFF, tuple(c * BS for c in b), (BS, BS, BS))


def test_gray_subvolblocks(env):
    r = ok(get(env, "gray", "subvolblocks/64_48_32/-32_-16_0"))
    recs = parse_records(r.content)
    coords = [c for c, _ in recs]
    # stored blocks only (the source covers x -16..47, y -8..39, z 0..31), ZYX order
    assert coords == [(x, y, z) for z in range(0, 2) for y in range(-1, 2) for x in range(-1, 2)]
    for c, payload in recs:   # DVID's lz4 framing: uint32 length + lz4 block
        assert struct.unpack_from("<I", payload)[0] == BS ** 3
        got = np.frombuffer(lz4.block.decompress(payload), np.uint8).reshape(BS, BS, BS)
        np.testing.assert_array_equal(got, _gray_block(env, c))
    r = ok(get(env, "gray", "subvolblocks/16_16_16/-16_-16_16", params={"compression": "uncompressed"}))
    [(c, payload)] = parse_records(r.content)
    assert c == (-1, -1, 1)
    np.testing.assert_array_equal(np.frombuffer(payload, np.uint8).reshape(BS, BS, BS), _gray_block(env, c))
    assert ok(get(env, "gray", "subvolblocks/16_16_16/320_0_0")).content == b""
    bad(get(env, "gray", "subvolblocks/16_16_16/8_0_0"), "multiples")
    bad(get(env, "gray", "subvolblocks/20_16_16/0_0_0"), "multiples")
    bad(get(env, "gray", "subvolblocks/16_16_16/0_0_0", params={"compression": "jpeg"}), "jpeg")


def test_gray_specificblocks(env):
    r = ok(get(env, "gray", "specificblocks", params={"blocks": "2,1,0,-1,-1,1,9,9,9,0,0,0",
                                                    "compression": "uncompressed"}))
    recs = parse_records(r.content)
    assert [c for c, _ in recs] == [(2, 1, 0), (-1, -1, 1), (0, 0, 0)]   # asked order, absent left out
    for c, payload in recs:
        np.testing.assert_array_equal(np.frombuffer(payload, np.uint8).reshape(BS, BS, BS), _gray_block(env, c))
    r = ok(get(env, "gray", "specificblocks", params={"blocks": "1,1,1"}))
    [(c, payload)] = parse_records(r.content)
    np.testing.assert_array_equal(np.frombuffer(lz4.block.decompress(payload), np.uint8).reshape(BS, BS, BS),
                                  _gray_block(env, c))
    assert ok(get(env, "gray", "specificblocks")).content == b""
    bad(get(env, "gray", "specificblocks", params={"blocks": "1,2"}), "three")
    bad(get(env, "gray", "specificblocks", params={"blocks": "1,a,2"}), "integers")


def _seg_block(src, b):
    return expect(src, SEG_OFF, tuple(c * BS for c in b), (BS, BS, BS))


def _decode_label_payload(payload: bytes, compression: str) -> np.ndarray:
    if compression == "blocks":
        return decode_dvid_label_block(gzip.decompress(payload))
    if compression == "lz4":
        raw = lz4.block.decompress(payload, uncompressed_size=BS ** 3 * 8)
    elif compression == "gzip":
        raw = gzip.decompress(payload)
    else:
        raw = payload
    return np.frombuffer(raw, "<u8").reshape(BS, BS, BS)


@pytest.mark.parametrize("compression", ["", "lz4", "gzip", "uncompressed", "blocks"])
def test_label_blocks(env, compression):
    params = {"compression": compression} if compression else {}
    r = ok(get(env, "seg", "blocks/64_32_32/-16_16_0", params=params))
    recs = parse_records(r.content)
    assert [c for c, _ in recs] == [(x, y, z) for z in range(2) for y in range(1, 3) for x in range(3)]
    kind = compression or "lz4"
    for c, payload in recs:
        np.testing.assert_array_equal(_decode_label_payload(payload, kind), _seg_block(env.M, c))
    r = ok(get(env, "seg", "blocks/32_16_16/0_0_16", params={**params, "supervoxels": "true"}))
    recs = parse_records(r.content)
    assert [c for c, _ in recs] == [(0, 0, 1), (1, 0, 1)]
    for c, payload in recs:
        np.testing.assert_array_equal(_decode_label_payload(payload, kind), _seg_block(env.L, c))


@pytest.mark.parametrize("compression", ["", "uncompressed", "lz4"])
def test_label_specificblocks(env, compression):
    params = {"blocks": "3,2,1,0,0,0,-1,0,0,1,1,0"}
    if compression:
        params["compression"] = compression
    recs = parse_records(ok(get(env, "seg", "specificblocks", params=params)).content)
    assert [c for c, _ in recs] == [(3, 2, 1), (0, 0, 0), (1, 1, 0)]
    for c, payload in recs:   # default: DVID label blocks, gzip'd
        np.testing.assert_array_equal(_decode_label_payload(payload, compression or "blocks"),
                                      _seg_block(env.M, c))


def test_label_blocks_scaled(env):
    """Scale-1 blocks: 16³ voxels of level 1 each, the mode of level 0 under them."""
    recs = parse_records(ok(get(env, "seg", "specificblocks", params={
        "blocks": "0,0,0,1,1,0,5,5,5", "scale": "1", "compression": "uncompressed"})).content)
    assert [c for c, _ in recs] == [(0, 0, 0), (1, 1, 0)]
    for c, payload in recs:
        want = expect_scaled(env.L, tuple(v * BS for v in c), (BS, BS, BS), 1, env.mapped)
        np.testing.assert_array_equal(_decode_label_payload(payload, "uncompressed"), want)
    recs = parse_records(ok(get(env, "seg", "blocks/32_32_16/0_0_0",
                                params={"scale": "1", "supervoxels": "true"})).content)
    assert [c for c, _ in recs] == [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)]
    for c, payload in recs:
        want = expect_scaled(env.L, tuple(v * BS for v in c), (BS, BS, BS), 1)
        np.testing.assert_array_equal(_decode_label_payload(payload, "lz4"), want)
    bad(get(env, "seg", "blocks/16_16_16/0_0_0", params={"scale": "9"}), "scale")


# ---------------------------------------------------------------- POST raw and extents
def _child_instance(env, name, typename):
    node = env.store.node(env.child)
    return env.store.new_instance(node, name, typename, block_size=BS), node


def test_post_gray_raw_then_get(env):
    data, node = _child_instance(env, "gpost", "grayscale")
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 256, (13, 21, 30), dtype=np.uint8)
    url = api(env, "gpost", "raw/0_1_2/30_21_13/-7_5_-3", env.child)
    ok(requests.post(url, data=arr.tobytes(), timeout=30))
    r = ok(get(env, "gpost", "raw/0_1_2/40_30_20/-10_0_-5", env.child))
    np.testing.assert_array_equal(np.frombuffer(r.content, np.uint8).reshape(20, 30, 40),
                                  expect(arr, (-7, 5, -3), (-10, 0, -5), (40, 30, 20)))
    before = data.read(node, (-10, 0, -5), (40, 30, 20))
    bad(requests.post(url, data=arr.tobytes()[:-1], timeout=30), "bytes")
    bad(requests.post(api(env, "gpost", "raw/xy/30_21/0_0_0", env.child), data=b"x" * 630, timeout=30), "3-D")
    bad(requests.post(api(env, "gpost", "raw/0_1_2/30_21/0_0_0", env.child), data=arr.tobytes(), timeout=30))
    bad(requests.post(api(env, "gpost", "raw/0_1_2/30_21_13/0_a_0", env.child), data=arr.tobytes(), timeout=30),
        "offset")
    bad(requests.post(api(env, "gpost", "raw/0_1_2/100000_100000_100000/0_0_0", env.child), data=b"1",
                      timeout=30), "bytes")
    bad(requests.post(api(env, "gpost", "raw/0_1_2/30_21_13/-7_5_-3", env.child), data=b"1",
                      params={"compression": "lz4"}, timeout=30), "lz4")
    np.testing.assert_array_equal(data.read(node, (-10, 0, -5), (40, 30, 20)), before)


@pytest.mark.parametrize("compression", ["", "lz4", "gzip"])
def test_post_labels_raw_then_get(env, compression):
    name = f"spost{compression}"
    data, node = _child_instance(env, name, "labels")
    rng = np.random.default_rng(4)
    arr = rng.integers(0, 5, (17, 20, 33)).astype(np.uint64) * np.uint64(1 << 35)
    body = arr.astype("<u8").tobytes()
    if compression == "lz4":
        body = lz4.block.compress(body, store_size=False)
    elif compression == "gzip":
        body = gzip.compress(body)
    params = {"compression": compression} if compression else {}
    ok(requests.post(api(env, name, "raw/0_1_2/33_20_17/5_-9_2", env.child), data=body, params=params,
                     timeout=30))
    r = ok(get(env, name, "raw/0_1_2/33_20_17/5_-9_2", env.child))
    np.testing.assert_array_equal(np.frombuffer(r.content, "<u8").reshape(arr.shape), arr)
    before = data.read(node, (5, -9, 2), (33, 20, 17))
    bad(requests.post(api(env, name, "raw/0_1_2/33_20_16/5_-9_2", env.child), data=body, params=params,
                      timeout=30))
    np.testing.assert_array_equal(data.read(node, (5, -9, 2), (33, 20, 17)), before)


def test_writes_to_a_committed_node_are_refused(env):
    gray = env.store.data(env.store.node(env.root), "gray")
    before = gray.read(env.store.node(env.root), (0, 0, 0), (16, 16, 16))
    bad(requests.post(api(env, "gray", "raw/0_1_2/16_16_16/0_0_0"), data=b"\x07" * 4096, timeout=30), "locked")
    bad(requests.post(api(env, "gray", "extents"), json={"MinPoint": [0, 0, 0], "MaxPoint": [1, 1, 1]},
                      timeout=30), "locked")
    np.testing.assert_array_equal(gray.read(env.store.node(env.root), (0, 0, 0), (16, 16, 16)), before)


def test_post_extents(env):
    _child_instance(env, "gext", "grayscale")
    ok(requests.post(api(env, "gext", "extents", env.child),
                     json={"MinPoint": [-5, 0, 3], "MaxPoint": [100, 200, 300]}, timeout=30))
    info = ok(get(env, "gext", "info", env.child)).json()
    assert info["Extended"]["MinPoint"] == [-5, 0, 3] and info["Extended"]["MaxPoint"] == [100, 200, 300]
    bad(requests.post(api(env, "gext", "extents", env.child), json={"MinPoint": [0, 0], "MaxPoint": [1, 1, 1]},
                      timeout=30), "MinPoint")
    bad(requests.post(api(env, "gext", "extents", env.child), json={"MinPoint": [5, 0, 0],
                                                                    "MaxPoint": [1, 1, 1]}, timeout=30))


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("name,path,words", [
    ("gray", "raw/0_1_2/10_10/0_0_0", ["size"]),
    ("gray", "raw/0_1_2/10_10_x/0_0_0", ["size"]),
    ("gray", "raw/0_1_2/10_10_10/0_0", ["offset"]),
    ("gray", "raw/0_1_2/1.5_10_10/0_0_0", ["size"]),
    ("gray", "raw/0_1_2/0_10_10/0_0_0", ["positive"]),
    ("gray", "raw/xw/10_10/0_0_0", ["shape"]),
    ("gray", "raw/xy/10_10_10/0_0_0", ["size"]),
    ("gray", "raw/xy/10_10/0_0_0/gif", ["format"]),
    ("gray", "raw/0_1_2/10_10_10/0_0_0/png", ["jpeg"]),
    ("gray", "raw/xy/10_10", ["dims"]),
    ("gray", "raw/0_1_2/100000_100000_100000/0_0_0", ["limit"]),
    ("seg", "raw/xy/100000_100000/0_0_0", ["limit"]),
    ("seg", "raw/0_1_2/10_10_10/0_0_0?compression=zip", ["compression"]),
    ("seg", "raw/0_1_2/10_10_10/0_0_0?scale=7", ["scale"]),
    ("seg", "raw/0_1_2/10_10_10/0_0_0?scale=x", ["scale"]),
    ("seg", "raw/xy/10_10/0_0_0/jpg", ["png"]),
    ("seg", "blocks/16_16_16/0_0_0?compression=zip", ["compression"]),
    ("seg", "blocks/16000000_16000000_16000/0_0_0", ["limit"]),
    ("seg", "label/1_2", ["coordinate"]),
    ("seg", "raw/0_1_2/10_10_10/0_0_0?roi=r", ["roi"]),
])
def test_bad_requests_are_400(env, name, path, words):
    bad(get(env, name, path), *words)


def test_bad_labels_bodies(env):
    bad(get(env, "seg", "labels"), "body")
    bad(get(env, "seg", "labels", data="[[1,2]]"), "point")
    bad(get(env, "seg", "labels", data="[[1,true,2]]"), "point")
    bad(get(env, "seg", "labels", data="[[1,2.5,2]]"), "point")
    bad(get(env, "seg", "labels", data="[[1,2,3],[4,5]]"), "point")
    bad(get(env, "seg", "labels", data='[[1,2,"a"]]'), "point")
    bad(get(env, "seg", "labels", data="{"), "json")
    bad(get(env, "seg", "labels", data="[[1, 2, 99999999999999999999]]"), "range")
    bad(get(env, "seg", "label/1_2_99999999999999999999"), "range")
