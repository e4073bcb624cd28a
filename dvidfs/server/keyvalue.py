"""keyvalue endpoints: DVID's API over `KeyValue` (data/keyvalue.py).

    GET  keys                       ["k1", "k2", ...] at this version, byte order
    GET  keyrange/<a>/<b>           keys with a <= key <= b
    GET  keyrangevalues/<a>/<b>     values of those keys: json=true {"k": value, ...},
                                    tar=true (or jsontar=true) a tar of files named by key,
                                    else protobuf KeyValues
    GET  keyvalues                  body: protobuf Keys, or with json=true / tar=true / jsontar=true
                                    a JSON list of keys or of {"key", "byte_start", "byte_end"};
                                    absent keys come back empty ({} in JSON)
    POST keyvalues                  protobuf KeyValues (one atomic write); json=true: {"k": value}
    GET  key/<k>                    the value; `Range: bytes=a-b` -> 206 + Content-Range (416 if
                                    not satisfiable); byte_start & byte_end (inclusive) -> 200
    HEAD key/<k>                    200 if present, 404 if not
    POST key/<k>                    the body is the value (0 bytes too)
    DELETE key/<k>                  a tombstone at this version (200 even if absent, as DVID)

Keys follow data/keyvalue.py: 1..1024 bytes, no "/" and no NUL; a key path
with more segments (a "/", or "%2F") is 400.  An absent key is 404 on `key`;
every other error is 400 (DVID's).  Range headers are read as DVID reads them:
one range `a-b`, `a-` or `-n`; an end past the value is clamped; a start at or
past the end, `-0`, or any range of an empty value is 416 with
`Content-Range: bytes */<size>`; several ranges or a malformed header are
ignored (the whole value, 200).  A range reads only the 1 MiB chunks it
covers, never the whole value.

Where dvidfs differs from DVID, on purpose:

* json=true checks that every value is JSON (400 naming the key) unless
  check=false; DVID checks only with check=true and otherwise may send
  malformed JSON.  Keys in JSON output are escaped properly.
* Batch replies (keyrangevalues, keyvalues) are assembled before they are
  sent, so a failure is a clean 400, never malformed output; they are refused
  (400) above `--http-max-reply`.
* POST keyvalues is one atomic write (DVID stores one key after another) and
  also takes `json=true` with a JSON object {key: value}, each value stored as
  its compact JSON text (a dvidfs extension, the mirror of GET json=true).
* HEAD key answers with no Content-Length of the value (an empty reply).
* Not served: `mutations`, `mutations-range` (no mutation log for keyvalue yet).
"""
from __future__ import annotations

import io
import json
import tarfile

from dvidfs.errors import InvalidInputError, NotFoundError
from dvidfs.formats import protobuf
from dvidfs.server.http import Response, binary_response, json_response
from dvidfs.server.routes import Call, Routes

OCTETS = "application/octet-stream"


# ---------------------------------------------------------------- arguments
def _one_key(c: Call) -> str:
    if not c.args:
        raise InvalidInputError("expect a key after 'key' (…/key/<key>)")
    if len(c.args) > 1:
        raise InvalidInputError(f"key {'/'.join(c.args)!r} contains '/': a key is one URL segment")
    return c.args[0]


def _two_keys(c: Call, endpoint: str) -> tuple[str, str]:
    if len(c.args) != 2:
        raise InvalidInputError(f"expect beginning and end keys to follow {endpoint!r} "
                                f"(…/{endpoint}/<key1>/<key2>)")
    return c.args[0], c.args[1]


def _output(c: Call) -> str:
    """"json", "tar" or "protobuf", from DVID's query flags (only one allowed)."""
    tar = c.req.flag("tar") or c.req.flag("jsontar")
    js = c.req.flag("json")
    if tar and js:
        raise InvalidInputError("can only specify tar or json output, not both")
    return "tar" if tar else "json" if js else "protobuf"


