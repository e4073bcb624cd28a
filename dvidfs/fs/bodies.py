"""Label bodies as directories of DVID-format files, and label edits as files.

    <labels>/labels/<id>/sparsevol, sparsevol-coarse, size, bbox.json,
                         blocks.json, supervoxels, split (write-only)
    <labels>/labels/@more        symlink to the next page, when the listing is cut
    <labels>/labels/@from-<id>/  a page: the next bodies (ids >= <id>) as symlinks
    <labels>/merge               write "TARGET ID…": merge bodies into TARGET
    <labels>/mutations.jsonl     every merge/split visible from this node

Shown for every instance whose type offers "bodies".

**What `labels/` lists.**  A real segmentation has 10⁶–10⁸ bodies: no tool
walking a node (`find`, `du`, `rsync -a`, `cp -r`) should have to visit them
all, and an `ls` should not scan them all.  So `labels/` lists at most
`Config.body_listing` bodies (1,000; `dvidfs mount --body-listing N` or
`DVIDFS_BODY_LISTING`),
the smallest ids in ascending order (DVID's `listlabels` order), read with a
keys-only scan that stops at the bound: a listing costs O(bound), whatever the
number of bodies.  Every body is still reachable by id: `labels/<id>/` works
for any body with voxels, listed or not.  When the listing is cut, it ends with
a symlink `@more` pointing at a page `@from-<next id>/`, which lists the next
bodies as symlinks `<id> -> ../<id>` and has its own `@more`.  People browse
with `ls labels/@more/`, `cd -P labels/@more` (then `ls @more/` again), or jump
to any id with `ls labels/@from-<id>/` (the kernel resolves at most 40 chained
links, so `@more/@more/…` stops there).  Tools that walk trees do not follow
symlinks by default (`find`, `du`, `rsync -a`, `cp -r`, `tar`), so a walk of a
node costs O(bound) bodies, not O(bodies).  A node with up to the bound (every
store of the tests and the demo) lists all its bodies exactly as before.

**Sizes without encoding.**  `stat` (and the listing) never renders a body's
files: sizes come from the label index alone, except the sparsevol's.

* `size`, `supervoxels`, `blocks.json`, `sparsevol-coarse`: computed from the
  index rows (digits counted, coarse runs = blocks whose -x neighbour is not
  in the body); no block is read.
* `bbox.json` is fixed-width JSON (every coordinate right-aligned in 11
  columns, the width of -2**31), so its size is a constant.
* `sparsevol` is DVID's canonical rles: 12 + 16 bytes per run.  The number of
  runs depends on how the voxels lie, which the index (voxel counts per block
  and supervoxel) does not say, so it is *counted* from the body's blocks,
  never encoded (`RunCounter`): a run starts at each voxel whose -x neighbour
  is not the body's.  A block met once is counted for that body alone; a block
  met again (a walk in id order) is analysed once for all its bodies and
  remembered per write generation, so its other bodies cost a dictionary
  look-up.  A body's directory listing gives sparsevol a zero-timeout size
  placeholder (`volatile_in_listing`), so `find` and plain `ls` never count
  runs; `stat`, `ls -l`, `du` ask (lookup) and get the exact size.
  Keeping a run count in the index (upkept by every write, merge and split)
  would make this O(1) too; it is not done here (data/labels.py's write path).

**Reading a body's files.**  `bbox.json` and `sparsevol` both come from the
body's runs (`Labels.sparsevol_runs`: one mask per block the index names, from
the shared decoded-block cache), computed once per (instance, version, write
generation, body) and kept in a bounded cache (`body_runs`): a walk reading
bbox.json then sparsevol (name order, as rsync and `find -exec cat` do)
computes them once, and a `stat` of the sparsevol after either is a look-up.
The generation is read before computing, so a write, merge or split makes
older runs unreachable, as for rendered files.
"""
from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from dvidfs.data.labelindex import LabelIndex, unpack_block
from dvidfs.errors import InvalidInputError, NotFoundError
from dvidfs.formats import sparsevol as sv
from dvidfs.fs.entry import NOW, ON_CLOSE, Attr, DirEntry, Entry, as_json
from dvidfs.store.cache import LRUCache

