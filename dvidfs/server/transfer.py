"""dvidfs-only endpoints: push into and pull from a served store, and the
HTTP client side of both (`HttpReceiver`, `HttpSender`).

A served store is held by the server process (LevelDB admits one), so the
remote half of a push or pull runs inside the server, on its own `Dvid`:

    GET  /api/dvidfs/push/state            what the store has (nodes, repos, instance ids, reservations)
    POST /api/dvidfs/push/reserve          {"names": [[name, counter], …]} -> {"ids": […]}
    POST /api/dvidfs/push/put              records (below) of reserved versions -> {"keys": n}
    POST /api/dvidfs/push/finish           a node's finish request (JSON) -> {"node", "version", "repo_created"}
    GET  /api/dvidfs/pull/plan             {"nodes": [ref…], "branch", "repo"} -> what a pull sends
    GET  /api/dvidfs/pull/count            {"nodes": [uuid…]} -> {"changes": [n…]}
    GET  /api/dvidfs/pull/<uuid>/records?after=<hex>&keys=N&bytes=M
                                           one page of the node's records; headers
                                           X-Dvidfs-Next (hex key to continue after, empty: last page)
                                           and X-Dvidfs-Changes (change entries in the page)

For a push the server runs `LocalReceiver` (push.py), for a pull
`LocalSender`; the client runs `transfer` (push.py), the one place ids are
mapped.  Records are a binary body: per record, key length u32 BE, key,
value length u32 BE, value.  A malformed body, or a key that is not a data,
change-index or tombstone key of a version reserved by an unfinished push, is
refused with 400 before anything is written.
"""
from __future__ import annotations

import http.client
import json
import struct
from urllib.parse import quote, urlencode, urlsplit

from dvidfs.core import Dvid
from dvidfs.errors import DvidfsError, InvalidInputError
from dvidfs.push import BATCH_BYTES, BATCH_KEYS, LocalReceiver, LocalSender
from dvidfs.server.http import Request, Response, binary_response, json_response
from dvidfs.server.routes import Routes

_LEN = struct.Struct(">I")
MAX_PAGE_BYTES = 256 << 20     # the largest page of records a pull may ask for


# ---------------------------------------------------------------- the records format
def encode_records(pairs: list[tuple[bytes, bytes]]) -> bytes:
    parts = []
    pack = _LEN.pack
    for k, v in pairs:
        parts += (pack(len(k)), k, pack(len(v)), v)
    return b"".join(parts)


def decode_records(body: bytes) -> list[tuple[bytes, bytes]]:
    """The records of a body; InvalidInputError (400) when it is cut short or overlong."""
    out = []
    mv, i, n = memoryview(body), 0, len(body)
    unpack = _LEN.unpack_from
    while i < n:
        if i + 4 > n:
            raise InvalidInputError(f"malformed records: a length cut short at byte {i}")
        kl = unpack(body, i)[0]
        i += 4
        if kl == 0 or i + kl + 4 > n:
            raise InvalidInputError(f"malformed records: a key of {kl} bytes at byte {i} overruns the body")
        k = bytes(mv[i:i + kl])
        i += kl
        vl = unpack(body, i)[0]
        i += 4
        if i + vl > n:
            raise InvalidInputError(f"malformed records: a value of {vl} bytes at byte {i} overruns the body")
        out.append((k, bytes(mv[i:i + vl])))
        i += vl
    return out


# ---------------------------------------------------------------- the endpoints
def _state(dvid: Dvid, req: Request, args: list[str]) -> Response:
    return json_response(LocalReceiver(dvid).state())


def _reserve(dvid: Dvid, req: Request, args: list[str]) -> Response:
    names = req.json_object().get("names")
    if not isinstance(names, list) or not all(isinstance(x, list) and len(x) == 2 for x in names):
        raise InvalidInputError('reserve needs {"names": [[name, counter], …]}')
    return json_response({"ids": LocalReceiver(dvid).reserve([(a, b) for a, b in names])})


def _put(dvid: Dvid, req: Request, args: list[str]) -> Response:
    return json_response({"keys": LocalReceiver(dvid).put(decode_records(req.body))})


def _finish(dvid: Dvid, req: Request, args: list[str]) -> Response:
    return json_response(LocalReceiver(dvid).finish(req.json_object()))


def _plan(dvid: Dvid, req: Request, args: list[str]) -> Response:
    d = req.json_object(required=False)
    refs, branch, repo = d.get("nodes") or None, d.get("branch"), d.get("repo")
    if refs is not None and not (isinstance(refs, list) and all(isinstance(r, str) for r in refs)):
        raise InvalidInputError('"nodes" must be a list of node references')
    for name, v in (("branch", branch), ("repo", repo)):
        if v is not None and not isinstance(v, str):
            raise InvalidInputError(f'"{name}" must be a string')
    return json_response(LocalSender(dvid).plan(refs, branch, repo))


def _count(dvid: Dvid, req: Request, args: list[str]) -> Response:
    uuids = req.json_object().get("nodes")
    if not isinstance(uuids, list) or not all(isinstance(u, str) for u in uuids):
        raise InvalidInputError('count needs {"nodes": [uuid, …]}')
    return json_response({"changes": LocalSender(dvid).count(uuids)})