def _check_reply(c: Call, nbytes: int) -> None:
    limit = c.dvid.config.http_max_reply
    if nbytes > limit:
        raise InvalidInputError(f"the reply would hold {nbytes} bytes of values, more than this server's "
                                f"limit of {limit} bytes (DVIDFS_HTTP_MAX_REPLY): ask for fewer keys")


def _uint(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        if isinstance(v, str) and v.isdigit():
            return int(v)
        raise InvalidInputError(f"{what} must be an unsigned integer, got {json.dumps(v)}")
    return v


def _byte_range(key: str, start, end) -> tuple[int, int] | None:
    if start is None and end is None:
        return None
    if start is None or end is None:
        raise InvalidInputError(f"range read for key {key!r} requires both byte_start and byte_end")
    s, e = _uint(start, "byte_start"), _uint(end, "byte_end")
    if s > e:
        raise InvalidInputError(f"byte_start {s} must be <= byte_end {e} for key {key!r}")
    return s, e


def _slice(key: str, value: bytes, rng: tuple[int, int] | None) -> bytes:
    if rng is None:
        return value
    s, e = rng
    if s >= len(value):
        raise InvalidInputError(f"byte_start {s} is outside value for key {key!r} with {len(value)} bytes")
    if e >= len(value):
        raise InvalidInputError(f"byte_end {e} is outside value for key {key!r} with {len(value)} bytes")
    return value[s:e + 1]


# ---------------------------------------------------------------- output formats
def _json_values(items, check: bool) -> Response:
    """{"key": value, ...}: values are JSON text already; empty or absent ones are {}."""
    parts = []
    for key, value, must_check in items:
        if not value:
            value = b"{}"
        elif check or must_check:
            try:
                json.loads(value)
            except (ValueError, UnicodeDecodeError):
                raise InvalidInputError(f"bad JSON for key {key!r}") from None
        parts.append(json.dumps(key).encode() + b":" + value)
    return Response(b"{" + b",".join(parts) + b"}", "application/json")


def _tar(items) -> Response:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for key, value in items:
            value = value or b""
            info = tarfile.TarInfo(key)
            info.size, info.mode = len(value), 0o755
            tf.addfile(info, io.BytesIO(value))
    return binary_response(buf.getvalue(), "application/tar")


def _values_reply(c: Call, fmt: str, items: list[tuple[str, bytes | None, bool]]) -> Response:
    if fmt == "json":
        return _json_values(items, check=c.req.query.get("check", "").lower() != "false")
    if fmt == "tar":
        return _tar((k, v) for k, v, _ in items)
    return binary_response(protobuf.encode_key_values((k, v) for k, v, _ in items))


# ---------------------------------------------------------------- handlers
def _keys(c: Call) -> Response:
    return json_response(c.data.keys(c.view))


def _keyrange(c: Call) -> Response:
    a, b = _two_keys(c, "keyrange")
    return json_response(c.data.keys(c.view, a, b))


def _keyrangevalues(c: Call) -> Response:
    a, b = _two_keys(c, "keyrangevalues")
    fmt = _output(c)
    _check_reply(c, sum(n for _, n in c.data.sizes(c.view, a, b)))
    return _values_reply(c, fmt, [(k, v, False) for k, v in c.data.items(c.view, a, b)])


def _requests_json(c: Call) -> list[tuple[str, tuple[int, int] | None]]:
    body = c.req.json()
    if not isinstance(body, list):
        raise InvalidInputError("the body must be a JSON list of keys or of {\"key\", \"byte_start\", "
                                "\"byte_end\"} objects")
    out = []
    for item in body:
        if isinstance(item, str):
            out.append((item, None))
        elif isinstance(item, dict) and isinstance(item.get("key"), str):
            out.append((item["key"], _byte_range(item["key"], item.get("byte_start"), item.get("byte_end"))))
        else:
            raise InvalidInputError(f"{json.dumps(item)} is neither a key nor a {{\"key\": …}} object")
    return out


def _keyvalues_get(c: Call) -> Response:
    fmt = _output(c)
    if fmt == "protobuf":
        keys, ranges = protobuf.decode_keys(c.req.body)
        asked = [(k, None) for k in keys] + [(k, _byte_range(k, s, e)) for k, s, e in ranges]
    else:
        asked = _requests_json(c)
    sizes = [c.data.size(c.view, k) for k, _ in asked]
    _check_reply(c, sum(n or 0 for n in sizes))
    got = c.data.get_many(c.view, [k for k, _ in asked])
    items = [(k, None if v is None else _slice(k, v, rng), rng is not None)
             for (k, rng), (_, v) in zip(asked, got)]
    return _values_reply(c, fmt, items)


def _keyvalues_post(c: Call) -> Response:
    if c.req.flag("json"):
        body = c.req.json_object()
        items = [(k, json.dumps(v, separators=(",", ":")).encode()) for k, v in body.items()]
    else:
        items = protobuf.decode_key_values(c.req.body)
    c.data.put_many(c.node, items)
    return Response(b"", "text/plain")


def _parse_range(header: str, size: int):
    """DVID's reading of a Range header: (start, end) inclusive, "unsatisfiable",
    or None (ignored: send the whole value)."""
    if not header.startswith("bytes="):
        return None
    spec = header[len("bytes="):].strip()
    if not spec or "," in spec or "-" not in spec:
        return None
    first, last = (p.strip() for p in spec.split("-", 1))
    if not first and not last:
        return None
    if size == 0:
        return "unsatisfiable"
    if (first and not first.isdigit()) or (last and not last.isdigit()):
        return None
    if not first:
        n = int(last)
        return "unsatisfiable" if n == 0 else (max(size - n, 0), size - 1)
    start = int(first)
    if start >= size:
        return "unsatisfiable"
    if not last:
        return start, size - 1
    end = int(last)
    if start > end:
        return None
    return start, min(end, size - 1)


def _key(c: Call) -> Response:
    key = _one_key(c)
    method = c.req.method
    if method == "POST":
        c.data.put(c.node, key, c.req.body)
        return Response(b"", "text/plain")
    if method == "DELETE":
        c.data.delete(c.node, key)
        return Response(b"", "text/plain")
    if method == "HEAD":
        if not c.data.exists(c.view, key):
            raise NotFoundError(f"key {key!r} not found")
        return Response(b"", OCTETS, headers={"Accept-Ranges": "bytes"})
    value = c.data.open_value(c.view, key)
    if value is None:
        raise NotFoundError(f"key {key!r} not found")
    try:
        size = value.size
        header = c.req.headers.get("range", "")
        query = _byte_range(key, c.req.query.get("byte_start"), c.req.query.get("byte_end"))
        if header and query is not None:
            raise InvalidInputError("cannot combine a Range header with byte_start/byte_end")
        headers = {"Accept-Ranges": "bytes"}
        if query is not None:
            s, e = query
            if s >= size or e >= size:
                raise InvalidInputError(f"bytes {s}-{e} are outside the value of key {key!r} "
                                        f"({size} bytes)")
            return Response(value.read(s, e - s + 1), OCTETS, 200, headers)
        rng = _parse_range(header, size) if header else None
        if rng == "unsatisfiable":
            return Response(f"Range {header!r} is not satisfiable for key {key!r} of {size} bytes\n".encode(),
                            "text/plain; charset=utf-8", 416, {"Content-Range": f"bytes */{size}"})
        if rng is not None:
            s, e = rng
            headers["Content-Range"] = f"bytes {s}-{e}/{size}"
            return Response(value.read(s, e - s + 1), OCTETS, 206, headers)
        return Response(value.read(0, size), OCTETS, 200, headers)
    finally:
        value.close()


def register(routes: Routes) -> None:
    kv = "keyvalue"
    routes.endpoint(kv, "keys", "GET", _keys)
    routes.endpoint(kv, "keyrange", "GET", _keyrange)
    routes.endpoint(kv, "keyrangevalues", "GET", _keyrangevalues)
    routes.endpoint(kv, "keyvalues", "GET", _keyvalues_get)
    routes.endpoint(kv, "keyvalues", "POST", _keyvalues_post)
    routes.endpoint(kv, "key", "GET HEAD POST DELETE", _key, missing=404)
