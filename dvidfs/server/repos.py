"""Server, repo and node endpoints: DVID's `/api/server/*`, `/api/repos*`,
`/api/repo/<ref>/*` and `/api/node/<ref>/<action>` (JSON field names and
status codes as DVID's server/web.go has them)."""
from __future__ import annotations

import os
import time
from importlib.metadata import version as _package_version

from dvidfs.core import Dvid
from dvidfs.errors import InvalidInputError
from dvidfs.server.http import Request, Response, json_response, text_response
from dvidfs.server.instances import create_instance, dvid_info
from dvidfs.server.routes import DVID_TYPENAME, Routes
from dvidfs.versions.model import Node

STARTED = time.time()
__version__ = _package_version("dvidfs")

HELP = """dvidfs {version}: DVID's HTTP API over a dvidfs store.

  GET  /api/server/info | /api/server/types | /api/heartbeat
  GET  /api/repos/info                      every repo (keyed by root UUID)
  POST /api/repos                           {{"alias", "description"}} -> {{"root"}}
  GET  /api/repo/<uuid>/info                one repo; POST changes alias/description
  DELETE /api/repo/<uuid>?imsure=true       delete the repo (root UUID); /<dataname>?imsure=true: an instance
  POST /api/repo/<uuid>/instance            {{"typename": "uint8blk|labelmap", "dataname"}}
  GET  /api/repo/<uuid>/branch-versions/<branch>
  POST /api/repo/<uuid>/merge               {{"parents": [...], "note"}}
  POST /api/repo/<uuid>/resolve             {{"data": [...], "parents": [priority order], "note"}}
  GET|POST /api/repo/<uuid>/log
  GET  /api/node/<uuid>/status              POST commit | branch | newversion | tag; GET|POST note | log
  GET  /api/node/<uuid>/<data>/info         and the type's endpoints: /api/node/<uuid>/<data>/help

<uuid> is any unique prefix, prefix:branch, :branch (one repo), a tag, with ~N for ancestors.
Every endpoint and where dvidfs differs from DVID: docs/http.md.
"""


def _help(dvid: Dvid, req: Request, args: list[str]) -> Response:
    return text_response(HELP.format(version=__version__))


def _server_info(dvid: Dvid, req: Request, args: list[str]) -> Response:
    return json_response({"Cores": str(os.cpu_count()), "Maximum Cores": str(os.cpu_count()),
                          "DVID Version": f"dvidfs {__version__}", "Datastore Version": "dvidfs-1",
                          "Storage backend": type(dvid.engine).__name__, "Server type": "dvidfs",
                          "Server uptime": f"{time.time() - STARTED:.0f}s", "Mode": ""})


def _server_types(dvid: Dvid, req: Request, args: list[str]) -> Response:
    return json_response({t: f"github.com/janelia-flyem/dvid/datatype/{t}" for t in DVID_TYPENAME.values()})


def _heartbeat(dvid: Dvid, req: Request, args: list[str]) -> Response:
    return text_response("")


def _repos_info(dvid: Dvid, req: Request, args: list[str]) -> Response:
    return json_response({r.root: _repo_json(dvid, r) for r in dvid.repos()})


def _repo_json(dvid: Dvid, repo) -> dict:
    return dvid.repo_info(repo, lambda node, name: dvid_info(dvid, node, name))


def _new_repo(dvid: Dvid, req: Request, args: list[str]) -> Response:
    d = req.json_object(required=False)
    alias = d.get("alias") or ""
    if not isinstance(alias, str) or not alias:
        raise InvalidInputError('a new repo needs an "alias" (its name)')
    repo = dvid.new_repo(alias, str(d.get("description", "")), d.get("root") or None)
    return json_response({"root": repo.root})


# ---------------------------------------------------------------- repo routes
def _repo_head(dvid: Dvid, req: Request, node: Node, args: list[str]) -> Response:
    return text_response("")


def _repo_info(dvid: Dvid, req: Request, node: Node, args: list[str]) -> Response:
    return json_response(_repo_json(dvid, dvid.repo_of(node)))


