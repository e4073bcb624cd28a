"""The neuroglancer precomputed view over HTTP (read-only):

    GET|HEAD /precomputed/<repo>/<uuid>/<data>/info
    GET|HEAD /precomputed/<repo>/<uuid>/<data>/s<n>/<x0>-<x1>_<y0>-<y1>_<z0>-<z1>

so `precomputed://http://127.0.0.1:8000/precomputed/<repo>/<uuid>/<data>`
opens in neuroglancer and CloudVolume.  <repo> is a repo name or any UUID in
it, <uuid> any node reference (a UUID prefix, `:master`, …).  The bytes are
data/precomputed.py's, the same as the mount's files.  Anything absent (repo,
node, instance, scale, a name that is not a chunk of the grid) is 404, which
neuroglancer takes as background; CORS headers come with every reply
(server/app.py).  Chunks of committed nodes never change: they are sent
cacheable for good; those of open nodes with `no-cache`.
"""
from __future__ import annotations

from dvidfs.core import Dvid
from dvidfs.data.precomputed import Precomputed
from dvidfs.errors import NotFoundError
from dvidfs.server.http import HttpError, Request, Response, binary_response, json_response
from dvidfs.server.routes import Routes

IMMUTABLE = "public, max-age=31536000, immutable"


def _precomputed(dvid: Dvid, req: Request, args: list[str]) -> Response:
    if len(args) < 4:
        raise HttpError(404, "use /precomputed/<repo>/<uuid>/<data>/info or …/<data>/<scale>/<chunk>")
    repo_ref, node_ref, name, rest = args[0], args[1], args[2], args[3:]
    node = dvid.node(node_ref, dvid.repo(repo_ref))
    data = dvid.data(node, name)
    if "volume" not in data.offers:
        raise NotFoundError(f"{name!r} is not a volume: it has no precomputed view")
    pc = Precomputed(data, dvid.view(node))
    cache = {"Cache-Control": IMMUTABLE if node.locked else "no-cache"}
    if rest == ["info"]:
        resp = json_response(pc.info())
        resp.headers.update(cache)
        return resp
    scale = pc.scale(rest[0]) if len(rest) == 2 else None
    box = scale.parse(rest[1]) if scale is not None else None
    if box is None:
        raise NotFoundError(f"no {'/'.join(rest)!r} in the precomputed view of {name!r}")
    return binary_response(pc.chunk(scale, box), "application/octet-stream", cache)


def register(routes: Routes) -> None:
    routes.prefix_route("precomputed", "GET", _precomputed)
