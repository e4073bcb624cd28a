"""Mount lifecycle: `dvidfs mount` (background by default) and `dvidfs umount`.

Background mounting re-runs this command in the foreground as a detached
child process and waits until the mount point is live (or the child fails,
whose one-line error is then shown), so `dvidfs mount` returns only when the
filesystem is usable.  The foreground process owns the LevelDB store; while it
runs, other `dvidfs` commands on the store say where it is mounted.

SIGINT/SIGTERM stop the trio loop via `pyfuse3.terminate()`; the store is
closed (everything written was applied in atomic batches already) and the
mount removed.
"""
from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Iterator

import pyfuse3
import trio

from dvidfs.config import Config
from dvidfs.core import Dvid
from dvidfs.errors import DvidfsError, InvalidInputError, StoreBusyError
from dvidfs.fs.operations import DvidOperations
from dvidfs.fs.tree import Tree
from dvidfs.storedir import MOUNT_LOG, log_tail, open_log


def is_mounted(path: str) -> bool:
    real = os.path.realpath(path)
    try:
        with open("/proc/mounts") as f:
            return any(line.split()[1] == real for line in f)
    except OSError:
        return os.path.ismount(path)


def _check_mountpoint(mountpoint: str) -> None:
    if not os.path.exists(mountpoint):
        raise InvalidInputError(f"mount point {mountpoint} does not exist (create it: mkdir -p {mountpoint})")
    if not os.path.isdir(mountpoint):
        raise InvalidInputError(f"mount point {mountpoint} is not a directory")
    if is_mounted(mountpoint):
        raise StoreBusyError(f"{mountpoint} is already a mount point")


def mount(store_path: str, mountpoint: str, foreground: bool = False, debug: bool = False,
          config: Config | None = None) -> None:
    config = config or Config.load()
    _check_mountpoint(mountpoint)
    if foreground or debug:
        run_foreground(store_path, mountpoint, debug, config)
        return
    probe = Dvid(store_path, config=config)  # fail fast, in this process, on a missing or busy store
    log_dir = probe.local_dir or _object_store_log_dir(store_path)
    probe.close()
    log_path = os.path.join(log_dir, MOUNT_LOG)
    log_fd = open_log(log_dir)  # never through a planted link (dvidfs/storedir.py)
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "dvidfs.cli", "mount", "-f", *config.to_args(), store_path, mountpoint],
            stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, start_new_session=True)
        deadline = time.time() + 30
        while time.time() < deadline:
            if is_mounted(mountpoint):
                return
            if child.poll() is not None:
                raise DvidfsError(f"mount failed: {log_tail(log_fd)}")
            time.sleep(0.05)
        child.terminate()
        raise DvidfsError(f"mount did not come up within 30 s (see {log_path})")
    finally:
        os.close(log_fd)


def _object_store_log_dir(store_url: str) -> str:
    """Where the background mount of an object store (s3://…, no store
    directory to log in) writes its log: a private directory per store URL
    under $XDG_STATE_HOME (~/.local/state)/dvidfs/mounts/."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    d = os.path.join(base, "dvidfs", "mounts", hashlib.sha256(store_url.encode()).hexdigest()[:16])
    os.makedirs(d, mode=0o700, exist_ok=True)
    return d


def run_foreground(store_path: str, mountpoint: str, debug: bool = False,
                   config: Config | None = None) -> None:
    config = config or Config.load()
    setup_process(config, debug)
    store = Dvid(store_path, config=config)
    try:
        with fuse_mounted(store, mountpoint, debug) as ops:
            trio.run(_serve, ops)
    finally:
        store.close()


def setup_process(config: Config, debug: bool = False) -> None:
    """Logging, and the GIL switch interval a process serving FUSE needs."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # The trio thread answers every FUSE request; with the default 5 ms GIL
    # switch interval it can wait that long behind a worker thread that is
    # assembling a slice, which serialises readers.  A shorter interval lets it in.
    sys.setswitchinterval(config.switch_interval)


@contextmanager
def fuse_mounted(store: Dvid, mountpoint: str, debug: bool = False) -> Iterator[DvidOperations]:
    """Mount `store` at `mountpoint` for the body of the `with` (run
    `fuse_main(ops)` inside trio to answer requests); always unmounts."""
    ops = DvidOperations(Tree(store))
    # default_permissions: the kernel checks the mode bits we report.  No
    # allow_other: only the mounting user may enter the mount, whatever the
    # modes say (docs/design.md, "Who may access a mount").
    options = set(pyfuse3.default_options) - {"allow_other", "allow_root"}
    options |= {"fsname=dvidfs", "subtype=dvidfs", "default_permissions"}
    if store.readonly:  # a reader of a store another process writes: the kernel refuses writes (EROFS)
        options.add("ro")
    if debug:
        options.add("debug")
    try:
        pyfuse3.init(ops, mountpoint, options)
    except RuntimeError as exc:
        raise DvidfsError(f"cannot mount {mountpoint}: {exc}") from None
    try:
        store.mark_mounted(mountpoint)  # inside the try: a refused marker still unmounts
        yield ops
    finally:
        pyfuse3.close(unmount=True)
        ops.close()
        store.clear_mounted()
        logging.getLogger("dvidfs.fs").info("unmounted %s", mountpoint)


async def fuse_main(ops: DvidOperations) -> None:
    """Answer FUSE requests until `pyfuse3.terminate()` or an unmount; then
    the name-invalidation worker ends, while the FUSE session still exists."""
    ops.attach()
    try:
        await pyfuse3.main()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(ops.names.close)


async def _serve(ops: DvidOperations, signals: bool = True) -> None:
    async with trio.open_nursery() as nursery:
        if signals:
            nursery.start_soon(_stop_on_signal, nursery)
        await fuse_main(ops)
        nursery.cancel_scope.cancel()


async def _stop_on_signal(nursery) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for _ in signals:
            pyfuse3.terminate()
            return


def unmount(mountpoint: str, timeout: float = 30.0) -> None:
    if not is_mounted(mountpoint):
        raise InvalidInputError(f"{mountpoint} is not mounted")
    r = subprocess.run(["fusermount3", "-u", mountpoint], capture_output=True, text=True)
    if r.returncode != 0:
        raise DvidfsError(f"unmount failed: {r.stderr.strip() or r.stdout.strip()}")
    deadline = time.time() + timeout
    while is_mounted(mountpoint) and time.time() < deadline:
        time.sleep(0.05)
