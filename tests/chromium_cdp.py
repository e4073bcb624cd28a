"""Headless Chromium driven over the DevTools protocol on a pipe, for tests.

`chromium --screenshot` takes its picture when a *virtual* time budget runs
out; virtual time does not wait for network fetches or web-worker decoding, so
on a busy 2-core machine the picture could show neuroglancer half-loaded (a
coarse scale, or no chunks). Here the test asks the page itself: it polls a
JavaScript readiness expression and captures the screen only once that holds
(neuroglancer: `viewer.isReady()`-style checks of every layer and panel).

`--remote-debugging-pipe` makes Chromium read commands on fd 3 and write replies
on fd 4, NUL-separated JSON: no port, no websocket library.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from pathlib import Path


class ChromiumError(RuntimeError):
    pass


class Chromium:
    """One headless browser; `with Chromium(binary, profile) as c: c.screenshot(url, ready_js)`."""

    def __init__(self, binary: str, profile: Path, window: tuple[int, int] = (800, 800)):
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()
        args = [binary, "--headless", "--no-sandbox", "--disable-gpu",
                "--use-angle=swiftshader", "--enable-unsafe-swiftshader",   # software WebGL2
                "--disable-background-networking", "--disable-component-update", "--no-first-run",
                "--no-default-browser-check", "--disable-dev-shm-usage",
                f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}",
                "--remote-debugging-pipe", "about:blank"]
        # fds 3 and 4 in the child, set by the shell (no preexec_fn: pytest runs threads)
        shell = f'exec "$@" 3<&{to_child_r} 4>&{from_child_w} {to_child_r}<&- {from_child_w}>&-'
        self.proc = subprocess.Popen(["bash", "-c", shell, "chromium", *args],
                                     pass_fds=(to_child_r, from_child_w),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._next_id = 0

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self._send("Browser.close", timeout=10)
                except (ChromiumError, OSError):
                    pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        finally:
            for fd in (self._to_child, self._from_child):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def stderr_tail(self) -> str:
        """What the browser said (after close), without dbus noise."""
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        text = self.proc.stderr.read().decode(errors="replace")
        return "\n".join(line for line in text.splitlines() if "dbus" not in line)[-3000:]

    # ------------------------------------------------------------------ protocol

    def _send(self, method: str, params: dict | None = None, session: str | None = None,
              timeout: float = 60) -> dict:
        self._next_id += 1
        msg: dict = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise ChromiumError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _read_message(self, deadline: float) -> dict:
        import select
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChromiumError("no reply from chromium in time")
            ready, _, _ = select.select([self._from_child], [], [], left)
            if ready:
                chunk = os.read(self._from_child, 1 << 20)
                if not chunk:
                    raise ChromiumError("chromium closed its debugging pipe")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\0")
        return json.loads(line)

    # ------------------------------------------------------------------ one page

    def screenshot(self, url: str, ready_js: str, timeout: float = 150) -> tuple[bytes, float]:
        """Open `url`, wait until `ready_js` is true on two polls in a row, let two
        animation frames draw, return (PNG bytes, seconds waited). Raises
        ChromiumError if the page never becomes ready within `timeout`."""
        target = self._send("Target.createTarget", {"url": url})["targetId"]
        session = self._send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        start = time.monotonic()
        ready_in_a_row = 0
        last = None
        while ready_in_a_row < 2:
            if time.monotonic() - start > timeout:
                raise ChromiumError(f"page not ready after {timeout:.0f} s (last poll: {last!r})")
            time.sleep(0.25)
            result = self._send("Runtime.evaluate", {"expression": ready_js, "returnByValue": True},
                                session=session)
            last = result.get("result", {}).get("value", result.get("exceptionDetails"))
            ready_in_a_row = ready_in_a_row + 1 if last is True else 0
        frames = "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))"
        self._send("Runtime.evaluate", {"expression": frames, "awaitPromise": True}, session=session)
        png = self._send("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
        return base64.b64decode(png), time.monotonic() - start
