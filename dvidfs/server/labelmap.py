"""labelmap bodies, edits and ids: DVID's body endpoints over `Labels` (data/labels.py).

    GET|HEAD sparsevol/<label>     format=rles|srles|blocks, minx..maxz, scale, exact,
                                   compression=lz4|gzip (rles), supervoxels; HEAD: 200 / 204
    GET  sparsevol-coarse/<label>  block-coordinate rles; minx..maxz, supervoxels
    GET  sparsevol-size/<label>    {"voxels", "numblocks", "minvoxel", "maxvoxel"}; supervoxels
    GET  size/<label>              {"voxels": n}; supervoxels
    GET  sizes                     JSON body [id, ...] -> [n, ...] (0 = absent); supervoxels, hash
    GET  supervoxels/<label>       [sv, ...]
    GET  supervoxel-sizes/<label>  {"supervoxels": [...], "sizes": [...]}
    GET  mapping                   JSON body [sv, ...] -> [body, ...] (0 = no such id); nolookup, hash
    GET  lastmod/<label>           {"mutation id", "last mod user", "last mod app", "last mod time"}
    GET  listlabels                uint64 stream of ids (and sizes with sizes=true); start, number
    GET  maxlabel | nextlabel      {"maxlabel": n} | {"nextlabel": n}
    POST nextlabel/<count>         reserves ids -> {"start", "end"}
    POST merge                     [target, other, ...] -> {"MutationID"}
    POST cleave/<body>             [sv, ...] -> {"CleavedLabel", "MutationID"}
    POST split/<body>              rles body -> {"label", "MutationID"}
    GET  mutations                 the mutation records; userid=

Status codes as DVID: label 0 and every malformed argument or body is 400 (and
an edit then changes nothing); an absent label is 404 on the endpoints that
name one label for reading (missing=404 below), 400 on edits.  `u=` and `app=`
are recorded in each edit's mutation record.

Where dvidfs differs from DVID, on purpose:

* `split/<body>` is on (DVID ships it switched off).  The split voxels get one
  new id, as supervoxel and body; the rest keep theirs (DVID gives both parts
  new supervoxel ids).  Splitting off the whole body is allowed (a renumber);
  DVID refuses a split as large as the body.
* GET sparsevol with no voxel of the label inside the bounds, or none left at a
  coarse scale, is 404 (DVID: 404 when no *block* is inside, else an empty 200).
  Bounds are always applied exactly, `exact=false` included, and for every
  format (DVID's `blocks` only screens whole blocks).  Unknown `format=` or
  `compression=` values are 400 (DVID falls back to rles / fails mid-stream).
* scale=N sparsevols are computed from level 0 (data/downres.py: mode of the
  supervoxels per 2x2x2, ties to the smaller id) since there is no stored
  pyramid; DVID reads its stored level N, whose ties differ.
* HEAD sparsevol: bounds are level-0 voxels and `scale` is ignored, as in DVID;
  an absent label is 204, as in DVID.  With supervoxels=true only the
  supervoxel's own blocks count (DVID looks at its whole body's).
* lastmod comes from the mutation log: the newest merge/split/cleave naming the
  body; a body no edit touched answers mutation id 0 and empty strings (DVID
  also stamps voxel writes).
* GET mutations lists the records of this node *and its ancestors* (DVID: this
  node only); no "-complete" actions, records carry `Action` merge/split/cleave.
* nextlabel ignores DVID's admin-set NextLabel/ceiling (set-nextlabel is not
  served): reservations always start above the repo-wide max label.  GET
  maxlabel of an instance with no labels yet is {"maxlabel": 0} (DVID: 400).
* A label listed twice in a merge or cleave is 400 (DVID uses the set).
* Not served: sparsevol-by-point, sparsevols-coarse, split-supervoxel,
  renumber, mappings, index/indices, history, mutations-range, POST maxlabel,
  set-nextlabel.
"""
from __future__ import annotations

import gzip
import hashlib

import lz4.block
import numpy as np

from dvidfs.errors import InvalidInputError, NotFoundError
from dvidfs.formats import sparsevol as sv
from dvidfs.formats.binaryblocks import encode_binary_blocks
from dvidfs.server.http import Response, binary_response, json_response
from dvidfs.server.routes import Call, Routes

U64_MAX = 2**64 - 1
MAX_LISTED = 10_000_000          # DVID's cap on one listlabels answer
FORMATS = ("rles", "srles", "blocks")
BOUNDS = (("minx", "maxx"), ("miny", "maxy"), ("minz", "maxz"))