if TYPE_CHECKING:
    from dvidfs.fs.tree import Tree

BODY_FILES = ("bbox.json", "blocks.json", "size", "sparsevol", "sparsevol-coarse", "split", "supervoxels")
_ID_RE = re.compile(r"[0-9]{1,20}")
MAX_LABEL = 2**64 - 1
MORE = "@more"
PAGE_PREFIX = "@from-"


def listing_limit(tree: "Tree") -> int:
    """How many bodies `labels/` (and each page) lists: the mount's `body_listing`."""
    return tree.core.config.body_listing


def parse_label_id(text: str) -> int | None:
    """A label id written by a person: ASCII digits, 1..2**64-1; else None."""
    if not _ID_RE.fullmatch(text):
        return None
    v = int(text)
    return v if 0 < v <= MAX_LABEL else None


def body_children(inst: Entry, tree: "Tree") -> list[tuple[str, Entry]]:
    return [("labels", inst.child(LabelsDir)), ("merge", inst.child(MergeFile, name="merge")),
            ("mutations.jsonl", inst.child(MutationsFile, name="mutations.jsonl"))]


class _BodyCaches:
    """Per mounted tree: decoded label indexes and the run counter.  A walk asks
    for the same body's index several times (lookup, the directory's attributes,
    its listing, each file's `stat`): it is read once per write generation."""

    def __init__(self):
        self.indexes = LRUCache(32 << 20, sizeof=lambda i: 200 + (20 * len(i) if i is not None else 0))
        self.runs = RunCounter()
        # a body's sparsevol runs, shared by its sparsevol, its bbox.json and the
        # sparsevol's stat (see body_runs)
        self.body_runs = LRUCache(32 << 20, sizeof=lambda r: 100 + r.nbytes)
        self.pages = LRUCache(8 << 20, sizeof=lambda p: 100 + 8 * len(p[0]))


_CACHES_LOCK = threading.Lock()


def _caches(tree: "Tree") -> _BodyCaches:
    c = getattr(tree, "body_caches", None)
    if c is None:
        with _CACHES_LOCK:
            c = getattr(tree, "body_caches", None)
            if c is None:
                c = tree.body_caches = _BodyCaches()  # type: ignore[attr-defined]
    return c


def _memo(cache: LRUCache, key: tuple, compute):
    """cache[key], computed and kept on a miss (keys carry the write generation,
    read before computing, so a write makes older entries unreachable)."""
    value = cache.get(key)
    if value is None:
        value = compute()
        cache.put(key, value)
    return value


def _page(e: Entry, tree: "Tree", start: int) -> tuple[list[int], int | None]:
    """Up to listing_limit(tree) body ids >= start, and the id the next page starts at
    (None when none is left): one keys-only scan of limit + 1 keys, remembered
    per write generation (a page's symlinks are looked up one by one)."""
    limit = listing_limit(tree)
    gen = tree.core.generation(e.node, e.obj)

    def compute():
        ids = [b for b, _ in e.obj.list_bodies(tree.core.view(e.node), start, limit + 1)]
        return ids[:limit], ids[limit] if len(ids) > limit else None
    return _memo(_caches(tree).pages, (e.obj.inst.id, e.node.version_id, gen, start, limit), compute)


def body_index(tree: "Tree", e: Entry, body: int | None = None) -> LabelIndex:
    """The label index of e's body (or `body`) at e's node; NotFoundError when it
    has no voxels.  Cached under the write generation (read first, as for renders)."""
    body = e.coord if body is None else body
    gen = tree.core.generation(e.node, e.obj)
    idx = _memo(_caches(tree).indexes, (e.obj.inst.id, e.node.version_id, gen, body),
                lambda: e.obj.index(tree.core.view(e.node), body) or LabelIndex())
    if not len(idx):
        raise NotFoundError(f"label {body} does not exist in {e.obj.inst.name!r} at this node")
    return idx


