"""The `dvidfs` command: a thin front end over the core (`dvidfs.core.Dvid`).

Every user error (a `DvidfsError`, a missing file) prints one line
`dvidfs: error: …` and exits 1; tracebacks are for bugs only.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from dvidfs.allocator import tune_allocator
from dvidfs.config import Config
from dvidfs.errors import ConflictError, DvidfsError, InvalidInputError


def _triple(text: str, cast, what: str) -> tuple:
    """'x,y,z' (or one number for all three) as a tuple of `cast`."""
    try:
        parts = [cast(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not x,y,z {what}") from None
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"{text!r} needs three numbers x,y,z")
    return tuple(parts)


def _xyz(text: str) -> tuple[int, int, int]:
    return _triple(text, int, "integers")


def _fxyz(text: str) -> tuple[float, float, float]:
    return _triple(text, float, "numbers")


def _progress(total: int, desc: str, unit: str = "slice"):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr,
                disable=None if sys.stderr.isatty() else True)


def _open(args, create: bool = False):
    from dvidfs.core import Dvid
    path = args.store or os.environ.get("DVIDFS_STORE")
    if not path:
        raise InvalidInputError("no store given: use -s STORE or set DVIDFS_STORE")
    return Dvid(path, create=create)


def _print_node(n) -> None:
    flag = "committed" if n.locked else "open"
    tag = f"[tag {n.tag}] " if n.tag else ""
    print(f"{n.uuid}  {n.branch_name:<12} {flag:<9} {tag}{n.note}")


# ---------------------------------------------------------------- commands
def cmd_init(args) -> None:
    from dvidfs.core import Dvid
    Dvid.init(args.path).close()
    print(f"initialised store {args.path}")


def cmd_repo_new(args) -> None:
    with _open(args) as s:
        r = s.new_repo(args.name, args.description or "")
        print(r.root)


def cmd_repo_list(args) -> None:
    with _open(args) as s:
        for r in s.repos():
            tips = s.branches(r)
            print(f"{r.alias}  root {r.root}  branches: "
                  + ", ".join(f"{b}={n.uuid[:8]}" for b, n in sorted(tips.items())))


def cmd_data_new(args) -> None:
    with _open(args) as s:
        node = s.node(args.node)
        s.new_instance(node, args.name, args.type, block_size=args.block_size,
                       voxel_size=args.voxel_size, voxel_units=args.units)
        print(f"created {args.type} instance {args.name!r} in node {node.uuid}")


def _imsure(args, what: str) -> None:
    if not args.imsure:
        raise InvalidInputError(f"refused: this deletes {what} for good, in every node; add --imsure to do it")


def cmd_data_delete(args) -> None:
    _imsure(args, f"data instance {args.name!r} of {args.repo!r}")
    with _open(args) as s:
        repo = s.repo(args.repo)
        inst = s.delete_instance(repo, args.name, wait=True)
        print(f"deleted {inst.typename} instance {args.name!r} of repo {repo.alias!r}")


def cmd_repo_delete(args) -> None:
    _imsure(args, f"repo {args.repo!r} and all its data")
    with _open(args) as s:
        repo = s.repo(args.repo)
        s.delete_repo(repo, wait=True)
        print(f"deleted repo {repo.alias!r} ({repo.root})")


def cmd_import(args) -> None:
    from dvidfs.transfer import VolumeSource, import_volume
    with _open(args) as s:
        node = s.node(args.node)
        vol = _volume(s, node, args.data)
        src = VolumeSource(args.source, vol.dtype, args.convert)
        with _progress(src.shape[0], f"import {os.path.basename(args.source.rstrip('/'))}") as bar:
            size = import_volume(vol, node, src, args.offset, bar.update)
        print(f"imported {size[0]}x{size[1]}x{size[2]} voxels into {args.data!r} at {tuple(args.offset)}")


def cmd_export(args) -> None:
    from dvidfs.transfer import check_export_name, export_volume
    check_export_name(args.out)   # an unknown format is refused before the store is opened
    with _open(args) as s:
        node = s.node(args.node)
        vol = _volume(s, node, args.data)
        view = s.view(node)
        ext = vol.require_extents(view)
        nz = args.size[2] if args.size else ext.size[2]
        with _progress(nz, f"export {args.data}") as bar:
            size = export_volume(vol, view, args.out, args.offset, args.size, bar.update)
        print(f"exported {size[0]}x{size[1]}x{size[2]} voxels to {args.out}")


def cmd_downres(args) -> None:
    from dvidfs.errors import StoreBusyError
    try:
        s = _open(args)
    except StoreBusyError as exc:   # a mount or a server has the store: it can do it
        levels = f" {args.levels}" if args.levels else ""
        raise StoreBusyError(f"{exc}. To build the pyramid meanwhile, write '{args.data}{levels}' to "
                             f"MOUNT/<repo>/<uuid>/.dvid/downres, or POST "
                             f"/api/node/<uuid>/{args.data}/downres{'?levels=' + str(args.levels) if levels else ''}"
                             ) from None
    with s:
        node = s.node(args.node)
        vol = _volume(s, node, args.data)
        with _progress(0, f"downres {args.data}", "block") as bar:
            def total(n: int) -> None:
                bar.total = n
                bar.refresh()
            n = vol.build_pyramid(node, args.levels, bar.update, total)
        print(f"{args.data!r}: levels 1..{n} stored in node {node.uuid}; writes to it keep them current")


def cmd_commit(args) -> None:
    with _open(args) as s:
        n = s.commit(s.node(args.node), args.message or "", args.log or [])
        print(f"committed {n.uuid}")


def cmd_branch(args) -> None:
    with _open(args) as s:
        n = s.branch(s.node(args.node), args.name, args.message or "")
        print(n.uuid)


def _full_list_hint(args, exc) -> ConflictError:
    """The refusal's summary plus where its full list is (one line, as every error)."""
    store = args.store or os.environ.get("DVIDFS_STORE") or "STORE"
    refs = " ".join(shlex.quote(r) for r in args.nodes)
    return ConflictError(f"{exc} — all {len(exc.lines)}: dvidfs -s {shlex.quote(store)} conflicts {refs}")


