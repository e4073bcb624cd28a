"""The ASGI application: one request -> one handler call in a worker thread.

Why threads: handlers assemble voxels, encode PNGs and scan LevelDB; all of
it would stall trio's loop (and with it the FUSE mount sharing the process).
`trio.to_thread.run_sync` runs each handler with a bounded number of threads
(`Config.http_threads`); numpy, zlib and the native block copier release the
GIL, so several requests make progress at once.  Routes marked `inline`
(small, bounded work: node status, a few stored blocks) are answered on the
loop instead: the hop to a thread and back costs ~0.4 ms of CPU per request
(measured: docs/http.md), more than such an answer.

Bodies are read whole before the handler runs, never more than
`Config.http_max_body` bytes: a bigger one is answered 413 without reading the
rest, so no client can make the server buffer more than that.
"""
from __future__ import annotations

import logging
import traceback

import trio

from dvidfs.core import Dvid
from dvidfs.server.http import HttpError, Request, Response, status_of, text_response
from dvidfs.server.routes import Bound, Routes

log = logging.getLogger("dvidfs.server")

CORS_HEADERS = [(b"access-control-allow-origin", b"*"),
                (b"access-control-allow-methods", b"GET, POST, PUT, DELETE, HEAD, OPTIONS"),
                (b"access-control-allow-headers", b"Authorization, Content-Type, Range"),
                (b"access-control-expose-headers", b"Content-Length, Content-Range, Content-Encoding")]


def default_routes() -> Routes:
    """Every endpoint dvidfs serves: each handler module lists its own."""
    from dvidfs.server import annotation, keyvalue, labelmap, repos, roi, volumes
    from dvidfs.server import precomputed, transfer
    routes = Routes()
    for module in (repos, volumes, labelmap, keyvalue, roi, annotation):
        module.register(routes)
    precomputed.register(routes)   # /precomputed/…: neuroglancer's format, beside /api/
    transfer.register(routes)      # /api/dvidfs/…: push into and pull from this store (not DVID's)
    return routes


class DvidApp:
    """ASGI app over a `Dvid`.  `handle(request)` answers synchronously (the
    worker-thread part), so tests of single handlers need no server."""

    def __init__(self, dvid: Dvid, routes: Routes | None = None, *, threads: int | None = None,
                 max_body: int | None = None, cors: bool = True):
        self.dvid = dvid
        self.routes = routes or default_routes()
        cfg = dvid.config
        self.max_body = max_body if max_body is not None else cfg.http_max_body
        self.limiter = trio.CapacityLimiter(threads or cfg.http_threads)
        self.cors = cors

    # ------------------------------------------------------------ synchronous core
    def handle(self, req: Request) -> Response:
        bound = self.resolve(req)
        return bound if isinstance(bound, Response) else self.answer(req, bound)

    def resolve(self, req: Request) -> Bound | Response:
        """The handler for `req` (refs and instance resolved), or the error reply."""
        try:
            return self.routes.resolve(self.dvid, req)
        except Exception as exc:
            return self._error(req, exc, 400)

    def answer(self, req: Request, bound: Bound) -> Response:
        try:
            return bound.call()
        except Exception as exc:
            return self._error(req, exc, bound.route.missing)

    def _error(self, req: Request, exc: Exception, missing: int) -> Response:
        """Every failure becomes a status and one readable line."""
        status = status_of(exc, missing)
        if status >= 500 and not isinstance(exc, HttpError):
            log.error("%s %s failed:\n%s", req.method, req.path, traceback.format_exc())
            msg = str(exc) if hasattr(exc, "errno") and str(exc) else f"internal error: {exc!r}"
            return text_response(f"{msg}\n", status)
        return text_response(f"{getattr(exc, 'message', None) or exc}\n", status)

    # ------------------------------------------------------------ ASGI
    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if scope["method"] == "OPTIONS":  # CORS preflight, answered for every path
            await self._send(send, Response(b"", status=204), head=False)
            return
        body = await self._read_body(scope, receive)
        if body is None:  # the client went away mid-body: never act on part of a request
            return
        if isinstance(body, Response):
            await self._send(send, body, head=False)
            return
        req = Request.from_scope(scope, body)
        bound = self.resolve(req)  # dict lookups: cheap enough for the loop
        if isinstance(bound, Response):
            resp = bound
        elif bound.inline:
            resp = self.answer(req, bound)
        else:
            resp = await trio.to_thread.run_sync(self.answer, req, bound, limiter=self.limiter)
        await self._send(send, resp, head=req.method == "HEAD")

    async def _read_body(self, scope, receive) -> bytes | Response | None:
        """The whole body; a 413 reply when it is too large; None when the client
        disconnected before sending all of it (a cut-off value must not be stored)."""
        for k, v in scope.get("headers", []):
            if k.lower() == b"content-length" and v.isdigit() and int(v) > self.max_body:
                return text_response(f"request body of {int(v)} bytes is larger than the server's limit "
                                     f"of {self.max_body} bytes (DVIDFS_HTTP_MAX_BODY)\n", 413)
        chunks, total = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return None
            chunk = msg.get("body", b"")
            total += len(chunk)
            if total > self.max_body:
                return text_response(f"request body is larger than the server's limit of {self.max_body} "
                                     "bytes (DVIDFS_HTTP_MAX_BODY)\n", 413)
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        return b"".join(chunks)

    async def _send(self, send, resp: Response, head: bool) -> None:
        headers = [(b"content-type", resp.content_type.encode()),
                   (b"content-length", str(len(resp.body)).encode())]
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers.items()]
        if self.cors:
            headers += CORS_HEADERS
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else resp.body})

    @staticmethod
    async def _lifespan(receive, send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
