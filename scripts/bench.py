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

from dvidfs.allocator import tune_allocator  # noqa: E402
from dvidfs.config import Config as DvidfsConfig  # noqa: E402
from dvidfs.core import Dvid, default_registry  # noqa: E402
from dvidfs.geometry import PLANES  # noqa: E402
from dvidfs.formats.images import encode_png_stored, png_size  # noqa: E402
from dvidfs.samplestore import build_sample_store  # noqa: E402

import bench_peers  # noqa: E402

perf = time.perf_counter
MiB = 1 << 20
GiB = 1 << 30
# "slices" = in-process floor, "peers" = tensorstore/zarr, "mount" = the same slices through the
# mount (these three run interleaved, in rounds); the rest are phases of their own.
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
    blocksize_reps: int  # coordinates per plane in the block-size study


FULL = Config(quick=False, gray=1024, labels=512, block=32, plane_reps=15, warm_reps=3, scroll=64,
              parallel=32, import_reps=3, version_reps=30, depth=100, depth_reads=9, fill_cache=True,
              small_edge=128, blocksize_reps=16)
QUICK = Config(quick=True, gray=128, labels=64, block=32, plane_reps=3, warm_reps=3, scroll=64,
               parallel=8, import_reps=3, version_reps=4, depth=100, depth_reads=5, fill_cache=False,
               small_edge=128, blocksize_reps=3)


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
    ref_png: dict | None = None        # plane -> PNG bytes of one coordinate (correctness check)
    ref_img: dict | None = None
    ref_coord: dict | None = None
    rss: dict | None = None            # session -> VmHWM bytes

    def coords(self, k: int, phase: float = 0.5) -> list[int]:
        """k distinct coordinates spread evenly over the cube (not block aligned)."""
        n = self.cfg.gray
        return sorted({min(n - 1, int((i + phase) * n / k)) for i in range(k)})