def cmd_merge(args) -> None:
    from dvidfs.core import MergeConflict
    with _open(args) as s:
        try:
            n = s.merge([s.node(r) for r in args.nodes], args.message or "")
        except MergeConflict as exc:
            raise _full_list_hint(args, exc) from None
        print(n.uuid)


def cmd_conflicts(args) -> None:
    """Every key a merge of the nodes would be refused for (exit 0 either way)."""
    with _open(args) as s:
        lines = s.merge_conflicts([s.node(r) for r in args.nodes])
        for line in lines:
            print(line)
        print(f"{len(lines)} conflicting key(s)" if lines else "no conflicts: the merge would succeed",
              file=sys.stderr)


def cmd_resolve(args) -> None:
    from dvidfs.core import MergeConflict
    with _open(args) as s:
        try:
            n = s.resolve([s.node(r) for r in args.nodes], args.message or "", data=args.data)
        except MergeConflict as exc:
            raise _full_list_hint(args, exc) from None
        print(n.uuid)


def cmd_tag(args) -> None:
    with _open(args) as s:
        n = s.tag(s.node(args.node), args.name, args.message or "")
        print(n.uuid)


def cmd_repo_log(args) -> None:
    """DVID's repo log (GET/POST /api/repo/<uuid>/log): print it, or append lines."""
    with _open(args) as s:
        repo = s.repo(args.repo)
        if args.append:
            s.update_repo(repo, log_lines=args.append)
            return
        for line in repo.log:
            print(line)


def cmd_log(args) -> None:
    with _open(args) as s:
        node = s.node(args.node)
        if args.json:
            print(json.dumps([n.info() for n in s.history(node)], indent=2))
            return
        for n in s.history(node):
            _print_node(n)
            for line in n.log:
                print(f"    {line}")


