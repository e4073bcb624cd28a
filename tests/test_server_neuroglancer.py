"""neuroglancer's `dvid://` data source against a live `dvidfs serve`.

Part 1 replays, with `requests`, exactly what the browser client (neuroglancer
2.41, src/datasource/dvid) sends: GET /api/repos/info (its only metadata call,
parsed here with the same rules), then 64³ chunk requests with `app=Neuroglancer`:

    uint8blk (Compression without "jpeg"):  raw/0_1_2/64_64_64/<x>_<y>_<z>/jpeg
    labelmap:  raw/0_1_2/64_64_64/<x>_<y>_<z>?compression=googlegzip&scale=<s>

Chunks are decoded as the browser does (Pillow for the JPEG; gzip undone via
Content-Encoding, then the PyPI compressed-segmentation decoder) and compared
with numpy on the sample: gray within JPEG tolerance, labels exactly, scales
above 0 against an independent 2x mode downsampling (clients_support.ref_halve).

Part 2 (two tests, skipped when the tools are missing) runs the real
neuroglancer client -- the static build in the `neuroglancer` PyPI wheel, which
expects neuroglancer's Python server, so a stub serves it under /v/<token>/ and
answers its credentials request -- in headless Chromium (software WebGL via
SwiftShader), pointed at `dvid://http://127.0.0.1:PORT/<uuid>/grayscale` and
`.../segmentation`, and checks the screenshots against the sample.
Needs: `apt-get install chromium` and `pip install --no-deps neuroglancer`
(or NEUROGLANCER_CLIENT_DIR=<dir with index.html>).
"""
from __future__ import annotations

import gzip
import http.server
import io
import json
import os
import shutil
import threading
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from chromium_cdp import Chromium, ChromiumError
from clients_support import SIZE_XYZ, World, decode_compressed_segmentation, padded_box, served_world

cseg = pytest.importorskip("compressed_segmentation", reason="pip install compressed-segmentation")

CHUNK = 64
APP = {"app": "Neuroglancer"}
ORIGIN = {"Origin": "http://neuroglancer.example"}   # the browser's cross-origin fetch


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    yield from served_world(tmp_path_factory.mktemp("ng") / "store")


@pytest.fixture(scope="module")
def repos_info(world):
    r = requests.get(world.url + "/api/repos/info", params=APP, headers=ORIGIN, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers.get("Access-Control-Allow-Origin") in ("*", ORIGIN["Origin"])
    return r.json()


# ------------------------------------------------------------------ neuroglancer's parsing, in Python

NG_TYPES = {"uint8blk": "image", "grayscale8": "image", "labelblk": "seg", "labels64": "seg",
            "labelarray": "multiscale-seg", "labelmap": "multiscale-seg"}


def ng_repositories(info: dict) -> dict:
    """neuroglancer's ServerInfo: repo objects keyed by root UUID *and* by every
    DAG node UUID (getNode then needs exactly one key with the given prefix)."""
    assert isinstance(info, dict)
    repos = {}
    for root, repo in info.items():
        assert isinstance(repo["Alias"], str) and isinstance(repo["Description"], str)
        assert isinstance(repo["DataInstances"], dict)
        nodes = repo["DAG"]["Nodes"]
        assert isinstance(nodes, dict)
        repos[root] = repo
        for uuid in nodes:
            repos[uuid] = repo
    return repos


def ng_get_node(repos: dict, key: str) -> dict:
    matches = [k for k in repos if k.startswith(key)]
    assert len(matches) == 1, f"node key {key!r} matches {matches}"
    return repos[matches[0]]


def positive_triple(v) -> list[float]:
    assert isinstance(v, list) and len(v) == 3, v
    assert all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in v), v
    return v


def int_triple(v) -> list[int]:
    assert isinstance(v, list) and len(v) == 3 and all(isinstance(x, int) and not isinstance(x, bool) for x in v), v
    return v