# ---------------------------------------------------------------- arguments
def _uint64(text: str, what: str) -> int:
    """A decimal uint64 as DVID's strconv.ParseUint reads it (no sign, no spaces)."""
    if not text.isdigit() or int(text) > U64_MAX:
        raise InvalidInputError(f"{what} {text!r} is not a uint64 label id")
    return int(text)


def _label(c: Call) -> int:
    """The <label> after the endpoint name; 0 is background and never a body."""
    endpoint = c.req.segments[4]
    if not c.args or not c.args[0]:
        raise InvalidInputError(f"{endpoint} needs a label: {endpoint}/<label>")
    label = _uint64(c.args[0], "label")
    if label == 0:
        raise InvalidInputError(f"label 0 is the background and cannot be used with {endpoint}")
    return label


def _ids(value, what: str) -> list[int]:
    """A JSON array of uint64 ids (JSON booleans and fractions are not ids)."""
    if not isinstance(value, list):
        raise InvalidInputError(f"{what} must be a JSON array of label ids")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= U64_MAX:
            raise InvalidInputError(f"{what}: {v!r} is not a uint64 label id")
    return value


def _body_ids(c: Call, what: str) -> list[int]:
    """The request body as a list of ids, after DVID's optional `hash` check."""
    want = c.req.query.get("hash")
    if want and hashlib.md5(c.req.body).hexdigest() != want.lower():
        raise InvalidInputError(f"the body's MD5 hash is not hash={want}")
    return _ids(c.req.json(), what)


def _bounds(c: Call) -> tuple[tuple | None, tuple | None]:
    """DVID's optional minx..maxz (inclusive); (None, None) when none is given."""
    lo = tuple(c.req.int_arg(a) for a, _ in BOUNDS)
    hi = tuple(c.req.int_arg(b) for _, b in BOUNDS)
    return (None if lo == (None,) * 3 else lo), (None if hi == (None,) * 3 else hi)


def _scale(c: Call) -> int:
    scale = c.req.int_arg("scale", 0)
    if scale < 0:
        raise InvalidInputError(f"scale={scale}: scales are 0 or more")
    return scale


def _choice(c: Call, name: str, allowed: tuple[str, ...], default: str) -> str:
    value = c.req.query.get(name) or default
    if value not in allowed:
        raise InvalidInputError(f"{name}={value!r} is not one of {', '.join(a or '(none)' for a in allowed)}")
    return value


# ---------------------------------------------------------------- sparse volumes
def _sparsevol(c: Call) -> Response:
    label = _label(c)
    svs = c.req.flag("supervoxels")
    lo, hi = _bounds(c)
    if c.req.method == "HEAD":
        found = c.data.has_voxels_in(c.view, label, lo, hi, svs)
        return Response(b"", "text/html", 200 if found else 204)
    fmt = _choice(c, "format", FORMATS, "rles")
    compression = _choice(c, "compression", ("", "lz4", "gzip"), "")
    scale = _scale(c)
    if fmt == "blocks":
        return _blocks_reply(c, label, lo, hi, scale, svs)
    runs = c.data.sparsevol_runs(c.view, label, lo, hi, scale=scale, supervoxels=svs)
    if not len(runs):
        raise NotFoundError(f"label {label} has no voxels within the bounds at scale {scale}")
    if fmt == "srles":
        return binary_response(sv.encode_srles(runs))
    return binary_response(_compress(sv.encode_rles(runs), compression))


def _blocks_reply(c: Call, label: int, lo, hi, scale: int, svs: bool) -> Response:
    size = c.data.grid.size
    masks = ((tuple(b * s for b, s in zip(bcoord, size)), mask)
             for bcoord, mask in c.data.body_masks(c.view, label, lo, hi, scale=scale, supervoxels=svs))
    data = encode_binary_blocks(label, masks)
    if not data:
        raise NotFoundError(f"label {label} has no voxels within the bounds at scale {scale}")
    return binary_response(data)


def _compress(data: bytes, how: str) -> bytes:
    """DVID's sparsevol compression: a raw lz4 block (no size prefix) or a gzip stream."""
    if how == "lz4":
        return lz4.block.compress(data, store_size=False)
    if how == "gzip":
        return gzip.compress(data)
    return data


def _sparsevol_coarse(c: Call) -> Response:
    label = _label(c)
    lo, hi = _bounds(c)
    runs = c.data.coarse_runs(c.view, label, lo, hi, c.req.flag("supervoxels"))
    if not len(runs):
        raise NotFoundError(f"label {label} has no blocks within the bounds")
    return binary_response(sv.encode_rles(runs))


def _sparsevol_size(c: Call) -> Response:
    return json_response(c.data.sparsevol_size(c.view, _label(c), c.req.flag("supervoxels")))


