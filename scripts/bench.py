#!/usr/bin/env python
"""dvidfs benchmark (issue #5): one run, one table of medians and ratios.

    scripts/bench                 # full: 1024³ gray, 512³ labels (cached in bench-out/cache)
    scripts/bench --quick         # smoke: 128³ gray, 64³ labels, few repetitions (the test suite runs it)
    .venv/bin/python scripts/bench.py --only slices,scroll --out /tmp/b

Writes OUT/bench.json (every measurement, its samples, the targets) and
OUT/bench.png (a bar chart), and prints the table.  OUT defaults to bench-out/
at the repo root (git-ignored); the sample stores and the zarr copy for the
peers are cached in OUT/cache and reused while their parameters match.

What "cold" and "warm" mean here (see docs/performance.md):

* cold: the first read of a slice file in a freshly started mount process.
  dvidfs' render cache is empty for it, the kernel has no pages of it, and the
  LevelDB block cache (64 MiB) holds only what earlier reads of the same
  session brought in.  The OS page cache over the store's files is *warm*
  (the store fits in RAM and was just built or read): this measures dvidfs,
  not the disk.  In-process and peer reads are "cold" the same way: each
  coordinate read once, in a process that had not read it before.
* warm: the same file opened and read again in the same mount session
  (render cache hit; committed nodes also keep the kernel's page cache).

Every mount is a subprocess `python -m dvidfs.cli mount -f STORE MNT`; it is
always unmounted (`fusermount3 -u -z`, then wait, then SIGTERM/SIGKILL), also
on Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.util
import inspect
import json
import math
import os
import platform
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from dvidfs import api  # noqa: E402
from dvidfs.api import DvidStore  # noqa: E402
from dvidfs.data.geometry import PLANES  # noqa: E402
from dvidfs.formats.images import encode_png_stored, png_size  # noqa: E402
from dvidfs.samplestore import build_sample_store  # noqa: E402

import bench_peers  # noqa: E402

perf = time.perf_counter
MiB = 1 << 20
GiB = 1 << 30
PHASES = ("slices", "peers", "mount", "scroll", "parallel", "import", "versions", "depth", "labels",
          "blocksize")
GRAY_REPO, GRAY_DATA = "gray", "grayscale"
LABEL_REPO, LABEL_DATA = "labels", "segmentation"
STAMP = "bench-ready.json"
CACHE_FORMAT = 1


# ============================================================== configuration
@dataclass(frozen=True)
class Config:
    quick: bool
    gray: int            # edge of the grayscale cube (voxels)
    labels: int          # edge of the label cube
    block: int           # grayscale block edge (the dvidfs default)
    plane_reps: int      # cold slices per plane (distinct coordinates)
    warm_reps: int       # re-reads of each of them
    scroll: int          # slices per scroll run
    parallel: int        # slices read by one reader, and split between two
    import_reps: int
    version_reps: int    # commit/branch samples (merges: half as many)
    depth: int           # version chain length
    depth_reads: int
    fill_cache: bool     # read past the render-cache budget before measuring RSS
    small_edge: int      # the "1 MiB" store: small_edge² x 64 voxels


FULL = Config(quick=False, gray=1024, labels=512, block=32, plane_reps=9, warm_reps=5, scroll=64,
              parallel=32, import_reps=1, version_reps=12, depth=100, depth_reads=9, fill_cache=True,
              small_edge=128)
QUICK = Config(quick=True, gray=128, labels=64, block=32, plane_reps=3, warm_reps=3, scroll=64,
               parallel=8, import_reps=3, version_reps=4, depth=100, depth_reads=5, fill_cache=False,
               small_edge=128)


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def median(xs) -> float:
    return float(statistics.median(xs))


class Results:
    """Named measurements: value (the median for timings), unit, samples."""

    def __init__(self) -> None:
        self.m: dict[str, dict] = {}
        self.notes: dict[str, str] = {}

    def add(self, key: str, samples: list[float], unit: str = "s", desc: str = "",
            value: float | None = None) -> None:
        self.m[key] = {"value": median(samples) if value is None else float(value), "unit": unit,
                       "n": len(samples), "samples": [float(s) for s in samples], "desc": desc}

    def get(self, key: str) -> float | None:
        e = self.m.get(key)
        return e["value"] if e else None


@dataclass
class Ctx:
    cfg: Config
    out: Path
    cache: Path
    run: Path          # scratch (mount points, import stores), removed at the end
    rebuild: bool
    install: bool
    profile: bool
    R: Results
    peers: dict
    gray_path: Path | None = None
    gray_uuid: str = ""
    ref_png: dict | None = None        # plane -> PNG bytes of coords[plane][0] (correctness check)
    ref_img: dict | None = None
    rss: dict | None = None            # session -> VmHWM bytes

    def coords(self, k: int, phase: float = 0.5) -> list[int]:
        """k distinct coordinates spread evenly over the cube (not block aligned)."""
        n = self.cfg.gray
        return sorted({min(n - 1, int((i + phase) * n / k)) for i in range(k)})


# ============================================================== sample stores
def _stamp_ok(path: Path, want: dict) -> dict | None:
    try:
        got = json.loads((path / STAMP).read_text())
    except (OSError, ValueError):
        return None
    return got if all(got.get(k) == v for k, v in want.items()) else None


def _progress(desc: str, total: int) -> Callable[[int], None]:
    state = {"done": 0, "t0": perf(), "last": 0.0}

    def step(k: int) -> None:
        state["done"] += k
        now = perf()
        if now - state["last"] > 5 or state["done"] >= total:
            state["last"] = now
            log(f"  {desc}: {state['done']}/{total} planes, {now - state['t0']:.0f} s")
    return step


def ensure_sample(ctx: Ctx, edge: int, block: int | None, repo: str, labels: bool) -> tuple[Path, str]:
    """A store holding the deterministic sample (seed 0), built once and cached."""
    name = f"{repo}-{edge}" + (f"-b{block}" if block else "")
    path = ctx.cache / name
    want = {"format": CACHE_FORMAT, "edge": edge, "block": block, "repo": repo, "labels": labels, "seed": 0}
    got = None if ctx.rebuild else _stamp_ok(path, want)
    if got:
        return path, got["uuid"]
    if path.exists():
        shutil.rmtree(path)
    log(f"bench: building {name} ({edge}³{', labels' if labels else ''}) in {path} -- cached for later runs")
    t0 = perf()
    with DvidStore.init(path) as s:
        uuid = build_sample_store(s, (edge, edge, edge), repo=repo, labels=labels, block_size=block,
                                  progress=_progress(name, edge))
    (path / STAMP).write_text(json.dumps({**want, "uuid": uuid, "build_s": perf() - t0}))
    return path, uuid


def store_slabs(path: Path, uuid: str, data: str, slab: int = 64):
    """(z0, [z, y, x]) slabs of a cached store's instance, top to bottom."""
    with DvidStore(path) as s:
        node = s.node(uuid)
        vol, view = s.data(node, data), s.db.view(node)
        ext = vol.require_extents(view)
        nx, ny, nz = ext.size
        for z0 in range(0, nz, slab):
            yield z0, vol.read(view, (0, 0, z0), (nx, ny, min(slab, nz - z0)))