def _runs_key(tree: "Tree", e: Entry) -> tuple:
    """(instance, version, write generation, body): the generation is read before
    anything is computed (as for renders), so a write makes older runs unreachable."""
    return (e.obj.inst.id, e.node.version_id, tree.core.generation(e.node, e.obj), e.coord)


def body_runs(tree: "Tree", e: Entry) -> np.ndarray:
    """The canonical sparsevol runs of e's body at e's node, computed once per
    write generation (`Labels.sparsevol_runs`) and kept in a bounded cache:
    reading a body's `bbox.json` and its `sparsevol`, and `stat` of the
    sparsevol after either, share one computation."""
    def compute():
        runs = e.obj.sparsevol_runs(tree.core.view(e.node), e.coord)
        runs.flags.writeable = False
        return runs
    return _memo(_caches(tree).body_runs, _runs_key(tree, e), compute)


def known_runs(tree: "Tree", e: Entry) -> np.ndarray | None:
    """e's body's runs if already computed at this write generation, else None."""
    return _caches(tree).body_runs.get(_runs_key(tree, e))


class LabelsDir(DirEntry):
    def lookup(self, tree: "Tree", name: str) -> Entry:
        if name == MORE:
            _, nxt = _page(self, tree, 0)
            if nxt is not None:
                return self.child(MoreLink, coord=nxt, name=MORE)
        elif name.startswith(PAGE_PREFIX):
            start = parse_label_id(name[len(PAGE_PREFIX):])
            if start is not None and name == f"{PAGE_PREFIX}{start}":
                return self.child(PageDir, coord=start, name=name)
        body = parse_label_id(name)
        if body is None:
            raise NotFoundError(f"no label {name!r}")
        body_index(tree, self, body)
        return self.child(BodyDir, coord=body)

    def list(self, tree: "Tree") -> Sequence[tuple[str, Entry, Attr]]:
        ids, nxt = _page(self, tree, 0)
        attr = DirEntry.attr(self, tree)
        more = None
        if nxt is not None:
            link = self.child(MoreLink, coord=nxt, name=MORE)
            more = (MORE, link, link.attr(tree))
        return _BodyListing(self, ids, attr, more)

    def describe(self) -> str:
        return f"{self.data}/labels"


class _BodyListing(Sequence):
    """Body directories made as they are read (the ids come from one bounded
    keys-only scan), then the `@more` link when the listing was cut."""

    def __init__(self, labels_dir: LabelsDir, ids, attr: Attr, more=None):
        self.labels_dir, self.ids, self.attr, self.more = labels_dir, ids, attr, more

    def __len__(self) -> int:
        return len(self.ids) + (self.more is not None)

    def __getitem__(self, i):
        if i == len(self.ids) and self.more is not None:
            return self.more
        b = int(self.ids[i])
        return str(b), self.labels_dir.child(BodyDir, coord=b), self.attr


class _Link(Entry):
    can_vanish = True

    def attr(self, tree: "Tree") -> Attr:
        return Attr("link", len(self.readlink(tree)), False, tree.mtime(self.node), self.locked)


class MoreLink(_Link):
    """`@more`: the next page of bodies (coord: its first id)."""
    up: ClassVar[str] = ""      # where pages are, seen from the link's directory

    def readlink(self, tree: "Tree") -> str:
        return f"{self.up}{PAGE_PREFIX}{self.coord}"


class PageMoreLink(MoreLink):
    up = "../"


class BodyLink(_Link):
    """A body on a page: a symlink to `../<id>` (one body, one directory)."""

    def readlink(self, tree: "Tree") -> str:
        return f"../{self.coord}"


