#!/usr/bin/env python
"""push / pull of one committed sample node: local, into `dvidfs serve`, out of it (issue 14).

    .venv/bin/python scripts/bench_push.py                  # 512³ gray + labels sample, 2 rounds
    .venv/bin/python scripts/bench_push.py --size 256,256,128 --rounds 3 --json out.json

Builds the `dvidfs sample` store once in a temporary directory, then per round:

* local push: `push(src, dst)` into a fresh LevelDB store, both in this process;
* push into a real `dvidfs serve` process on 127.0.0.1 (a fresh store), the
  same transfer through `HttpReceiver` (what `dvidfs push STORE http://…` does);
* pull out of a `dvidfs serve` process serving the sample store into a fresh
  local store (`HttpSender`, what `dvidfs pull http://… STORE` does).

Prints keys/s and MiB/s of values per way and each HTTP way's time as a ratio
to the local push of the same round (the baseline, measured in the same run).

    .venv/bin/python scripts/bench_push.py --delta [--edge 1024] [--fraction 0.01]

The other question (issue 14): what does sending one *version* cost against
copying the whole volume?  A gray volume of edge³ bytes (1 GiB at 1024; EM-like
noise, 32³ blocks) is committed, a child changes `fraction` of its blocks at
random places (proofreading-sized edits) and is committed; then into a fresh
store the parent is pushed (= a copy of the whole volume), and the child after
it (only the keys it wrote), locally and into a `dvidfs serve`; `cp -r` of the
store directory is the file-copy baseline.  Bytes sent and time for each.

    .venv/bin/python scripts/bench_push.py --s3 [--size 256,256,256] [--rounds 3]

Pushing *from* an S3 store: a grayscale sample (32³ blocks, EM-like noise, so
every block is a large value in a pack) is built in a SeaweedFS (tests/seaweed.py,
started here and stopped by PID), and its committed node is pushed into a fresh
LevelDB store from a freshly opened S3 engine (empty value cache), counting the
GET requests (a counting boto3 client) and the time, two ways per round:
"sequential" hides the snapshot's `prefetch` from the sender (one GET per value,
as push read before it announced its pages), "planned" is the sender as it is
(each page's values announced: fetched ahead in parallel, neighbours in one GET).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dvidfs.core import Dvid  # noqa: E402
from dvidfs.push import LocalReceiver, LocalSender, PushReport, push, transfer  # noqa: E402
from dvidfs.samplestore import build_sample_store  # noqa: E402
from dvidfs.server.transfer import HttpReceiver, HttpSender  # noqa: E402


def serve(path: Path) -> tuple[subprocess.Popen, str]:
    """A `dvidfs serve` process on a free loopback port, and its base URL."""
    p = subprocess.Popen([sys.executable, "-m", "dvidfs.cli", "serve", str(path), "--http", "127.0.0.1:0"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    m = re.match(r"dvidfs serve: (http://[^/]+)/api/help", line)
    if not m:
        p.kill()
        raise SystemExit(f"dvidfs serve did not start: {line!r} {p.stderr.read()[-2000:]}")
    return p, m.group(1)


def stop(p: subprocess.Popen) -> None:
    p.terminate()
    p.wait(timeout=30)


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    Dvid.init(str(path)).close()
    return path


def timed(fn) -> tuple[float, PushReport]:
    t = time.perf_counter()
    rep = fn()
    return time.perf_counter() - t, rep


def delta(edge: int, fraction: float, work: Path) -> None:
    """Push one version that changed `fraction` of an edge³ volume vs a copy of the whole."""
    import numpy as np
    rng = np.random.default_rng(1)
    src = work / "src"
    with Dvid.init(str(src)) as s:
        root = s.node(s.new_repo("big").root)
        gray = s.new_instance(root, "grayscale", "grayscale", block_size=32)
        slab = 64
        t = time.perf_counter()
        for z0 in range(0, edge, slab):
            gray.write(root, (0, 0, z0), rng.integers(0, 256, (min(slab, edge - z0), edge, edge), dtype=np.uint8))
        built = time.perf_counter() - t
        s.commit(root, "whole volume")
        child = s.branch(root, name="edit")
        nb = edge // 32
        picks = rng.choice(nb ** 3, size=max(1, round(fraction * nb ** 3)), replace=False)
        for b in picks:
            bz, by, bx = np.unravel_index(b, (nb, nb, nb))
            gray.write(child, (int(bx) * 32, int(by) * 32, int(bz) * 32),
                       rng.integers(0, 256, (32, 32, 32), dtype=np.uint8))
        s.commit(child, "edits")
        parent_uuid, child_uuid = root.uuid, child.uuid
    print(f"{edge}³ gray ({edge ** 3 / 2**20:.0f} MiB) built in {built:.1f} s; child changed "
          f"{len(picks)} of {nb ** 3} blocks ({100 * len(picks) / nb ** 3:.2f}%)")
    rows = []
    t = time.perf_counter()
    shutil.copytree(src, work / "copy")
    rows.append(("cp -r of the store directory", time.perf_counter() - t,
                 sum(f.stat().st_size for f in (work / "copy").rglob("*") if f.is_file()), None))
    with Dvid(str(src)) as s, Dvid(str(fresh(work / "dst"))) as dst:
        t, rep = timed(lambda: push(s, dst, nodes=[s.node(parent_uuid)]))
        rows.append(("push parent (whole volume)", t, rep.bytes, rep.keys))
        t, rep = timed(lambda: push(s, dst, nodes=[s.node(child_uuid)]))
        rows.append(("push child (the 1 version)", t, rep.bytes, rep.keys))
    p, url = serve(fresh(work / "served"))
    try:
        with Dvid(str(src)) as s:
            transfer(LocalSender(s), HttpReceiver(url), refs=[parent_uuid])
            t, rep = timed(lambda: transfer(LocalSender(s), HttpReceiver(url), refs=[child_uuid]))
        rows.append(("push child into dvidfs serve", t, rep.bytes, rep.keys))
    finally:
        stop(p)
    base_t, base_b = rows[1][1], rows[1][2]
    print(f"{'':<32} {'time':>8} {'MiB sent':>9} {'keys':>7} {'time vs whole':>14} {'bytes vs whole':>15}")
    for what, t, b, k in rows:
        print(f"{what:<32} {t:7.2f}s {b / 2**20:9.1f} {k if k is not None else '-':>7} "
              f"{t / base_t:13.3f}x {b / base_b:14.3f}x")


class _Unplanned:
    """An engine whose snapshots hide `prefetch`: the sender reads one value at a time."""

    def __init__(self, engine):
        self._e = engine

    def __getattr__(self, name):
        return getattr(self._e, name)

    def snapshot(self):
        from contextlib import contextmanager

        class Snap:
            def __init__(self, inner):
                self._s = inner

            def get(self, key):
                return self._s.get(key)

            def scan(self, *a, **kw):
                return self._s.scan(*a, **kw)

        @contextmanager
        def cm():
            with self._e.snapshot() as snap:
                yield Snap(snap)
        return cm()


def from_s3(size, rounds: int, work: Path) -> dict:
    """Push of a committed gray sample node out of an S3 store: GETs and seconds."""
    sys.path.insert(0, str(ROOT / "tests"))
    from seaweed import CountingClient, SeaweedFS
    from dvidfs.store.s3 import S3Engine, make_client
    rows: dict[str, list[dict]] = {"sequential": [], "planned": []}
    with SeaweedFS() as server:
        bucket = server.new_bucket("bench-push")
        t = time.perf_counter()
        with Dvid(engine=S3Engine(bucket, "src", client=server.engine_client(), create=True)) as s:
            uuid = build_sample_store(s, size, labels=False, block_size=32)
        print(f"S3 source: {'x'.join(map(str, size))} gray built in {time.perf_counter() - t:.1f} s",
              file=sys.stderr)
        for r in range(rounds):
            for way in (("sequential", "planned") if r % 2 == 0 else ("planned", "sequential")):
                client = CountingClient(make_client(server.endpoint, credentials=(server.access_key,
                                                                                   server.secret_key)))
                with Dvid(engine=S3Engine(bucket, "src", client=client, readonly=True)) as s, \
                        Dvid(str(fresh(work / "from-s3"))) as dst:
                    if way == "sequential":
                        s.engine = _Unplanned(s.engine)      # only the sender reads through it
                    client.gets = 0
                    t, rep = timed(lambda: push(s, dst, nodes=[s.node(uuid)]))
                    rows[way].append({"s": t, "gets": client.gets, "keys": rep.keys, "bytes": rep.bytes})
    out = {}
    print(f"push out of S3 (SeaweedFS) into LevelDB: {'x'.join(map(str, size))} gray, 32³ blocks, "
          f"{rounds} round(s), medians")
    print(f"{'':<12} {'time':>8} {'GETs':>6} {'values':>7} {'MiB':>7} {'MiB/s':>7}")
    for way, rs in rows.items():
        t = statistics.median(r["s"] for r in rs)
        g = statistics.median(r["gets"] for r in rs)
        mib = rs[0]["bytes"] / 2**20
        out[way] = {"seconds": t, "gets": g, "keys": rs[0]["keys"], "MiB": mib,
                    "rounds": [{"seconds": r["s"], "gets": r["gets"]} for r in rs]}
        print(f"{way:<12} {t:7.2f}s {g:>6.0f} {rs[0]['keys']:>7} {mib:7.1f} {mib / t:7.1f}")
    a, b = out["sequential"], out["planned"]
    print(f"planned / sequential: {b['gets'] / a['gets']:.3f}x GETs, {b['seconds'] / a['seconds']:.2f}x time "
          f"({a['seconds'] / b['seconds']:.1f}x faster)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", help="sample size x,y,z (default 512,512,512; with --s3 256,256,256)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", help="write the numbers here")
    ap.add_argument("--delta", action="store_true", help="one changed version vs the whole volume")
    ap.add_argument("--edge", type=int, default=1024, help="--delta: volume edge (default 1024: 1 GiB)")
    ap.add_argument("--fraction", type=float, default=0.01, help="--delta: share of blocks changed")
    ap.add_argument("--s3", action="store_true", help="push out of an S3 store: GETs and time, "
                    "values read one by one vs announced (default size 256,256,256)")
    args = ap.parse_args()
    if args.s3:
        size = tuple(int(v) for v in (args.size or "256,256,256").split(","))
        work = Path(tempfile.mkdtemp(prefix="bench-push-s3-"))
        try:
            out = from_s3(size, args.rounds, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if args.json:
            Path(args.json).write_text(json.dumps({"size": size, "rounds": args.rounds, "from_s3": out}, indent=1))
        return
    if args.delta:
        work = Path(tempfile.mkdtemp(prefix="bench-push-delta-"))
        try:
            delta(args.edge, args.fraction, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    size = tuple(int(v) for v in (args.size or "512,512,512").split(","))
    work = Path(tempfile.mkdtemp(prefix="bench-push-"))
    rows: dict[str, list[dict]] = {"local push": [], "push into dvidfs serve": [], "pull from dvidfs serve": []}
    try:
        src = work / "src"
        with Dvid.init(str(src)) as s:
            build_sample_store(s, size)
        for _ in range(args.rounds):
            with Dvid(str(src)) as s:
                with Dvid(str(fresh(work / "local"))) as dst:
                    t, rep = timed(lambda: push(s, dst))
                rows["local push"].append({"s": t, "keys": rep.keys, "bytes": rep.bytes})
                p, url = serve(fresh(work / "served"))
                try:
                    t, rep = timed(lambda: transfer(LocalSender(s), HttpReceiver(url)))
                finally:
                    stop(p)
                rows["push into dvidfs serve"].append({"s": t, "keys": rep.keys, "bytes": rep.bytes})
            p, url = serve(src)
            try:
                with Dvid(str(fresh(work / "pulled"))) as dst:
                    t, rep = timed(lambda: transfer(HttpSender(url), LocalReceiver(dst)))
            finally:
                stop(p)
            rows["pull from dvidfs serve"].append({"s": t, "keys": rep.keys, "bytes": rep.bytes})
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base = statistics.median(r["s"] for r in rows["local push"])
    print(f"sample {'x'.join(map(str, size))}, {args.rounds} round(s), medians")
    print(f"{'':<26} {'time':>8} {'keys':>8} {'MiB':>8} {'keys/s':>9} {'MiB/s':>7} {'time vs local':>14}")
    out = {}
    for what, rs in rows.items():
        t = statistics.median(r["s"] for r in rs)
        keys, mib = rs[0]["keys"], rs[0]["bytes"] / 2**20
        out[what] = {"seconds": t, "keys": keys, "MiB": mib, "ratio_to_local": t / base}
        print(f"{what:<26} {t:7.2f}s {keys:>8} {mib:8.1f} {keys / t:9.0f} {mib / t:7.1f} {t / base:13.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"size": size, "rounds": args.rounds, "ways": out}, indent=1))


if __name__ == "__main__":
    main()