def ensure_zarr(ctx: Ctx) -> Path | None:
    if not ctx.peers:
        return None
    n = ctx.cfg.gray
    path = ctx.cache / f"gray-{n}.zarr"
    stamp = ctx.cache / f"gray-{n}.zarr.{STAMP}"
    want = {"format": CACHE_FORMAT, "edge": n, "source": ctx.gray_uuid, "chunk": bench_peers.CHUNK}
    try:
        ok = not ctx.rebuild and json.loads(stamp.read_text()) == want
    except (OSError, ValueError):
        ok = False
    if ok and path.exists():
        return path
    log(f"bench: writing the zarr v3 copy for the peers ({n}³, 64³ chunks, blosc lz4)")
    bench_peers.build_zarr(str(path), (n, n, n), store_slabs(ctx.gray_path, ctx.gray_uuid, GRAY_DATA),
                           ctx.peers, log=log)
    stamp.write_text(json.dumps(want))
    return path


# ============================================================== mounting
def is_mounted(path: Path) -> bool:
    real = os.path.realpath(path)
    with open("/proc/mounts") as f:
        return any(line.split()[1] == real for line in f)


@contextlib.contextmanager
def _signals_held():
    """Keep a second Ctrl-C from interrupting the unmount."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def _unmount(mnt: Path, proc: subprocess.Popen) -> None:
    with _signals_held():
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        for sig, wait in ((None, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            if sig is not None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        if is_mounted(mnt):  # the process is gone; drop the dead mount
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)


def _fs_pid(proc: subprocess.Popen, wrapped: bool) -> int:
    """pid of the dvidfs process (the child of py-spy when profiling)."""
    if not wrapped:
        return proc.pid
    for _ in range(100):
        try:
            kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            if kids:
                return int(kids[0])
        except OSError:
            pass
        time.sleep(0.05)
    return proc.pid


class Mount:
    def __init__(self, proc: subprocess.Popen, pid: int, mnt: Path):
        self.proc, self.pid, self.mnt = proc, pid, mnt

    def status(self) -> dict[str, int]:
        """VmHWM / VmRSS of the mount process, in bytes."""
        out = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmHWM", "VmRSS"):
                    out[k] = int(v.split()[0]) * 1024
        return out


@contextlib.contextmanager
def mounted(ctx: Ctx, store: Path, session: str, profile: bool = False):
    """Mount `store` in a fresh process for one benchmark session; always unmount."""
    mnt = ctx.run / f"mnt-{session}"
    mnt.mkdir(parents=True, exist_ok=True)
    if is_mounted(mnt):
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
    cmd = [sys.executable, "-m", "dvidfs.cli", "mount", "-f", str(store), str(mnt)]
    pyspy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) if profile else None
    if profile and not pyspy:
        log("bench: --profile needs py-spy in the venv (.venv/bin/pip install py-spy); not profiling")
    if pyspy:
        prof = ctx.out / f"profile-mount-{session}.txt"
        cmd = [pyspy, "record", "--format", "raw", "--rate", "250", "-o", str(prof), "--", *cmd]
        log(f"bench: profiling the {session} mount with py-spy -> {prof}")
    logf = open(ctx.run / f"mount-{session}.log", "ab")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, cwd=ROOT,
                            start_new_session=True)
    try:
        deadline = time.time() + 60
        while not is_mounted(mnt):
            if proc.poll() is not None:
                logf.flush()
                raise RuntimeError(f"mount exited with {proc.returncode}: "
                                   + (ctx.run / f"mount-{session}.log").read_text()[-2000:])
            if time.time() > deadline:
                raise RuntimeError("mount did not come up in 60 s")
            time.sleep(0.02)
        m = Mount(proc, _fs_pid(proc, bool(pyspy)), mnt)
        yield m
        with contextlib.suppress(OSError):
            ctx.rss[session] = m.status()["VmHWM"]
    finally:
        _unmount(mnt, proc)
        logf.close()


def read_file(path: Path | str) -> bytes:
    """As Fiji's virtual stack reads a slice: open, read the whole file, close."""
    with open(path, "rb", buffering=0) as f:
        return f.readall()