# ---------------------------------------------------------------- sizes and supervoxels
def _size(c: Call) -> Response:
    label = _label(c)
    (n,) = c.data.sizes(c.view, [label], c.req.flag("supervoxels"))
    if not n:
        raise NotFoundError(f"label {label} does not exist at this node")
    return json_response({"voxels": n})


def _sizes(c: Call) -> Response:
    ids = _body_ids(c, "sizes")
    return json_response(c.data.sizes(c.view, ids, c.req.flag("supervoxels")))


def _supervoxels(c: Call) -> Response:
    return json_response(c.data.supervoxels(c.view, _label(c)).tolist())


def _supervoxel_sizes(c: Call) -> Response:
    svs, sizes = c.data.supervoxel_sizes(c.view, _label(c))
    return json_response({"supervoxels": svs, "sizes": sizes})


def _mapping(c: Call) -> Response:
    ids = _body_ids(c, "mapping")
    return json_response(c.data.map_supervoxels(c.view, ids, verify=not c.req.flag("nolookup")))


def _lastmod(c: Call) -> Response:
    return json_response(c.data.lastmod(c.view, _label(c)))


def _listlabels(c: Call) -> Response:
    start = _uint64(c.req.query.get("start") or "0", "start")
    number = min(_uint64(c.req.query.get("number") or str(MAX_LISTED), "number"), MAX_LISTED)
    sizes = c.req.flag("sizes")
    rows = c.data.list_bodies(c.view, start, number, sizes) if number else []
    flat = [v for row in rows for v in (row if sizes else row[:1])]
    return binary_response(np.array(flat, "<u8").tobytes())


# ---------------------------------------------------------------- ids
def _maxlabel(c: Call) -> Response:
    return json_response({"maxlabel": c.data.max_label(c.view)})


def _nextlabel(c: Call) -> Response:
    return json_response({"nextlabel": c.data.next_label()})


def _reserve(c: Call) -> Response:
    if not c.args or not c.args[0]:
        raise InvalidInputError("POST nextlabel needs the number of labels: nextlabel/<count>")
    count = _uint64(c.args[0], "count")
    start, end = c.data.reserve_labels(c.node, count)
    return json_response({"start": start, "end": end})


# ---------------------------------------------------------------- edits
def _merge(c: Call) -> Response:
    ids = _body_ids(c, "merge")
    if len(ids) < 2:
        raise InvalidInputError("merge needs [target, label, ...]: at least two label ids")
    rec = c.data.merge(c.node, ids[0], ids[1:], c.req.user, c.req.app)
    return json_response({"MutationID": rec["MutationID"]})


def _cleave(c: Call) -> Response:
    body = _label(c)
    svs = _body_ids(c, "cleave")
    rec = c.data.cleave(c.node, body, svs, c.req.user, c.req.app)
    return json_response({"CleavedLabel": rec["CleavedLabel"], "MutationID": rec["MutationID"]})


def _split(c: Call) -> Response:
    body = _label(c)
    rec = c.data.split(c.node, body, c.req.body, c.req.user, c.req.app)
    return json_response({"label": rec["NewLabel"], "MutationID": rec["MutationID"]})


def _mutations(c: Call) -> Response:
    recs = c.data.mutations(c.view)
    user = c.req.query.get("userid")
    if user:
        recs = [r for r in recs if r.get("User") == user]
    return json_response(recs)


def register(routes: Routes) -> None:
    lm = "labels"
    for name, handler in (("sparsevol", _sparsevol), ("sparsevol-coarse", _sparsevol_coarse),
                          ("sparsevol-size", _sparsevol_size), ("size", _size),
                          ("supervoxels", _supervoxels), ("supervoxel-sizes", _supervoxel_sizes),
                          ("lastmod", _lastmod)):
        routes.endpoint(lm, name, "GET HEAD" if name == "sparsevol" else "GET", handler, missing=404)
    routes.endpoint(lm, "sizes", "GET", _sizes)
    routes.endpoint(lm, "mapping", "GET", _mapping)
    routes.endpoint(lm, "listlabels", "GET", _listlabels)
    routes.endpoint(lm, "maxlabel", "GET", _maxlabel)
    routes.endpoint(lm, "nextlabel", "GET", _nextlabel)
    routes.endpoint(lm, "nextlabel", "POST", _reserve)
    routes.endpoint(lm, "merge", "POST", _merge)
    routes.endpoint(lm, "cleave", "POST", _cleave)
    routes.endpoint(lm, "split", "POST", _split)
    routes.endpoint(lm, "mutations", "GET", _mutations)