def ng_instance(inst: dict) -> dict:
    """What neuroglancer's DataInstanceInfo constructor reads (it rejects the
    instance when any of it is missing or malformed)."""
    base, ext = inst["Base"], inst["Extended"]
    kind = NG_TYPES.get(base["TypeName"])
    assert kind is not None, f"TypeName {base['TypeName']!r} is 'not supported' by neuroglancer"
    assert isinstance(base["Compression"], str)
    values = ext["Values"]
    assert isinstance(values, list) and len(values) >= 1
    assert values[0]["DataType"] in ("uint8", "uint32", "uint64")
    out = {"kind": kind, "jpeg": "jpeg" in base["Compression"], "dtype": values[0]["DataType"],
           "voxel": positive_triple(ext["VoxelSize"]), "block": positive_triple(ext["BlockSize"]),
           "lo": int_triple(ext["MinPoint"]), "hi": int_triple(ext["MaxPoint"]), "levels": 1}
    if kind == "multiscale-seg":
        m = ext["MaxDownresLevel"]
        assert isinstance(m, int) and not isinstance(m, bool) and m > 0, f"MaxDownresLevel {m!r} must be a positive int"
        out["levels"] = m + 1
    return out


def ng_chunk_grid(lo, hi, level: int) -> list[tuple[int, int, int]]:
    """Chunk offsets (level voxels) neuroglancer asks for: bounds scaled to the
    level, rounded out to multiples of 64, then a 64³ grid."""
    f = 2.0 ** -level
    lower = [int(np.floor(l * f)) // CHUNK * CHUNK for l in lo]
    upper = [int(np.ceil((h + 1) * f)) for h in hi]
    upper = [u + (-u) % CHUNK for u in upper]
    axes = [range(a, b, CHUNK) for a, b in zip(lower, upper)]
    return [(x, y, z) for z in axes[2] for y in axes[1] for x in axes[0]]


# ------------------------------------------------------------------ metadata

def test_repos_info_has_what_neuroglancer_requires(world, repos_info):
    repos = ng_repositories(repos_info)
    assert set(repos) == {world.root, world.child, world.side}
    repo = ng_get_node(repos, world.child[:6])
    assert repo["Alias"] == "sample"
    insts = {name: ng_instance(i) for name, i in repo["DataInstances"].items()}
    g, s = insts["grayscale"], insts["segmentation"]
    assert g["kind"] == "image" and g["dtype"] == "uint8" and not g["jpeg"]
    assert s["kind"] == "multiscale-seg" and s["dtype"] == "uint64"
    for i in (g, s):
        assert i["lo"] == [0, 0, 0] and i["hi"] == [n - 1 for n in SIZE_XYZ]
        assert i["voxel"] == [8, 8, 8]
    assert s["block"] == [64, 64, 64]
    assert s["levels"] >= 2


def test_every_node_uuid_is_a_usable_node_key(world, repos_info):
    repos = ng_repositories(repos_info)
    for uuid in (world.root, world.child, world.side):
        assert ng_get_node(repos, uuid)["Root"] == world.root
    with pytest.raises(AssertionError):
        ng_get_node(repos, "")                       # ambiguous: neuroglancer refuses it too


# ------------------------------------------------------------------ grayscale chunks

def get_jpeg_chunk(world: World, node: str, xyz, stored_jpeg: bool = False) -> np.ndarray:
    """A 64³ grayscale chunk the way neuroglancer fetches it: `raw/.../jpeg`, or,
    when the instance's Compression says "jpeg", `subvolblocks` with the
    16-byte record header cut off."""
    x, y, z = xyz
    if stored_jpeg:
        url = f"{world.url}/api/node/{node}/grayscale/subvolblocks/64_64_64/{x}_{y}_{z}"
    else:
        url = f"{world.url}/api/node/{node}/grayscale/raw/0_1_2/64_64_64/{x}_{y}_{z}/jpeg"
    r = requests.get(url, params=APP, headers=ORIGIN, timeout=30)
    assert r.status_code == 200, (xyz, r.status_code, r.text[:200])
    assert r.headers.get("Access-Control-Allow-Origin") in ("*", ORIGIN["Origin"])
    im = Image.open(io.BytesIO(r.content[16:] if stored_jpeg else r.content))
    assert im.format == "JPEG"
    assert im.size == (CHUNK, CHUNK * CHUNK), im.size   # sx wide, sy*sz tall
    a = np.asarray(im.convert("L"))
    return a.reshape(CHUNK, CHUNK, CHUNK)               # z, y, x


def test_grayscale_jpeg_chunks_match_the_sample(world, repos_info):
    key = world.child[:7]                               # the node key as typed in the dvid:// URL
    inst = ng_instance(ng_get_node(ng_repositories(repos_info), key)["DataInstances"]["grayscale"])
    grid = ng_chunk_grid(inst["lo"], inst["hi"], 0)
    assert len(grid) == 4
    for off in grid:
        got = get_jpeg_chunk(world, key, off, inst["jpeg"]).astype(np.float64)
        want = padded_box(world.gray, off, (CHUNK,) * 3).astype(np.float64)
        err = np.abs(got - want)
        assert err.mean() < 8, (off, err.mean())
        assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.9, off
        # each z plane in its place (a plane off by one correlates far less)
        assert np.abs(got[1:] - want[1:]).mean() < np.abs(got[1:] - want[:-1]).mean() / 1.5


def test_grayscale_jpeg_chunk_outside_the_volume_is_black(world):
    for off in ((-64, 0, 0), (0, 128, 0), (64, 64, 64)):
        got = get_jpeg_chunk(world, world.child, off)       # the raw/.../jpeg form
        assert got.max() <= 8, (off, got.max())


# ------------------------------------------------------------------ label chunks

def get_label_chunk(world: World, node: str, xyz, scale: int) -> requests.Response:
    x, y, z = xyz
    return requests.get(f"{world.url}/api/node/{node}/segmentation/raw/0_1_2/64_64_64/{x}_{y}_{z}",
                        params={"compression": "googlegzip", "scale": scale, **APP},
                        headers=ORIGIN, timeout=30, stream=True)


def decode_label_chunk(r: requests.Response) -> np.ndarray:
    """As the browser: gzip undone because of Content-Encoding, then
    compressed_segmentation (one channel, 8³ blocks) -> [z, y, x] uint64,
    read by clients_support's own reader and by the PyPI decoder."""
    assert r.status_code == 200, (r.url, r.status_code, r.text[:200])
    assert r.headers.get("Content-Encoding") == "gzip", r.headers
    assert r.headers.get("Access-Control-Allow-Origin") in ("*", ORIGIN["Origin"])
    wire = r.raw.read(decode_content=False)
    assert wire[:2] == b"\x1f\x8b", "body is not gzip although Content-Encoding says so"
    payload = gzip.decompress(wire)
    assert len(payload) % 4 == 0
    ours = decode_compressed_segmentation(payload, (CHUNK,) * 3)
    # the PyPI decoder (neuroglancer's reference implementation) must read it alike
    lib = cseg.decompress(payload, (CHUNK, CHUNK, CHUNK), np.uint64, block_size=(8, 8, 8))
    assert np.array_equal(ours, lib.transpose(2, 1, 0)), "compressed_segmentation readers disagree"
    return ours


def test_label_chunks_match_the_sample_at_every_scale(world, repos_info):
    inst = ng_instance(ng_get_node(ng_repositories(repos_info), world.child)["DataInstances"]["segmentation"])
    levels = inst["levels"]
    # the sample's sides are multiples of 2^5: the reference pyramid has no ragged groups
    for node, key in ((world.child, world.child), (world.root, world.root[:9])):
        for scale in range(min(levels, 6)):
            want_level = world.level(node, scale)
            grid = ng_chunk_grid(inst["lo"], inst["hi"], scale)
            for off in grid:
                got = decode_label_chunk(get_label_chunk(world, key, off, scale))
                want = padded_box(want_level, off, (CHUNK,) * 3)
                bad = got != want
                assert not bad.any(), (
                    f"node {node[:6]} scale {scale} chunk {off}: {int(bad.sum())} voxels differ, "
                    f"first at zyx {np.argwhere(bad)[0].tolist()}: got {got[bad][0]} want {want[bad][0]}")


def test_label_chunk_scale0_sees_the_merge(world):
    """At the child the merged supervoxel reads as its body, at the root as itself."""
    zyx = np.argwhere(world.sv == world.merged_away)[0]
    off = tuple(int(c) // CHUNK * CHUNK for c in zyx[::-1])
    local = tuple(int(c) - o for c, o in zip(zyx, off[::-1]))
    assert decode_label_chunk(get_label_chunk(world, world.child, off, 0))[local] == world.big
    assert decode_label_chunk(get_label_chunk(world, world.root, off, 0))[local] == world.merged_away


def test_label_chunk_outside_the_volume(world):
    """DVID answers a single block-aligned `compression=` read of an absent block
    with 400 (labelmap sendCompressedBlock: "unable to get label block"); a
    server may instead send the block as background.  Either way: never labels."""
    for off, scale in (((-64, 0, 0), 0), ((0, 0, 64), 0), ((128, 0, 0), 0), ((64, 0, 0), 1)):
        r = get_label_chunk(world, world.child, off, scale)
        if r.status_code == 400:
            continue
        got = decode_label_chunk(r)
        assert not got.any(), (off, scale)


def test_label_chunk_beyond_max_downres_level(world, repos_info):
    """Past MaxDownresLevel DVID has no stored blocks, so a single-block
    `compression=` read answers 400; a server computing levels on demand may
    answer with that level instead, but then it must be the right one."""
    inst = ng_instance(ng_get_node(ng_repositories(repos_info), world.child)["DataInstances"]["segmentation"])
    scale = inst["levels"]                      # MaxDownresLevel + 1
    r = get_label_chunk(world, world.child, (0, 0, 0), scale)
    if r.status_code != 400:
        want = world.level(world.child, scale) if scale <= 6 else None
        got = decode_label_chunk(r)
        assert want is not None and np.array_equal(got, padded_box(want, (0, 0, 0), (CHUNK,) * 3))
    r = get_label_chunk(world, world.child, (0, 0, 0), 40)
    assert r.status_code == 400, (r.status_code, r.text[:200])


# ================================================================== headless Chromium (stretch)

def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


def _neuroglancer_client() -> Path | None:
    """The built static client shipped in the `neuroglancer` wheel
    (neuroglancer/static/client/index.html): NEUROGLANCER_CLIENT_DIR, or the
    installed package (`pip install --no-deps neuroglancer`; found without
    importing it, so its own dependencies are not needed)."""
    env = os.environ.get("NEUROGLANCER_CLIENT_DIR")
    if env:
        p = Path(env)
        return p if (p / "index.html").is_file() else None
    import importlib.util
    try:
        spec = importlib.util.find_spec("neuroglancer")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "static" / "client"
    return p if (p / "index.html").is_file() else None


TOKEN = "dvidfs-test"


def _client_handler(root: Path):
    """The wheel's client is the build for neuroglancer's Python server: it must
    be served under /v/<token>/ and asks that server for data-source
    credentials (POST /credentials/<token>, here "no token") and for state
    updates (GET /events/<token>, here 404: it retries and keeps the URL state)."""

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *args):
            pass

        def translate_path(self, path):
            p = path.split("?", 1)[0].split("#", 1)[0]
            prefix = f"/v/{TOKEN}/"
            if not p.startswith(prefix):
                return str(root / "__nothing_here__")
            return super().translate_path("/" + p[len(prefix):])

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.startswith(f"/credentials/{TOKEN}"):
                body = b'{"generation": 1, "credentials": {}}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_error(404)

    return Handler


@pytest.fixture
def static_client():
    root = _neuroglancer_client()
    if root is None:
        pytest.skip("the neuroglancer static client is not available: `pip install --no-deps neuroglancer` "
                    "(its wheel ships neuroglancer/static/client) or set NEUROGLANCER_CLIENT_DIR")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _client_handler(root))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v/{TOKEN}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _yellow_box(img: np.ndarray) -> tuple[int, int, int, int] | None:
    """Inside of the volume's bounding box, drawn by neuroglancer as yellow lines
    (rows/columns with many yellow pixels; the yellow "y" of the top bar is not one)."""
    r, g, b = (img[..., i].astype(int) for i in range(3))
    yellow = (r > 200) & (g > 200) & (b < 90)
    rows = np.nonzero(yellow.sum(axis=1) > 100)[0]
    cols = np.nonzero(yellow.sum(axis=0) > 100)[0]
    if len(rows) < 2 or len(cols) < 2:
        return None
    return rows.min(), rows.max(), cols.min(), cols.max()