def slice_path(base: Path, plane: str, coord: int, ext: str = "png") -> Path:
    """MNT/.../<data>/<plane>/<coord zero-padded>.png (dvidfs.fs.tree's naming)."""
    from dvidfs.fs import tree
    return base / plane / f"{coord:0{getattr(tree, 'SLICE_WIDTH', 5)}d}.{ext}"


def _timed_read(path: Path, expect: int) -> float:
    t0 = perf()
    data = read_file(path)
    dt = perf() - t0
    if len(data) != expect:
        raise RuntimeError(f"{path}: read {len(data)} bytes, expected {expect}")
    return dt


# ============================================================== phases
def phase_slices(ctx: Ctx) -> None:
    """In-process floor: read_slice (raw) and read_slice + encode_png_stored."""
    cfg, R = ctx.cfg, ctx.R
    coords = ctx.coords(cfg.plane_reps)
    ctx.ref_png, ctx.ref_img = {}, {}
    with DvidStore(ctx.gray_path) as s:
        node = s.node(ctx.gray_uuid)
        vol, view = s.data(node, GRAY_DATA), s.db.view(node)
        encode_png_stored(vol.read_slice(view, "xy", cfg.gray - 1))  # first-call costs
        for plane in PLANES:
            raw, enc = [], []
            for c in coords:
                t0 = perf()
                img = vol.read_slice(view, plane, c)
                t1 = perf()
                png = encode_png_stored(img)
                t2 = perf()
                raw.append(t1 - t0)
                enc.append(t2 - t0)
                if c == coords[0]:
                    ctx.ref_png[plane], ctx.ref_img[plane] = png, img
            R.add(f"slice.{plane}.api_raw", raw, desc=f"{plane} read_slice, in-process")
            R.add(f"slice.{plane}.api_encoded", enc, desc=f"{plane} read_slice + encode_png_stored")


def phase_peers(ctx: Ctx) -> None:
    cfg, R = ctx.cfg, ctx.R
    zpath = ensure_zarr(ctx)
    if zpath is None:
        ctx.R.notes["peers"] = "skipped: tensorstore / zarr not installed (--quick never installs them)"
        log("bench: peers " + ctx.R.notes["peers"])
        return
    coords = ctx.coords(cfg.plane_reps)
    for name, read in bench_peers.slice_readers(str(zpath), ctx.peers).items():
        encode_png_stored(read("xy", cfg.gray - 1))
        for plane in PLANES:
            raw, enc = [], []
            for c in coords:
                t0 = perf()
                img = read(plane, c)
                t1 = perf()
                encode_png_stored(img)
                t2 = perf()
                raw.append(t1 - t0)
                enc.append(t2 - t0)
                if ctx.ref_img and c == coords[0] and not np.array_equal(img, ctx.ref_img[plane]):
                    raise RuntimeError(f"{name} {plane} {c}: voxels differ from dvidfs' -- wrong zarr copy?")
            R.add(f"slice.{plane}.{name}_raw", raw, desc=f"{plane} {name} read")
            R.add(f"slice.{plane}.{name}_encoded", enc, desc=f"{plane} {name} read + encode_png_stored")


def _gray_base(m: Mount, ctx: Ctx) -> Path:
    return m.mnt / GRAY_REPO / ctx.gray_uuid / GRAY_DATA


def _warmup(base: Path) -> None:
    """Directory lookups and the first request of a fresh mount, touching no blocks."""
    read_file(base / "info.json")
    for p in PLANES:
        os.stat(base / p)


def phase_mount(ctx: Ctx) -> None:
    """Cold and warm slice reads per plane; then (full run) read past the render
    cache budget so the RSS measured at the end includes a full cache."""
    cfg, R = ctx.cfg, ctx.R
    n = cfg.gray
    size = png_size(n, n)
    coords = ctx.coords(cfg.plane_reps)
    with mounted(ctx, ctx.gray_path, "slices", profile=ctx.profile) as m:
        base = _gray_base(m, ctx)
        _warmup(base)
        for plane in PLANES:
            cold = [_timed_read(slice_path(base, plane, c), size) for c in coords]
            if ctx.ref_png and read_file(slice_path(base, plane, coords[0])) != ctx.ref_png[plane]:
                raise RuntimeError(f"mount {plane} slice {coords[0]} differs from the in-process PNG")
            warm = [_timed_read(slice_path(base, plane, c), size)
                    for _ in range(cfg.warm_reps) for c in coords]
            R.add(f"slice.{plane}.mount_cold", cold, desc=f"{plane} through the mount, first read")
            R.add(f"slice.{plane}.mount_warm", warm, desc=f"{plane} through the mount, re-read")
        if cfg.fill_cache:
            budget = cache_budget()
            used = {(p, c) for p in PLANES for c in coords}
            todo = [(p, c) for c in range(3, n, 5) for p in PLANES if (p, c) not in used]
            want = int(budget * 1.25) // size + 1
            t0, times = perf(), []
            for p, c in todo[:want]:
                times.append(_timed_read(slice_path(base, p, c), size))
            R.add("mount.fill_cold", times,
                  desc=f"{len(times)} more cold slices ({len(times) * size / MiB:.0f} MiB > render cache "
                       f"{budget / MiB:.0f} MiB), mixed planes")
            log(f"bench: read {len(times)} slices past the render cache budget in {perf() - t0:.1f} s")
        st = m.status()
        R.add("mount.rss_end", [st["VmRSS"]], unit="bytes", desc="VmRSS of the mount after the slices session")


