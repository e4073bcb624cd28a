"""The URL tree of DVID's API and the tables that say who answers what.

DVID's paths have four shapes, and so has this router:

    /api/<server path…>                           server routes (help, server/info, repos…)
    /api/repo/<ref>/<action>[/<arg>…]             repo routes (handler gets the repo's node)
    /api/node/<ref>/<action>                      node routes (commit, branch, note, log…)
    /api/node/<ref>/<data>/<endpoint>[/<arg>…]    instance endpoints, per data type
    /<prefix>/<arg>…                              other trees (`prefix_route`: /precomputed/…)

Handler modules (repos.py, volumes.py, labelmap.py) list their handlers in a
`register(routes)` function — explicit lines, no import-time side effects.
Resolving a ref or an instance name happens here, before any handler runs, so
an unknown UUID or instance is always DVID's 400.  Endpoints that write are
refused on a locked node here too (DVID: 400), before their handler reads a byte.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from dvidfs.core import Dvid
from dvidfs.data.types import DataType
from dvidfs.errors import ReadOnlyError
from dvidfs.server.http import HttpError, Request, Response
from dvidfs.versions.model import Node

# dvidfs type names <-> the TypeName strings DVID's clients look for
DVID_TYPENAME = {"grayscale": "uint8blk", "labels": "labelmap", "keyvalue": "keyvalue", "roi": "roi",
                 "annotation": "annotation", "labelsz": "labelsz"}
OUR_TYPENAME = {v: k for k, v in DVID_TYPENAME.items()}
WRITE_METHODS = frozenset({"POST", "PUT", "DELETE"})

ServerHandler = Callable[[Dvid, Request, list[str]], Response]
NodeHandler = Callable[[Dvid, Request, Node, list[str]], Response]


@dataclass(frozen=True)
class Call:
    """What an instance endpoint's handler gets: the core, the request, the
    resolved node and data object, and the path segments after the endpoint."""

    dvid: Dvid
    req: Request
    node: Node
    data: DataType
    args: list[str]

    @property
    def view(self):
        return self.dvid.view(self.node)


InstanceHandler = Callable[[Call], Response]


@dataclass(frozen=True)
class Route:
    handler: Callable
    missing: int = 400        # status when the handler finds its label/key absent
    writes: bool = False      # refused on a locked node before the handler runs
    # Answer on the event loop instead of a worker thread: for requests whose work is
    # small and bounded (no fsync, no voxel decoding), where the thread hop would cost
    # more than the answer (~0.4 ms of CPU per request, see docs/http.md).  True, or a
    # predicate of the instance endpoint's Call.
    inline: bool | Callable[["Call"], bool] = False


@dataclass(frozen=True)
class Bound:
    """A resolved request: call it to answer."""

    route: Route
    call: Callable[[], Response]
    inline: bool = False


class Routes:
    def __init__(self) -> None:
        self.server: dict[tuple[str, ...], dict[str, Route]] = {}
        self.repo: dict[str, dict[str, Route]] = {}
        self.repo_data: dict[str, Route] = {}   # /api/repo/<ref>/<dataname> (DVID's DELETE)
        self.node: dict[str, dict[str, Route]] = {}
        self.instance: dict[tuple[str, str], dict[str, Route]] = {}
        self.prefix: dict[str, dict[str, Route]] = {}

    # ------------------------------------------------------------ registration
    def server_route(self, path: str, methods: str, handler: ServerHandler, inline: bool = False) -> None:
        """`path` like "server/info" (after /api/); args are the segments after it."""
        self._add(self.server.setdefault(tuple(path.split("/")), {}), methods, Route(handler, inline=inline))

    def repo_route(self, action: str, methods: str, handler: NodeHandler, inline: bool = False) -> None:
        self._add(self.repo.setdefault(action, {}), methods, Route(handler, inline=inline))

    def repo_data_route(self, methods: str, handler: NodeHandler) -> None:
        """/api/repo/<ref>/<dataname>: the handler gets [dataname] (a method no
        repo action of that name takes)."""
        self._add(self.repo_data, methods, Route(handler))

    def node_route(self, action: str, methods: str, handler: NodeHandler, inline: bool = False) -> None:
        self._add(self.node.setdefault(action, {}), methods, Route(handler, inline=inline))

    def prefix_route(self, prefix: str, methods: str, handler: ServerHandler, missing: int = 404) -> None:
        """A tree of its own outside /api/ (e.g. "precomputed"): the handler gets
        the segments after the prefix; absent things answer `missing`."""
        self._add(self.prefix.setdefault(prefix, {}), methods, Route(handler, missing))

    def endpoint(self, typenames: str, name: str, methods: str, handler: InstanceHandler,
                 missing: int = 400, writes: bool | None = None,
                 inline: bool | Callable[[Call], bool] = False) -> None:
        """`typenames`: our type names, space separated ("grayscale labels");
        `methods`: "GET HEAD POST"; `writes` defaults to "the verb is POST/PUT/DELETE"."""
        for t in typenames.split():
            table = self.instance.setdefault((t, name), {})
            for m in methods.split():
                w = (m in WRITE_METHODS) if writes is None else writes
                self._add(table, m, Route(handler, missing, w, inline and not w))

    @staticmethod
    def _add(table: dict[str, Route], methods: str, route: Route) -> None:
        for m in methods.split():
            if m in table:
                raise ValueError(f"two handlers for {m}")
            table[m] = route

    # ------------------------------------------------------------ resolution
    def resolve(self, dvid: Dvid, req: Request) -> Bound:
        seg = req.segments
        if seg and seg[0] in self.prefix:
            route = self._method(self.prefix[seg[0]], req)
            return Bound(route, lambda: route.handler(dvid, req, seg[1:]))
        if len(seg) < 2 or seg[0] != "api":
            raise HttpError(404, f"no such route: {req.path} (DVID's API lives under /api/)")
        kind = seg[1]
        if kind == "repo" and len(seg) >= 3:
            return self._repo(dvid, req, seg)
        if kind == "node" and len(seg) >= 4:
            return self._node(dvid, req, seg)
        for n in range(len(seg) - 1, 0, -1):  # longest fixed server path first
            table = self.server.get(tuple(seg[1:1 + n]))
            if table is not None:
                route = self._method(table, req)
                args = seg[1 + n:]
                return Bound(route, lambda: route.handler(dvid, req, args), route.inline is True)
        raise HttpError(404, f"no such route: {req.path}")

    def _repo(self, dvid: Dvid, req: Request, seg: list[str]) -> Bound:
        action = seg[3] if len(seg) > 3 else ""
        table = self.repo.get(action)
        data_route = self.repo_data.get(req.method) if len(seg) == 4 else None
        if data_route is not None and (table is None or req.method not in table):
            node = dvid.node(seg[2])
            return Bound(data_route, lambda: data_route.handler(dvid, req, node, [action]))
        if table is None:
            raise HttpError(400, f"unknown repo action {action!r} (known: {', '.join(sorted(self.repo))})")
        route = self._method(table, req)
        node = dvid.node(seg[2])
        return Bound(route, lambda: route.handler(dvid, req, node, seg[4:]), route.inline is True)

    def _node(self, dvid: Dvid, req: Request, seg: list[str]) -> Bound:
        node = dvid.node(seg[2])
        name = seg[3]
        table = self.node.get(name) if len(seg) == 4 else None
        if table is not None:
            route = self._method(table, req)
            return Bound(route, lambda: route.handler(dvid, req, node, []), route.inline is True)
        if len(seg) < 5:
            raise HttpError(400, f"{req.path}: name an endpoint of data instance {name!r} "
                                 f"(/api/node/<uuid>/{name}/<endpoint>) or a node action "
                                 f"({', '.join(sorted(self.node))})")
        data = dvid.data(node, name)
        endpoint = seg[4]
        table = self.instance.get((data.typename, endpoint))
        if table is None:
            known = sorted(e for t, e in self.instance if t == data.typename)
            raise HttpError(400, f"data instance {name!r} ({DVID_TYPENAME.get(data.typename, data.typename)}) "
                                 f"has no endpoint {endpoint!r}; known: {', '.join(known)}")
        route = self._method(table, req)
        if route.writes and node.locked:
            raise ReadOnlyError(f"node {node.uuid} is locked (committed): {req.method} {endpoint} is "
                                "refused; make a child node (branch/newversion) to change data")
        call = Call(dvid, req, node, data, seg[5:])
        inline = route.inline(call) if callable(route.inline) else route.inline
        return Bound(route, lambda: route.handler(call), bool(inline))

    @staticmethod
    def _method(table: dict[str, Route], req: Request) -> Route:
        route = table.get(req.method)
        if route is None and req.method == "HEAD":
            route = table.get("GET")  # HEAD of a GET: same status and headers, no body
        if route is None:
            raise HttpError(405 if req.method not in ("GET", "POST", "HEAD", "DELETE", "PUT") else 400,
                            f"{req.method} is not supported here (use {', '.join(sorted(table))})")
        return route
