"""roi endpoints: DVID's API over `Roi` (data/roi.py).

    GET    roi                              [[z, y, x0, x1], ...] block spans, sorted by z, y, x0
    POST   roi                              the same JSON: *replaces* the ROI at this node (DVID's)
    DELETE roi                              removes every span at this node
    GET    mask/0_1_2/<size>/<offset>       uint8 [z][y][x] of the box (sizes "nx_ny_nz",
                                            offset "x_y_z"): 1 inside the ROI, 0 outside
    POST   ptquery                          [[x, y, z], ...] voxel points -> [true, false, ...];
                                            allowed on committed nodes (it reads only)
    GET    partition?batchsize=N            DVID's simple partition: {NumTotalBlocks, NumActiveBlocks,
                                            NumSubvolumes, ROI{MinChunk, MaxChunk}, Subvolumes[{MinPoint,
                                            MaxPoint, MinChunk, MaxChunk, TotalBlocks, ActiveBlocks}]}
                                            (batchsize defaults to 8, as DVID's help says)

Errors are DVID's 400.  Where dvidfs differs from DVID, on purpose:

* overlapping spans of one row are joined (GET returns them once); DVID keeps
  both.  Spans that do not overlap come back exactly as posted.
* a bad span (not 4 integers, x1 < x0, outside int32) refuses the whole POST
  with nothing changed; DVID may have deleted the old ROI already.
* a mask above `--http-max-reply` bytes is refused (400) before it is made.
* GET roi never answers 206 (an ROI is never "still being built": writes are atomic).
* partition: ROI MinChunk/MaxChunk are the ROI's true block extents (DVID's
  x and y start from 0), a z gap wider than a layer does not shift the layers
  after it (data/roi.py `partition`); `optimized=true` is not served (400):
  DVID's optimized partition can extend a subvolume of another row.
"""
from __future__ import annotations

from dvidfs.errors import InvalidInputError
from dvidfs.server.http import Response, binary_response, json_response
from dvidfs.server.routes import Call, Routes
from dvidfs.server.volumes import _ints


def _roi(c: Call) -> Response:
    method = c.req.method
    if method == "POST":
        c.data.put_spans(c.node, c.req.json())
        return Response(b"", "text/plain")
    if method == "DELETE":
        c.data.delete(c.node)
        return Response(b"", "text/plain")
    return json_response([list(s) for s in c.data.spans(c.view)])


def _mask(c: Call) -> Response:
    if len(c.args) < 3:
        raise InvalidInputError("'mask' must be followed by 0_1_2/<size>/<offset>")
    if c.args[0] != "0_1_2":
        raise InvalidInputError(f"shape {c.args[0]!r}: only 3-D masks ('0_1_2') are supported")
    size = _ints(c.args[1], 3, "size")
    offset = _ints(c.args[2], 3, "offset")
    if min(size) < 1:
        raise InvalidInputError(f"size {c.args[1]!r} must be positive in x, y and z")
    nbytes = size[0] * size[1] * size[2]
    limit = c.dvid.config.http_max_reply
    if nbytes > limit:
        raise InvalidInputError(f"the mask would be {nbytes} bytes, more than this server's limit of "
                                f"{limit} bytes (DVIDFS_HTTP_MAX_REPLY): ask for a smaller box")
    return binary_response(c.data.mask(c.view, offset, size).tobytes())


def _ptquery(c: Call) -> Response:
    if c.req.method != "POST":
        raise InvalidInputError("ptquery requires POST with a list of points")
    return json_response(c.data.ptquery(c.view, c.req.json()))


def _partition(c: Call) -> Response:
    if c.req.flag("optimized") or c.req.query.get("optimized", "").lower() == "on":
        raise InvalidInputError("optimized=true partitions are not served by dvidfs; leave out optimized "
                                "for DVID's simple grid partition")
    return json_response(c.data.partition(c.view, c.req.int_arg("batchsize", 8)))


def register(routes: Routes) -> None:
    routes.endpoint("roi", "roi", "GET POST DELETE", _roi)
    routes.endpoint("roi", "mask", "GET", _mask)
    routes.endpoint("roi", "ptquery", "POST", _ptquery, writes=False)
    routes.endpoint("roi", "ptquery", "GET", _ptquery)
    routes.endpoint("roi", "partition", "GET", _partition)