class PageDir(DirEntry):
    """`@from-<id>/`: up to listing_limit(tree) bodies with ids >= <id>, as symlinks."""
    can_vanish = True

    def lookup(self, tree: "Tree", name: str) -> Entry:
        ids, nxt = _page(self, tree, self.coord)
        if name == MORE and nxt is not None:
            return self.child(PageMoreLink, coord=nxt, name=MORE)
        body = parse_label_id(name)
        if body is not None and ids and ids[0] <= body <= ids[-1] and \
                len(body_index(tree, self, body)):   # on this page: between its first and last id
            return self.child(BodyLink, coord=body, name="")
        raise NotFoundError(f"no {name!r} on this page")

    def list(self, tree: "Tree") -> list[tuple[str, Entry, Attr]]:
        ids, nxt = _page(self, tree, self.coord)
        out = []
        for b in ids:
            link = self.child(BodyLink, coord=b, name="")
            out.append((str(b), link, link.attr(tree)))
        if nxt is not None:
            link = self.child(PageMoreLink, coord=nxt, name=MORE)
            out.append((MORE, link, link.attr(tree)))
        return out

    def describe(self) -> str:
        return f"{self.data}/labels/{self.name}"


class BodyDir(DirEntry):
    can_vanish = True

    def attr(self, tree: "Tree") -> Attr:
        body_index(tree, self)
        return super().attr(tree)

    def lookup(self, tree: "Tree", name: str) -> Entry:
        if name in BODY_FILES:
            return self.child(BodyFile, name=name)
        raise NotFoundError(f"no {name!r} for a label")

    def children(self, tree: "Tree"):
        return [(n, self.child(BodyFile, name=n)) for n in BODY_FILES]

    def list(self, tree: "Tree") -> list[tuple[str, Entry, Attr]]:
        """The body's files with their sizes from one read of the index; the
        sparsevol's size is left to `stat` (see the module docstring)."""
        idx = body_index(tree, self)
        out = []
        for n in BODY_FILES:
            f = self.child(BodyFile, name=n)
            out.append((n, f, f.attr(tree, idx, listing=True)))
        return out


# ------------------------------------------------------------ bbox.json: fixed width
_BBOX_FMT = '{\n  "MinPoint": [%11d, %11d, %11d],\n  "MaxPoint": [%11d, %11d, %11d]\n}\n'
BBOX_SIZE = len(_BBOX_FMT % ((0,) * 6))


def bbox_json(lo, hi) -> bytes:
    return (_BBOX_FMT % (*lo, *hi)).encode()


# ------------------------------------------------------------ sizes from the index
# Plain Python on the index's rows: a typical body has a handful, where numpy's
# per-call overhead would cost more than the arithmetic.
def _digits(values) -> int:
    """Total decimal characters of integers (a minus sign counts)."""
    return sum(len(str(v)) for v in values)


def _block_coords(idx: LabelIndex) -> list[tuple[int, int, int]]:
    """x, y, z of the index's blocks, in block-key order (z, y, x)."""
    return [unpack_block(k) for k in sorted(set(idx.blocks.tolist()))]


def blocks_json_size(idx: LabelIndex) -> int:
    """len(as_json([[x, y, z], …])) without rendering it (json.dumps, indent=2):
    "[\n", per block "  [\n" "    x,\n" "    y,\n" "    z\n" "  ]" (24 bytes
    and the digits), ",\n" between blocks, "\n]" and as_json's "\n"."""
    coords = _block_coords(idx)
    n = len(coords)
    if n == 0:
        return 3  # "[]\n"
    return 2 + 24 * n + sum(_digits(c) for c in coords) + 2 * (n - 1) + 3


def coarse_run_count(idx: LabelIndex) -> int:
    """Runs of DVID's sparsevol-coarse: blocks whose -x neighbour is not the body's."""
    coords = set(_block_coords(idx))
    return sum((x - 1, y, z) not in coords for x, y, z in coords)


def supervoxels_size(idx: LabelIndex) -> int:
    svs = set(idx.svs.tolist())
    return _digits(svs) + len(svs)