def _records(dvid: Dvid, req: Request, args: list[str]) -> Response:
    if len(args) != 2 or args[1] != "records":
        raise InvalidInputError("use /api/dvidfs/pull/<uuid>/records?after=<hex>")
    try:
        after = bytes.fromhex(req.query["after"]) if req.query.get("after") else None
    except ValueError:
        raise InvalidInputError("after= must be a hex key") from None
    max_keys = req.int_arg("keys", BATCH_KEYS)
    max_bytes = req.int_arg("bytes", BATCH_BYTES)
    if not (0 < max_keys <= 1_000_000 and 0 < max_bytes <= MAX_PAGE_BYTES):
        raise InvalidInputError(f"keys= must be 1..1000000 and bytes= 1..{MAX_PAGE_BYTES}")
    pairs, nxt, changes = LocalSender(dvid).page(args[0], after, max_keys, max_bytes)
    return binary_response(encode_records(pairs), headers={
        "X-Dvidfs-Next": nxt.hex() if nxt is not None else "", "X-Dvidfs-Changes": str(changes)})


def register(routes: Routes) -> None:
    routes.server_route("dvidfs/push/state", "GET", _state)
    routes.server_route("dvidfs/push/reserve", "POST", _reserve)
    routes.server_route("dvidfs/push/put", "POST", _put)
    routes.server_route("dvidfs/push/finish", "POST", _finish)
    routes.server_route("dvidfs/pull/plan", "GET POST", _plan)
    routes.server_route("dvidfs/pull/count", "GET POST", _count)
    routes.server_route("dvidfs/pull", "GET", _records)


# ---------------------------------------------------------------- the client side
def is_url(where: str) -> bool:
    return where.startswith(("http://", "https://"))


class RemoteStore:
    """One keep-alive connection to a `dvidfs serve`; a reply other than 200
    raises a DvidfsError carrying the server's one-line message."""

    def __init__(self, url: str, timeout: float = 600.0):
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise InvalidInputError(f"{url!r} is not an http(s):// URL of a dvidfs serve")
        self.url = url.rstrip("/")
        self._cls = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
        self._host, self._port = u.hostname, u.port
        self._base = u.path.rstrip("/")
        self._timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str, body: bytes | None = None, query: dict | None = None,
                content_type: str = "application/octet-stream") -> tuple[http.client.HTTPResponse, bytes]:
        target = self._base + path + ("?" + urlencode(query) if query else "")
        headers = {"Content-Type": content_type} if body is not None else {}
        for attempt in (0, 1):
            fresh = self._conn is None
            if fresh:
                self._conn = self._cls(self._host, self._port, timeout=self._timeout)
            try:
                self._conn.request(method, target, body=body, headers=headers)
                resp = self._conn.getresponse()
                data = resp.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()   # a keep-alive connection the server closed meanwhile: once more, afresh
                if fresh or attempt:
                    raise DvidfsError(f"{self.url}: {exc or type(exc).__name__}") from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise DvidfsError(f"cannot reach {self.url}: {exc}") from None
        if resp.status != 200:
            msg = data.decode("utf-8", "replace").strip() or resp.reason
            raise DvidfsError(f"{self.url}: {msg} (HTTP {resp.status})")
        return resp, data

    def json(self, method: str, path: str, obj=None):
        body = json.dumps(obj).encode() if obj is not None else None
        return json.loads(self.request(method, path, body, content_type="application/json")[1])


class HttpReceiver:
    """The `Receiver` of a push into a served store (the server runs `LocalReceiver`)."""

    def __init__(self, url: str):
        self.remote = RemoteStore(url)

    def state(self) -> dict:
        return self.remote.json("GET", "/api/dvidfs/push/state")

    def reserve(self, names: list[tuple[str, str]]) -> list[int]:
        return self.remote.json("POST", "/api/dvidfs/push/reserve", {"names": [list(x) for x in names]})["ids"]

    def put(self, pairs: list[tuple[bytes, bytes]]) -> int:
        return json.loads(self.remote.request("POST", "/api/dvidfs/push/put", encode_records(pairs))[1])["keys"]

    def finish(self, spec: dict) -> dict:
        return self.remote.json("POST", "/api/dvidfs/push/finish", spec)

    def close(self) -> None:
        self.remote.close()


class HttpSender:
    """The `Sender` of a pull from a served store (the server runs `LocalSender`)."""

    def __init__(self, url: str):
        self.remote = RemoteStore(url)

    def plan(self, refs: list[str] | None, branch: str | None, repo: str | None) -> dict:
        return self.remote.json("POST", "/api/dvidfs/pull/plan", {"nodes": refs, "branch": branch, "repo": repo})

    def count(self, uuids: list[str]) -> list[int]:
        return self.remote.json("POST", "/api/dvidfs/pull/count", {"nodes": uuids})["changes"]

    def page(self, uuid: str, after: bytes | None, max_keys: int = BATCH_KEYS,
             max_bytes: int = BATCH_BYTES) -> tuple[list[tuple[bytes, bytes]], bytes | None, int]:
        q = {"keys": max_keys, "bytes": max_bytes}
        if after is not None:
            q["after"] = after.hex()
        resp, data = self.remote.request("GET", f"/api/dvidfs/pull/{quote(uuid)}/records", query=q)
        nxt = resp.getheader("X-Dvidfs-Next", "")
        return decode_records(data), bytes.fromhex(nxt) if nxt else None, int(resp.getheader("X-Dvidfs-Changes", "0"))

    def close(self) -> None:
        self.remote.close()
