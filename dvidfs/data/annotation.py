"""DVID's `annotation` type (synapses, bookmarks), and `labelsz` counts over it.

Elements
--------
An element is DVID's JSON `{"Pos": [x, y, z], "Kind": …, "Tags": […],
"Prop": {…}, "Rels": [{"Rel": …, "To": [x, y, z]}, …]}`: one point per
position (a position holds at most one element; storing another there
replaces it, DVID's rule).  Kinds are DVID's `PostSyn`, `PreSyn`, `Gap`,
`Note` and `Unknown` (the default when "Kind" is left out); relationships
`PostSynTo`, `PreSynTo`, `ConvergentTo`, `GroupedWith`, `UnknownRelationship`.
Field names are matched without regard to case (Go's JSON decoder does so) and
unknown fields are ignored, as DVID does; everything else is checked before
anything is written, and one bad element refuses the whole write
(`InvalidInputError`, nothing stored): a position that is not three int32
integers, an unknown kind or relationship, tags that are not strings (or hold
a NUL), a "Prop" that is not an object of strings.  Elements are returned in
canonical form: every field present (`[]`/`{}` when empty), "Prop" keys
sorted, tags and relationships in the order given.

Storage
-------
* **Blocks** (TKey class 72, DVID's keyBlock): `72 | IZYX(block)` holds the
  JSON list of the elements in that block, sorted by (z, y, x).  The block size
  is the instance's `BlockSize` (default 64, a labelmap's), the same in x, y, z.
  An emptied block is removed (a tombstone when an ancestor still holds it).
* **Tag index** (class 70): one empty-valued key `70 | tag | 0x00 | IZYX(pos)`
  per (tag, element), so a tag is one range scan, and two branches tagging
  different elements never touch the same key.
* **Sync** (class 245): the name of the labels instance the annotation is
  synced with (DVID's POST sync), versioned like the rest: it holds from the
  node that set it on.  DVID keeps syncs outside versions; a versioned key
  needed no change to the instance metadata, and a committed node keeps the
  sync it was committed with.

Every write reads the blocks it changes and writes them, and the tag keys of
the elements it changes, in one atomic batch under `VersionDB.lock`.  A node
merge where both sides changed one block differently is a conflict named by
the block's voxels; the same content on both sides merges.

Labels: no body -> elements index
---------------------------------
DVID keeps a per-label denormalisation and patches it on every merge, split
and voxel write through sync events.  dvidfs keeps none: `label_elements`
takes the body's blocks from the labels instance's label index, reads only
the annotation blocks covering them, and keeps the elements whose voxel label
(`Labels.labels_at`, mapping applied) is the body.  That is right by
construction after merges, cleaves, splits and voxel writes, in every branch,
with no machinery to keep in step.  The price is a read of the body's
annotation blocks and one label lookup per candidate element per query
(measured in docs/http.md).

labelsz
-------
DVID's labelsz instance keeps per-label element counts, fed by sync events.
Here a `labelsz` instance is synced with an annotation instance and computes
its answers from it on demand: `count` and `counts` through `label_elements`;
`top` and `threshold` label every element of the annotation (one
`labels_at` over all positions).  dvidtools' `get_n_synapses` reads
`<synapses>_labelsz/count/<body>/PreSyn|PostSyn`.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import TYPE_CHECKING, Iterable, Protocol

import numpy as np

from dvidfs.data.labelindex import unpack_block
from dvidfs.data.types import DataType
from dvidfs.errors import InvalidInputError, NotFoundError
from dvidfs.store import keys, versioned
from dvidfs.store.engine import Batch, Reader
from dvidfs.store.versioned import VersionView
from dvidfs.versions.model import Instance, Node

if TYPE_CHECKING:
    from dvidfs.data.labels import Labels


class Core(Protocol):
    """What resolving a sync needs of the core (`dvidfs.core.Dvid`), which data
    types do not import (tests/test_layers.py)."""

    def view(self, node: Node) -> VersionView: ...

    def data(self, node: Node, name: str) -> DataType: ...

BLOCK = keys.CLASS_ANNOTATION_BLOCK
TAG = keys.CLASS_ANNOTATION_TAG
SYNC_TKEY = keys.tkey(keys.CLASS_SYNC)
DEFAULT_BLOCK_SIZE = 64
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
KINDS = ("PostSyn", "PreSyn", "Gap", "Note", "Unknown")
SYNAPTIC = ("PostSyn", "PreSyn", "Gap")
RELS = ("PostSynTo", "PreSynTo", "ConvergentTo", "GroupedWith", "UnknownRelationship")
INDEX_TYPES = ("PostSyn", "PreSyn", "Gap", "Note", "AllSyn", "Voxels")  # labelsz's
MAX_Z_RANGES = 4096   # a box scan uses one range per z row of blocks up to this many, then one range

Pos = tuple[int, int, int]
Element = dict


# ---------------------------------------------------------------- checking
def _field(d: dict, name: str):
    """d[name] matched case-insensitively (Go's JSON decoder), exact name first."""
    if name in d:
        return d[name]
    low = name.lower()
    for k, v in d.items():
        if isinstance(k, str) and k.lower() == low:
            return v
    return None


def check_point(p, what: str = "position") -> Pos:
    """[x, y, z] as an int tuple, or InvalidInputError."""
    if isinstance(p, (str, bytes, dict)) or not isinstance(p, (list, tuple)) or len(p) != 3:
        raise InvalidInputError(f"{what} {p!r} is not [x, y, z]")
    out = []
    for v in p:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise InvalidInputError(f"{what} {p!r} must be 3 integers")
        if not INT32_MIN <= int(v) <= INT32_MAX:
            raise InvalidInputError(f"{what} {p!r} lies outside the int32 range")
        out.append(int(v))
    return tuple(out)


def parse_point(text: str, what: str = "point") -> Pos:
    """"x_y_z" (DVID's URL form) as a point."""
    parts = text.split("_")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise InvalidInputError(f"{what} {text!r} must be x_y_z integers") from None
    return check_point(vals, what)


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def check_element(e, i: int = 0, name: str | None = None) -> Element:
    """One element in canonical form, or InvalidInputError naming element `i`
    (or `name`: "line 3" of a file)."""
    name = name or f"element {i}"
    if not isinstance(e, dict):
        raise InvalidInputError(f"{name} is not a JSON object: {e!r:.80}")
    pos = _field(e, "Pos")
    if pos is None:
        raise InvalidInputError(f"{name} has no \"Pos\"")
    pos = check_point(pos, f"{name}: Pos")
    kind = _field(e, "Kind")
    kind = "Unknown" if kind is None else kind
    if kind not in KINDS:
        raise InvalidInputError(f"{name} at {list(pos)}: unknown Kind {kind!r} "
                                f"(known: {', '.join(KINDS)})")
    tags = _field(e, "Tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise InvalidInputError(f"{name} at {list(pos)}: Tags must be a list of strings")
    for t in tags:
        if "\0" in t or not _utf8(t):
            raise InvalidInputError(f"{name} at {list(pos)}: tag {t!r} holds a NUL or is not valid text")
    prop = _field(e, "Prop") or {}
    if not isinstance(prop, dict) or not all(isinstance(v, str) for v in prop.values()):
        raise InvalidInputError(f"{name} at {list(pos)}: Prop must be an object of string values")
    rels = _field(e, "Rels") or []
    if not isinstance(rels, list):
        raise InvalidInputError(f"{name} at {list(pos)}: Rels must be a list")
    out_rels = []
    for j, r in enumerate(rels):
        if not isinstance(r, dict):
            raise InvalidInputError(f"{name} at {list(pos)}: relationship {j} is not an object")
        rel = _field(r, "Rel")
        if rel not in RELS:
            raise InvalidInputError(f"{name} at {list(pos)}: relationship {j} has unknown Rel {rel!r} "
                                    f"(known: {', '.join(RELS)})")
        to = _field(r, "To")
        if to is None:
            raise InvalidInputError(f"{name} at {list(pos)}: relationship {j} has no \"To\"")
        out_rels.append({"Rel": rel, "To": list(check_point(to, f"{name}: relationship {j} To"))})
    return {"Pos": list(pos), "Kind": kind, "Tags": list(tags),
            "Prop": {k: prop[k] for k in sorted(prop)}, "Rels": out_rels}


def check_elements(elems) -> list[Element]:
    """A list of elements checked and canonical (InvalidInputError at the first bad one)."""
    if not isinstance(elems, list):
        raise InvalidInputError(f"annotation elements are a JSON list of objects, got {type(elems).__name__}")
    return [check_element(e, i) for i, e in enumerate(elems)]


def without_rels(e: Element) -> Element:
    """DVID's ElementNR: what label and tag queries return unless asked for relationships."""
    return {"Pos": e["Pos"], "Kind": e["Kind"], "Tags": e["Tags"], "Prop": e["Prop"]}


def _pos(e: Element) -> Pos:
    return tuple(e["Pos"])


def _zyx(p: Pos) -> tuple[int, int, int]:
    return p[2], p[1], p[0]


# ---------------------------------------------------------------- keys
def _block_tk(bc: Pos) -> bytes:
    return bytes((BLOCK,)) + keys.izyx(*bc)


def _tag_prefix(tag: str) -> bytes:
    return bytes((TAG,)) + tag.encode("utf-8") + b"\0"


def _tag_tk(tag: str, pos: Pos) -> bytes:
    return _tag_prefix(tag) + keys.izyx(*pos)


def _split_tag_tk(tk: bytes) -> tuple[str, Pos]:
    return tk[1:-13].decode("utf-8"), keys.parse_izyx(tk[-12:])


def _encode_block(elems: Iterable[Element]) -> bytes:
    return json.dumps(sorted(elems, key=lambda e: _zyx(_pos(e))), separators=(",", ":")).encode()


def _decode_block(v: bytes) -> dict[Pos, Element]:
    return {_pos(e): e for e in json.loads(v)}


def describe_block(tk: bytes, inst: Instance) -> str:
    if len(tk) != 13:
        return f"annotation key {tk[1:].hex()}"
    x, y, z = keys.parse_izyx(tk[1:])
    b = int(inst.config.get("BlockSize", [DEFAULT_BLOCK_SIZE])[0])
    return (f"annotation block ({x},{y},{z}): the elements at voxels x {x * b}..{x * b + b - 1}, "
            f"y {y * b}..{y * b + b - 1}, z {z * b}..{z * b + b - 1}")


def describe_tag(tk: bytes, inst: Instance) -> str:
    tag, pos = _split_tag_tk(tk)
    return f"tag {tag!r} of the element at {list(pos)}"


def describe_sync(tk: bytes, inst: Instance) -> str:
    return "its sync (set to different instances on the two sides)"


def _remove(engine: Reader, batch: Batch, instance_id: int, tk: bytes, view: VersionView) -> None:
    """Remove `tk` at the view's version: a tombstone if an ancestor still holds
    a value for it, else just this version's entry (nothing is left behind)."""
    start = keys.data_key(instance_id, tk, 0)[:-keys.SUFFIX_LEN]
    below = False
    for k in engine.scan(start, start + b"\xff" * (keys.SUFFIX_LEN + 1), include_value=False):
        if len(k) - len(start) != keys.SUFFIX_LEN:
            continue
        _, _, v, tomb = keys.split_data_key(k)
        if v != view.version and v in view.visible and not tomb:
            below = True
            break
    if below:
        versioned.delete(batch, instance_id, tk, view.version)
    else:
        batch.delete(keys.data_key(instance_id, tk, view.version))


class _Synced(DataType):
    """What annotation and labelsz share: a versioned sync to one other instance."""

    sync_type: str = ""

    def sync_name(self, view: VersionView | Node) -> str | None:
        v = versioned.get(self.engine, self.inst.id, SYNC_TKEY, self.as_view(view))
        return v.decode() if v else None

    def set_sync(self, node: Node, names: str, replace: bool = False) -> str | None:
        """DVID's POST sync {"sync": "name"}: sync with the named instance (which
        must exist at `node` and be a `sync_type`).  A different existing sync is
        changed only with `replace`; `replace` with "" removes the sync.
        Returns the sync now in force."""
        if not isinstance(names, str):
            raise InvalidInputError('sync expects {"sync": "<instance name>"}')
        wanted = [n.strip() for n in names.split(",") if n.strip()]
        if len(wanted) > 1:
            raise InvalidInputError(f"{self.inst.name!r} syncs with one {self.sync_type} instance, "
                                    f"got {', '.join(wanted)}")
        with self.db.lock:
            self.check_writable(node)
            view = self.db.view(node)
            have = self.sync_name(view)
            if not wanted:
                if not replace or have is None:
                    return have
                batch = Batch()
                _remove(self.engine, batch, self.inst.id, SYNC_TKEY, view)
            else:
                name = wanted[0]
                inst = self.db.instances_at(node).get(name)
                if inst is None:
                    raise InvalidInputError(f"cannot sync {self.inst.name!r} with {name!r}: no such data "
                                            f"instance at node {node.uuid}")
                if inst.typename != self.sync_type:
                    raise InvalidInputError(f"cannot sync {self.inst.name!r} with {name!r}: its type is "
                                            f"{inst.typename}, not {self.sync_type}")
                if have == name:
                    return have
                if have is not None and not replace:
                    raise InvalidInputError(f"{self.inst.name!r} is synced with {have!r} already; POST "
                                            "with ?replace=true to change it")
                batch = Batch()
                versioned.put(batch, self.inst.id, SYNC_TKEY, node.version_id, name.encode())
            self.engine.apply(batch)
            self._applied(node)
        self.ctx.changed(node, self.inst.name)
        return wanted[0] if wanted else None


# ---------------------------------------------------------------- writes: staging
class _Staged:
    """The blocks and tag keys one write changes, read once and flushed in one batch."""

    def __init__(self, ann: "Annotation", view: VersionView):
        self.ann, self.view = ann, view
        self.blocks: dict[Pos, dict[Pos, Element]] = {}
        self.dirty: set[Pos] = set()
        self.tags: dict[tuple[str, Pos], bool] = {}   # (tag, pos) -> present after the write
        # (tag, pos) keys stored before the write: the tags of the elements as read (the
        # index changes with its blocks in every batch, so the two always agree)
        self.stored_tags: set[tuple[str, Pos]] = set()

    def block(self, bc: Pos) -> dict[Pos, Element]:
        b = self.blocks.get(bc)
        if b is None:
            v = versioned.get(self.ann.engine, self.ann.inst.id, _block_tk(bc), self.view)
            b = self.blocks[bc] = _decode_block(v) if v else {}
            self.stored_tags.update((t, p) for p, e in b.items() for t in e["Tags"])
        return b

    def get(self, pos: Pos) -> Element | None:
        return self.block(self.ann.block_of(pos)).get(pos)

    def _retag(self, pos: Pos, old: Element | None, new: Element | None) -> None:
        for t in set(old["Tags"] if old else ()) - set(new["Tags"] if new else ()):
            self.tags[(t, pos)] = False
        for t in set(new["Tags"] if new else ()):
            self.tags[(t, pos)] = True

    def put(self, e: Element) -> None:
        pos = _pos(e)
        bc = self.ann.block_of(pos)
        blk = self.block(bc)
        old = blk.get(pos)
        if old == e:
            return
        self._retag(pos, old, e)
        blk[pos] = e
        self.dirty.add(bc)

    def remove(self, pos: Pos) -> Element | None:
        bc = self.ann.block_of(pos)
        old = self.block(bc).pop(pos, None)
        if old is not None:
            self._retag(pos, old, None)
            self.dirty.add(bc)
        return old

    def rewrite_rels(self, near: Iterable[Pos], old_to: Pos, new_to: Pos | None) -> None:
        """Relationships pointing at `old_to`, in the blocks of the points `near`:
        re-pointed at `new_to`, or dropped when it is None (DVID's delete/move)."""
        for bc in {self.ann.block_of(p) for p in near}:
            blk = self.block(bc)
            for pos, e in list(blk.items()):
                if not any(tuple(r["To"]) == old_to for r in e["Rels"]):
                    continue
                rels = [r if tuple(r["To"]) != old_to else {"Rel": r["Rel"], "To": list(new_to)}
                        for r in e["Rels"] if new_to is not None or tuple(r["To"]) != old_to]
                blk[pos] = {**e, "Rels": rels}
                self.dirty.add(bc)

    def flush(self) -> Batch:
        ann, inst_id, version = self.ann, self.ann.inst.id, self.view.version
        batch = Batch()
        for bc in sorted(self.dirty, key=_zyx):
            tk, elems = _block_tk(bc), self.blocks[bc]
            if elems:
                versioned.put(batch, inst_id, tk, version, _encode_block(elems.values()))
            elif versioned.get(ann.engine, inst_id, tk, self.view) is not None:
                _remove(ann.engine, batch, inst_id, tk, self.view)
        for (tag, pos), present in sorted(self.tags.items()):
            tk = _tag_tk(tag, pos)
            stored = (tag, pos) in self.stored_tags
            if present and not stored:
                versioned.put(batch, inst_id, tk, version, b"")
            elif stored and not present:
                _remove(ann.engine, batch, inst_id, tk, self.view)
        return batch


# ---------------------------------------------------------------- the type
class Annotation(_Synced):
    typename = "annotation"
    offers = frozenset({"annotation"})
    sync_type = "labels"
    key_descriptions = {BLOCK: describe_block, TAG: describe_tag, keys.CLASS_SYNC: describe_sync}

    @classmethod
    def make_config(cls, block_size=None, voxel_size=None, voxel_units=None, **options) -> dict:
        # voxel_size / voxel_units: sent by `dvidfs data new` and DVID clients; ignored as DVID does
        if options:
            raise InvalidInputError(f"annotation instances take only a block size "
                                    f"(got {', '.join(sorted(options))})")
        bs = DEFAULT_BLOCK_SIZE if block_size is None else block_size
        if isinstance(bs, (list, tuple)):
            if len(set(bs)) != 1:
                raise InvalidInputError(f"BlockSize {bs!r}: annotation blocks are cubes")
            bs = bs[0]
        if isinstance(bs, bool) or not isinstance(bs, int) or not 1 <= bs <= INT32_MAX:
            raise InvalidInputError(f"BlockSize {bs!r} must be a positive integer")
        return {"BlockSize": [bs] * 3}

    def __init__(self, ctx, inst: Instance):
        super().__init__(ctx, inst)
        self.block_size = int(inst.config.get("BlockSize", [DEFAULT_BLOCK_SIZE])[0])

    def block_of(self, pos: Pos) -> Pos:
        b = self.block_size
        return pos[0] // b, pos[1] // b, pos[2] // b

    def info(self, view: VersionView) -> dict:
        info = super().info(view)
        sync = self.sync_name(self.as_view(view))
        info["Extended"] = {"BlockSize": [self.block_size] * 3, "Syncs": [sync] if sync else []}
        return info

    # ------------------------------------------------------------ reading
    def _scan(self, reader: Reader, view: VersionView, ranges) -> Iterable[tuple[Pos, dict[Pos, Element]]]:
        for tk, _, v in versioned.scan_ranges(reader, self.inst.id, ranges, view):
            if len(tk) == 13:
                yield keys.parse_izyx(tk[1:]), _decode_block(v)

    def _read_blocks(self, view: VersionView, bcs: Iterable[Pos]) -> dict[Pos, dict[Pos, Element]]:
        ranges = [(tk, tk) for tk in sorted({_block_tk(bc) for bc in bcs})]
        with self.engine.snapshot() as snap:
            return dict(self._scan(snap, view, ranges))

    def _box_blocks(self, view: VersionView, lo: Pos | None = None,
                    hi: Pos | None = None) -> Iterable[tuple[Pos, dict[Pos, Element]]]:
        """Stored blocks with lo <= block <= hi (inclusive block coordinates; None: all)."""
        if lo is None:
            ranges = [(bytes((BLOCK,)), bytes((BLOCK,)) + b"\xff" * 12)]
        elif hi[2] - lo[2] < MAX_Z_RANGES:
            ranges = [(_block_tk((lo[0], lo[1], z)), _block_tk((hi[0], hi[1], z))) for z in range(lo[2], hi[2] + 1)]
        else:
            ranges = [(_block_tk(lo), _block_tk(hi))]
        with self.engine.snapshot() as snap:
            for bc, elems in self._scan(snap, self.as_view(view), ranges):
                if lo is None or all(a <= c <= b for a, c, b in zip(lo, bc, hi)):
                    yield bc, elems

    def _box(self, offset, size) -> tuple[Pos, Pos, Pos, Pos]:
        """Voxel bounds (inclusive) and block bounds of a box from offset and size."""
        o = check_point(list(offset), "offset")
        s = check_point(list(size), "size")
        if min(s) < 1:
            raise InvalidInputError(f"size {list(s)} must be positive in x, y and z")
        hi = tuple(a + n - 1 for a, n in zip(o, s))
        return o, hi, self.block_of(o), self.block_of(hi)

    def all_elements(self, view: VersionView | Node) -> list[Element]:
        """Every element, block by block (z, y, x), each block's in (z, y, x) order."""
        return [e for _, elems in self._box_blocks(self.as_view(view)) for e in elems.values()]

    def count(self, view: VersionView | Node) -> int:
        return sum(len(elems) for _, elems in self._box_blocks(self.as_view(view)))

    def element(self, view: VersionView | Node, pos) -> Element | None:
        pos = check_point(pos)
        return self._read_blocks(self.as_view(view), [self.block_of(pos)]).get(self.block_of(pos), {}).get(pos)

    def elements_in(self, view: VersionView | Node, offset, size) -> list[Element]:
        """DVID's GET elements/<size>/<offset>: the elements inside the box."""
        lo, hi, blo, bhi = self._box(offset, size)
        return [e for _, elems in self._box_blocks(self.as_view(view), blo, bhi) for p, e in elems.items()
                if all(a <= c <= b for a, c, b in zip(lo, p, hi))]

    def blocks(self, view: VersionView | Node, offset=None, size=None) -> dict[str, list[Element]]:
        """DVID's GET blocks/<size>/<offset> (all-elements without a box): every
        element of the blocks meeting the box, keyed "x,y,z" by block."""
        bounds = (None, None) if offset is None else self._box(offset, size)[2:]
        return {f"{bc[0]},{bc[1]},{bc[2]}": list(elems.values())
                for bc, elems in self._box_blocks(self.as_view(view), *bounds)}

    def tags(self, view: VersionView | Node) -> list[str]:
        """Every tag some element has, sorted."""
        out = []
        for tk, _ in versioned.scan(self.engine, self.inst.id, bytes((TAG,)), bytes((TAG,)) + b"\xff" * 8,
                                    self.as_view(view), include_value=False):
            tag = _split_tag_tk(tk)[0]
            if not out or out[-1] != tag:
                out.append(tag)
        return out

    def tag_elements(self, view: VersionView | Node, tag: str, rels: bool = False) -> list[Element]:
        """DVID's GET tag/<tag>: the elements with that tag, in (z, y, x) order."""
        if not isinstance(tag, str) or "\0" in tag or not _utf8(tag):
            raise InvalidInputError(f"tag {tag!r} is not a valid tag")
        view = self.as_view(view)
        p = _tag_prefix(tag)
        points = [_split_tag_tk(tk)[1] for tk, _ in
                  versioned.scan(self.engine, self.inst.id, p, p + b"\xff" * 12, view, include_value=False)]
        where = [(self.block_of(pt), pt) for pt in points]
        blocks = self._read_blocks(view, [bc for bc, _ in where])
        out = []
        for bc, pt in sorted(where, key=lambda w: _zyx(w[1])):
            e = blocks.get(bc, {}).get(pt)
            if e is not None and tag in e["Tags"]:
                out.append(e if rels else without_rels(e))
        return out

    def label_elements(self, view: VersionView | Node, labels: "Labels", body: int,
                       rels: bool = False) -> list[Element]:
        """The elements whose voxel is in `body` of `labels` at this version: the
        body's blocks from its label index, the annotation blocks covering them,
        and a label lookup of their elements' positions.  [] for a body with no
        voxels (DVID answers an unknown label with an empty list too)."""
        view = self.as_view(view)
        body = int(body)
        idx = labels.index(view, body)
        if idx is None or not len(idx):
            return []
        lb, ab = labels.grid.size, self.block_size
        body_blocks = {unpack_block(int(k)) for k in idx.block_keys()}
        want = set()
        for bc in body_blocks:
            lo = [c * s // ab for c, s in zip(bc, lb)]
            hi = [((c + 1) * s - 1) // ab for c, s in zip(bc, lb)]
            for z in range(lo[2], hi[2] + 1):
                for y in range(lo[1], hi[1] + 1):
                    for x in range(lo[0], hi[0] + 1):
                        want.add((x, y, z))
        cands = [e for _, elems in sorted(self._read_blocks(view, want).items(), key=lambda t: _zyx(t[0]))
                 for e in elems.values()]
        if not cands:
            return []
        if any(s % ab for s in lb):  # annotation blocks straddle label blocks: drop what lies outside the body's
            inside = [tuple(r) in body_blocks for r in (np.array([e["Pos"] for e in cands]) // lb).tolist()]
            cands = [e for e, ok in zip(cands, inside) if ok]
            if not cands:
                return []
        got = labels.labels_at(view, [e["Pos"] for e in cands])
        return [e if rels else without_rels(e) for e, lab in zip(cands, got.tolist()) if lab == body]

    def label_counts(self, view: VersionView | Node, labels: "Labels") -> dict[int, Counter]:
        """Body -> Counter of element kinds, for every body holding an element
        (one label lookup over every element; labelsz's top and threshold)."""
        view = self.as_view(view)
        elems = self.all_elements(view)
        out: dict[int, Counter] = {}
        if not elems:
            return out
        for e, lab in zip(elems, labels.labels_at(view, [e["Pos"] for e in elems]).tolist()):
            if lab:
                out.setdefault(lab, Counter())[e["Kind"]] += 1
        return out

    def verbose(self, view: VersionView | Node, elems: list[Element]) -> list[Element]:
        """DVID's relationships=verbose: each relationship carries its partner's
        Kind, Tags and Prop (when the partner exists)."""
        view = self.as_view(view)
        tos = {tuple(r["To"]) for e in elems for r in e.get("Rels", ())}
        blocks = self._read_blocks(view, [self.block_of(p) for p in tos])
        out = []
        for e in elems:
            rels = []
            for r in e.get("Rels", ()):
                partner = blocks.get(self.block_of(tuple(r["To"])), {}).get(tuple(r["To"]))
                rels.append({**r, **({k: partner[k] for k in ("Kind", "Tags", "Prop")} if partner else {})})
            out.append({**e, "Rels": rels})
        return out

    # ------------------------------------------------------------ writing
    def _write(self, node: Node, fn) -> object:
        """Run fn(staged) under the lock and store what it changed in one batch."""
        with self.db.lock:
            self.check_writable(node)
            staged = _Staged(self, self.db.view(node))
            result = fn(staged)
            batch = staged.flush()
            if not batch.ops:
                return result
            self.engine.apply(batch)
            self._applied(node)
        self.ctx.changed(node, self.inst.name)
        return result

    def put_elements(self, node: Node, elements) -> int:
        """Add or replace elements (DVID's POST elements); the last of a repeated
        position wins.  All are checked first: one bad element stores nothing.
        Returns how many elements changed."""
        elems = check_elements(elements)
        last = {_pos(e): e for e in elems}

        def apply(staged: _Staged) -> int:
            n = 0
            for e in last.values():
                if staged.get(_pos(e)) != e:
                    staged.put(e)
                    n += 1
            return n
        return self._write(node, apply)

    def delete_element(self, node: Node, pos) -> Element:
        """Delete the element at `pos` and every relationship pointing at it from
        its own block and its partners' (DVID's DELETE element).  NotFoundError
        when there is none."""
        pos = check_point(pos)

        def apply(staged: _Staged) -> Element:
            old = staged.remove(pos)
            if old is None:
                raise NotFoundError(f"no annotation element at {list(pos)} in {self.inst.name!r}")
            staged.rewrite_rels([pos, *(tuple(r["To"]) for r in old["Rels"])], pos, None)
            return old
        return self._write(node, apply)

    def move_element(self, node: Node, src, dst) -> Element:
        """Move the element at `src` to `dst` (DVID's POST move): relationships
        pointing at it from its partners follow; an element at `dst` is replaced,
        as DVID does.  NotFoundError when there is none at `src`."""
        src, dst = check_point(src, "from"), check_point(dst, "to")

        def apply(staged: _Staged) -> Element:
            old = staged.get(src)
            if old is None:
                raise NotFoundError(f"no annotation element at {list(src)} in {self.inst.name!r}")
            if src == dst:
                return old
            staged.remove(src)
            moved = {**old, "Pos": list(dst)}
            prev = staged.get(dst)
            if prev is not None:
                staged.remove(dst)
            staged.put(moved)
            staged.rewrite_rels([src, dst, *(tuple(r["To"]) for r in old["Rels"])], src, dst)
            return moved
        return self._write(node, apply)


# ---------------------------------------------------------------- labelsz
def _check_index_type(t: str) -> str:
    if t not in INDEX_TYPES:
        raise InvalidInputError(f"index type {t!r} is not one of {', '.join(INDEX_TYPES)}")
    return t


def _kind_count(c: Counter, t: str) -> int:
    return sum(c[k] for k in SYNAPTIC) if t == "AllSyn" else c[t]


class LabelSz(_Synced):
    """DVID's labelsz: element counts per label, computed from the synced
    annotation (and its labels) at every request instead of kept up to date."""

    typename = "labelsz"
    offers = frozenset({"labelsz"})
    sync_type = "annotation"
    key_descriptions = {keys.CLASS_SYNC: describe_sync}

    @classmethod
    def make_config(cls, block_size=None, voxel_size=None, voxel_units=None, **options) -> dict:
        if options or block_size is not None:
            raise InvalidInputError("labelsz instances take no settings; POST sync to name their annotation")
        return {}

    def info(self, view: VersionView) -> dict:
        info = super().info(view)
        sync = self.sync_name(self.as_view(view))
        info["Extended"] = {"Syncs": [sync] if sync else []}
        return info

    def count(self, view: VersionView | Node, ann: Annotation, labels: "Labels", body: int, t: str) -> int:
        """Elements of kind `t` (or AllSyn; Voxels: the body's size) in `body`."""
        t = _check_index_type(t)
        view = self.as_view(view)
        if t == "Voxels":
            idx = labels.index(view, int(body))
            return idx.size if idx is not None else 0
        return _kind_count(Counter(e["Kind"] for e in ann.label_elements(view, labels, body)), t)

    def ranked(self, view: VersionView | Node, ann: Annotation, labels: "Labels", t: str) -> list[tuple[int, int]]:
        """(label, count) of every label with a nonzero count, largest first (ties: smaller label first)."""
        t = _check_index_type(t)
        view = self.as_view(view)
        if t == "Voxels":
            pairs = [(int(b), labels.size(view, int(b))) for b in labels.bodies(view) if int(b)]
        else:
            pairs = [(b, _kind_count(c, t)) for b, c in ann.label_counts(view, labels).items()]
        return sorted(((b, n) for b, n in pairs if n > 0), key=lambda p: (-p[1], p[0]))


# ---------------------------------------------------------------- resolving syncs (front ends)
def synced_labels(core: Core, node: Node, ann: Annotation) -> "Labels":
    """The labels instance `ann` is synced with at `node` (InvalidInputError if none)."""
    name = ann.sync_name(core.view(node))
    if name is None:
        raise InvalidInputError(f"annotation {ann.inst.name!r} is not synced with a labels instance; POST "
                                f'{{"sync": "<labels>"}} to its sync endpoint first')
    labels = core.data(node, name)
    if labels.typename != "labels":
        raise InvalidInputError(f"{ann.inst.name!r} is synced with {name!r}, which is not a labels instance")
    return labels


def synced_annotation(core: Core, node: Node, lsz: LabelSz) -> tuple[Annotation, "Labels"]:
    """The annotation a labelsz instance is synced with, and that annotation's labels."""
    name = lsz.sync_name(core.view(node))
    if name is None:
        raise InvalidInputError(f"labelsz {lsz.inst.name!r} is not synced with an annotation instance; POST "
                                f'{{"sync": "<annotation>"}} to its sync endpoint first')
    ann = core.data(node, name)
    if not isinstance(ann, Annotation):
        raise InvalidInputError(f"{lsz.inst.name!r} is synced with {name!r}, which is not an annotation")
    return ann, synced_labels(core, node, ann)