# ============================================================== sample stores
def prewarm(path: Path) -> None:
    """Read every file under `path` once, so the OS page cache holds it.

    Needed for repeatable numbers: on this VM the page cache is reclaimed
    within minutes, and a phase that starts on an evicted store measures the
    disk (CPU/wall ~0.5) instead of dvidfs.  Costs ~0.15 s per cached GiB."""
    buf = bytearray(8 << 20)
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError), open(os.path.join(root, name), "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass


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
    with Dvid.init(path) as s:
        uuid = build_sample_store(s, (edge, edge, edge), repo=repo, labels=labels, block_size=block,
                                  progress=_progress(name, edge))
    (path / STAMP).write_text(json.dumps({**want, "uuid": uuid, "build_s": perf() - t0}))
    return path, uuid


def store_slabs(path: Path, uuid: str, data: str, slab: int = 64):
    """(z0, [z, y, x]) slabs of a cached store's instance, top to bottom."""
    with Dvid(path) as s:
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
def _signals_deferred():
    """Hold Ctrl-C / SIGTERM until the block (an unmount) is done, then raise
    KeyboardInterrupt: a second Ctrl-C neither cuts the cleanup short nor gets lost."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    old = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum))
           for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if pending:
            raise KeyboardInterrupt(f"signal {pending[0]} during cleanup")


def mounts_under(path: Path) -> list[str]:
    real = os.path.realpath(path).rstrip("/") + "/"
    with open("/proc/mounts") as f:
        return [m for m in (line.split()[1] for line in f) if (m + "/").startswith(real)]


def remove_run_dir(run: Path) -> None:
    """Remove the scratch dir, never descending into a mount that is still live."""
    with _signals_deferred():
        for m in mounts_under(run):
            subprocess.run(["fusermount3", "-u", "-z", m], capture_output=True)
        left = mounts_under(run)
        if left:
            log(f"bench: WARNING: still mounted, not removing {run}: {', '.join(left)}")
            return
        shutil.rmtree(run, ignore_errors=True)


def _unmount(mnt: Path, proc: subprocess.Popen) -> None:
    """Lazy-unmount, then wait for the mount process; if it never got as far as
    mounting (interrupted during start-up), SIGTERM it at once (dvidfs unmounts
    itself on SIGTERM should it mount in between)."""
    with _signals_deferred():
        steps = ((None, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10))
        was_up = is_mounted(mnt)
        if was_up:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        elif proc.poll() is None:
            steps = steps[1:]
        for sig, wait in steps:
            if sig is not None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # The process is gone.  Interrupted during start-up, the mount can still
        # appear a moment later (libfuse's fusermount3 helper finishes it): drop it.
        deadline = time.time() + (0.0 if was_up else 1.5)
        while True:
            if is_mounted(mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
            if time.time() >= deadline:
                break
            time.sleep(0.05)


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
    """A running mount.  /proc only keeps the peak of the *total* RSS (VmHWM),
    which includes the pages of LevelDB's mmapped table files (page cache, not
    the process's own memory); the peak of the anonymous part is sampled here."""

    def __init__(self, proc: subprocess.Popen, pid: int, mnt: Path):
        self.proc, self.pid, self.mnt = proc, pid, mnt
        self.anon_peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start_sampling(self, every: float = 0.05) -> None:
        def loop():
            while not self._stop.wait(every):
                with contextlib.suppress(OSError, KeyError):
                    self.anon_peak = max(self.anon_peak, self.status()["RssAnon"])
        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()

    def stop_sampling(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def status(self) -> dict[str, int]:
        """VmHWM / VmRSS / RssAnon / RssFile of the mount process, in bytes."""
        out = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    out[k] = int(v.split()[0]) * 1024
        return out


@contextlib.contextmanager
def mounted(ctx: Ctx, store: Path, session: str):
    """Mount `store` in a fresh process for one benchmark session; always unmount.
    With --profile the mount runs under py-spy (OUT/profile-mount-SESSION.txt)."""
    profile = ctx.profile
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
    prewarm(store)
    logf = open(ctx.run / f"mount-{session}.log", "ab")
    proc = m = None
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, cwd=ROOT,
                                start_new_session=True)
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
        m.start_sampling()
        yield m
        with contextlib.suppress(OSError):
            st = m.status()
            m.stop_sampling()
            ctx.rss[session] = {"VmHWM": st["VmHWM"], "RssAnon_peak": max(m.anon_peak, st.get("RssAnon", 0)),
                                "RssFile": st.get("RssFile", 0)}
    finally:
        if m is not None:
            m.stop_sampling()
        if proc is not None:
            _unmount(mnt, proc)
        logf.close()
        if pyspy and prof.exists():
            with contextlib.suppress(Exception):
                summary = prof.with_suffix(".summary.txt")
                summary.write_text(summarize_profile(prof))
                log(f"bench: profile summary in {summary}")


def summarize_profile(raw: Path, top: int = 25) -> str:
    """Self and inclusive shares of functions in a py-spy raw (collapsed) profile."""
    import collections
    import re
    frame_re = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?):\d+\)$")
    self_n, incl_n, total = collections.Counter(), collections.Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        total += int(n)
        names = []
        for f in stack.split(";"):
            m = frame_re.match(f)
            names.append(f"{m['fn']} ({os.path.basename(m['file'])})" if m else f)
        self_n[names[-1]] += int(n)
        for name in set(names):
            incl_n[name] += int(n)
    out = [f"{total} samples of non-idle threads in {raw.name}", "", "self:"]
    out += [f"  {100 * k / total:5.1f}%  {f}" for f, k in self_n.most_common(top)]
    out += ["", "inclusive:"]
    out += [f"  {100 * k / total:5.1f}%  {f}" for f, k in incl_n.most_common(top)]
    return "\n".join(out) + "\n"


def read_file(path: Path | str) -> bytes:
    """As Fiji's virtual stack reads a slice: open, read the whole file, close."""
    with open(path, "rb", buffering=0) as f:
        return f.readall()


def slice_path(base: Path, plane: str, coord: int, ext: str = "png") -> Path:
    """MNT/.../<data>/<plane>/<coord zero-padded>.png (dvidfs.fs.volumes' naming)."""
    from dvidfs.fs.volumes import slice_name
    return base / plane / slice_name(coord, ext)


def _timed_read(path: Path, expect: int) -> float:
    t0 = perf()
    data = read_file(path)
    dt = perf() - t0
    if len(data) != expect:
        raise RuntimeError(f"{path}: read {len(data)} bytes, expected {expect}")
    return dt


# ============================================================== phases
class _Samples(dict):
    def put(self, key: str, value: float) -> None:
        self.setdefault(key, []).append(value)


def _api_slices(ctx: Ctx, coords: list[int], S: _Samples) -> None:
    """In-process floor: read_slice (raw) and read_slice + encode_png_stored."""
    prewarm(ctx.gray_path)
    with Dvid(ctx.gray_path) as s:
        node = s.node(ctx.gray_uuid)
        vol, view = s.data(node, GRAY_DATA), s.db.view(node)
        for p, c in prefill_slices(ctx):  # first-call costs and LevelDB's tables opened, as in the mount
            encode_png_stored(vol.read_slice(view, p, c))
        for plane in PLANES:
            for c in coords:
                t0 = perf()
                img = vol.read_slice(view, plane, c)
                t1 = perf()
                png = encode_png_stored(img)
                t2 = perf()
                S.put(f"slice.{plane}.api_raw", t1 - t0)
                S.put(f"slice.{plane}.api_encoded", t2 - t0)
                if plane not in ctx.ref_png:
                    ctx.ref_png[plane], ctx.ref_img[plane], ctx.ref_coord[plane] = png, img, c


