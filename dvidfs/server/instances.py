"""Instance info as DVID's clients read it, and instance creation from DVID's JSON.

Our data types report their info in DVID's field names already; what differs
is the vocabulary a client checks: TypeName `uint8blk`/`labelmap` (neuroglancer
refuses `grayscale`), `Values[0].Label`, `Compression` as DVID words it, and
`MaxDownresLevel`: the levels a client may ask for with `scale=N` — the stored
pyramid levels (data/pyramid.py), but at least 5, computed on demand from the
highest stored level (data/downres.py) where not stored.  Clients choose their
scale from it (dvidtools and neuroglancer fail on 0; dvid-point-cloud's
auto-scale refuses a scale above it), so it is never fewer than before stored
pyramids existed.  `StoredDownresLevel` (a dvidfs addition) says how many are stored.
"""
from __future__ import annotations

import json

from dvidfs.core import Dvid
from dvidfs.errors import InvalidInputError
from dvidfs.server.http import Response, json_response, text_response
from dvidfs.server.routes import DVID_TYPENAME, OUR_TYPENAME, Call, Routes
from dvidfs.versions.model import Node

COMPRESSION = "LZ4 compression, level -1"
# The least MaxDownresLevel reported: levels above the stored ones are computed
# on demand from the highest stored level (2x mode, as DVID downsamples labels).
MIN_DOWNRES_LEVEL = 5


def dvid_info(dvid: Dvid, node: Node, name: str) -> dict:
    """The instance's info JSON in DVID's vocabulary, as seen from `node`."""
    data = dvid.data(node, name)
    info = data.info(dvid.view(node))
    base, ext = info["Base"], info["Extended"]
    typename = DVID_TYPENAME.get(data.typename, data.typename)
    base.update({"TypeName": typename, "TypeURL": f"github.com/janelia-flyem/dvid/datatype/{typename}",
                 "TypeVersion": "0.1", "DataUUID": f"{base['RepoUUID']}-{data.inst.id}",
                 "Compression": COMPRESSION if "volume" in data.offers else "No compression",
                 "Checksum": "No checksum", "Syncs": [],
                 "KVStore": "leveldb", "LogStore": "", "Tags": {}})
    if "volume" not in data.offers:  # keyvalue: DVID's Extended is {}; roi: BlockSize, MinZ, MaxZ
        return info
    dtype = ext.get("Values", [{}])[0].get("DataType", "")
    ext["Values"] = [{"DataType": dtype, "Label": "labelmap" if typename == "labelmap" else dtype}]
    units = ext.get("VoxelUnits")
    if isinstance(units, str):
        ext["VoxelUnits"] = [units] * 3
    ext["Interpolable"] = typename != "labelmap"
    ext["Background"] = 0
    bs = ext.get("BlockSize")
    if ext.get("MinPoint") is not None and bs:
        ext["MinIndex"] = [p // b for p, b in zip(ext["MinPoint"], bs)]
        ext["MaxIndex"] = [p // b for p, b in zip(ext["MaxPoint"], bs)]
    if typename == "labelmap":
        stored = int(ext.get("MaxDownresLevel") or 0)
        ext["StoredDownresLevel"] = stored
        ext["MaxDownresLevel"] = max(stored, MIN_DOWNRES_LEVEL)
        ext["MaxRepoLabel"] = data.repo_max_label()
        ext["MaxLabel"] = {str(node.version_id): ext.get("MaxLabel", 0)}
    return info


def _config_value(d: dict, key: str):
    """DVID's instance-config JSON: keys case-insensitive, every value a string."""
    for k, v in d.items():
        if k.lower() == key.lower():
            if not isinstance(v, str):
                raise InvalidInputError(f"instance setting {k!r} must be a JSON string as DVID requires "
                                        f"(e.g. \"{k}\": \"{v}\"), got {json.dumps(v)}")
            return v
    return None


def _triple(text: str, cast, what: str):
    parts = [p for p in text.replace(" ", "").split(",") if p]
    try:
        vals = [cast(p) for p in parts]
    except ValueError:
        raise InvalidInputError(f"{what} {text!r} must be numbers separated by commas") from None
    if len(vals) == 1:
        vals *= 3
    if len(vals) != 3:
        raise InvalidInputError(f"{what} {text!r} must have 1 or 3 values")
    return vals


def create_instance(dvid: Dvid, node: Node, body: dict) -> str:
    """POST /api/repo/<ref>/instance: make the instance; returns DVID's result text."""
    typename = _config_value(body, "typename")
    name = _config_value(body, "dataname")
    if not typename or not name:
        raise InvalidInputError('instance creation needs "typename" and "dataname"')
    ours = OUR_TYPENAME.get(typename, typename if typename in DVID_TYPENAME else None)
    if ours is None:
        raise InvalidInputError(f"type {typename!r} is not served by dvidfs (it has "
                                f"{', '.join(sorted(OUR_TYPENAME))})")
    if (_config_value(body, "versioned") or "true").lower() == "false":
        raise InvalidInputError('"versioned": "false" is not supported: every dvidfs instance is versioned')
    opts: dict = {}
    bs = _config_value(body, "BlockSize")
    if bs:
        sizes = _triple(bs, int, "BlockSize")
        if ours == "roi":  # DVID's ROI blocks may differ per axis
            opts["block_size"] = sizes
        elif len(set(sizes)) != 1:
            raise InvalidInputError(f"BlockSize {bs!r}: dvidfs blocks are cubes")
        else:
            opts["block_size"] = sizes[0]
    vs = _config_value(body, "VoxelSize")
    if vs:
        opts["voxel_size"] = _triple(vs, float, "VoxelSize")
    vu = _config_value(body, "VoxelUnits")
    if vu:
        opts["voxel_units"] = vu.split(",")[0].strip()
    dvid.new_instance(node, name, ours, **opts)
    return f"Added {name} [{DVID_TYPENAME.get(ours, ours)}] to node {node.uuid}"


def _info(c: Call) -> Response:
    return json_response(dvid_info(c.dvid, c.node, c.data.inst.name))


def _help(c: Call) -> Response:
    typename = DVID_TYPENAME.get(c.data.typename, c.data.typename)
    return text_response(f"{typename} data instance {c.data.inst.name!r}: see docs/http.md in dvidfs for "
                         "the endpoints served and how they differ from DVID.\n")


def _tags(c: Call) -> Response:
    return json_response({"Tags": {}})


def register(routes: Routes) -> None:
    every = " ".join(DVID_TYPENAME)
    routes.endpoint(every, "info", "GET", _info)
    routes.endpoint(every, "help", "GET", _help)
    routes.endpoint(every, "tags", "GET", _tags)