def cmd_dag(args) -> None:
    """Every node of a repo, oldest first, with its parents: the whole DAG."""
    with _open(args) as s:
        repo = s.repo(args.repo)
        tips = {n.uuid: b for b, n in s.branches(repo).items()}
        if args.svg:
            from dvidfs.dagsvg import dag_svg
            svg = dag_svg(s.repo_nodes(repo), title=f"repo {repo.alias}")
            if args.svg == "-":
                sys.stdout.write(svg)
            else:
                with open(args.svg, "w", encoding="utf-8") as f:
                    f.write(svg)
            return
        for n in s.repo_nodes(repo):
            parents = ",".join(p[:8] for p in n.parents) or "-"
            tip = f"  <- {tips[n.uuid]}" if n.uuid in tips else ""
            tag = f"[tag {n.tag}] " if n.tag else ""
            print(f"{n.uuid}  {n.branch_name:<12} {'committed' if n.locked else 'open':<9} "
                  f"parents {parents:<17} {tag}{n.note}{tip}")


def cmd_info(args) -> None:
    with _open(args) as s:
        print(json.dumps(s.node_info(s.node(args.node), instance_info=True), indent=2))


def cmd_sample(args) -> None:
    from dvidfs.samplestore import build_sample_store
    with _open(args, create=True) as s:
        sx, sy, sz = args.size
        with _progress(sz, "sample", "plane") as bar:
            uuid = build_sample_store(s, args.size, repo=args.repo, seed=args.seed, progress=bar.update,
                                      labels=not args.no_labels, extras=not args.no_extras)
        print(f"repo {args.repo!r}: {sx}x{sy}x{sz} sample in node {uuid} (committed)")



def _two_stores(args, local_role: str):
    """(source, destination): two given, or one and -s STORE / $DVIDFS_STORE
    standing for the local store in `local_role` ("src" for push, "dst" for pull).
    Either may be the http(s):// URL of a `dvidfs serve` (its store is held there)."""
    if args.other is not None:
        return args.first, args.other
    local = args.store or os.environ.get("DVIDFS_STORE")
    if not local:
        raise InvalidInputError("give two stores, or one and -s STORE (or $DVIDFS_STORE) for the local one")
    return (local, args.first) if local_role == "src" else (args.first, local)


def _transfer(args, local_role: str) -> None:
    from contextlib import ExitStack
    from dvidfs.core import Dvid
    from dvidfs.push import LocalReceiver, LocalSender, transfer
    from dvidfs.server.transfer import HttpReceiver, HttpSender, is_url
    src_path, dst_path = _two_stores(args, local_role)
    same = (src_path.rstrip("/") == dst_path.rstrip("/") if is_url(src_path) or is_url(dst_path)
            else os.path.abspath(src_path) == os.path.abspath(dst_path))
    if same:
        raise InvalidInputError("source and destination are the same store")
    with ExitStack() as stack:
        sender = HttpSender(src_path) if is_url(src_path) else LocalSender(stack.enter_context(Dvid(src_path)))
        receiver = (HttpReceiver(dst_path) if is_url(dst_path)
                    else LocalReceiver(stack.enter_context(Dvid(dst_path))))
        for side in (sender, receiver):
            if hasattr(side, "close"):
                stack.callback(side.close)
        with _progress(0, "push" if local_role == "src" else "pull", "key") as bar:
            def progress(done: int, total: int) -> None:
                if bar.total != total:
                    bar.total = total
                    bar.refresh()
                bar.update(done)
            rep = transfer(sender, receiver, list(args.nodes) or None, branch=args.branch,
                           progress=progress, repo=args.repo)
        for u in rep.sent:
            print(f"sent {u}")
        print(f"{len(rep.sent)} node(s) sent ({rep.keys} keys, {rep.bytes} bytes), "
              f"{len(rep.present)} already present")


def cmd_push(args) -> None:
    _transfer(args, "src")


def cmd_pull(args) -> None:
    _transfer(args, "dst")