def _peer_slices(ctx: Ctx, coords: list[int], S: _Samples, readers: dict) -> None:
    prewarm(ctx.cache / f"gray-{ctx.cfg.gray}.zarr")
    for name, read in readers.items():
        encode_png_stored(read("xy", ctx.cfg.gray - 1))
        for plane in PLANES:
            for c in coords:
                t0 = perf()
                img = read(plane, c)
                t1 = perf()
                encode_png_stored(img)
                t2 = perf()
                S.put(f"slice.{plane}.{name}_raw", t1 - t0)
                S.put(f"slice.{plane}.{name}_encoded", t2 - t0)
                if ctx.ref_coord.get(plane) == c and not np.array_equal(img, ctx.ref_img[plane]):
                    raise RuntimeError(f"{name} {plane} {c}: voxels differ from dvidfs' -- wrong zarr copy?")


def _gray_base(m: Mount, ctx: Ctx) -> Path:
    return m.mnt / GRAY_REPO / ctx.gray_uuid / GRAY_DATA


def _warmup(base: Path) -> None:
    """Directory lookups and the first request of a fresh mount, touching no blocks."""
    read_file(base / "info.json")
    for p in PLANES:
        os.stat(base / p)


def prefill_slices(ctx: Ctx) -> list[tuple[str, int]]:
    """xz/yz slices read before any timing, by every mount session and every
    in-process round: they open LevelDB's tables (a yz slice touches all of
    them) and bring the process's heap to its working size, so the timed
    reads see a process in its steady state.  None of them is a timed coordinate's file; they share
    at most 1/32 of an xy slice's blocks."""
    n = ctx.cfg.gray
    k = 2 if ctx.cfg.quick else 6
    return [(p, min(n - 1, int((i + 0.1) * n / k))) for i in range(k) for p in ("xz", "yz")]


def _mount_prefill(ctx: Ctx, base: Path, S: "_Samples | None" = None) -> None:
    _warmup(base)
    size = png_size(ctx.cfg.gray, ctx.cfg.gray)
    for p, c in prefill_slices(ctx):
        t = _timed_read(slice_path(base, p, c), size)
        if S is not None:
            S.put("mount.first_reads", t)


def _mount_slices(ctx: Ctx, coords: list[int], S: _Samples, session: str) -> None:
    """Cold (first read in this fresh mount) and warm (re-read) slices per plane."""
    size = png_size(ctx.cfg.gray, ctx.cfg.gray)
    with mounted(ctx, ctx.gray_path, session) as m:
        base = _gray_base(m, ctx)
        _mount_prefill(ctx, base, S)
        for plane in PLANES:
            for c in coords:
                S.put(f"slice.{plane}.mount_cold", _timed_read(slice_path(base, plane, c), size))
            ref = ctx.ref_coord.get(plane)
            if ref in coords and read_file(slice_path(base, plane, ref)) != ctx.ref_png[plane]:
                raise RuntimeError(f"mount {plane} slice {ref} differs from the in-process PNG")
            for _ in range(ctx.cfg.warm_reps):
                for c in coords:
                    S.put(f"slice.{plane}.mount_warm", _timed_read(slice_path(base, plane, c), size))


SLICE_DESC = {
    "api_raw": "{p} read_slice, in-process",
    "api_encoded": "{p} read_slice + encode_png_stored, in-process",
    "tensorstore_raw": "{p} tensorstore read (zarr v3, 64³ blosc-lz4, no cache)",
    "tensorstore_encoded": "{p} tensorstore read + encode_png_stored",
    "zarr_raw": "{p} zarr-python read",
    "zarr_encoded": "{p} zarr-python read + encode_png_stored",
    "mount_cold": "{p} through the mount, first read of the file (mount past its prefill)",
    "mount_warm": "{p} through the mount, re-read (render cache + page cache)",
}


