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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="512,512,512", help="sample size x,y,z (default 512,512,512)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split(","))
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