# ------------------------------------------------------------ sparsevol: counted runs
class RunCounter:
    """Exact run counts of bodies' sparsevols without encoding them.

    A run starts at every voxel of the body whose -x neighbour is not the body's
    (at x = 0 of a block, the last column of the -x neighbour block), so the
    count is what `merge_runs` leaves: touching runs coalesced, across block
    borders too, and 12 + 16 * runs is the sparsevol's exact length.  Two ways,
    same answer:

    * one body (a block seen for the first time): the masks of its
      supervoxels (from the index) in the blocks its index names, nothing else
      read;
    * every body of a block at once (a block asked about a second time, as a
      walk in id order does): the block mapped to bodies once, {body: runs
      starting here} kept per (instance, version, write generation, block),
      so the block's other bodies cost a dictionary look-up."""

    def __init__(self, budget: int = 64 << 20):
        self.blocks = LRUCache(budget, sizeof=lambda d: 100 + 60 * len(d))
        self._seen: dict = {}
        self._lock = threading.Lock()
        self.analysed = 0   # blocks analysed for all their bodies (tests, benchmarks)

    def runs(self, vol, view, body: int, idx: LabelIndex) -> int:
        view = vol.as_view(view)
        gen = vol.generation(view)   # before the snapshot (see BlockVolume.iter_blocks)
        total, alone = 0, []
        with vol.engine.snapshot() as snap:
            mapping = None
            for c in _block_coords(idx):
                key = (vol.inst.id, view.version, gen, *c)
                starts = self.blocks.get(key)
                if starts is None:
                    with self._lock:
                        again = self._seen.pop(key, None) is not None
                        if not again:
                            if len(self._seen) > 100_000:
                                self._seen.clear()
                            self._seen[key] = True
                    if not again:
                        alone.append(c)
                        continue
                    if mapping is None:
                        mapping = vol.mapping(view, snap)
                    starts = self._analyse(vol, snap, view, gen, mapping, c)
                    self.blocks.put(key, starts)
                total += starts.get(body, 0)
            if alone:
                total += self._one_body(vol, snap, view, gen, idx, alone)
        return total

    def _one_body(self, vol, snap, view, gen, idx: LabelIndex, coords) -> int:
        svs = {unpack_block(k): v for k, v in idx.svs_in_blocks().items()}

        def mask(a, s):
            return a == s[0] if len(s) == 1 else np.isin(a, s)

        total = 0
        for c in coords:
            block = vol.cached_block(snap, view, c, gen)
            if block is None:
                raise InvalidInputError(f"label index names block {c}, which is missing")
            m = mask(block, svs[c])
            total += int(np.count_nonzero(m[:, :, 1:] & ~m[:, :, :-1]))
            left_c = (c[0] - 1, c[1], c[2])
            first = m[:, :, 0]
            if left_c in svs:               # the body has voxels next door: its last column
                left = vol.cached_block(snap, view, left_c, gen)
                if left is not None:
                    first = first & ~mask(left[:, :, -1], svs[left_c])
            total += int(np.count_nonzero(first))
        return total

    def _analyse(self, vol, snap, view, gen, mapping, bcoord) -> dict[int, int]:
        block = vol.cached_block(snap, view, bcoord, gen)
        if block is None:
            raise InvalidInputError(f"label index names block {bcoord}, which is missing")
        m = mapping.apply(block)
        left = vol.cached_block(snap, view, (bcoord[0] - 1, bcoord[1], bcoord[2]), gen)
        lcol = mapping.apply(np.ascontiguousarray(left[:, :, -1])) if left is not None else 0
        start = np.empty(m.shape, bool)
        np.not_equal(m[:, :, 0], lcol, out=start[:, :, 0])
        np.not_equal(m[:, :, 1:], m[:, :, :-1], out=start[:, :, 1:])
        labels = m[start]
        ids, counts = np.unique(labels[labels != 0], return_counts=True)
        self.analysed += 1
        return dict(zip(ids.tolist(), counts.tolist()))


_SIZES = {
    "size": lambda idx: len(f"{idx.size}\n"),
    "supervoxels": supervoxels_size,
    "blocks.json": blocks_json_size,
    "sparsevol-coarse": lambda idx: 12 + 16 * coarse_run_count(idx),
    "bbox.json": lambda idx: BBOX_SIZE,
    "split": lambda idx: 0,
}

