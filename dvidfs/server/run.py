"""`dvidfs serve`: hypercorn's trio worker answering DVID's API, and optionally
the FUSE mount, in one process over one open store.

Why one process: LevelDB admits one process per store.  Both faces use the
same `Dvid`, so a write through either is published to the mount's
subscriber before the call returns (the kernel's cached pages and sizes are
invalidated), and the server reads the store directly.

Lifecycle: the listening socket is bound here (so `--http 127.0.0.1:0` picks a
free port and the real address is printed before any request is taken), then
handed to hypercorn by file descriptor.  SIGINT/SIGTERM/SIGHUP stop both
faces: hypercorn finishes the requests in flight (up to its graceful timeout),
the mount is unmounted, the store closed.  An external `fusermount3 -u` of the
mount point stops the server too, so the process never outlives half its job.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import signal
import socket
import sys
from contextlib import nullcontext

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from dvidfs.config import Config
from dvidfs.core import Dvid
from dvidfs.errors import DvidfsError, InvalidInputError
from dvidfs.fs.mount import _check_mountpoint, fuse_main, fuse_mounted, setup_process
from dvidfs.server.app import DvidApp

log = logging.getLogger("dvidfs.server")


def parse_address(text: str) -> tuple[str, int]:
    """'127.0.0.1:8000', ':8000' (loopback), '8000', '[::1]:8000' -> (host, port)."""
    t = text.strip()
    if t.isdigit():
        host, port = "127.0.0.1", t
    else:
        host, sep, port = t.rpartition(":")
        if not sep:
            raise InvalidInputError(f"--http {text!r}: give HOST:PORT, e.g. 127.0.0.1:8000")
        host = host.strip("[]") or "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise InvalidInputError(f"--http {text!r}: {host!r} is not an IP address") from None
        host = "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) < 65536:
        raise InvalidInputError(f"--http {text!r}: port must be a number 0..65535 (0: any free port)")
    return host, int(port)


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise DvidfsError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(store_path: str, http: str = "127.0.0.1:8000", mountpoint: str | None = None,
          config: Config | None = None, debug: bool = False) -> None:
    """Serve until a signal; prints one line with the URL (and mount point) once ready."""
    config = config or Config.load()
    host, port = parse_address(http)
    if mountpoint:
        _check_mountpoint(mountpoint)
    setup_process(config, debug)
    store = Dvid(store_path, config=config)
    sock = None
    try:
        sock = bind(host, port)
        with (fuse_mounted(store, mountpoint, debug) if mountpoint else nullcontext()) as ops:
            trio.run(_main, store, sock, ops, mountpoint)
    finally:
        store.clear_mounted()
        store.close()
        if sock is not None:
            sock.close()


async def _main(store: Dvid, sock: socket.socket, ops, mountpoint: str | None) -> None:
    stop = trio.Event()
    hc = HypercornConfig()
    hc.bind = [f"fd://{os.dup(sock.fileno())}"]  # hypercorn closes its copy; we close ours
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.graceful_timeout = 5.0
    app = DvidApp(store)
    async with trio.open_nursery() as outer:
        outer.start_soon(_stop_on_signal, stop, ops is not None)
        async with trio.open_nursery() as inner:  # ends once hypercorn has finished its requests
            await inner.start(lambda task_status: hypercorn_serve(app, hc, shutdown_trigger=stop.wait,
                                                                  task_status=task_status))
            store.mark_mounted(mountpoint, url_of(sock))  # so a busy store's error names the URL
            where = f", mounted at {mountpoint}" if mountpoint else ""
            print(f"dvidfs serve: {url_of(sock)}/api/help{where} (Ctrl-C stops)", flush=True)
            if ops is not None:
                await fuse_main(ops)  # returns on terminate() or an external unmount
                stop.set()
        outer.cancel_scope.cancel()  # the signal listener, when the stop did not come from it


async def _stop_on_signal(stop: trio.Event, mounted: bool) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal %d: stopping", signum)
            stop.set()
            if mounted:
                import pyfuse3
                pyfuse3.terminate()
            return


if __name__ == "__main__":  # pragma: no cover - `dvidfs serve` is the entry point
    sys.exit("use: dvidfs serve STORE")
