"""annotation and labelsz endpoints: DVID's API over `Annotation` and `LabelSz` (data/annotation.py).

annotation (`/api/node/<uuid>/<ann>/…`):

    POST   elements                         [element, …]: add or replace (by position)
    GET    elements/<size>/<offset>         the elements inside the box (sizes "nx_ny_nz", offset "x_y_z")
    GET    blocks/<size>/<offset>           {"x,y,z": [element, …]} for the blocks meeting the box
    POST   blocks                           the same JSON: elements stored in their blocks (each must lie
                                            in the block it is listed under)
    GET    all-elements                     blocks/ over everything
    GET    element/<x_y_z>                  one element (dvidfs addition; 404 when there is none)
    DELETE element/<x_y_z>                  delete it and the relationships pointing at it
    POST   move/<x_y_z>/<x_y_z>             move it; partners' relationships follow
    GET    label/<id>[?relationships=true|verbose]   the elements whose voxel is in body <id>
                                            (needs a sync; see data/annotation.py for how)
    GET    tag/<tag>[?relationships=true|verbose]    the elements with that tag
    POST   sync[?replace=true]              {"sync": "<labels>"}
    POST   reload                           accepted, nothing to do (no denormalisation is kept)

labelsz (`/api/node/<uuid>/<lsz>/…`, synced with an annotation: POST sync {"sync": "<ann>"}):

    GET    count/<label>/<type>             {"Label": id, "<type>": n}; type PostSyn, PreSyn, Gap, Note,
                                            AllSyn or Voxels
    GET    counts/<type>                    body: [id, …] -> [{"Label": id, "<type>": n}, …]
    GET    top/<N>/<type>                   the N labels with most, largest first
    GET    threshold/<T>/<type>[?offset=&n=]   labels with at least T, largest first, paged

Errors are DVID's 400 (bad JSON, kind, position; a write to a committed node;
an element that is not there).  Differences from DVID: POST labels (DVID's
bulk load of its label denormalisation) is refused, as dvidfs keeps none;
the syncs are versioned (data/annotation.py).
"""
from __future__ import annotations

from dvidfs.data.annotation import (check_elements, check_point, parse_point, synced_annotation,
                                    synced_labels)
from dvidfs.errors import InvalidInputError, NotFoundError
from dvidfs.server.http import Response, json_response
from dvidfs.server.routes import Call, Routes
from dvidfs.server.volumes import _ints


def _ok() -> Response:
    return Response(b"", "text/plain")


def _box(c: Call, endpoint: str) -> tuple[list[int], list[int]]:
    if len(c.args) < 2:
        raise InvalidInputError(f"'{endpoint}' must be followed by <size>/<offset> (e.g. 64_64_64/0_0_0)")
    return _ints(c.args[1], 3, "offset"), _ints(c.args[0], 3, "size")


def _rels(c: Call) -> str:
    v = c.req.query.get("relationships", "").lower()
    return v if v in ("true", "verbose") else ""


def _with_rels(c: Call, elems: list) -> list:
    mode = _rels(c)
    return c.data.verbose(c.view, elems) if mode == "verbose" else elems


# ---------------------------------------------------------------- annotation
def _elements(c: Call) -> Response:
    if c.req.method == "POST":
        c.data.put_elements(c.node, c.req.json())
        return _ok()
    offset, size = _box(c, "elements")
    return json_response(c.data.elements_in(c.view, offset, size))


def _blocks(c: Call) -> Response:
    if c.req.method == "POST":
        body = c.req.json()
        if not isinstance(body, dict):
            raise InvalidInputError('POST blocks expects {"x,y,z": [element, …], …}')
        elems = []
        for key, listed in body.items():
            bc = check_point(_block_key(key), "block")
            for e in check_elements(listed):
                if c.data.block_of(tuple(e["Pos"])) != bc:
                    raise InvalidInputError(f"element at {e['Pos']} is listed under block {key!r} but lies in "
                                            f"block {','.join(map(str, c.data.block_of(tuple(e['Pos']))))}")
                elems.append(e)
        c.data.put_elements(c.node, elems)
        return _ok()
    offset, size = _box(c, "blocks")
    return json_response(c.data.blocks(c.view, offset, size))


def _block_key(key: str) -> list[int]:
    try:
        return [int(v) for v in key.split(",")]
    except ValueError:
        raise InvalidInputError(f"block key {key!r} must be 'x,y,z' integers") from None


def _all_elements(c: Call) -> Response:
    return json_response(c.data.blocks(c.view))


def _element(c: Call) -> Response:
    if not c.args:
        raise InvalidInputError("'element' must be followed by the element's position x_y_z")
    pos = parse_point(c.args[0], "position")
    if c.req.method == "DELETE":
        c.data.delete_element(c.node, pos)
        return _ok()
    e = c.data.element(c.view, pos)
    if e is None:
        raise NotFoundError(f"no annotation element at {list(pos)}")
    return json_response(e)