# sparsevol and bbox.json: from the body's cached runs (BodyFile.read)
_RENDER = {
    "sparsevol-coarse": lambda vol, view, body: vol.sparsevol_coarse(view, body),
    "size": lambda vol, view, body: f"{vol.size(view, body)}\n".encode(),
    "blocks.json": lambda vol, view, body: as_json([list(c) for c in vol.block_coords(view, body)]),
    "supervoxels": lambda vol, view, body: "".join(f"{s}\n" for s in vol.supervoxels(view, body)).encode(),
    "split": lambda vol, view, body: b"",  # write-only
}


class BodyFile(Entry):
    rendered = True
    can_vanish = True

    @property
    def slow_attr(self) -> bool:  # type: ignore[override]
        """Only the sparsevol's size reads blocks (worker thread); the others read the index."""
        return self.name == "sparsevol"

    @property
    def volatile_in_listing(self) -> bool:  # type: ignore[override]
        """A body directory's listing leaves the sparsevol's size to `stat`."""
        return self.name == "sparsevol"

    @property
    def write_mode(self) -> str | None:  # type: ignore[override]
        return ON_CLOSE if self.name == "split" else None

    def attr(self, tree: "Tree", idx: LabelIndex | None = None, listing: bool = False) -> Attr:
        mtime = tree.mtime(self.node)
        if self.name == "split":
            return Attr("file", 0, not self.locked, mtime, self.locked)
        if idx is None:
            idx = body_index(tree, self)
        if self.name == "sparsevol":
            if listing:
                size = 0
            else:
                runs = known_runs(tree, self)        # read already (this or bbox.json): no counting
                n = len(runs) if runs is not None else \
                    _caches(tree).runs.runs(self.obj, tree.core.view(self.node), self.coord, idx)
                size = 12 + 16 * n
        else:
            size = _SIZES[self.name](idx)
        return Attr("file", size, False, mtime, self.locked)

    def read(self, tree: "Tree") -> bytes:
        if self.name == "sparsevol":
            return sv.encode_rles(body_runs(tree, self))
        if self.name == "bbox.json":
            # from the body's runs, which its sparsevol (read next by a walk, and
            # its stat) reuses: one mask pass for both files (Labels.bbox, from
            # the masks alone, is ~25% cheaper for the box but not for both)
            return bbox_json(*sv.runs_bbox(body_runs(tree, self)))
        return _RENDER[self.name](self.obj, tree.core.view(self.node), self.coord)

    def upload_limit(self, tree: "Tree") -> int:
        """A split's sparsevol has at most one run per voxel of the body (16 bytes
        a run after a 12-byte header): anything larger cannot be a valid split."""
        return 12 + 16 * self.obj.size(tree.core.view(self.node), self.coord)

    def upload(self, tree: "Tree", data: bytes) -> str:
        if self.name != "split":
            raise InvalidInputError("this file is read-only")
        rec = self.obj.split(self.node, self.coord, bytes(data))
        return f"split {self.coord}: new label {rec['NewLabel']}"

    def describe(self) -> str:
        return f"{self.data}/labels/{self.coord}/{self.name}"


class MergeFile(Entry):
    write_mode = NOW

    def attr(self, tree: "Tree") -> Attr:
        return Attr("file", 0, not self.locked, tree.mtime(self.node), self.locked)

    def read(self, tree: "Tree") -> bytes:
        return b""

    def control(self, tree: "Tree", text: str) -> str:
        words = [w for w in re.split(r"[\s,]+", text) if w]
        ids = [parse_label_id(w) for w in words]
        if len(ids) < 2 or None in ids:
            raise InvalidInputError("write 'TARGET LABEL [LABEL…]' (decimal ids 1..2^64-1) to merge "
                                    "labels into TARGET")
        rec = self.obj.merge(self.node, ids[0], ids[1:])
        return f"merged {ids[1:]} into {ids[0]} (mutation {rec['MutationID']})"


class MutationsFile(Entry):
    def attr(self, tree: "Tree") -> Attr:
        return Attr("file", len(self.read(tree)), False, tree.mtime(self.node), self.locked)

    def read(self, tree: "Tree") -> bytes:
        recs = self.obj.mutations(tree.core.view(self.node))
        return "".join(json.dumps(r) + "\n" for r in recs).encode()
