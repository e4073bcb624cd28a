#!/usr/bin/env python
"""`dvidfs serve` under load: requests/s and latency with 1, 4 and 16 clients.

    .venv/bin/python scripts/bench_server.py            # 1024³ gray sample (cached in bench-out/cache)
    .venv/bin/python scripts/bench_server.py --quick    # 256³, few requests (smoke run)

Two requests, as DVID's clients make them:
  * xy  `GET …/grayscale/raw/xy/512_512/<x>_<y>_<z>/png`  (a viewer's 2-D tile)
  * sub `GET …/grayscale/subvolblocks/64_64_64/<x>_<y>_<z>` (neuroglancer's/NeuTu's 3-D chunk)
each at distinct random positions (cold: no reply is asked for twice).

Baselines measured in the same run:
  * floor: the same requests answered in this process by `DvidApp.handle` (no socket, one
    thread) — routing, reading and encoding without HTTP;
  * mount: a full 1024² xy slice read as a file of the mount that `dvidfs serve --mount`
    runs in the same process, vs the same slice over HTTP (`raw/xy/<W>_<H>/0_0_<z>/png`).

Clients are separate processes (one keep-alive connection each), so the client side
never shares a GIL with itself; on this 2-core machine they do share the CPUs with the
server.  Prints a table and writes bench-out/server.json.  No pass/fail: the goal
"16 clients >= 1.7x the throughput of one" is printed as a ratio.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dvidfs.core import Dvid  # noqa: E402
from dvidfs.samplestore import build_sample_store  # noqa: E402
from dvidfs.server.app import DvidApp  # noqa: E402
from dvidfs.server.http import Request  # noqa: E402

perf = time.perf_counter
CLIENTS = (1, 4, 16)


def log(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def ensure_store(cache: Path, edge: int) -> tuple[Path, str]:
    path = cache / f"server-gray-{edge}"
    stamp = path / "bench-ready.json"
    if stamp.exists():
        return path, json.loads(stamp.read_text())["uuid"]
    if path.exists():
        import shutil
        shutil.rmtree(path)
    log(f"bench_server: building a {edge}³ gray sample in {path} (cached for later runs)")
    with Dvid.init(path) as s:
        uuid = build_sample_store(s, (edge, edge, edge), repo="gray", labels=False)
    stamp.write_text(json.dumps({"uuid": uuid, "edge": edge}))
    return path, uuid


def tile(edge: int) -> int:
    """The 2-D request's side: 512 (a viewer's tile), less on the --quick volume."""
    return min(512, edge // 2)


def request_paths(kind: str, uuid: str, edge: int, n: int, rng: random.Random) -> list[str]:
    """n distinct request paths of one kind at random block-aligned positions."""
    seen: set[str] = set()
    while len(seen) < n:
        if kind == "xy":
            t = tile(edge)
            x, y = (rng.randrange(0, edge - t + 1, 64) for _ in range(2))
            z = rng.randrange(edge)
            seen.add(f"/api/node/{uuid}/grayscale/raw/xy/{t}_{t}/{x}_{y}_{z}/png")
        else:
            x, y, z = (rng.randrange(0, edge, 64) for _ in range(3))
            seen.add(f"/api/node/{uuid}/grayscale/subvolblocks/64_64_64/{x}_{y}_{z}")
    return sorted(seen, key=lambda _: rng.random())


def floor(store_path: Path, paths: list[str]) -> list[float]:
    """Seconds per request answered in-process by the app (no HTTP, one thread)."""
    out = []
    with Dvid(store_path) as s:
        app = DvidApp(s)
        for p in paths[:10]:  # warm-up (imports, first LevelDB table opens): not counted
            app.handle(Request("GET", p, [x for x in p.split("/") if x], {}))
        for p in paths[10:]:
            req = Request("GET", p, [x for x in p.split("/") if x], {})
            t = perf()
            resp = app.handle(req)
            out.append(perf() - t)
            assert resp.status == 200, (p, resp.status, resp.body[:200])
    return out


def _client(args) -> tuple[list[float], float, float, int]:
    """One client process: wait for the common start, GET each path on one connection."""
    host, port, paths, start_at = args
    conn = http.client.HTTPConnection(host, port, timeout=120)
    conn.connect()
    while time.time() < start_at:
        time.sleep(0.001)
    lat, nbytes = [], 0
    t0 = time.time()
    for p in paths:
        t = perf()
        conn.request("GET", p)
        r = conn.getresponse()
        body = r.read()
        lat.append(perf() - t)
        if r.status != 200:
            raise RuntimeError(f"{p}: {r.status} {body[:200]!r}")
        nbytes += len(body)
    return lat, t0, time.time(), nbytes


def load(url: str, paths: list[str], clients: int) -> dict:
    host, port = re.match(r"http://([^:/]+):(\d+)", url).groups()
    per = [paths[i::clients] for i in range(clients)]
    with ProcessPoolExecutor(clients) as pool:
        start_at = time.time() + 1.0 + 0.05 * clients  # every process connected and waiting
        results = list(pool.map(_client, [(host, int(port), p, start_at) for p in per]))
    lat = sorted(x for r in results for x in r[0])
    wall = max(r[2] for r in results) - min(r[1] for r in results)
    return {"clients": clients, "requests": len(lat), "rps": len(lat) / wall,
            "p50_ms": 1e3 * lat[len(lat) // 2], "p99_ms": 1e3 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            "MiB_s": sum(r[3] for r in results) / wall / (1 << 20)}


def start_serve(store_path: Path, mnt: Path | None) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "dvidfs.cli", "serve", str(store_path), "--http", "127.0.0.1:0"]
    if mnt:
        mnt.mkdir(parents=True, exist_ok=True)
        cmd += ["--mount", str(mnt)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    m = re.match(r"dvidfs serve: (http://[^/]+)/", line)
    if not m:
        proc.kill()
        raise SystemExit(f"dvidfs serve did not start: {line!r}")
    return proc, m.group(1)


def stop_serve(proc: subprocess.Popen, mnt: Path | None) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    if mnt and os.path.ismount(mnt):
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)])


def mount_vs_http(url: str, mnt: Path, uuid: str, edge: int, zs: list[int]) -> dict:
    """Full xy slices: a file of the mount vs the same slice over HTTP (distinct z each)."""
    host, port = re.match(r"http://([^:/]+):(\d+)", url).groups()
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    half = len(zs) // 2
    m, h = [], []
    for z in zs[:half]:
        t = perf()
        with open(mnt / "gray" / uuid / "grayscale" / "xy" / f"{z:05d}.png", "rb") as f:
            f.read()
        m.append(perf() - t)
    for z in zs[half:]:
        t = perf()
        conn.request("GET", f"/api/node/{uuid}/grayscale/raw/xy/{edge}_{edge}/0_0_{z}/png")
        r = conn.getresponse()
        r.read()
        h.append(perf() - t)
        assert r.status == 200
    return {"mount_ms": 1e3 * statistics.median(m), "http_ms": 1e3 * statistics.median(h)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="256³ volume, few requests")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out")
    ap.add_argument("--kinds", default="xy,sub", help="requests to measure: xy, sub (default both)")
    ap.add_argument("--requests", type=int, default=None, help="requests per client count")
    args = ap.parse_args(argv)
    edge = 256 if args.quick else 1024
    per_level = args.requests or (12 if args.quick else 160)
    cache = args.out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    store_path, uuid = ensure_store(cache, edge)
    rng = random.Random(1)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    # distinct paths for the floor and for every client count: no reply is cached twice
    plan = {k: request_paths(k, uuid, edge, per_level * (len(CLIENTS) + 1), rng) for k in kinds}
    results: dict = {"edge": edge, "cpus": os.cpu_count(), "kinds": {}}
    for k in kinds:
        f = floor(store_path, plan[k][:per_level])
        results["kinds"][k] = {"floor_ms": 1e3 * statistics.median(f), "floor_rps": len(f) / sum(f),
                               "levels": []}
    mnt = args.out / "server-mnt"
    proc, url = start_serve(store_path, mnt)
    try:
        for k in kinds:
            for i, c in enumerate(CLIENTS, start=1):
                r = load(url, plan[k][i * per_level:(i + 1) * per_level], c)
                results["kinds"][k]["levels"].append(r)
                log(f"  {k} clients={c}: {r['rps']:.1f} req/s p50 {r['p50_ms']:.1f} ms p99 {r['p99_ms']:.1f} ms")
        zs = rng.sample(range(edge), 12 if args.quick else 30)
        results["mount_vs_http"] = mount_vs_http(url, mnt, uuid, edge, zs)
    finally:
        stop_serve(proc, mnt)
    print(report(results))
    (args.out / "server.json").write_text(json.dumps(results, indent=1))
    return 0


def report(res: dict) -> str:
    lines = [f"dvidfs serve, {res['edge']}³ uint8 sample, {res['cpus']} CPUs "
             "(clients are processes on the same machine)",
             f"{'request':<8}{'clients':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'MiB/s':>8}"
             f"{'vs 1 client':>13}{'vs floor':>10}"]
    for k, d in res["kinds"].items():
        one = d["levels"][0]["rps"]
        lines.append(f"{k:<8}{'floor':>8}{d['floor_rps']:>9.1f}{d['floor_ms']:>9.1f}{'':>9}{'':>8}{'':>13}{'':>10}")
        for r in d["levels"]:
            lines.append(f"{k:<8}{r['clients']:>8}{r['rps']:>9.1f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
                         f"{r['MiB_s']:>8.1f}{r['rps'] / one:>12.2f}x{r['rps'] / d['floor_rps']:>9.2f}x")
    mv = res.get("mount_vs_http")
    if mv:
        lines.append(f"full xy slice: mount {mv['mount_ms']:.1f} ms, HTTP png {mv['http_ms']:.1f} ms "
                     f"(HTTP / mount {mv['http_ms'] / mv['mount_ms']:.2f}x)")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