def cmd_diff(args) -> None:
    from dvidfs.push import diff
    with _open(args) as s:
        a, b = s.node(args.node_a), s.node(args.node_b)
        out = diff(s, a, b, args.data)
        if args.json:
            print(json.dumps({name: {"Type": d.typename, "Blocks": d.blocks,
                                     "ScaledBlocks": {str(k): v for k, v in d.scaled_blocks.items()},
                                     "Bodies": d.bodies, "Keys": d.keys, "Other": d.other}
                              for name, d in out.items()}, indent=2))
            return
        for name, d in out.items():
            for x, y, z in d.blocks:
                print(f"{name}\tblock\t{x},{y},{z}")
            for scale, coords in sorted(d.scaled_blocks.items()):
                for x, y, z in coords:
                    print(f"{name}\tblock@{scale}\t{x},{y},{z}")
            for body in d.bodies:
                print(f"{name}\tbody\t{body}")
            for k in d.keys:
                print(f"{name}\tkey\t{k}")
            for o in d.other:
                print(f"{name}\tother\t{o}")


def _offering(s, node, name: str, what: str, needed: str):
    data = s.data(node, name)
    if what not in data.offers:
        raise InvalidInputError(f"{name!r} is a {data.typename} instance, not {needed}")
    return data


def _volume(s, node, name: str):
    return _offering(s, node, name, "volume", "a volume")


def _labels(s, args):
    node = s.node(args.node)
    return node, _offering(s, node, args.data, "bodies", "labels")


def cmd_labels_merge(args) -> None:
    with _open(args) as s:
        node, vol = _labels(s, args)
        rec = vol.merge(node, args.target, args.labels)
        print(json.dumps(rec))


def cmd_labels_split(args) -> None:
    with _open(args) as s:
        node, vol = _labels(s, args)
        with open(args.rles, "rb") as f:
            rec = vol.split(node, args.label, f.read())
        print(rec["NewLabel"])


def cmd_labels_size(args) -> None:
    with _open(args) as s:
        node, vol = _labels(s, args)
        print(vol.size(s.view(node), args.label))


def cmd_labels_sparsevol(args) -> None:
    with _open(args) as s:
        node, vol = _labels(s, args)
        data = vol.sparsevol(s.view(node), args.label, args.min, args.max)
        if args.out == "-":
            sys.stdout.buffer.write(data)
        else:
            with open(args.out, "wb") as f:
                f.write(data)


def cmd_labels_list(args) -> None:
    with _open(args) as s:
        node, vol = _labels(s, args)
        view = s.view(node)
        for b in vol.bodies(view):
            print(f"{b}\t{vol.size(view, int(b))}" if args.sizes else b)


def cmd_labels_mutations(args) -> None:
    with _open(args) as s:
        node, vol = _labels(s, args)
        for rec in vol.mutations(s.view(node)):
            print(json.dumps(rec))


def cmd_mount(args) -> None:
    from dvidfs.fs.mount import mount
    store = args.store or os.environ.get("DVIDFS_STORE")
    if args.path and args.store and os.path.abspath(args.path) != os.path.abspath(args.store):
        raise InvalidInputError(f"two stores given ({args.path} and -s {args.store}): mount one")
    if not (args.path or store):
        raise InvalidInputError("no store given: dvidfs mount STORE MNT, or -s STORE (or $DVIDFS_STORE)")
    mount(args.path or store, args.mountpoint, foreground=args.foreground, debug=args.debug,
          config=Config.from_args(args))


def cmd_serve(args) -> None:
    from dvidfs.server.run import serve
    serve(args.path, args.http, args.mount, config=Config.from_args(args), debug=args.debug)


def cmd_umount(args) -> None:
    from dvidfs.fs.mount import unmount
    unmount(args.mountpoint)


