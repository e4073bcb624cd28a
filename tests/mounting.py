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


@contextmanager
def mounted_in_process(core, mnt):
    """Mount `core` (a dvidfs.core.Dvid) at `mnt` from a thread of this process,
    so a test can change the store through the core API while the kernel has
    the mount's entries cached.  Always unmounts."""
    import threading

    import pyfuse3
    import trio

    from dvidfs.fs.mount import _serve
    from dvidfs.fs.operations import DvidOperations
    from dvidfs.fs.tree import Tree

    mnt = str(mnt)
    os.makedirs(mnt, exist_ok=True)
    ops = DvidOperations(Tree(core))
    pyfuse3.init(ops, mnt, set(pyfuse3.default_options) | {"fsname=dvidfs", "subtype=dvidfs"})
    failure: list[BaseException] = []

    def serve():
        try:
            trio.run(_serve, ops, False)
        except BaseException as exc:  # reported by the test's teardown
            failure.append(exc)

    thread = threading.Thread(target=serve, name="dvidfs-mount", daemon=True)
    thread.start()
    try:
        deadline = time.time() + 30
        while ops._token is None and thread.is_alive() and time.time() < deadline:
            time.sleep(0.01)
        yield ops
    finally:
        if ops._token is not None and thread.is_alive():
            try:
                trio.from_thread.run_sync(pyfuse3.terminate, trio_token=ops._token)
            except trio.RunFinishedError:
                pass
        thread.join(timeout=20)
        pyfuse3.close(unmount=True)
        ops.close()
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
        assert not is_mounted(mnt), f"{mnt} still mounted after teardown"
        assert not failure, f"mount thread failed: {failure[0]!r}"