def _repo_info_post(dvid: Dvid, req: Request, node: Node, args: list[str]) -> Response:
    d = req.json_object()
    repo = dvid.repo_of(node)
    for k in ("alias", "description"):
        if k in d and not isinstance(d[k], str):
            raise InvalidInputError(f'"{k}" must be a string')
    dvid.update_repo(repo, alias=d.get("alias"), description=d.get("description"))
    return text_response("")


def _new_instance(dvid: Dvid, req: Request, node: Node, args: list[str]) -> Response:
    return json_response({"result": create_instance(dvid, node, req.json_object())})


def _strings(value, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise InvalidInputError(f'"{what}" must be a list of strings')
    return value


def _repo_log(dvid: Dvid, req: Request, node: Node, args: list[str]) -> Response:
    return json_response({"log": list(dvid.repo_of(node).log)})


def _repo_log_post(dvid: Dvid, req: Request, node: Node, args: list[str]) -> Response:
    dvid.update_repo(dvid.repo_of(node), log_lines=_strings(req.json_object().get("log"), "log"))
    return text_response("")


def _branch_versions(dvid: Dvid, req: Request, node: Node, args: list[str]) -> Response:
    """[leaf, ..., root] along the branch's first parents (DVID's order)."""
    if len(args) != 1:
        raise InvalidInputError("use /api/repo/<uuid>/branch-versions/<branch name>")
    n = dvid.branch_tip(dvid.repo_of(node), args[0])
    out = [n.uuid]
    while n.parents:
        n = dvid.node_by_uuid(n.parents[0])
        out.append(n.uuid)
    return json_response(out)


def _merge(dvid: Dvid, req: Request, node: Node, args: list[str]) -> Response:
    d = req.json_object()
    kind = d.get("mergeType", "conflict-free")
    if kind != "conflict-free":
        raise InvalidInputError(f'mergeType {kind!r}: dvidfs merges "conflict-free" only')
    parents = [dvid.node(r, dvid.repo_of(node)) for r in _strings(d.get("parents"), "parents")]
    child = dvid.merge(parents, str(d.get("note", "")))
    return json_response({"child": child.uuid})


def _resolve(dvid: Dvid, req: Request, node: Node, args: list[str]) -> Response:
    """DVID's resolve: parents in priority order, conflicts of the instances in
    "data" taken from the first parent that changed them.  DVID answers after
    running it in the background; here the answer comes when the node exists."""
    d = req.json_object()
    names = _strings(d.get("data"), "data")
    if not names:
        raise InvalidInputError('resolve needs at least one data instance in "data"')
    refs = _strings(d.get("parents"), "parents")
    if len(refs) < 2:
        raise InvalidInputError('resolve needs at least two parent UUIDs in "parents"')
    parents = [dvid.node(r, dvid.repo_of(node)) for r in refs]
    child = dvid.resolve(parents, str(d.get("note", "")), data=names)
    return json_response({"child": child.uuid})


def _imsure(req: Request, what: str) -> None:
    if not req.flag("imsure"):
        raise InvalidInputError(f"deleting {what} is for good: add ?imsure=true to the request")


def _delete_repo(dvid: Dvid, req: Request, node: Node, args: list[str]) -> Response:
    """DVID's DELETE /api/repo/<uuid>?imsure=true: the repo, every node and instance
    (data keys removed in the background, as DVID does)."""
    repo = dvid.repo_of(node)
    _imsure(req, f"repo {repo.alias!r}")
    if node.uuid != repo.root:
        raise InvalidInputError(f"give the repo's root UUID ({repo.root}) to delete repo {repo.alias!r}")
    dvid.delete_repo(repo)
    return text_response(f"Started deletion of repo {repo.root}")


def _delete_data(dvid: Dvid, req: Request, node: Node, args: list[str]) -> Response:
    """DVID's DELETE /api/repo/<uuid>/<dataname>?imsure=true: the instance in every
    node of the repo (data keys removed in the background)."""
    name = args[0]
    repo = dvid.repo_of(node)
    _imsure(req, f"data instance {name!r}")
    dvid.delete_instance(repo, name)
    return text_response(f"Started deletion of data instance {name!r} from repo {repo.root}")


# ---------------------------------------------------------------- node routes
def _status(dvid: Dvid, req: Request, node: Node, args: list[str]) -> Response:
    return json_response({"Locked": node.locked})


def _commit(dvid: Dvid, req: Request, node: Node, args: list[str]) -> Response:
    d = req.json_object(required=False)
    log = _strings(d.get("log", []), "log")
    dvid.commit(node, str(d.get("note", "")), log)
    return json_response({"committed": node.uuid})


def _branch(dvid: Dvid, req: Request, node: Node, args: list[str]) -> Response:
    d = req.json_object()
    name = d.get("branch")
    if not isinstance(name, str) or not name or name == "master":
        raise InvalidInputError('a new branch needs a "branch" name (not empty, not "master")')
    child = dvid.branch(node, name, str(d.get("note", "")), d.get("uuid") or None)
    return json_response({"child": child.uuid})


def _newversion(dvid: Dvid, req: Request, node: Node, args: list[str]) -> Response:
    d = req.json_object(required=False)
    child = dvid.branch(node, None, str(d.get("note", "")), d.get("uuid") or None)
    return json_response({"child": child.uuid})


def _tag(dvid: Dvid, req: Request, node: Node, args: list[str]) -> Response:
    """DVID's tag: {"tag", "note"?} -> {"child"}.  DVID's child UUID is the tag
    string; here it is a UUID, and the tag resolves wherever a UUID is taken."""
    d = req.json_object()
    name = d.get("tag")
    if not isinstance(name, str) or not name:
        raise InvalidInputError('a tag needs a "tag" name')
    child = dvid.tag(node, name, str(d.get("note", "")))
    return json_response({"child": child.uuid})


def _note(dvid: Dvid, req: Request, node: Node, args: list[str]) -> Response:
    return json_response({"note": node.note})


def _note_post(dvid: Dvid, req: Request, node: Node, args: list[str]) -> Response:
    note = req.json_object().get("note")
    if not isinstance(note, str):
        raise InvalidInputError('POST note needs {"note": "<text>"}')
    dvid.set_note(node, note)
    return text_response("")


def _node_log(dvid: Dvid, req: Request, node: Node, args: list[str]) -> Response:
    return json_response({"log": list(node.log)})


def _node_log_post(dvid: Dvid, req: Request, node: Node, args: list[str]) -> Response:
    dvid.append_log(node, _strings(req.json_object().get("log"), "log"))
    return text_response("")


def register(routes: Routes) -> None:
    from dvidfs.server import instances
    routes.server_route("help", "GET", _help, inline=True)
    routes.server_route("server/info", "GET", _server_info, inline=True)
    routes.server_route("server/types", "GET", _server_types, inline=True)
    routes.server_route("heartbeat", "GET", _heartbeat, inline=True)
    routes.server_route("repos/info", "GET", _repos_info)
    routes.server_route("repos", "GET", _repos_info)
    routes.server_route("repos", "POST", _new_repo)
    routes.repo_route("", "HEAD GET", _repo_head, inline=True)
    routes.repo_route("", "DELETE", _delete_repo)
    routes.repo_data_route("DELETE", _delete_data)
    routes.repo_route("info", "GET", _repo_info)
    routes.repo_route("info", "POST", _repo_info_post)
    routes.repo_route("instance", "POST", _new_instance)
    routes.repo_route("log", "GET", _repo_log, inline=True)
    routes.repo_route("log", "POST", _repo_log_post)
    routes.repo_route("branch-versions", "GET", _branch_versions, inline=True)
    routes.repo_route("merge", "POST", _merge)
    routes.repo_route("resolve", "POST", _resolve)
    routes.node_route("status", "GET", _status, inline=True)
    routes.node_route("commit", "GET", _status, inline=True)
    routes.node_route("commit", "POST", _commit)
    routes.node_route("branch", "POST", _branch)
    routes.node_route("newversion", "POST", _newversion)
    routes.node_route("tag", "POST", _tag)
    routes.node_route("note", "GET", _note, inline=True)
    routes.node_route("note", "POST", _note_post)
    routes.node_route("log", "GET", _node_log, inline=True)
    routes.node_route("log", "POST", _node_log_post)
    instances.register(routes)