STORE_HELP = "a store directory or s3://bucket/prefix?endpoint=…[&readonly=1][&localcache=DIR] (docs/s3.md)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dvidfs", description="Versioned connectomics volumes as a filesystem")
    p.add_argument("-s", "--store", help=f"{STORE_HELP} (default: $DVIDFS_STORE); may also be given "
                                         "after the subcommand (dvidfs import -s STORE …)")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    c = sub.add_parser("init", help="create an empty store")
    c.add_argument("path", help=STORE_HELP)
    c.set_defaults(fn=cmd_init)

    repo = sub.add_parser("repo", help="repos: new, list, log").add_subparsers(dest="sub", required=True)
    c = repo.add_parser("new", help="create a repo; prints its root UUID")
    c.add_argument("name")
    c.add_argument("--description")
    c.set_defaults(fn=cmd_repo_new)
    c = repo.add_parser("list", help="list repos and branch tips")
    c.set_defaults(fn=cmd_repo_list)
    c = repo.add_parser("log", help="print the repo's log, or append to it")
    c.add_argument("repo", help="repo name or any node UUID in it")
    c.add_argument("--append", action="append", metavar="TEXT", help="line to append (repeatable)")
    c.set_defaults(fn=cmd_repo_log)
    c = repo.add_parser("delete", help="delete a repo: every node and data instance (needs --imsure)")
    c.add_argument("repo", help="repo name or any node UUID in it")
    c.add_argument("--imsure", action="store_true", help="yes, delete it for good")
    c.set_defaults(fn=cmd_repo_delete)

    data = sub.add_parser("data", help="data instances: new").add_subparsers(dest="sub", required=True)
    c = data.add_parser("new", help="create a data instance in an open node")
    c.add_argument("node", help="node: UUID prefix, repo name, repo:branch, prefix:branch, ~N")
    c.add_argument("name")
    c.add_argument("--type", default="grayscale", help="grayscale, labels, keyvalue, roi, annotation or labelsz")
    c.add_argument("--block-size", type=int, default=None, help="block edge in voxels (default per type)")
    c.add_argument("--voxel-size", type=_fxyz, default=(8.0, 8.0, 8.0), help="x,y,z (default 8,8,8)")
    c.add_argument("--units", default="nanometers")
    c.set_defaults(fn=cmd_data_new)
    c = data.add_parser("delete", help="delete a data instance in every node of its repo (needs --imsure)")
    c.add_argument("repo", help="repo name or any node UUID in it")
    c.add_argument("name")
    c.add_argument("--imsure", action="store_true", help="yes, delete it for good")
    c.set_defaults(fn=cmd_data_delete)

    c = sub.add_parser("import", help="import a folder of PNG/TIFF slices, a TIFF stack or a .npy")
    c.add_argument("node")
    c.add_argument("data")
    c.add_argument("source")
    c.add_argument("--offset", type=_xyz, default=(0, 0, 0), help="x,y,z of the first voxel")
    conv = c.add_mutually_exclusive_group()
    conv.add_argument("--rescale", dest="convert", action="store_const", const="rescale",
                      help="grayscale from a 16-bit or float stack: map the stack's min..max linearly "
                           "onto 0..255 (default: values must already be 0..255)")
    conv.add_argument("--clip", dest="convert", action="store_const", const="clip",
                      help="grayscale from a 16-bit or float stack: keep 0..255, saturate the rest")
    c.set_defaults(fn=cmd_import)

    c = sub.add_parser("export", help="export to .npy, .tif, or a folder of PNG slices",
                       description="Export a box of a volume to OUT: a .npy, a .tif/.tiff stack (with the "
                                   "voxel size for ImageJ and tifffile), or a folder of 8-bit PNG slices "
                                   "(a name without an extension). Other suffixes (.zarr, .h5, …) are refused.")
    c.add_argument("node")
    c.add_argument("data")
    c.add_argument("out")
    c.add_argument("--offset", type=_xyz, default=None)
    c.add_argument("--size", type=_xyz, default=None)
    c.set_defaults(fn=cmd_export)

    c = sub.add_parser("downres", help="build the multiscale pyramid of a volume in an open node")
    c.add_argument("node")
    c.add_argument("data")
    c.add_argument("--levels", type=int, default=None,
                   help="levels above 0 to store (default: until the volume fits in one block)")
    c.set_defaults(fn=cmd_downres)

    c = sub.add_parser("commit", help="lock a node for good")
    c.add_argument("node")
    c.add_argument("-m", "--message", help="commit note")
    c.add_argument("--log", action="append", help="log line (repeatable)")
    c.set_defaults(fn=cmd_commit)

    c = sub.add_parser("branch", help="new child of a committed node; prints its UUID")
    c.add_argument("node")
    c.add_argument("--name", help="new branch name (default: continue the parent's branch)")
    c.add_argument("-m", "--message", help="note")
    c.set_defaults(fn=cmd_branch)

    c = sub.add_parser("merge", help="new node merging committed nodes; prints its UUID")
    c.add_argument("nodes", nargs="+")
    c.add_argument("-m", "--message")
    c.set_defaults(fn=cmd_merge)

    c = sub.add_parser("conflicts", help="every key a merge of these nodes would be refused for")
    c.add_argument("nodes", nargs="+")
    c.set_defaults(fn=cmd_conflicts)

    c = sub.add_parser("resolve", help="merge committed nodes given in priority order: each conflicting key "
                                       "takes the first parent's value (prints the new UUID)")
    c.add_argument("nodes", nargs="+", help="parents, the winner of conflicts first")
    c.add_argument("--data", action="append", metavar="NAME",
                   help="data instance to resolve (repeatable; default all)")
    c.add_argument("-m", "--message", "--note", dest="message", help="note of the new node")
    c.set_defaults(fn=cmd_resolve)

    c = sub.add_parser("tag", help="tag a committed node: a committed child on branch tag-NAME; NAME "
                                   "then works as a node reference (prints the tag node's UUID)")
    c.add_argument("node")
    c.add_argument("name")
    c.add_argument("-m", "--message", "--note", dest="message", help="note of the tag node")
    c.set_defaults(fn=cmd_tag)

    c = sub.add_parser("log", help="a node and its ancestors, newest first")
    c.add_argument("node")
    c.add_argument("--json", action="store_true")
    c.set_defaults(fn=cmd_log)

    c = sub.add_parser("dag", help="all nodes of a repo with their parents and branch tips")
    c.add_argument("repo", help="repo name or any node UUID in it")
    c.add_argument("--svg", metavar="OUT", help="write the DAG as an SVG picture to OUT (- for stdout) "
                                                "instead of listing it")
    c.set_defaults(fn=cmd_dag)

    c = sub.add_parser("info", help="node and data instance info as JSON")
    c.add_argument("node")
    c.set_defaults(fn=cmd_info)

    c = sub.add_parser("sample", help="build a sample repo with EM-like grayscale (and labels, an roi and "
                                      "synapses)")
    c.add_argument("--size", type=_xyz, default=(256, 256, 128), help="x,y,z (default 256,256,128)")
    c.add_argument("--repo", default="sample")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--no-labels", action="store_true")
    c.add_argument("--no-extras", action="store_true",
                   help="no roi, synapses (annotation) and synapses_labelsz instances")
    c.set_defaults(fn=cmd_sample)

    for name, fn, help, one in (
            ("push", cmd_push, "send committed nodes a store lacks (SRC -> DST)",
             "push SRC DST, or -s SRC push DST (the local store sends); a store may be "
             "the http://HOST:PORT of a `dvidfs serve`"),
            ("pull", cmd_pull, "fetch committed nodes from a store (SRC -> DST)",
             "pull SRC DST, or -s DST pull SRC (the local store receives); a store may be "
             "the http://HOST:PORT of a `dvidfs serve`")):
        c = sub.add_parser(name, help=help, description=f"{help}: {one}; with NODEs give both stores. "
                           "Only committed nodes travel, ancestors first, with the keys they wrote.")
        c.add_argument("first", metavar="STORE")
        c.add_argument("other", metavar="STORE2", nargs="?", help=one)
        c.add_argument("nodes", metavar="NODE", nargs="*", help="nodes to send (with their ancestors)")
        c.add_argument("--branch", help="send this branch's newest committed node (and ancestors)")
        c.add_argument("--repo", help="the repo of --branch, or the only repo to send")
        c.set_defaults(fn=fn)

    c = sub.add_parser("diff", help="which blocks, bodies and keys differ between two nodes")
    c.add_argument("node_a")
    c.add_argument("node_b")
    c.add_argument("data", nargs="?", help="one data instance only")
    c.add_argument("--json", action="store_true")
    c.set_defaults(fn=cmd_diff)

    lab = sub.add_parser("labels", help="label bodies: list, size, sparsevol, merge, split, mutations")
    lsub = lab.add_subparsers(dest="sub", required=True)

    def lab_cmd(name, fn, help):
        c = lsub.add_parser(name, help=help)
        c.add_argument("node")
        c.add_argument("data")
        c.set_defaults(fn=fn)
        return c

    c = lab_cmd("merge", cmd_labels_merge, "merge bodies into a target body (prints the mutation record)")
    c.add_argument("target", type=int)
    c.add_argument("labels", type=int, nargs="+")
    c = lab_cmd("split", cmd_labels_split, "cut the voxels of a DVID sparsevol file out of a body (prints the new id)")
    c.add_argument("label", type=int)
    c.add_argument("rles", help="file holding DVID sparsevol (rles) bytes")
    c = lab_cmd("size", cmd_labels_size, "voxel count of a body")
    c.add_argument("label", type=int)
    c = lab_cmd("sparsevol", cmd_labels_sparsevol, "a body's voxels as DVID sparsevol bytes")
    c.add_argument("label", type=int)
    c.add_argument("-o", "--out", default="-", help="output file (default stdout)")
    c.add_argument("--min", type=_xyz, default=None, help="x,y,z lower bound (inclusive)")
    c.add_argument("--max", type=_xyz, default=None, help="x,y,z upper bound (inclusive)")
    c = lab_cmd("list", cmd_labels_list, "body ids present at the node")
    c.add_argument("--sizes", action="store_true", help="also print each body's voxel count")
    lab_cmd("mutations", cmd_labels_mutations, "the mutation log (JSON lines)")

    c = sub.add_parser("mount", help="mount a store")
    c.add_argument("path", nargs="?", help=f"{STORE_HELP} (default: -s STORE or $DVIDFS_STORE)")
    c.add_argument("mountpoint", help="an existing directory (not created: a missing one is an error)")
    c.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    c.add_argument("--debug", action="store_true", help="log every FUSE request (implies -f)")
    Config.add_arguments(c)
    c.set_defaults(fn=cmd_mount)

    c = sub.add_parser("serve", help="serve DVID's HTTP API (and optionally mount) in the foreground")
    c.add_argument("path", help=STORE_HELP)
    c.add_argument("--http", default="127.0.0.1:8000", metavar="HOST:PORT",
                   help="address to listen on (default 127.0.0.1:8000; port 0: any free port; "
                        "another host only when you mean it)")
    c.add_argument("--mount", metavar="MNT", default=None, help="also mount the store at MNT")
    c.add_argument("--debug", action="store_true", help="verbose logging")
    Config.add_arguments(c)
    c.set_defaults(fn=cmd_serve)

    c = sub.add_parser("umount", help="unmount")
    c.add_argument("mountpoint")
    c.set_defaults(fn=cmd_umount)
    return p


