"""Stored pyramids: levels 1..N of a volume, versioned in the same store as its blocks.

Level n is the volume halved n times (data/downres.py: mean for grayscale,
mode of supervoxels for labels), cut into blocks of the same size as level 0,
one versioned key per block with the level in the TKey (labels:
`186 | n | IZYX`, DVID's labelmap layout; grayscale: `24 | n | IZYX`, level 0
keeps `23 | IZYX`).  Blocks of only background are not stored, as at level 0.
A versioned record (`244`, JSON `{"Levels": n}`) says how many levels a node
sees built; reads at a scale above it are computed from the highest stored
level (downres.read_scaled).

**Built** by `dvidfs downres NODE DATA [--levels N]` (`build`), level by level
from the one below, in an open node, holding the store's write lock (other
writers wait; readers do not), a row of blocks per batch; the record is
written last, so until then readers compute the levels on demand.

**Kept current incrementally, in the same atomic batch as every write**
(`Upkeep`): each level-0 block a write stores (or deletes) is halved at once,
and at the end of the write each changed block of level 1 is its old stored
value with the new octants pasted in (a level-n block is eight octants, each
the halving of one level-(n-1) block), then halved for level 2, and so on.
No neighbour is read, a level whose block comes out unchanged stops the climb,
and a reader never sees a level disagree with level 0 (the batch is atomic).
Label merges, cleaves and the mapping touch no level: reads apply the mapping
after taking the levels' supervoxels.

**Versions.** A child sees its ancestors' levels; its writes store new level
blocks in the child only.  Every node that writes blocks also writes the
record (at least once), so a node merge sees the record changed on each side
that wrote and keeps the smallest level count (`merge_levels`); level blocks
changed on two sides are merged cube by cube (`merge_level_block`): a cube
of a level-n block of edge block/2^n is the halving of one level-0 block, so
a cube changed differently on two sides means that level-0 block was, which
refuses the merge anyway.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Callable

import numpy as np

from dvidfs.data.downres import scale_box
from dvidfs.errors import ConflictError, InvalidInputError, NotFoundError
from dvidfs.geometry import XYZ, Box, BlockGrid
from dvidfs.store import keys, versioned
from dvidfs.store.engine import Batch, Reader
from dvidfs.store.versioned import VersionView

if TYPE_CHECKING:
    from dvidfs.data.volume import BlockVolume
    from dvidfs.versions.dag import MergeContext
    from dvidfs.versions.model import Node

PYRAMID_TKEY = keys.tkey(keys.CLASS_PYRAMID)
MAX_LEVELS = 24            # 2^24 x a block: past DVID's int32 coordinates
READ_BUDGET = 64 << 20     # bytes of the level below read at once while building


# ---------------------------------------------------------------- the record
def _levels_of(value: bytes | None) -> int:
    return int(json.loads(value)["Levels"]) if value else 0


def _record(levels: int) -> bytes:
    return json.dumps({"Levels": int(levels)}).encode()


def stored_levels(vol: "BlockVolume", view: VersionView, reader: Reader | None = None) -> int:
    """How many levels above 0 are stored and current as seen from `view`."""
    return _levels_of(versioned.get(reader or vol.engine, vol.inst.id, PYRAMID_TKEY, view))


def default_levels(ext: Box, grid: BlockGrid) -> int:
    """Levels until the volume is no larger than one block (at least 1).  By
    size: a volume across the origin spans two blocks at every level."""
    n = 1
    while n < MAX_LEVELS and any(s > b for s, b in zip(scale_box(ext, n).size, grid.size)):
        n += 1
    return n


def _octant(child: XYZ, parent: XYZ, half: XYZ) -> tuple[slice, slice, slice]:
    """[z, y, x] slices of a level-n block `parent` holding the halving of
    level-(n-1) block `child`."""
    lo = [(c - 2 * p) * h for c, p, h in zip(child, parent, half)]
    return tuple(slice(lo[a], lo[a] + half[a]) for a in (2, 1, 0))


# ---------------------------------------------------------------- incremental upkeep
class Upkeep:
    """The pyramid part of one staged write (BlockVolume.staged_write): `note`
    each level-0 block stored or deleted, `stage` the levels into the same batch."""

    def __init__(self, vol: "BlockVolume", reader: Reader, view: VersionView):
        self.vol = vol
        e = versioned.get_versioned(reader, vol.inst.id, PYRAMID_TKEY, view)
        self.levels = _levels_of(e[1]) if e else 0
        self.own_record = e is not None and e[0] == view.version
        self.touched = False
        self.halved: dict[XYZ, np.ndarray | None] = {}   # level-0 block -> its halving (None: background)

    def note(self, bcoord: XYZ, new: np.ndarray | None) -> None:
        self.touched = True
        if self.levels:
            self.halved[tuple(bcoord)] = None if new is None or not new.any() else self.vol.halve(new)

    def stage(self, batch: Batch, reader: Reader, node: "Node", view: VersionView) -> None:
        if not self.touched:
            return
        vol, inst = self.vol, self.vol.inst.id
        if not self.own_record:  # so a node merge sees which sides wrote (merge_levels)
            versioned.put(batch, inst, PYRAMID_TKEY, node.version_id, _record(self.levels))
        half = tuple(b // 2 for b in vol.grid.size)
        changed = self.halved
        for n in range(1, self.levels + 1):
            if not changed:
                break
            level = vol.level(n)
            parents: dict[XYZ, list] = {}
            for c, small in changed.items():
                parents.setdefault(tuple(v >> 1 for v in c), []).append((c, small))
            nxt: dict[XYZ, np.ndarray | None] = {}
            for pc, kids in parents.items():
                old = level.block(reader, view, pc)
                new = old.copy() if old is not None else np.zeros(vol.grid.shape_zyx, vol.dtype)
                for c, small in kids:
                    new[_octant(c, pc, half)] = 0 if small is None else small
                if old is None and not new.any() or old is not None and np.array_equal(old, new):
                    continue  # unchanged: nothing above it changes either
                tk = level.block_tkey(pc)
                if new.any():
                    versioned.put(batch, inst, tk, node.version_id, vol.encode_block(new), vol._tombstones)
                    nxt[pc] = vol.halve(new) if n < self.levels else None
                else:
                    versioned.delete(batch, inst, tk, node.version_id)
                    nxt[pc] = None
            changed = nxt
        self.halved = {}


# ---------------------------------------------------------------- building
def build(vol: "BlockVolume", node: "Node", levels: int | None = None,
          progress: Callable[[int], None] | None = None, total: Callable[[int], None] | None = None) -> int:
    """Compute and store levels 1..`levels` (default: until the volume fits in
    one block) of `vol` in open `node`; returns the number of levels.  Holds
    the write lock throughout; one batch per row of blocks; the record last.
    `total(n)` is told the number of blocks first, `progress(k)` as they are done."""
    db = vol.db
    with db.lock:
        vol.check_writable(node)
        view = db.view(node)
        ext = vol.extents(view)
        if ext is None:
            raise NotFoundError(f"data instance {vol.inst.name!r} is empty at this node: nothing to downsample")
        n_levels = default_levels(ext, vol.grid) if levels is None else int(levels)
        if not 1 <= n_levels <= MAX_LEVELS:
            raise InvalidInputError(f"--levels {n_levels}: build 1 to {MAX_LEVELS} levels")
        ranges = [vol.grid.block_range(scale_box(ext, n)) for n in range(1, n_levels + 1)]
        if total:
            total(sum((h[0] - l[0] + 1) * (h[1] - l[1] + 1) * (h[2] - l[2] + 1) for l, h in ranges))
        b = vol.grid.size
        per_read = max(1, READ_BUDGET // (8 * b[0] * b[1] * b[2] * vol.dtype.itemsize))
        for n, ((x0, y0, z0), (x1, y1, z1)) in enumerate(ranges, start=1):
            src, dst = vol.level(n - 1), vol.level(n)
            for bz in range(z0, z1 + 1):
                for by in range(y0, y1 + 1):
                    for bx0 in range(x0, x1 + 1, per_read):
                        bx1 = min(bx0 + per_read - 1, x1)
                        _build_row(vol, node, view, src, dst, (bx0, bx1, by, bz))
                        if progress:
                            progress(bx1 - bx0 + 1)
        batch = Batch()
        versioned.put(batch, vol.inst.id, PYRAMID_TKEY, node.version_id, _record(n_levels))
        vol.engine.apply(batch)
        vol._applied(node)
    vol.ctx.changed(node, vol.inst.name)
    return n_levels


def _build_row(vol, node, view, src, dst, row) -> None:
    """Level-`dst.scale` blocks bx0..bx1 of row (by, bz), from the level below, in one batch."""
    bx0, bx1, by, bz = row
    b = vol.grid.size
    lo = (2 * bx0 * b[0], 2 * by * b[1], 2 * bz * b[2])
    size = (2 * (bx1 - bx0 + 1) * b[0], 2 * b[1], 2 * b[2])
    arr = src.read_stored(view, lo, size)
    row_box = Box((bx0 * b[0], by * b[1], bz * b[2]), ((bx1 + 1) * b[0], (by + 1) * b[1], (bz + 1) * b[2]))
    with vol.engine.snapshot() as snap:
        old = {dst.block_coord(tk): value
               for tk, _, _, value in dst._iter_stored(snap, view, row_box, 0, cached=False)}
        tombstones = versioned.has_tombstones(snap, vol.inst.id, node.version_id)
    batch = Batch()
    w = 2 * b[0]
    for i, bx in enumerate(range(bx0, bx1 + 1)):
        small = vol.halve(arr[:, :, i * w:(i + 1) * w])
        c = (bx, by, bz)
        if small.any():
            value = vol.encode_block(small)
            if old.get(c) != value:
                versioned.put(batch, vol.inst.id, dst.block_tkey(c), node.version_id, value, tombstones)
        elif c in old:
            versioned.delete(batch, vol.inst.id, dst.block_tkey(c), node.version_id)
    if len(batch):
        vol.engine.apply(batch)
        vol._applied(node)


# ---------------------------------------------------------------- node merges
def merge_levels(ctx: "MergeContext") -> bytes | None:
    """The record after a node merge: the fewest levels any parent kept current."""
    n = min(_levels_of(v) for v in ctx.parent_values())
    return _record(n) if n else None


def merge_level_block(ctx: "MergeContext", decode: Callable[[bytes], np.ndarray],
                      encode: Callable[[np.ndarray], bytes], halve) -> bytes | None:
    """A level block changed on several sides of a node merge.  Unless every
    parent keeps its level current (else the merged record leaves it unused:
    None), the merged block is computed by `_merged_block`."""
    n = ctx.tkey[1]
    if min(stored_levels_at(ctx, v) for v in ctx.parents) < n:
        return None   # not read: the merged node keeps fewer levels (merge_levels)
    arr = _merged_block(ctx, ctx.tkey, decode, halve)
    return encode(arr) if arr is not None and arr.any() else None


def stored_levels_at(ctx: "MergeContext", view: VersionView) -> int:
    return _levels_of(versioned.get(ctx.reader, ctx.instance_id, PYRAMID_TKEY, view))


def _merged_block(ctx: "MergeContext", tk: bytes, decode, halve) -> np.ndarray | None:
    """The merged value of level block `tk`.  A level-n block is 8^n cubes of
    edge block/2^n, each the n-fold halving of one level-0 block; a level-0
    block changed on two sides refuses the merge, so each cube takes the value
    of the one side that changed it (or the base's).  Levels whose voxels span
    several level-0 blocks (n > log2 of the block edge) are the halving of
    their eight merged children."""
    get = versioned.get
    values = [get(ctx.reader, ctx.instance_id, tk, v) for v in ctx.parents]
    base_raw = get(ctx.reader, ctx.instance_id, tk, ctx.base)
    known = [decode(v) for v in (*values, base_raw) if v]
    if not known:
        return None
    base = decode(base_raw) if base_raw else np.zeros_like(known[0])
    sides = [decode(v) if v else np.zeros_like(base) for v in values]
    n, shape = tk[1], base.shape
    m = 1 << n
    if all(d % m == 0 for d in shape):   # cubes of one level-0 block each
        g = [d // m for d in shape]

        def cubes(a):
            return a.reshape(m, g[0], m, g[1], m, g[2])
        out, seen = cubes(base.copy()), np.zeros((m, m, m), bool)
        for side in map(cubes, sides):
            changed = (side != cubes(base)).any(axis=(1, 3, 5))
            both = changed & seen
            if both.any() and (both & ~(side == out).all(axis=(1, 3, 5))).any():
                raise ConflictError("a pyramid block changed differently on two sides")
            out = np.where(changed[:, None, :, None, :, None], side, out)
            seen |= changed
        return out.reshape(shape)
    c = keys.parse_izyx(tk[-12:])
    out = np.zeros_like(base)
    hz, hy, hx = (d // 2 for d in shape)
    for dz, dy, dx in ((z, y, x) for z in (0, 1) for y in (0, 1) for x in (0, 1)):
        child_tk = tk[:1] + bytes((n - 1,)) + keys.izyx(2 * c[0] + dx, 2 * c[1] + dy, 2 * c[2] + dz)
        child = _merged_block(ctx, child_tk, decode, halve)
        if child is not None:
            out[dz * hz:(dz + 1) * hz, dy * hy:(dy + 1) * hy, dx * hx:(dx + 1) * hx] = halve(child)
    return out