# every layer's data source resolved and every panel drawing from chunks in GPU
# memory (neuroglancer's own Display.isReady / ManagedUserLayer.isReady, as its
# Python screenshot tool waits for them)
NEUROGLANCER_READY = """(() => {
  const v = window.viewer;
  if (!v) return false;
  const layers = v.layerManager.managedLayers;
  return layers.length > 0 && layers.every(l => l.isReady()) && v.display.isReady();
})()"""


def _screenshot(world: World, client_url: str, tmp_path: Path, layer: dict, z: int) -> np.ndarray:
    """Run neuroglancer in headless Chromium on one layer, xy view of plane z at
    4 screen pixels per voxel; return the part of the screenshot inside the
    volume's yellow bounds, resampled to one pixel per voxel ([y, x, rgb])."""
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium binary (Debian: apt-get install chromium)")
    state = {
        "dimensions": {"x": [8e-9, "m"], "y": [8e-9, "m"], "z": [8e-9, "m"]},
        "position": [SIZE_XYZ[0] / 2, SIZE_XYZ[1] / 2, z + 0.5],
        "crossSectionScale": 0.25,
        "layers": [layer],
        "layout": "xy",
        "showAxisLines": False,
        "showScaleBar": False,
    }
    url = client_url + "#!" + urllib.parse.quote(json.dumps(state, separators=(",", ":")))
    with Chromium(browser, tmp_path / "profile") as chromium:
        try:
            png, _ = chromium.screenshot(url, NEUROGLANCER_READY)
        except ChromiumError as e:
            chromium.close()
            pytest.fail(f"{e}; chromium said:\n{chromium.stderr_tail()}")
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    box = _yellow_box(img)
    assert box is not None, "no volume bounds drawn although neuroglancer said it was ready"
    y0, y1, x0, x1 = box
    assert min(y1 - y0, x1 - x0) > 400, box
    inside = Image.fromarray(img[y0 + 2:y1 - 1, x0 + 2:x1 - 1])
    return np.asarray(inside.resize(SIZE_XYZ[:2], Image.NEAREST)).astype(np.int64)