def phase_slices(ctx: Ctx, api_on: bool = True, peers_on: bool = True, mount_on: bool = True) -> None:
    """1024² slices per plane: in-process, peers, and through the mount, in
    interleaved rounds (each round: the three on the same coordinates, the
    mount freshly started), so a slow minute of the VM hits all of them."""
    cfg, R = ctx.cfg, ctx.R
    coords = ctx.coords(cfg.plane_reps)
    rounds = 1 if cfg.quick else 3
    ctx.ref_png, ctx.ref_img, ctx.ref_coord = {}, {}, {}
    readers = {}
    if peers_on:
        zpath = ensure_zarr(ctx)
        if zpath is None:
            R.notes["peers"] = "skipped: tensorstore / zarr not installed (--quick never installs them)"
            log("bench: peers " + R.notes["peers"])
        else:
            readers = bench_peers.slice_readers(str(zpath), ctx.peers)
    S = _Samples()
    for r in range(rounds):
        sub = coords[r::rounds]
        if api_on:
            _api_slices(ctx, sub, S)
        if readers:
            _peer_slices(ctx, sub, S, readers)
        if mount_on:
            _mount_slices(ctx, sub, S, f"slices-{r}")
    for plane in PLANES:
        for kind, desc in SLICE_DESC.items():
            key = f"slice.{plane}.{kind}"
            if key in S:
                R.add(key, S[key], desc=desc.format(p=plane))
    if "mount.first_reads" in S:
        R.add("mount.first_reads", S["mount.first_reads"],
              desc="the prefill xz/yz slices: first reads of a freshly started mount (caches filling)")
    if mount_on:
        _mount_fill(ctx, coords)


