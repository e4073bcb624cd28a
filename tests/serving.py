"""A real `dvidfs serve` for tests: the ASGI app under hypercorn's trio worker
on 127.0.0.1 with a free port, in a thread of the test process (so a test can
also change the store through the core and see the server answer from it).

    with served(core) as url:   # "http://127.0.0.1:PORT"
        requests.get(url + "/api/repos/info")
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from dvidfs.server.app import DvidApp
from dvidfs.server.run import bind, url_of


@contextmanager
def served(core, **app_options):
    sock = bind("127.0.0.1", 0)
    app = DvidApp(core, **app_options)
    hc = HypercornConfig()
    import os
    hc.bind = [f"fd://{os.dup(sock.fileno())}"]
    hc.accesslog = None
    hc.graceful_timeout = 2.0
    state: dict = {}
    ready = threading.Event()

    async def main():
        state["stop"] = trio.Event()
        state["token"] = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            await nursery.start(lambda task_status: hypercorn_serve(
                app, hc, shutdown_trigger=state["stop"].wait, task_status=task_status))
            ready.set()

    def run():
        try:
            trio.run(main)
        except BaseException as exc:  # reported at teardown
            state["error"] = exc
            ready.set()

    thread = threading.Thread(target=run, name="dvidfs-serve", daemon=True)
    thread.start()
    ready.wait(30)
    try:
        assert "error" not in state, f"server failed to start: {state.get('error')!r}"
        yield url_of(sock)
    finally:
        if "stop" in state:
            trio.from_thread.run_sync(state["stop"].set, trio_token=state["token"])
        thread.join(20)
        sock.close()
        assert not thread.is_alive(), "server thread did not stop"
        assert "error" not in state, f"server failed: {state['error']!r}"