def phase_scroll(ctx: Ctx) -> None:
    """64 consecutive xy slices in z order vs 64 spread over the volume, each in a fresh mount."""
    cfg, R = ctx.cfg, ctx.R
    n = cfg.gray
    size = png_size(n, n)
    k = min(cfg.scroll, n)
    z0 = max(0, n // 2 - k // 2)
    runs = {"consecutive": list(range(z0, z0 + k)), "spread": ctx.coords(k)}
    for name, zs in runs.items():
        with mounted(ctx, ctx.gray_path, f"scroll-{name}") as m:
            base = _gray_base(m, ctx)
            _warmup(base)
            times = [_timed_read(slice_path(base, "xy", z), size) for z in zs]
        R.add(f"scroll.{name}", times, value=sum(times),
              desc=f"{k} {name} xy slices through a fresh mount, total (samples: per slice)")


def phase_parallel(ctx: Ctx) -> None:
    """The same list of cold xy slices read by one reader, and by two threads
    (one takes the even, one the odd entries), each in a fresh mount."""
    cfg, R = ctx.cfg, ctx.R
    n = cfg.gray
    size = png_size(n, n)
    zs = ctx.coords(cfg.parallel, phase=0.25)
    for readers in (1, 2):
        with mounted(ctx, ctx.gray_path, f"parallel-{readers}") as m:
            base = _gray_base(m, ctx)
            _warmup(base)
            paths = [slice_path(base, "xy", z) for z in zs]
            with ThreadPoolExecutor(readers) as pool:
                # start the threads first so the timed part is only the reading
                list(pool.map(lambda _: None, range(readers)))
                t0 = perf()
                per = list(pool.map(lambda j: [_timed_read(p, size) for p in paths[j::readers]],
                                    range(readers)))
                wall = perf() - t0
        name = "one_reader" if readers == 1 else "two_readers"
        R.add(f"parallel.{name}", [t for ts in per for t in ts], value=wall,
              desc=f"{len(zs)} cold xy slices, {readers} reader thread(s), wall time (samples: per slice)")


def _gray_source(ctx: Ctx) -> np.ndarray:
    n = ctx.cfg.gray
    src = np.empty((n, n, n), np.uint8)
    for z0, slab in store_slabs(ctx.gray_path, ctx.gray_uuid, GRAY_DATA):
        src[z0:z0 + slab.shape[0]] = slab
    return src


def _plyvel_import(path: Path, src: np.ndarray, block: int, slab: int) -> float:
    """The floor: the same blocks, lz4-compressed the same way (DVID header byte +
    lz4 block with its size), one key each, one write batch per slab, into a
    fresh plyvel DB with the engine's options.  Cutting blocks and compressing
    is timed too: every block store has to do it."""
    import lz4.block
    import plyvel

    db = plyvel.DB(str(path), create_if_missing=True, error_if_exists=True, compression=None,
                   write_buffer_size=64 << 20, block_size=64 << 10, lru_cache_size=64 << 20)
    try:
        n, b = src.shape[0], block
        nb = n // b
        key = struct.Struct(">BIBIIIIIB")  # DATA | instance | class | z y x | version | client | marker
        flip = 0x80000000
        os.sync()
        t0 = perf()
        for z0 in range(0, n, slab):
            a = src[z0:z0 + slab]
            blocks = np.ascontiguousarray(
                a.reshape(a.shape[0] // b, b, nb, b, nb, b).transpose(0, 2, 4, 1, 3, 5))
            with db.write_batch() as wb:
                for bz in range(blocks.shape[0]):
                    for by in range(nb):
                        row = blocks[bz, by]
                        for bx in range(nb):
                            wb.put(key.pack(1, 1, 23, (z0 // b + bz) ^ flip, by ^ flip, bx ^ flip, 1, 0, 3),
                                   b"\x80" + lz4.block.compress(row[bx], store_size=True))
        return perf() - t0
    finally:
        db.close()


def phase_import(ctx: Ctx) -> DvidStore | None:
    """1 GiB (full) through DvidStore.write per 64-plane slab vs a bare plyvel batch.
    Returns the last API store, still open, holding the volume (for versions/depth)."""
    cfg, R = ctx.cfg, ctx.R
    n, slab = cfg.gray, 64
    log(f"bench: loading the {n}³ source volume ({n ** 3 / MiB:.0f} MiB) for the import test")
    src = _gray_source(ctx)
    api_t, ply_t = [], []
    keep = None
    for rep in range(cfg.import_reps):
        path = ctx.run / f"import-api-{rep}"
        shutil.rmtree(path, ignore_errors=True)
        s = DvidStore.init(path)
        r = s.db.new_repo("import")
        root = s.node(r.root)
        g = s.new_instance(root, GRAY_DATA, "grayscale", block_size=cfg.block)
        os.sync()
        t0 = perf()
        for z0 in range(0, n, slab):
            g.write(root, (0, 0, z0), src[z0:z0 + slab])
        api_t.append(perf() - t0)
        if rep == cfg.import_reps - 1:
            keep = s
        else:
            s.close()
            shutil.rmtree(path)
        ppath = ctx.run / f"import-plyvel-{rep}"
        shutil.rmtree(ppath, ignore_errors=True)
        ply_t.append(_plyvel_import(ppath, src, cfg.block, slab))
        shutil.rmtree(ppath)
        log(f"bench: import {n}³: api {api_t[-1]:.2f} s, bare plyvel {ply_t[-1]:.2f} s")
    del src
    gc.collect()
    nbytes = n ** 3
    R.add("import.api", api_t, desc=f"{nbytes / MiB:.0f} MiB through Grayscale.write, {slab}-plane slabs")
    R.add("import.plyvel", ply_t, desc=f"{nbytes / MiB:.0f} MiB as {cfg.block}³ lz4 blocks, bare plyvel batches")
    R.add("import.api_rate", [nbytes / t / MiB for t in api_t], unit="MiB/s", desc="API import rate")
    R.add("import.plyvel_rate", [nbytes / t / MiB for t in ply_t], unit="MiB/s", desc="bare plyvel rate")
    return keep


def _versions(s: DvidStore, root, block: int, reps: int) -> dict[str, list[float]]:
    """Timings of db.commit / db.branch / db.merge on store `s`, whose open `root`
    holds the data.  Each child writes one block (not timed) so merges have work."""
    db = s.db
    ext = s.data(root, GRAY_DATA).require_extents(db.view(root))
    nbx, nby = ext.size[0] // block, ext.size[1] // block
    t = {"commit_first": [], "commit": [], "branch": [], "merge": []}
    t0 = perf()
    db.commit(root, "bench: the data")
    t["commit_first"].append(perf() - t0)
    kids = []
    for i in range(reps):
        t0 = perf()
        child = db.branch(root, f"bench-{i}")
        t["branch"].append(perf() - t0)
        bx, by = i % nbx, (i // nbx) % nby
        s.data(child, GRAY_DATA).write(child, (bx * block, by * block, 0),
                                       np.full((block, block, block), i + 1, np.uint8))
        t0 = perf()
        db.commit(child, f"bench child {i}")
        t["commit"].append(perf() - t0)
        kids.append(child)
    for a, b in zip(kids[0::2], kids[1::2]):
        t0 = perf()
        db.merge([a, b], "bench merge")
        t["merge"].append(perf() - t0)
    return t


def phase_versions(ctx: Ctx, big: DvidStore | None) -> None:
    cfg, R = ctx.cfg, ctx.R
    e = cfg.small_edge
    path = ctx.run / "versions-small"
    shutil.rmtree(path, ignore_errors=True)
    with DvidStore.init(path) as s:
        r = s.db.new_repo("small")
        root = s.node(r.root)
        g = s.new_instance(root, GRAY_DATA, "grayscale", block_size=cfg.block)
        g.write(root, (0, 0, 0), (np.arange(64 * e * e) % 251).astype(np.uint8).reshape(64, e, e))
        small = _versions(s, root, cfg.block, cfg.version_reps)
    shutil.rmtree(path)
    sizes = {"small": 64 * e * e}
    results = {"small": small}
    if big is not None:
        root = next(n for n in big.db.nodes.values() if not n.parents)
        results["large"] = _versions(big, root, cfg.block, cfg.version_reps)
        sizes["large"] = cfg.gray ** 3
    for which, t in results.items():
        for op, xs in t.items():
            R.add(f"version.{op}.{which}", xs, desc=f"db.{op.split('_')[0]} on a store holding "
                  f"{sizes[which] / MiB:.0f} MiB" + (" (the node holding all the data, right after the "
                                                     "import)" if op == "commit_first" else ""))


def phase_depth(ctx: Ctx, big: DvidStore | None) -> None:
    """A chain of `depth` nodes (branch, write one block, commit); an xy slice
    through the written blocks read at depth 1 vs at the tip."""
    cfg, R = ctx.cfg, ctx.R
    own = big is None
    if own:  # --only depth: a store of its own
        path = ctx.run / "depth"
        shutil.rmtree(path, ignore_errors=True)
        big = DvidStore.init(path)
        r = big.db.new_repo("depth")
        root = big.node(r.root)
        g = big.new_instance(root, GRAY_DATA, "grayscale", block_size=cfg.block)
        for z0, slab in store_slabs(ctx.gray_path, ctx.gray_uuid, GRAY_DATA):
            g.write(root, (0, 0, z0), slab)
        big.db.commit(root, "depth base")
    db, b = big.db, cfg.block
    root = next(n for n in db.nodes.values() if not n.parents)
    if not root.locked:
        db.commit(root, "depth base")
    ext = big.data(root, GRAY_DATA).require_extents(db.view(root))
    nbx, nby = ext.size[0] // b, ext.size[1] // b
    chain, parent = [], root
    t0 = perf()
    for d in range(1, cfg.depth + 1):
        node = db.branch(parent, "deep" if d == 1 else None)
        big.data(node, GRAY_DATA).write(node, ((d % nbx) * b, ((d // nbx) % nby) * b, 0),
                                        np.full((b, b, b), d % 256, np.uint8))
        db.commit(node, f"depth {d}")
        chain.append(node)
        parent = node
    log(f"bench: version chain of {cfg.depth} nodes in {perf() - t0:.1f} s")
    vol = big.data(chain[-1], GRAY_DATA)
    z = b // 2
    views = {"d1": db.view(chain[0]), "tip": db.view(chain[-1])}
    for v in views.values():
        vol.read_slice(v, "xy", z)
    t = {k: [] for k in views}
    for _ in range(cfg.depth_reads):
        for k, v in views.items():
            t0 = perf()
            vol.read_slice(v, "xy", z)
            t[k].append(perf() - t0)
    R.add("depth.d1", t["d1"], desc=f"xy slice {z} read_slice at depth 1 (warm)")
    R.add("depth.tip", t["tip"], desc=f"xy slice {z} read_slice at depth {cfg.depth} (warm)")
    if own:
        big.close()


# ---------------------------------------------------------------- labels
def labels_available() -> bool:
    """True when the labels type is registered (importing its module registers it)."""
    for mod in ("dvidfs.data.labels", "dvidfs.data.labelmap"):
        with contextlib.suppress(Exception):
            if importlib.util.find_spec(mod) is not None:
                importlib.import_module(mod)
    return "labels" in api.TYPES


def phase_labels(ctx: Ctx) -> None:
    """Label measurements: one function for the lead to fill in.

    Today: per plane, in-process read_slice of the `segmentation` instance of a
    cached 512³ label sample, and the same slice read cold through a mount (its
    file name taken from the plane directory, whatever the label format is).
    TODO(labels): add sparsevol / label-index measurements and targets here;
    targets are listed in `targets()` under "labels".
    """
    cfg, R = ctx.cfg, ctx.R
    if not labels_available():
        R.notes["labels"] = "skipped: labels type not available"
        log("bench: labels " + R.notes["labels"])
        return
    path, uuid = ensure_sample(ctx, cfg.labels, None, LABEL_REPO, labels=True)
    n = cfg.labels
    coords = sorted({int((i + 0.5) * n / cfg.plane_reps) for i in range(cfg.plane_reps)})
    with DvidStore(path) as s:
        node = s.node(uuid)
        vol, view = s.data(node, LABEL_DATA), s.db.view(node)
        vol.read_slice(view, "xy", n - 1)
        for plane in PLANES:
            ts = []
            for c in coords:
                t0 = perf()
                vol.read_slice(view, plane, c)
                ts.append(perf() - t0)
            R.add(f"labels.{plane}.api_raw", ts, desc=f"labels {plane} read_slice ({n}³, in-process)")
    with mounted(ctx, path, "labels") as m:
        base = m.mnt / LABEL_REPO / uuid / LABEL_DATA
        _warmup(base)
        for plane in PLANES:
            names = {}
            for name in os.listdir(base / plane):
                stem = name.split(".")[0]
                if stem.lstrip("-").isdigit():
                    names[int(stem)] = name
            ts = []
            for c in coords:
                t0 = perf()
                read_file(base / plane / names[c])
                ts.append(perf() - t0)
            R.add(f"labels.{plane}.mount_cold", ts, desc=f"labels {plane} through the mount, first read")


# ---------------------------------------------------------------- block size
def phase_blocksize(ctx: Ctx) -> None:
    """read_slice (in-process, first read of each coordinate) for 32³ vs 64³ blocks."""
    cfg, R = ctx.cfg, ctx.R
    coords = ctx.coords(cfg.plane_reps)
    for block in (32, 64):
        path, uuid = (ctx.gray_path, ctx.gray_uuid) if block == cfg.block else \
            ensure_sample(ctx, cfg.gray, block, GRAY_REPO, labels=False)
        with DvidStore(path) as s:
            node = s.node(uuid)
            vol, view = s.data(node, GRAY_DATA), s.db.view(node)
            vol.read_slice(view, "xy", cfg.gray - 1)
            for plane in PLANES:
                ts = []
                for c in coords:
                    t0 = perf()
                    vol.read_slice(view, plane, c)
                    ts.append(perf() - t0)
                R.add(f"blocksize.b{block}.{plane}", ts, desc=f"{plane} read_slice, {block}³ blocks")


# ============================================================== targets & report
def cache_budget() -> int:
    """The mount's render-cache budget (the default the mount runs with)."""
    for mod, cls, param in (("dvidfs.fs.tree", "Tree", "cache_bytes"),
                            ("dvidfs.fs.operations", "DvidOperations", "cache_bytes"),
                            ("dvidfs.fs.cache", "RenderCache", "budget")):
        with contextlib.suppress(Exception):
            fn = getattr(importlib.import_module(mod), cls).__init__
            return int(inspect.signature(fn).parameters[param].default)
    return 256 << 20


def targets(ctx: Ctx) -> list[dict]:
    """Each row: measured ratio vs target.  `ratio` is always oriented so that
    the target reads "ratio OP target" as in the issue."""
    R = ctx.R
    rows: list[dict] = []

    def row(name: str, num: str | float | None, den: str | float | None, op: str, target: float,
            how: str, scale: float = 1.0) -> None:
        a = R.get(num) if isinstance(num, str) else num
        b = R.get(den) if isinstance(den, str) else den
        if a is None or b is None or b == 0:
            rows.append({"name": name, "ratio": None, "op": op, "target": target, "ok": None, "how": how})
            return
        ratio = a / b * scale
        ok = ratio <= target if op == "<=" else ratio >= target
        rows.append({"name": name, "ratio": ratio, "op": op, "target": target, "ok": ok, "how": how})

    for p in PLANES:
        row(f"{p} mount cold / in-process encoded", f"slice.{p}.mount_cold", f"slice.{p}.api_encoded", "<=",
            1.3, "median first-read through the mount / median read_slice + encode_png_stored")
    for p in PLANES:
        row(f"{p} mount cold / tensorstore raw", f"slice.{p}.mount_cold", f"slice.{p}.tensorstore_raw", "<=",
            1.0, "median first-read through the mount / median tensorstore read")
    for p in PLANES:
        row(f"{p} zarr-python read+encode / mount cold", f"slice.{p}.zarr_encoded", f"slice.{p}.mount_cold",
            ">=", 8.0, "how many times faster the mount is than zarr-python + encode_png_stored")
    row("scroll 64 consecutive / 64 spread", "scroll.consecutive", "scroll.spread", "<=", 0.3,
        "total time, each run in a fresh mount")
    row("throughput 2 readers / 1 reader", "parallel.one_reader", "parallel.two_readers", ">=", 1.7,
        "same slices; wall(1 reader) / wall(2 readers)")
    row("import rate api / bare plyvel", "import.plyvel", "import.api", ">=", 0.7,
        "time(plyvel) / time(api) = rate(api) / rate(plyvel)")
    for op in ("commit", "branch", "merge"):
        row(f"{op} at {ctx.cfg.gray ** 3 / MiB:.0f} MiB / at 1 MiB", f"version.{op}.large",
            f"version.{op}.small", "<=", 1.2, "median op time, big store / small store")
    row(f"slice at depth {ctx.cfg.depth} / depth 1", "depth.tip", "depth.d1", "<=", 1.2,
        "median warm read_slice of the same xy slice")
    # TODO(labels): label targets go here once the issue states them.
    budget = cache_budget()
    rss = max(ctx.rss.values()) if ctx.rss else None
    if rss is not None:
        ctx.R.add("mount.peak_rss", [float(v) for v in ctx.rss.values()], unit="bytes", value=rss,
                  desc="max VmHWM over the mount sessions (samples: per session)")
    row(f"mount peak RSS / (render cache {budget / MiB:.0f} MiB + 200 MB)", rss, budget + 200e6, "<=", 1.0,
        "VmHWM of the mount process (max over sessions)")
    return rows


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "s":
        return f"{v * 1e3:9.2f} ms" if v < 1 else f"{v:9.2f} s "
    if unit == "bytes":
        return f"{v / MiB:9.1f} MiB"
    if unit == "MiB/s":
        return f"{v:9.1f} MiB/s"
    return f"{v:9.3g} {unit}"


def machine() -> dict:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError):
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) * 1024
    return {"nproc": os.cpu_count(), "cpu": cpu, "ram_bytes": mem, "ram_gib": round(mem / GiB, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def report(ctx: Ctx, rows: list[dict], meta: dict) -> str:
    R = ctx.R
    lines = []
    mc = meta["machine"]
    lines.append(f"dvidfs benchmark  {mc['date']}  {mc['cpu']}, {mc['nproc']} cores, {mc['ram_gib']} GiB RAM"
                 f"  ({'quick' if ctx.cfg.quick else 'full'}: gray {ctx.cfg.gray}³ in {ctx.cfg.block}³ blocks,"
                 f" labels {ctx.cfg.labels}³)")
    lines.append("")
    lines.append(f"{'measurement':<44} {'median':>13}  {'n':>4}  description")
    lines.append("-" * 110)
    for key, e in R.m.items():
        lines.append(f"{key:<44} {_fmt(e['value'], e['unit']):>13}  {e['n']:>4}  {e['desc']}")
    for k, v in R.notes.items():
        lines.append(f"{k:<44} {v}")
    lines.append("")
    lines.append(f"{'target':<58} {'measured':>9}  {'target':>8}")
    lines.append("-" * 80)
    for r in rows:
        if r["ratio"] is None:
            lines.append(f"{r['name']:<58} {'-':>9}  {r['op']}{r['target']:<6g}  (not measured)")
        else:
            mark = "✓" if r["ok"] else "✗"
            lines.append(f"{r['name']:<58} {r['ratio']:>8.2f}×  {r['op']} {r['target']:<5g}  {mark}")
    return "\n".join(lines)


# ---------------------------------------------------------------- chart (Pillow)
def draw_chart(ctx: Ctx, rows: list[dict], meta: dict, path: Path) -> None:
    from PIL import Image, ImageDraw, ImageFont

    unicode_font = True

    def font(size):
        nonlocal unicode_font
        for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
            with contextlib.suppress(OSError):
                return ImageFont.truetype(name, size)
        unicode_font = False  # Pillow's built-in font has no ³ × ✓ ✗
        try:
            return ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1: bitmap font only
            return ImageFont.load_default()

    fb, fs = font(18), font(12)
    ascii_map = str.maketrans({"³": "^3", "²": "^2", "×": "x", "✓": "ok", "✗": "MISS"})

    class _D:  # ImageDraw with a fallback for fonts without those glyphs
        def __init__(self, d):
            self.d = d

        def text(self, xy, t, **kw):
            self.d.text(xy, t if unicode_font else t.translate(ascii_map), **kw)

        def __getattr__(self, name):
            return getattr(self.d, name)
    R = ctx.R
    methods = [("mount_cold", "mount, cold", (31, 119, 180)), ("mount_warm", "mount, warm", (174, 199, 232)),
               ("api_raw", "in-process read_slice", (44, 160, 44)),
               ("api_encoded", "in-process + encode", (152, 223, 138)),
               ("tensorstore_raw", "tensorstore read", (255, 127, 14)),
               ("tensorstore_encoded", "tensorstore + encode", (255, 187, 120)),
               ("zarr_raw", "zarr-python read", (148, 103, 189)),
               ("zarr_encoded", "zarr-python + encode", (197, 176, 213))]
    methods = [m for m in methods if any(R.get(f"slice.{p}.{m[0]}") for p in PLANES)]
    W, left, right = 1200, 250, 150
    bar, gap = 16, 14
    h1 = 60 + len(PLANES) * (len(methods) * bar + gap) + 40
    h2 = 60 + len(rows) * 26 + 40
    img = Image.new("RGB", (W, 60 + h1 + h2), "white")
    d = _D(ImageDraw.Draw(img))
    mc = meta["machine"]
    d.text((20, 12), f"dvidfs benchmark ({'quick' if ctx.cfg.quick else 'full'}, gray {ctx.cfg.gray}³) - "
           f"{mc['date'][:10]}, {mc['cpu']}, {mc['nproc']} cores", fill="black", font=fb)

    # panel 1: slice medians, log scale
    y0 = 60
    d.text((20, y0), "1024² slice read, median (log scale)" if ctx.cfg.gray == 1024 else
           f"{ctx.cfg.gray}² slice read, median (log scale)", fill="black", font=fb)
    vals = [R.get(f"slice.{p}.{m}") for p in PLANES for m, _, _ in methods]
    vals = [v for v in vals if v]
    lo = 10 ** math.floor(math.log10(min(vals))) if vals else 1e-4
    hi = 10 ** math.ceil(math.log10(max(vals))) if vals else 1.0
    if hi <= lo:
        hi = lo * 10
    x_of = lambda v: left + (W - left - right) * (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))  # noqa: E731
    y = y0 + 34
    top = y
    for p in PLANES:
        d.text((20, y + len(methods) * bar // 2 - 8), p, fill="black", font=fb)
        for m, label, color in methods:
            v = R.get(f"slice.{p}.{m}")
            d.text((60, y + 1), label, fill="black", font=fs)
            if v:
                d.rectangle([left, y + 2, max(left + 1, x_of(v)), y + bar - 2], fill=color)
                d.text((x_of(v) + 4, y + 1), _fmt(v, "s").strip(), fill="black", font=fs)
            y += bar
        y += gap
    dec = lo
    while dec <= hi * 1.0001:
        x = x_of(dec)
        d.line([x, top - 4, x, y - gap], fill=(200, 200, 200))
        d.text((x - 14, y - gap + 4), _fmt(dec, "s").strip(), fill="gray", font=fs)
        dec *= 10

    # panel 2: targets; bar = measured / target, oriented so that <= 1 is a pass
    y = 60 + h1
    d.text((20, y), "targets: measured relative to target (bar left of the line = met)", fill="black", font=fb)
    y += 34
    x1, scale_max = left + 200, 3.0
    width = W - x1 - 260

    def xs(v):
        return x1 + width * min(v, scale_max) / scale_max
    for r in rows:
        d.text((20, y + 3), r["name"][:48], fill="black", font=fs)
        if r["ratio"] is None:
            d.text((x1, y + 3), "not measured", fill="gray", font=fs)
        else:
            rel = r["ratio"] / r["target"] if r["op"] == "<=" else r["target"] / max(r["ratio"], 1e-12)
            color = (44, 160, 44) if r["ok"] else (214, 39, 40)
            d.rectangle([x1, y + 4, max(x1 + 1, xs(rel)), y + 20], fill=color)
            d.text((xs(rel) + 6, y + 4), f"{r['ratio']:.2f}× ({r['op']} {r['target']:g})"
                   + (" ✓" if r["ok"] else " ✗") + (" (bar clipped)" if rel > scale_max else ""),
                   fill="black", font=fs)
        y += 26
    d.line([xs(1.0), 60 + h1 + 30, xs(1.0), y], fill="black", width=2)
    img.save(path, optimize=True)


# ============================================================== main
def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small volume, few repetitions (smoke test)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out", help="results dir (default bench-out/)")
    ap.add_argument("--cache", type=Path, default=None, help="sample cache dir (default OUT/cache)")
    ap.add_argument("--only", default=",".join(PHASES), help=f"comma-separated phases of: {','.join(PHASES)}")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached samples")
    ap.add_argument("--no-install", action="store_true", help="never pip-install the peers")
    ap.add_argument("--profile", action="store_true",
                    help="run the cold/warm slices mount under py-spy (raw stacks in OUT/profile-mount-*.txt)")
    args = ap.parse_args(argv)
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    bad = set(only) - set(PHASES)
    if bad:
        ap.error(f"unknown phases {sorted(bad)} (known: {', '.join(PHASES)})")
    cfg = QUICK if args.quick else FULL
    out = args.out.resolve()
    cache = (args.cache or out / "cache").resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    run = out / f"run-{os.getpid()}"
    run.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _raise_interrupt)

    t_start = perf()
    peers = {}
    if "peers" in only:
        peers = bench_peers.ensure_peers(install=not (cfg.quick or args.no_install), log=log)
    ctx = Ctx(cfg=cfg, out=out, cache=cache, run=run, rebuild=args.rebuild, install=not args.no_install,
              profile=args.profile, R=Results(), peers=peers, rss={})
    phase_time = {}
    big = None
    try:
        ctx.gray_path, ctx.gray_uuid = ensure_sample(ctx, cfg.gray, cfg.block, GRAY_REPO, labels=False)
        order = ["slices", "peers", "mount", "scroll", "parallel", "blocksize", "labels", "import",
                 "versions", "depth"]
        for ph in order:
            if ph not in only:
                continue
            log(f"bench: phase {ph}")
            t0 = perf()
            if ph == "import":
                big = phase_import(ctx)
            elif ph == "versions":
                phase_versions(ctx, big)
            elif ph == "depth":
                phase_depth(ctx, big)
            else:
                globals()[f"phase_{ph}"](ctx)
            phase_time[ph] = round(perf() - t0, 2)
    except KeyboardInterrupt:
        log("bench: interrupted")
        return 130
    finally:
        if big is not None:
            big.close()
        shutil.rmtree(run, ignore_errors=True)

    rows = targets(ctx)
    meta = {"machine": machine(), "config": asdict(cfg), "peers": sorted(peers),
            "phase_seconds": phase_time, "total_seconds": round(perf() - t_start, 1),
            "cache_budget_bytes": cache_budget(), "rss_by_session": ctx.rss}
    text = report(ctx, rows, meta)
    print(text)
    result = {"meta": meta, "measurements": ctx.R.m, "notes": ctx.R.notes, "targets": rows}
    (out / "bench.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    (out / "bench.txt").write_text(text + "\n")
    draw_chart(ctx, rows, meta, out / "bench.png")
    log(f"bench: wrote {out / 'bench.json'}, {out / 'bench.png'} ({meta['total_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