def _mount_fill(ctx: Ctx, used_coords: list[int]) -> None:
    """One long session: read past the render-cache budget (full run), then the
    mount's memory.  `mount.peak_*` (targets) are the max over all sessions."""
    cfg, R = ctx.cfg, ctx.R
    n = cfg.gray
    size = png_size(n, n)
    with mounted(ctx, ctx.gray_path, "fill") as m:
        base = _gray_base(m, ctx)
        _mount_prefill(ctx, base)
        if cfg.fill_cache:
            budget = cache_budgets()["render"]
            used = {(p, c) for p in PLANES for c in used_coords}
            todo = [(p, c) for c in range(3, n, 5) for p in PLANES if (p, c) not in used]
            want = int(budget * 1.25) // size + 1
            t0, times = perf(), []
            for p, c in todo[:want]:
                times.append(_timed_read(slice_path(base, p, c), size))
            R.add("mount.fill_cold", times,
                  desc=f"{len(times)} cold slices in one mount ({len(times) * size / MiB:.0f} MiB > render "
                       f"cache {budget / MiB:.0f} MiB), mixed planes")
            log(f"bench: read {len(times)} slices past the render cache budget in {perf() - t0:.1f} s")
        else:
            for p in PLANES:
                read_file(slice_path(base, p, n // 2))
        st = m.status()
        R.add("mount.rss_end", [st["VmRSS"]], unit="bytes", desc="VmRSS of the mount after the fill session")
        R.add("mount.rss_file_end", [st["RssFile"]], unit="bytes",
              desc="of which file-backed (LevelDB's mmapped .ldb tables: page cache, reclaimable)")


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
            _mount_prefill(ctx, base)
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
            _mount_prefill(ctx, base)
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
    prewarm(ctx.gray_path)
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


def phase_import(ctx: Ctx) -> Dvid | None:
    """1 GiB (full) through Dvid.write per 64-plane slab vs a bare plyvel batch.
    Returns the last API store, still open, holding the volume (for versions/depth)."""
    cfg, R = ctx.cfg, ctx.R
    n, slab = cfg.gray, 64
    log(f"bench: loading the {n}³ source volume ({n ** 3 / MiB:.0f} MiB) for the import test")
    src = _gray_source(ctx)
    api_t, ply_t = [], []
    keep = None
    for rep in range(cfg.import_reps):
        # The floor first: closing its DB stops its background compaction, so
        # neither import runs next to the other's compaction (the API store
        # stays open for the versions and depth phases).
        ppath = ctx.run / f"import-plyvel-{rep}"
        shutil.rmtree(ppath, ignore_errors=True)
        ply_t.append(_plyvel_import(ppath, src, cfg.block, slab))
        shutil.rmtree(ppath)
        path = ctx.run / f"import-api-{rep}"
        shutil.rmtree(path, ignore_errors=True)
        s = Dvid.init(path)
        r = s.new_repo("import")
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
        log(f"bench: import {n}³: bare plyvel {ply_t[-1]:.2f} s, api {api_t[-1]:.2f} s")
    del src
    gc.collect()
    nbytes = n ** 3
    R.add("import.api", api_t, desc=f"{nbytes / MiB:.0f} MiB through Grayscale.write, {slab}-plane slabs")
    R.add("import.plyvel", ply_t, desc=f"{nbytes / MiB:.0f} MiB as {cfg.block}³ lz4 blocks, bare plyvel batches")
    R.add("import.api_rate", [nbytes / t / MiB for t in api_t], unit="MiB/s", desc="API import rate")
    R.add("import.plyvel_rate", [nbytes / t / MiB for t in ply_t], unit="MiB/s", desc="bare plyvel rate")
    return keep


def _settle(store: Dvid, quiet: float = 2.0, limit: float = 120.0) -> float:
    """Wait until LevelDB's background compaction is done (its stats stop changing
    for `quiet` s), so op timings on a big store do not race a compaction that
    the import just started.  Returns the seconds waited."""
    db = getattr(store.engine, "_db", None)
    if db is None or not hasattr(db, "get_property"):
        return 0.0
    t0 = perf()
    last, since = None, perf()
    while perf() - t0 < limit:
        stats = db.get_property(b"leveldb.stats")
        if stats != last:
            last, since = stats, perf()
        elif perf() - since >= quiet:
            break
        time.sleep(0.2)
    return perf() - t0


def _versions(stores: dict[str, tuple[Dvid, object]], block: int, reps: int,
              quiet: float = 2.0) -> dict[str, dict]:
    """Timings of db.commit / db.branch / db.merge on each store (name -> (store,
    open root holding its data)).  The stores take turns op by op, so a slow
    moment of the machine hits all of them alike.  Each child writes one block
    (not timed) so the merges have changes to check."""
    t = {name: {"commit_first": [], "commit": [], "branch": [], "merge": []} for name in stores}
    geo = {}
    for name, (s, root) in stores.items():
        ext = s.data(root, GRAY_DATA).require_extents(s.db.view(root))
        geo[name] = (ext.size[0] // block, ext.size[1] // block)
        t0 = perf()
        s.commit(root, "bench: the data")
        t[name]["commit_first"].append(perf() - t0)
    for name, (s, _) in stores.items():
        log(f"bench: waited {_settle(s, quiet):.1f} s for LevelDB compaction of the {name} store")
    kids: dict[str, list] = {name: [] for name in stores}
    for i in range(reps):
        for name, (s, root) in stores.items():
            t0 = perf()
            child = s.branch(root, f"bench-{i}")
            t[name]["branch"].append(perf() - t0)
            nbx, nby = geo[name]
            s.data(child, GRAY_DATA).write(child, ((i % nbx) * block, ((i // nbx) % nby) * block, 0),
                                           np.full((block, block, block), i + 1, np.uint8))
            kids[name].append(child)
        for name, (s, _) in stores.items():
            t0 = perf()
            s.commit(kids[name][-1], f"bench child {i}")
            t[name]["commit"].append(perf() - t0)
    for j in range(0, reps - 1, 2):
        for name, (s, _) in stores.items():
            t0 = perf()
            s.merge([kids[name][j], kids[name][j + 1]], "bench merge")
            t[name]["merge"].append(perf() - t0)
    return t


def phase_versions(ctx: Ctx, big: Dvid | None) -> None:
    cfg, R = ctx.cfg, ctx.R
    e = cfg.small_edge
    path = ctx.run / "versions-small"
    shutil.rmtree(path, ignore_errors=True)
    with Dvid.init(path) as s:
        r = s.new_repo("small")
        root = s.node(r.root)
        g = s.new_instance(root, GRAY_DATA, "grayscale", block_size=cfg.block)
        g.write(root, (0, 0, 0), (np.arange(64 * e * e) % 251).astype(np.uint8).reshape(64, e, e))
        stores = {"small": (s, root)}
        sizes = {"small": 64 * e * e}
        if big is not None:
            stores["large"] = (big, next(n for n in big.db.nodes.values() if not n.parents))
            sizes["large"] = cfg.gray ** 3
        results = _versions(stores, cfg.block, cfg.version_reps, quiet=0.5 if cfg.quick else 2.0)
    shutil.rmtree(path)
    for which, t in results.items():
        for op, xs in t.items():
            R.add(f"version.{op}.{which}", xs, desc=f"db.{op.split('_')[0]} on a store holding "
                  f"{sizes[which] / MiB:.0f} MiB" + (" (the node holding all the data, right after the "
                                                     "import)" if op == "commit_first" else ""))


def phase_depth(ctx: Ctx, big: Dvid | None) -> None:
    """A chain of `depth` nodes (branch, write one block, commit); an xy slice
    through the written blocks read at depth 1 vs at the tip."""
    cfg, R = ctx.cfg, ctx.R
    own = big is None
    if own:  # --only depth: a store of its own
        path = ctx.run / "depth"
        shutil.rmtree(path, ignore_errors=True)
        big = Dvid.init(path)
        r = big.new_repo("depth")
        root = big.node(r.root)
        g = big.new_instance(root, GRAY_DATA, "grayscale", block_size=cfg.block)
        for z0, slab in store_slabs(ctx.gray_path, ctx.gray_uuid, GRAY_DATA):
            g.write(root, (0, 0, z0), slab)
        big.commit(root, "depth base")
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
    """True when the core registers the labels type."""
    return "labels" in default_registry().names()


def phase_labels(ctx: Ctx) -> None:
    """Label measurements: per plane, in-process read_slice of the `segmentation`
    instance of a cached 512³ label sample and the same slice read cold through
    a mount; sparsevol of the largest body and merges (phase_label_bodies)."""
    cfg, R = ctx.cfg, ctx.R
    if not labels_available():
        R.notes["labels"] = "skipped: labels type not available"
        log("bench: labels " + R.notes["labels"])
        return
    path, uuid = ensure_sample(ctx, cfg.labels, None, LABEL_REPO, labels=True)
    n = cfg.labels
    coords = sorted({int((i + 0.5) * n / cfg.plane_reps) for i in range(cfg.plane_reps)})
    prewarm(path)
    with Dvid(path) as s:
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
    phase_label_bodies(ctx, path, uuid)
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


def phase_label_bodies(ctx: Ctx, path: Path, uuid: str) -> None:
    """sparsevol of the largest body vs numpy computing it from the dense array
    in memory (same bytes, checked), and a merge of the two largest bodies vs a
    merge of two small ones, in a child node of a scratch copy of the store."""
    from dvidfs.formats.sparsevol import encode_rles, runs_from_mask
    cfg, R = ctx.cfg, ctx.R
    n = cfg.labels
    work = ctx.run / "labels-merge-store"
    shutil.copytree(path, work)
    with Dvid(work) as s:
        node = s.node(uuid)
        vol, view = s.data(node, LABEL_DATA), s.db.view(node)
        dense = vol.read(view, (0, 0, 0), (n, n, n))
        bodies = [int(b) for b in vol.bodies(view)]
        sizes = sorted(((vol.size(view, b), b) for b in bodies), reverse=True)
        (size1, big1), (size2, big2) = sizes[0], sizes[1]
        ts_api, ts_np = [], []
        for _ in range(3):
            t0 = perf()
            got = vol.sparsevol(view, big1)
            ts_api.append(perf() - t0)
            t0 = perf()
            want = encode_rles(runs_from_mask(dense == big1))
            ts_np.append(perf() - t0)
        if got != want:
            raise SystemExit("bench: sparsevol bytes differ from numpy's: a bug, not a benchmark result")
        R.add("labels.sparsevol.api", ts_api, desc=f"sparsevol of the largest body ({size1} voxels), label index")
        R.add("labels.sparsevol.numpy", ts_np, desc="the same bytes from the dense array in memory (numpy)")
        del dense
        small = [b for sz, b in sizes[len(sizes) // 2:len(sizes) // 2 + 2]]
        child = s.branch(node, "bench-merge")
        vol.mapping(s.db.view(child))  # build the (empty) mapping cache outside the timing
        t0 = perf()
        vol.merge(child, small[0], [small[1]])
        R.add("labels.merge.small", [perf() - t0], desc="merge of two median-sized bodies")
        t0 = perf()
        vol.merge(child, big1, [big2])
        R.add("labels.merge.largest", [perf() - t0],
              desc=f"merge of the two largest bodies ({size1} + {size2} voxels), no voxel rewritten")
    shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- block size
def phase_blocksize(ctx: Ctx) -> None:
    """read_slice (in-process, first read of each coordinate) for 32³ vs 64³
    blocks, the two stores read alternately coordinate by coordinate."""
    cfg, R = ctx.cfg, ctx.R
    coords = ctx.coords(cfg.blocksize_reps)
    sources = {}
    for block in (32, 64):
        sources[block] = (ctx.gray_path, ctx.gray_uuid) if block == cfg.block else \
            ensure_sample(ctx, cfg.gray, block, GRAY_REPO, labels=False)
    with contextlib.ExitStack() as stack:
        vols = {}
        for block, (path, uuid) in sources.items():
            prewarm(path)
            s = stack.enter_context(Dvid(path))
            node = s.node(uuid)
            vols[block] = (s.data(node, GRAY_DATA), s.db.view(node))
            for p, c in prefill_slices(ctx):  # as in phase_slices: steady state
                vols[block][0].read_slice(vols[block][1], p, c)
        for plane in PLANES:
            ts = {block: [] for block in vols}
            for c in coords:
                for block, (vol, view) in vols.items():
                    t0 = perf()
                    vol.read_slice(view, plane, c)
                    ts[block].append(perf() - t0)
            for block in vols:
                R.add(f"blocksize.b{block}.{plane}", ts[block], desc=f"{plane} read_slice, {block}³ blocks")
        firsts = {block: vol.read(view, (0, 0, 0), (cfg.gray, cfg.gray, min(64, cfg.gray)))
                  for block, (vol, view) in vols.items()}
    for block, first in firsts.items():
        _blocksize_writes(ctx, block, first)


def _blocksize_writes(ctx: Ctx, block: int, vol_zyx: np.ndarray) -> None:
    """The other side of the trade-off: one xy slice written into an open node
    (read-modify-write of every block it crosses), on a 64-plane slab of the sample."""
    R = ctx.R
    path = ctx.run / f"blocksize-write-{block}"
    shutil.rmtree(path, ignore_errors=True)
    with Dvid.init(path) as s:
        root = s.node(s.new_repo("bw").root)
        g = s.new_instance(root, GRAY_DATA, "grayscale", block_size=block)
        g.write(root, (0, 0, 0), vol_zyx)
        s.commit(root, "base")
        nz = vol_zyx.shape[0]
        ts = []
        for i, z in enumerate(range(5, nz, max(1, nz // 8))):
            child = s.branch(root, f"w{i}")
            img = np.ascontiguousarray(255 - vol_zyx[z])
            t0 = perf()
            s.data(child, GRAY_DATA).write_slice(child, "xy", z, img)
            ts.append(perf() - t0)
    shutil.rmtree(path)
    ny, nx = vol_zyx.shape[1:]
    touched = -(-ny // block) * -(-nx // block) * block ** 3
    R.add(f"blocksize.b{block}.write_xy", ts,
          desc=f"write_slice of one {nx}x{ny} xy slice in a new node ({block}³: rewrites "
               f"{touched / MiB:.3g} MiB of blocks)")


# ============================================================== targets & report
def cache_budgets() -> dict[str, int]:
    """The mount's cache budgets as it runs by default (dvidfs.config.Config):
    rendered files, decoded blocks and read-ahead layers."""
    cfg = DvidfsConfig.load()
    return {"render": cfg.render_cache, "blocks": cfg.block_cache, "readahead": cfg.readahead}


def cache_budget() -> int:
    return sum(cache_budgets().values())


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
    row("labels sparsevol of largest body / numpy", "labels.sparsevol.api", "labels.sparsevol.numpy", "<=", 0.5,
        "index + named blocks only, vs numpy on the dense array in memory")
    row("labels merge of 2 largest / merge of 2 median bodies", "labels.merge.largest", "labels.merge.small",
        "<=", 2.0, "a merge must not grow with the bodies' size (mapping + index only)")
    budgets = cache_budgets()
    budget = sum(budgets.values())
    what = " + ".join(f"{k} {v / MiB:.0f}" for k, v in budgets.items())
    hwm = anon = None
    if ctx.rss:
        hwm = max(v["VmHWM"] for v in ctx.rss.values())
        anon = max(v["RssAnon_peak"] for v in ctx.rss.values())
        ctx.R.add("mount.peak_rss", [float(v["VmHWM"]) for v in ctx.rss.values()], unit="bytes", value=hwm,
                  desc="max VmHWM over the mount sessions (incl. LevelDB's mmapped tables; samples: per session)")
        ctx.R.add("mount.peak_anon_rss", [float(v["RssAnon_peak"]) for v in ctx.rss.values()], unit="bytes",
                  value=anon, desc="max sampled RssAnon over the mount sessions (the process's own memory)")
    row(f"mount peak RSS (VmHWM) / (caches {budget / MiB:.0f} MiB + 200 MB)", hwm, budget + 200e6, "<=", 1.0,
        f"VmHWM of the mount process, max over sessions; counts mmapped LevelDB table pages; caches: {what} MiB")
    row(f"mount peak anon RSS / (caches {budget / MiB:.0f} MiB + 200 MB)", anon, budget + 200e6, "<=", 1.0,
        f"RssAnon of the mount process sampled every 50 ms, max over sessions; caches: {what} MiB")
    return rows


def _ratio(r: dict) -> str:
    """The measured ratio, with a third decimal when two would hide which side of the target it is."""
    return f"{r['ratio']:.3f}" if abs(r["ratio"] - r["target"]) < 0.005 else f"{r['ratio']:.2f}"


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


def code_fingerprint() -> dict:
    """Which dvidfs the numbers belong to: a hash of dvidfs/**/*.py and the newest mtime."""
    import hashlib
    h, newest = hashlib.sha256(), 0.0
    for f in sorted((ROOT / "dvidfs").rglob("*.py")):
        h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes())
        newest = max(newest, f.stat().st_mtime)
    return {"sha256": h.hexdigest()[:16],
            "newest_mtime": datetime.datetime.fromtimestamp(newest).astimezone().isoformat(timespec="seconds")}


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


QUICK_MARK = "n/a in --quick"   # instead of ✓/✗: a quick run's ratios judge no target


def report(ctx: Ctx, rows: list[dict], meta: dict) -> str:
    R = ctx.R
    lines = []
    mc = meta["machine"]
    lines.append(f"dvidfs benchmark  {mc['date']}  {mc['cpu']}, {mc['nproc']} cores, {mc['ram_gib']} GiB RAM"
                 f"  ({'quick' if ctx.cfg.quick else 'full'}: gray {ctx.cfg.gray}³ in {ctx.cfg.block}³ blocks,"
                 f" labels {ctx.cfg.labels}³)")
    code = meta.get("dvidfs_code", {})
    lines.append(f"dvidfs code {code.get('sha256')} (newest file {code.get('newest_mtime')})"
                 + ("  WARNING: changed during the run" if meta.get("dvidfs_code_changed_during_run") else ""))
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
            # a quick run's sizes are too small for the targets: show the ratio, judge nothing
            mark = QUICK_MARK if ctx.cfg.quick else ("✓" if r["ok"] else "✗")
            lines.append(f"{r['name']:<58} {_ratio(r):>8}×  {r['op']} {r['target']:<5g}  {mark}")
    if ctx.cfg.quick:
        lines.append("(a --quick run checks that everything runs; the targets are judged on a full run)")
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
    d.text((20, y), "targets: measured relative to target " + ("(a --quick run judges none)" if ctx.cfg.quick else
                    "(bar left of the line = met)"), fill="black", font=fb)
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
            # a quick run judges nothing: neutral grey bars, no ✓/✗
            color = (170, 170, 170) if ctx.cfg.quick else (44, 160, 44) if r["ok"] else (214, 39, 40)
            mark = f" {QUICK_MARK}" if ctx.cfg.quick else (" ✓" if r["ok"] else " ✗")
            d.rectangle([x1, y + 4, max(x1 + 1, xs(rel)), y + 20], fill=color)
            d.text((xs(rel) + 6, y + 4), f"{_ratio(r)}× ({r['op']} {r['target']:g})"
                   + mark + (" (bar clipped)" if rel > scale_max else ""),
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
                    help="run each mount under py-spy (raw stacks + summary in OUT/profile-mount-*)")
    args = ap.parse_args(argv)
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    bad = set(only) - set(PHASES)
    if bad:
        ap.error(f"unknown phases {sorted(bad)} (known: {', '.join(PHASES)})")
    cfg = QUICK if args.quick else FULL
    # The mount (via the CLI) runs with dvidfs' allocator settings; so do the
    # in-process floor and the peers in this process, or the floor would pay
    # page faults the mount does not (dvidfs/allocator.py).
    tune_allocator()
    out = args.out.resolve()
    cache = (args.cache or out / "cache").resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    run = out / f"run-{os.getpid()}"
    run.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _raise_interrupt)

    t_start = perf()
    code_start = code_fingerprint()
    peers = {}
    if "peers" in only:
        peers = bench_peers.ensure_peers(install=not (cfg.quick or args.no_install), log=log)
    ctx = Ctx(cfg=cfg, out=out, cache=cache, run=run, rebuild=args.rebuild, install=not args.no_install,
              profile=args.profile, R=Results(), peers=peers, rss={})
    phase_time = {}
    big = None
    try:
        ctx.gray_path, ctx.gray_uuid = ensure_sample(ctx, cfg.gray, cfg.block, GRAY_REPO, labels=False)
        order = ["slices", "scroll", "parallel", "blocksize", "labels", "import", "versions", "depth"]
        for ph in order:
            if ph == "slices" and not {"slices", "peers", "mount"} & set(only):
                continue
            if ph != "slices" and ph not in only:
                continue
            log(f"bench: phase {ph}")
            t0 = perf()
            if ph == "slices":
                phase_slices(ctx, api_on="slices" in only, peers_on="peers" in only, mount_on="mount" in only)
            elif ph == "import":
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
        try:
            remove_run_dir(run)
        except KeyboardInterrupt:
            log("bench: interrupted")
            return 130

    rows = targets(ctx)
    meta = {"machine": machine(), "config": asdict(cfg), "peers": sorted(peers),
            "phase_seconds": phase_time, "total_seconds": round(perf() - t_start, 1),
            "cache_budgets_bytes": cache_budgets(), "rss_by_session": ctx.rss,
            "dvidfs_code": code_start, "dvidfs_code_changed_during_run": code_fingerprint() != code_start}
    if meta["dvidfs_code_changed_during_run"]:
        log("bench: WARNING: dvidfs/ changed while the benchmark ran; numbers mix two versions")
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