_XYZ_OPTIONS = ("--offset", "--size", "--min", "--max", "--voxel-size")


def _join_negative_values(argv: list[str]) -> list[str]:
    """`--offset -3,4,5` would look like an option to argparse: glue it to its flag."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in _XYZ_OPTIONS and i + 1 < len(argv) and argv[i + 1].startswith("-"):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def _store_option_everywhere(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`-s STORE` before the subcommand or after it (`dvidfs import -s STORE …`):
    every subcommand that opens a store takes it too, shown in its --help.  Not
    given there, the value before the subcommand (or $DVIDFS_STORE) stands.
    Commands whose store is a required positional (init, serve) keep that."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for sp in {id(sp): sp for sp in action.choices.values()}.values():
            if not any(a.dest == "path" and a.required for a in sp._actions) \
                    and "-s" not in sp._option_string_actions:
                sp.add_argument("-s", "--store", default=argparse.SUPPRESS,
                                help=f"{STORE_HELP} (default: $DVIDFS_STORE); also accepted before the "
                                     "subcommand")
            _store_option_everywhere(sp)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _store_option_everywhere(build_parser()).parse_args(_join_negative_values(argv))
    tune_allocator()  # slices and imports allocate in bursts: keep freed memory (dvidfs/allocator.py)
    try:
        args.fn(args)
    except DvidfsError as exc:
        print(f"dvidfs: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `dvidfs labels list … | head`: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        print(f"dvidfs: error: {exc.filename or ''}{': ' if exc.filename else ''}{exc.strerror or exc}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dvidfs: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
