"""Requests, responses and errors of the HTTP front end.

Every failure a handler can meet is a `DvidfsError` (or an `HttpError` a
handler raises on purpose); `status_of` is the one place that turns them into
DVID's status codes.  DVID answers nearly every error with 400 and a plain-text
message — an unknown UUID or instance, a malformed body, a write to a locked
node — and 404 only where a *label* or *key* is absent, which the endpoints
that say so declare (`missing=404` in routes.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from dvidfs.errors import (ConflictError, DvidfsError, InvalidInputError, NoSpaceError, NotFoundError,
                           ReadOnlyError, StoreBusyError, TooLargeError)


class HttpError(Exception):
    """A deliberate HTTP answer other than 200 (status plus a plain-text message)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# DvidfsError subclass -> status.  NotFoundError is 400 here (DVID: unknown ref or
# instance); endpoints about one label or key turn it into 404 (routes.py).
_STATUS: list[tuple[type[DvidfsError], int]] = [
    (NotFoundError, 400),
    (InvalidInputError, 400),
    (ReadOnlyError, 400),       # DVID refuses writes to a locked node with 400
    (ConflictError, 400),
    (TooLargeError, 413),
    (NoSpaceError, 507),        # DVID would say 500; 507 tells a client the disk is full
    (StoreBusyError, 503),
]


def status_of(exc: BaseException, missing: int = 400) -> int:
    """The HTTP status for an exception raised while answering a request."""
    if isinstance(exc, HttpError):
        return exc.status
    if isinstance(exc, NotFoundError):
        return missing
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    if isinstance(exc, DvidfsError):
        return 400
    return 500


@dataclass
class Request:
    """One HTTP request, decoded once: path segments (percent-decoded), the
    query (last value of a repeated name wins, as Go's `Get` does) and the body."""

    method: str
    path: str
    segments: list[str]
    query: dict[str, str]
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_scope(cls, scope: dict, body: bytes) -> "Request":
        path = scope["path"]
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        return cls(scope["method"].upper(), path, [s for s in path.split("/") if s], query, body, headers)

    # -------------------------------------------------------------- query
    def flag(self, name: str) -> bool:
        """DVID's boolean query parameters: `true` (any case) or `1` turn them on."""
        return self.query.get(name, "").lower() in ("true", "1")

    def int_arg(self, name: str, default: int | None = None) -> int | None:
        v = self.query.get(name)
        if v is None or v == "":
            return default
        try:
            return int(v)
        except ValueError:
            raise InvalidInputError(f"query parameter {name}={v!r} is not an integer") from None

    @property
    def user(self) -> str:
        return self.query.get("u", "")

    @property
    def app(self) -> str:
        return self.query.get("app", "")

    # -------------------------------------------------------------- body
    def json(self, required: bool = True) -> Any:
        """The body as JSON (DVID reads JSON bodies on GETs too); a malformed
        or missing body is a 400 that names the problem."""
        if not self.body.strip():
            if required:
                raise InvalidInputError(f"{self.method} {self.path} needs a JSON body")
            return None
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"malformed JSON body: {exc}") from None

    def json_object(self, required: bool = True) -> dict:
        d = self.json(required)
        if d is None:
            return {}
        if not isinstance(d, dict):
            raise InvalidInputError(f"the JSON body must be an object, got {type(d).__name__}")
        return d


@dataclass
class Response:
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj).encode(), "application/json", status)


def text_response(text: str, status: int = 200) -> Response:
    return Response(text.encode(), "text/plain; charset=utf-8", status)


def binary_response(data: bytes, content_type: str = "application/octet-stream",
                    headers: dict[str, str] | None = None) -> Response:
    return Response(data, content_type, 200, headers or {})