def test_chromium_screenshot_shows_the_grayscale(world, static_client, tmp_path):
    """Headless Chromium runs the real neuroglancer client on a dvid:// image
    source: the xy panel inside the volume's bounds must be the sample's slice."""
    z = 32
    rgb = _screenshot(world, static_client, tmp_path,
                      {"type": "image", "name": "gray", "source": f"dvid://{world.url}/{world.child}/grayscale"}, z)
    inside = rgb.mean(axis=2)
    assert inside.std() > 15, f"the panel is blank (std {inside.std():.1f})"
    corr = {k: np.corrcoef(inside.ravel(), world.gray[k].astype(np.float64).ravel())[0, 1]
            for k in (z, z - 1, z + 1, z - 16)}
    # the right slice, the right way round: far better than its neighbours
    assert corr[z] > 0.9 and corr[z] > max(corr[z - 1], corr[z + 1]) + 0.05, corr


def test_chromium_screenshot_shows_the_segmentation(world, static_client, tmp_path):
    """The same for the labelmap (googlegzip chunks decoded by the browser):
    one colour per body, different bodies in different colours, and the body
    merged at the child drawn in its target's colour."""
    both = [min((world.sv[k] == world.big).sum(), (world.sv[k] == world.merged_away).sum())
            for k in range(SIZE_XYZ[2])]
    z = int(np.argmax(both))
    assert both[z] > 100
    rgb = _screenshot(world, static_client, tmp_path,
                      {"type": "segmentation", "name": "seg",
                       "source": f"dvid://{world.url}/{world.child}/segmentation"}, z)
    color = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    sv = world.sv[z]
    lab = world.bodies(world.child)[z]
    # voxels whose 4 neighbours carry the same supervoxel: no edge blending there
    p = np.pad(sv, 1, mode="edge")
    interior = ((p[1:-1, 1:-1] == p[:-2, 1:-1]) & (p[1:-1, 1:-1] == p[2:, 1:-1])
                & (p[1:-1, 1:-1] == p[1:-1, :-2]) & (p[1:-1, 1:-1] == p[1:-1, 2:]))
    body_color = {}
    for body in np.unique(lab):
        c = color[(lab == body) & interior]
        if len(c) < 10:
            continue
        values, counts = np.unique(c, return_counts=True)
        body_color[int(body)] = int(values[counts.argmax()])
        assert counts.max() / len(c) > 0.95, f"body {body} is not drawn in one colour"
    assert len(body_color) > 20
    assert len(set(body_color.values())) == len(body_color), "two bodies share a colour"
    sv_color = {}
    for s in (world.big, world.merged_away):
        c = color[(sv == s) & interior]
        values, counts = np.unique(c, return_counts=True)
        sv_color[s] = int(values[counts.argmax()])
    assert sv_color[world.merged_away] == sv_color[world.big] == body_color[world.big]