def _move(c: Call) -> Response:
    if len(c.args) < 2:
        raise InvalidInputError("'move' must be followed by <from x_y_z>/<to x_y_z>")
    c.data.move_element(c.node, parse_point(c.args[0], "from"), parse_point(c.args[1], "to"))
    return _ok()


def _label_id(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise InvalidInputError(f"label {text!r} is not an integer") from None
    if not 0 < v < 2**64:
        raise InvalidInputError(f"label {v}: labels are 1..2^64-1 (0 is background)")
    return v


def _label(c: Call) -> Response:
    if not c.args:
        raise InvalidInputError("'label' must be followed by a label id")
    body = _label_id(c.args[0])
    labels = synced_labels(c.dvid, c.node, c.data)
    elems = c.data.label_elements(c.view, labels, body, rels=bool(_rels(c)))
    return json_response(_with_rels(c, elems))


def _labels(c: Call) -> Response:
    raise InvalidInputError("POST labels (DVID's load of its label denormalisation) is not served: dvidfs "
                            "computes label queries from the synced labels; POST elements instead")


def _tag(c: Call) -> Response:
    if not c.args:
        raise InvalidInputError("'tag' must be followed by a tag")
    return json_response(_with_rels(c, c.data.tag_elements(c.view, c.args[0], rels=bool(_rels(c)))))


def _sync(c: Call) -> Response:
    body = c.req.json_object()
    if "sync" not in body:
        raise InvalidInputError('sync expects {"sync": "<instance name>"}')
    c.data.set_sync(c.node, body["sync"], replace=c.req.flag("replace"))
    return _ok()


def _reload(c: Call) -> Response:
    return _ok()


# ---------------------------------------------------------------- labelsz
def _count(c: Call) -> Response:
    if len(c.args) < 2:
        raise InvalidInputError("'count' must be followed by <label>/<index type>")
    body = _label_id(c.args[0])
    ann, labels = synced_annotation(c.dvid, c.node, c.data)
    return json_response({"Label": body, c.args[1]: c.data.count(c.view, ann, labels, body, c.args[1])})


def _counts(c: Call) -> Response:
    if not c.args:
        raise InvalidInputError("'counts' must be followed by <index type>")
    ids = c.req.json()
    if not isinstance(ids, list):
        raise InvalidInputError("counts expects a JSON list of labels in the body")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise InvalidInputError("counts expects a JSON list of integer labels in the body")
    bodies = [_label_id(str(i)) for i in ids]
    ann, labels = synced_annotation(c.dvid, c.node, c.data)
    t = c.args[0]
    return json_response([{"Label": b, t: c.data.count(c.view, ann, labels, b, t)} for b in bodies])


def _top(c: Call) -> Response:
    if len(c.args) < 2:
        raise InvalidInputError("'top' must be followed by <N>/<index type>")
    try:
        n = int(c.args[0])
    except ValueError:
        raise InvalidInputError(f"top N {c.args[0]!r} is not an integer") from None
    if n < 0:
        raise InvalidInputError(f"top N {n} must not be negative")
    ann, labels = synced_annotation(c.dvid, c.node, c.data)
    t = c.args[1]
    return json_response([{"Label": b, t: k} for b, k in c.data.ranked(c.view, ann, labels, t)[:n]])


def _threshold(c: Call) -> Response:
    if len(c.args) < 2:
        raise InvalidInputError("'threshold' must be followed by <T>/<index type>")
    try:
        least = int(c.args[0])
    except ValueError:
        raise InvalidInputError(f"threshold {c.args[0]!r} is not an integer") from None
    offset = c.req.int_arg("offset", 0)
    n = c.req.int_arg("n", 10000)
    if offset < 0 or n < 0:
        raise InvalidInputError("offset and n must not be negative")
    ann, labels = synced_annotation(c.dvid, c.node, c.data)
    t = c.args[1]
    ranked = [(b, k) for b, k in c.data.ranked(c.view, ann, labels, t) if k >= least]
    return json_response([{"Label": b, t: k} for b, k in ranked[offset:offset + n]])


def register(routes: Routes) -> None:
    a = "annotation"
    routes.endpoint(a, "elements", "GET POST", _elements)
    routes.endpoint(a, "blocks", "GET POST", _blocks)
    routes.endpoint(a, "all-elements", "GET", _all_elements)
    routes.endpoint(a, "element", "GET", _element, missing=404)
    routes.endpoint(a, "element", "DELETE", _element)   # DVID: 400 when there is none
    routes.endpoint(a, "move", "POST", _move)
    routes.endpoint(a, "label", "GET", _label)
    routes.endpoint(a, "labels", "POST", _labels)
    routes.endpoint(a, "tag", "GET", _tag)
    routes.endpoint(a, "reload", "POST", _reload, writes=False)
    routes.endpoint("annotation labelsz", "sync", "POST", _sync)
    routes.endpoint("labelsz", "count", "GET", _count)
    routes.endpoint("labelsz", "counts", "GET POST", _counts, writes=False)
    routes.endpoint("labelsz", "top", "GET", _top)
    routes.endpoint("labelsz", "threshold", "GET", _threshold)
