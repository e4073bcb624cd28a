"""Real-mount helpers: start `dvidfs mount -f` as a subprocess and always unmount.

Teardown runs `fusermount3 -u -z` (lazy, so a stuck reader cannot keep the
mount alive), stops the process, and checks /proc/mounts, even when the test
failed.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager


def is_mounted(path) -> bool:
    real = os.path.realpath(path)
    with open("/proc/mounts") as f:
        return any(line.split()[1] == real for line in f)


def dvidfs(*args, check=True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "dvidfs.cli", *map(str, args)],
                       capture_output=True, text=True, timeout=120, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"dvidfs {args} failed: {r.stderr}")
    return r


@contextmanager
def mounted(store_path, mnt):
    mnt = str(mnt)
    os.makedirs(mnt, exist_ok=True)
    log = open(os.path.join(os.path.dirname(mnt), f"mount-{os.path.basename(mnt)}.log"), "wb")
    proc = subprocess.Popen([sys.executable, "-m", "dvidfs.cli", "mount", "-f", str(store_path), mnt],
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while not is_mounted(mnt):
            if proc.poll() is not None:
                log.flush()
                raise AssertionError("mount process exited: " + open(log.name).read()[-2000:])
            if time.time() > deadline:
                raise AssertionError("mount did not come up in 30 s")
            time.sleep(0.05)
        yield proc
    finally:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        assert not is_mounted(mnt), f"{mnt} still mounted after teardown"
