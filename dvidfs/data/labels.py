"""Label volumes (DVID's labelmap): uint64 supervoxel blocks, a versioned
supervoxel -> body mapping, a per-body label index, sparsevols, merge and split.

* Blocks (64³ by default) hold **supervoxel** ids in DVID's compressed label
  block format, lz4 on top.  Reads apply the node's mapping unless
  `supervoxels=True`.
* The **mapping** holds only merged supervoxels (identity otherwise), one
  versioned key per supervoxel, and is cached in memory per version.  A merge
  of B into A writes one mapping key per supervoxel of B and moves B's index
  rows to A: O(supervoxels + index rows), voxel blocks untouched.
* The **label index** (see labelindex.py) is updated in the same atomic batch
  as every voxel write, from per-block count differences.
* A **split** cuts the voxels given as a sparsevol out of a body: only the
  blocks the sparsevol touches are rewritten, with a new id from the versioned
  max-label counter.
* A **cleave** moves some supervoxels of a body to a new body: mapping keys
  and index rows only, like a merge.
* **New ids** (split, cleave, `reserve_labels` = DVID's POST nextlabel) come
  from above the repo-wide max label (DVID's MaxRepoLabel), which every write
  and reservation raises in its own batch: no two ever hand out the same id.
* Every merge/split/cleave is appended to the instance's **mutation log** (JSON
  records keyed by a repo-wide mutation id, with the client's `User`/`App`,
  stored in the node that made them, so a sibling branch never sees them).  A
  body's last modification (DVID's lastmod) is the newest record naming it;
  voxel writes make no record.
* Body reads (sparsevol at any scale, sizes, block bounds) start from the label
  index and read only the blocks it names.
* **Pyramid levels** (data/pyramid.py, `dvidfs downres`) hold the mode of each
  2x2x2 group of supervoxels (downres.mode2x), level n in TKeys `186 | n | IZYX`
  as DVID's labelmap; they are kept current in the same batch as every voxel
  write (split included), and merges/cleaves need no level rewritten: reads
  apply the mapping after taking the level's supervoxels.  `read(scale=N)`,
  `labels_at(scale=N)` and the mount's `s<N>/` slices use them.

Concurrency: as for every volume, mutations run under `VersionDB.lock`; the
mapping cache is rebuilt lazily and guarded by a per-version generation count.
"""
from __future__ import annotations

import json
import struct
import threading

import numpy as np

from dvidfs.geometry import PLANE_OF_AXIS, XYZ, Box
from dvidfs.data import downres, pyramid
from dvidfs.data.labelindex import LabelIndex, pack_block, unpack_block
from dvidfs.data.volume import BlockVolume, describe_block, summarize_blocks
from dvidfs.errors import ConflictError, InvalidInputError, NotFoundError
from dvidfs.formats.labelblock import decode_label_block, decode_label_plane_fast, encode_label_block
from dvidfs.formats import sparsevol as sv
from dvidfs.store import keys, versioned
from dvidfs.store.engine import Batch, Reader
from dvidfs.store.values import LZ4, decode_value, encode_value
from dvidfs.store.versioned import VersionView
from dvidfs.timestamps import iso, now
from dvidfs.versions.model import Node

_U64 = struct.Struct(">Q")
MAXLABEL_TKEY = keys.tkey(keys.CLASS_MAX_LABEL)


def _u64_tkey(cls: int, v: int) -> bytes:
    v = int(v)
    if not 0 <= v < 2**64:
        raise InvalidInputError(f"label {v} is outside DVID's uint64 range")
    return keys.tkey(cls, _U64.pack(v))


def _merge_max(ctx) -> bytes | None:
    vals = [struct.unpack("<Q", v)[0] for v in ctx.parent_values() if v]
    return struct.pack("<Q", max(vals)) if vals else None


def _merge_index(ctx) -> bytes | None:
    """A body's label index after a node merge: the common ancestry's index plus
    each side's change to it.  Two sides changing the body's rows in the same
    block cannot be told apart from counting twice, so that is a conflict (a
    block changed differently on two sides is refused as a block conflict anyway)."""
    base_raw = ctx.base_value()
    base = LabelIndex.decode(base_raw) if base_raw else LabelIndex()
    changes, touched = [], []
    for raw in ctx.parent_values():
        side = LabelIndex.decode(raw) if raw else LabelIndex()
        d = base.difference(side)
        changes.append(d)
        touched.append(set(np.unique(d.blocks).tolist()))
    for i in range(len(touched)):
        for j in range(i + 1, len(touched)):
            if touched[i] & touched[j]:
                raise ConflictError("the same body changed in the same block on two sides")
    merged = base
    for d in changes:
        merged = merged.add(d.blocks, d.svs, d.counts)
    return merged.encode() if len(merged) else None


def _merge_level_block(ctx) -> bytes | None:
    """Label blocks changed on several sides of a node merge: level 0 conflicts
    (as every block does), pyramid levels merge octant by octant."""
    if ctx.tkey[1] == 0:
        raise ConflictError("the same label block changed on two sides")
    return pyramid.merge_level_block(ctx, lambda v: decode_label_block(decode_value(v)),
                                     lambda a: encode_value(encode_label_block(a), LZ4), downres.mode2x)


def _ids(what: str, tks: list[bytes], why: str, shown: int = 10) -> str:
    """"bodies 5, 7, … (N in all) why": the ids of label index / mapping TKeys, for conflict messages."""
    ids = sorted(_U64.unpack(tk[1:9])[0] for tk in tks)
    if len(ids) == 1:
        what = what[:-3] + "y" if what.endswith("ies") else what[:-1]
    more = f", … ({len(ids)} in all)" if len(ids) > shown else ""
    return f"{what} {', '.join(map(str, ids[:shown]))}{more} {why}"


def _labels_of(record: dict) -> set[int]:
    """The bodies a mutation record names as changed (lastmod): a merge's target,
    a split's body and new label, a cleave's body and cleaved label."""
    return {int(record[k]) for k in ("Target", "NewLabel", "OrigLabel", "CleavedLabel") if k in record}


class Mapping:
    """Supervoxel -> body for one version, as sorted arrays for vectorised lookups."""

    def __init__(self, pairs: dict[int, int]):
        items = sorted(pairs.items())
        self.svs = np.array([k for k, _ in items], np.uint64)
        self.bodies = np.array([v for _, v in items], np.uint64)
        self.pairs = pairs

    def apply(self, arr: np.ndarray) -> np.ndarray:
        if not len(self.svs):
            return arr
        idx = np.searchsorted(self.svs, arr)
        idx[idx == len(self.svs)] = 0
        hit = self.svs[idx] == arr
        if not hit.any():
            return arr
        out = arr.copy()
        out[hit] = self.bodies[idx[hit]]
        return out

    def body(self, sv_id: int) -> int:
        return self.pairs.get(int(sv_id), int(sv_id))


class Labels(BlockVolume):
    typename = "labels"
    dtype = np.dtype(np.uint64)
    block_class = keys.CLASS_LABEL_BLOCK
    level_class = keys.CLASS_LABEL_BLOCK   # 186 | level | IZYX for every level, as DVID
    halve = staticmethod(downres.mode2x)
    default_block = 64
    needs_old_blocks = True
    offers = BlockVolume.offers | {"bodies"}
    merge_rules = {**BlockVolume.merge_rules, keys.CLASS_MAX_LABEL: _merge_max,
                   keys.CLASS_LABEL_INDEX: _merge_index, keys.CLASS_LABEL_BLOCK: _merge_level_block}
    key_descriptions = {keys.CLASS_LABEL_BLOCK: describe_block,
                        keys.CLASS_LABEL_INDEX: lambda tk, inst: f"body {_U64.unpack(tk[1:9])[0]} (its voxel counts)",
                        keys.CLASS_MAPPING: lambda tk, inst: f"supervoxel {_U64.unpack(tk[1:9])[0]} (merged into "
                                                             f"different bodies)"}
    key_summaries = {keys.CLASS_LABEL_BLOCK: summarize_blocks(lambda v: decode_label_block(decode_value(v))),
                     keys.CLASS_LABEL_INDEX: lambda tks, inst, ctxs: [_ids("bodies", tks, "(their voxel counts)")],
                     keys.CLASS_MAPPING: lambda tks, inst, ctxs: [_ids("supervoxels", tks,
                                                                       "(merged into different bodies)")]}

    def __init__(self, ctx, inst):
        super().__init__(ctx, inst)
        self._mapping_changed = False  # set by merge's staging, acted on after its batch
        self._maps: dict[int, Mapping] = {}
        self._map_gen: dict[int, int] = {}
        self._map_epoch = 0  # bumped when every version's mapping may have changed
        self._map_lock = threading.Lock()
        self._deltas: list[tuple[int, np.ndarray, np.ndarray]] = []
        self._max_written = 0

    # ------------------------------------------------------------ blocks
    def level_tkey(self, scale: int, bcoord: XYZ) -> bytes:
        return keys.tkey(self.block_class, bytes((scale,)) + keys.izyx(*bcoord))  # as DVID

    def encode_block(self, block: np.ndarray) -> bytes:
        return encode_value(encode_label_block(block), LZ4)

    def decode_plane(self, tk, version, value, view, gen, axis, k) -> np.ndarray:
        """Only the plane a slice needs (not cached; read-ahead decodes whole
        blocks for scrolling): the C fast path, else the numpy decoder."""
        p, size = PLANE_OF_AXIS[axis], self.grid.size
        want = (size[p.height], size[p.width])
        plane = decode_label_plane_fast(decode_value(value), axis, k, want)
        if plane.shape != want:
            raise InvalidInputError(f"stored label block has a {plane.shape} plane, expected {want}")
        return plane

    def decode_block(self, value: bytes) -> np.ndarray:
        block = decode_label_block(decode_value(value))
        if block.shape != self.grid.shape_zyx:
            raise InvalidInputError(f"stored label block has shape {block.shape}, expected {self.grid.shape_zyx}")
        return block

    # ------------------------------------------------------------ mapping
    def mapping(self, view: VersionView, reader: Reader | None = None) -> Mapping:
        view = self.as_view(view)
        v = view.version
        m = self._maps.get(v)
        if m is not None:
            return m
        gen = (self._map_epoch, self._map_gen.get(v, 0))
        lo, hi = _u64_tkey(keys.CLASS_MAPPING, 0), _u64_tkey(keys.CLASS_MAPPING, 2**64 - 1)
        pairs = {_U64.unpack(tk[1:])[0]: struct.unpack("<Q", val)[0]
                 for tk, val in versioned.scan(reader or self.engine, self.inst.id, lo, hi, view)}
        m = Mapping(pairs)
        with self._map_lock:
            if (self._map_epoch, self._map_gen.get(v, 0)) == gen:  # not forgotten meanwhile
                self._maps[v] = m
        return m

    def _forget_mapping(self, version: int) -> None:
        with self._map_lock:
            self._map_gen[version] = self._map_gen.get(version, 0) + 1
            self._maps.pop(version, None)

    def changed_elsewhere(self, version: int | None) -> None:
        if version is not None:
            self._forget_mapping(version)
            return
        with self._map_lock:
            self._map_epoch += 1
            self._maps.clear()

    # ------------------------------------------------------------ reading
    def read(self, view: VersionView, offset: XYZ, size: XYZ, supervoxels: bool = False,
             scale: int = 0) -> np.ndarray:
        """Labels of a box ([z, y, x]); `offset`/`size` are in voxels of level
        `scale` (the stored pyramid where built, else computed from the highest
        stored level: data/downres.py)."""
        view = self.as_view(view)
        out = super().read(view, offset, size, scale)
        return out if supervoxels else self.mapping(view).apply(out)

    def read_slice(self, view: VersionView, plane: str, coord: int, supervoxels: bool = False) -> np.ndarray:
        view = self.as_view(view)
        out = super().read_slice(view, plane, coord)
        return out if supervoxels else self.mapping(view).apply(out)

    def labels_at(self, view: VersionView, points_xyz, supervoxels: bool = False,
                  scale: int = 0) -> np.ndarray:
        """Label (uint64) at each (x, y, z) point, in voxels of level `scale`, in
        the order given; never-written space is 0.  Points are grouped by block
        and each block is read once, in one snapshot: clients send DVID's GET
        `labels` 10^4 points at a time, mostly clustered."""
        view = self.as_view(view)
        if scale:
            self.check_scale(scale, view)
        pts = np.asarray(points_xyz, dtype=np.int64).reshape(-1, 3)
        if len(pts) and (pts.min() < -2**31 or pts.max() > 2**31 - 1):
            raise InvalidInputError("a point lies outside the int32 coordinate range DVID uses")
        out = np.zeros(len(pts), np.uint64)
        size = np.array(self.grid.size, np.int64)
        bcoords = pts // size
        inner = pts - bcoords * size
        uniq, inverse = np.unique(bcoords, axis=0, return_inverse=True)
        order = np.argsort(inverse.reshape(-1), kind="stable")
        groups = np.split(order, np.cumsum(np.bincount(inverse.reshape(-1), minlength=len(uniq)))[:-1])
        gen = self.generation(view)
        with self.engine.snapshot() as snap:
            for bc, sel in zip(uniq.tolist(), groups):
                if scale:
                    lo = tuple(c * s for c, s in zip(bc, self.grid.size))
                    block = self._read_scaled_in(snap, view, lo, self.grid.size, scale, gen)
                else:  # through the block cache: clients ask for the same blocks again and again
                    bbox = self.grid.block_box(tuple(bc))
                    block = next((b for _, b in self.iter_blocks(snap, view, bbox, gen)), None)
                if block is not None:
                    ix = inner[sel]
                    out[sel] = block[ix[:, 2], ix[:, 1], ix[:, 0]]
        return out if supervoxels else self.mapping(view).apply(out)

    def index(self, view: VersionView, body: int, reader: Reader | None = None) -> LabelIndex | None:
        view = self.as_view(view)
        v = versioned.get(reader or self.engine, self.inst.id, _u64_tkey(keys.CLASS_LABEL_INDEX, body), view)
        return LabelIndex.decode(v) if v else None

    def require_index(self, view: VersionView, body: int, reader: Reader | None = None) -> LabelIndex:
        idx = self.index(view, body, reader)
        if idx is None or not len(idx):
            raise NotFoundError(f"label {body} does not exist in {self.inst.name!r} at this node")
        return idx

    def bodies(self, view: VersionView) -> np.ndarray:
        """Every body id with voxels at this node, ascending (keys only, no voxels read)."""
        view = self.as_view(view)
        lo = _u64_tkey(keys.CLASS_LABEL_INDEX, 0)
        hi = _u64_tkey(keys.CLASS_LABEL_INDEX, 2**64 - 1)
        ids = [_U64.unpack(tk[1:])[0]
               for tk, _ in versioned.scan(self.engine, self.inst.id, lo, hi, view, include_value=False)]
        return np.array(ids, np.uint64)

    def size(self, view: VersionView, body: int) -> int:
        return self.require_index(view, body).size

    def supervoxels(self, view: VersionView, body: int) -> np.ndarray:
        return self.require_index(view, body).supervoxels()

    def block_coords(self, view: VersionView, body: int) -> list[XYZ]:
        return [unpack_block(int(k)) for k in self.require_index(view, body).block_keys()]

    def _repo_max_key(self) -> bytes:
        return keys.meta_key(f"maxlabel:{self.inst.id}")

    def repo_max_label(self) -> int:
        """Largest id ever written or allocated in any version (DVID's MaxRepoLabel):
        new split ids come from above it, so two branches never hand out the same id."""
        v = self.engine.get(self._repo_max_key())
        return struct.unpack("<Q", v)[0] if v else 0

    def max_label(self, view: VersionView, reader: Reader | None = None) -> int:
        view = self.as_view(view)
        v = versioned.get(reader or self.engine, self.inst.id, MAXLABEL_TKEY, view)
        return struct.unpack("<Q", v)[0] if v else 0

    def body_index(self, view: VersionView, label: int, supervoxels: bool = False,
                   reader: Reader | None = None) -> LabelIndex:
        """The index rows every body question starts from: those of body `label`,
        or with `supervoxels=True` only the rows of supervoxel `label` (found in
        the index of the body it is mapped to).  NotFoundError when it has no voxels."""
        view = self.as_view(view)
        if not supervoxels:
            return self.require_index(view, label, reader)
        idx = self.index(view, self.mapping(view, reader).body(label), reader)
        rows = idx.svs == np.uint64(label) if idx is not None else None
        if rows is None or not rows.any():
            raise NotFoundError(f"supervoxel {label} does not exist in {self.inst.name!r} at this node")
        return LabelIndex(idx.blocks[rows], idx.svs[rows], idx.counts[rows])

    def _region(self, min_xyz, max_xyz, scale: int = 0) -> Box | None:
        """The level-0 voxels behind inclusive bounds given in voxels of level
        `scale` (DVID's minx..maxz, each optional), or None when unbounded."""
        if min_xyz is None and max_xyz is None:
            return None
        f = 1 << scale
        lo = [(-2**31 if v is None else int(v) * f) for v in (min_xyz or (None,) * 3)]
        hi = [(2**31 - 1 if v is None else (int(v) + 1) * f - 1) for v in (max_xyz or (None,) * 3)]
        if any(h < l for l, h in zip(lo, hi)):
            return Box(tuple(lo), tuple(lo))  # empty: nothing is inside
        return Box(tuple(lo), tuple(h + 1 for h in hi))

    def _blocks_in(self, idx: LabelIndex, region: Box | None) -> dict[XYZ, np.ndarray]:
        """Level-0 block -> the indexed supervoxels in it, for blocks touching `region`."""
        out = {}
        for bkey, svs in idx.svs_in_blocks().items():
            bcoord = unpack_block(bkey)
            if region is None or self.grid.block_box(bcoord).intersect(region) is not None:
                out[bcoord] = svs
        return out

    def body_masks(self, view: VersionView, label: int, min_xyz=None, max_xyz=None, *,
                   scale: int = 0, supervoxels: bool = False):
        """(block coordinate at level `scale`, bool [z, y, x] mask of the label in
        that block) for every block holding some of it inside the inclusive bounds
        (voxels of level `scale`), in z, y, x order.  Only blocks the label index
        names are read.  At scale N each level-0 block is downsampled on its own
        (data/downres.py: mode of supervoxels) and compared with the label's
        supervoxels of that block -- the same as mapping the downsampled
        supervoxels and comparing with the body, since a downsampled voxel
        keeps the value of a voxel of its own block."""
        view = self.as_view(view)
        downres.check_scale(scale, self.grid.size)
        f = 1 << scale
        size = self.grid.size
        piece = tuple(s // f for s in size)
        region = self._region(min_xyz, max_xyz, scale)
        gen = self.generation(view)
        with self.engine.snapshot() as snap:
            idx = self.body_index(view, label, supervoxels, snap)
            groups: dict[XYZ, list[tuple[XYZ, np.ndarray]]] = {}
            for bcoord, svs in self._blocks_in(idx, region).items():
                groups.setdefault(tuple(c // f for c in bcoord), []).append((bcoord, svs))
            for out in sorted(groups, key=lambda c: (c[2], c[1], c[0])):
                mask = np.zeros(self.grid.shape_zyx, bool) if f > 1 else None
                for bcoord, svs in groups[out]:
                    block = self.cached_block(snap, view, bcoord, gen)
                    if block is None:
                        raise InvalidInputError(f"label index of {label} names block {bcoord}, which is missing")
                    small = downres.downsample(block, scale)
                    hit = np.isin(small, svs) if len(svs) > 1 else small == svs[0]
                    if mask is None:      # level 0: one block, its mask as it is (a fresh array)
                        mask = hit
                        continue
                    x, y, z = ((b - o * f) * p for b, o, p in zip(bcoord, out, piece))
                    mask[z:z + piece[2], y:y + piece[1], x:x + piece[0]] = hit
                if region is not None:
                    self._clip_mask(mask, tuple(o * s for o, s in zip(out, size)), min_xyz, max_xyz)
                if mask.any():
                    yield out, mask

    def cached_block(self, reader: Reader, view: VersionView, bcoord: XYZ, gen: int) -> np.ndarray | None:
        """One decoded (read-only) level-0 block through the shared block cache,
        or None where nothing was written (`block()` always decodes): a walk over
        bodies meets each block once per body in it, and a block decode (~3 ms
        for 64³) is most of a small body's cost.
        `gen` must have been read before `reader`'s snapshot (iter_blocks)."""
        return next((b for _, b in self.iter_blocks(reader, view, self.grid.block_box(bcoord), gen)), None)

    @staticmethod
    def _clip_mask(mask: np.ndarray, origin: XYZ, min_xyz, max_xyz) -> None:
        """Clear the voxels of a block mask (first voxel at `origin`) outside the bounds."""
        for axis, (o, n) in enumerate(zip(origin, mask.shape[::-1])):
            lo = (min_xyz or (None,) * 3)[axis]
            hi = (max_xyz or (None,) * 3)[axis]
            a = 0 if lo is None else min(max(int(lo) - o, 0), n)
            b = n if hi is None else min(max(int(hi) - o + 1, 0), n)
            sl = [slice(None)] * 3
            sl[2 - axis] = slice(0, a)
            mask[tuple(sl)] = False
            sl[2 - axis] = slice(b, n)
            mask[tuple(sl)] = False

    def sparsevol_runs(self, view: VersionView, body: int, min_xyz=None, max_xyz=None, *,
                       scale: int = 0, supervoxels: bool = False) -> np.ndarray:
        """Runs (n, 4) [x, y, z, length] of the body's voxels (or one supervoxel's)
        at level `scale`, DVID order, clipped to an inclusive box (DVID's
        minx..maxz, in voxels of that level); no runs when none is inside."""
        size = self.grid.size
        parts = [sv.runs_from_mask(mask, tuple(c * s for c, s in zip(out, size)))
                 for out, mask in self.body_masks(view, body, min_xyz, max_xyz, scale=scale,
                                                  supervoxels=supervoxels)]
        return sv.merge_runs(np.concatenate(parts)) if parts else sv.empty_runs()

    def sparsevol(self, view: VersionView, body: int, min_xyz=None, max_xyz=None) -> bytes:
        """DVID's `rles` bytes for the body."""
        return sv.encode_rles(self.sparsevol_runs(view, body, min_xyz, max_xyz))

    def coarse_runs(self, view: VersionView, body: int, min_xyz=None, max_xyz=None,
                    supervoxels: bool = False) -> np.ndarray:
        """Runs of the body's blocks in block coordinates (DVID's sparsevol-coarse),
        only blocks touching the inclusive voxel bounds; from the index alone."""
        idx = self.body_index(view, body, supervoxels)
        coords = np.array(list(self._blocks_in(idx, self._region(min_xyz, max_xyz))), np.int32).reshape(-1, 3)
        runs = np.column_stack([coords, np.ones(len(coords), np.int32)]).astype(np.int32)
        return sv.merge_runs(runs)

    def sparsevol_coarse(self, view: VersionView, body: int) -> bytes:
        """Same format, runs in block coordinates (DVID's sparsevol-coarse)."""
        return sv.encode_rles(self.coarse_runs(view, body))

    def bbox(self, view: VersionView, body: int) -> tuple[XYZ, XYZ]:
        """Inclusive min/max voxel of the body: from its block masks directly
        (the extent of each mask's set voxels), no runs computed.  The same box
        as sv.runs_bbox(self.sparsevol_runs(view, body))."""
        size = self.grid.size
        box = sv.union_bbox(sv.mask_bbox(mask, tuple(c * s for c, s in zip(out, size)))
                            for out, mask in self.body_masks(view, body))
        if box is None:
            raise InvalidInputError("empty sparse volume has no bounding box")
        return box

    def sparsevol_size(self, view: VersionView, label: int, supervoxels: bool = False) -> dict:
        """DVID's sparsevol-size: voxels, block count and the bounds of those blocks
        in voxels (accurate to the block, not the voxel) -- from the index only."""
        idx = self.body_index(view, label, supervoxels)
        coords = np.array([unpack_block(int(k)) for k in idx.block_keys()], np.int64)
        size = np.array(self.grid.size, np.int64)
        return {"voxels": idx.size, "numblocks": len(coords),
                "minvoxel": (coords.min(axis=0) * size).tolist(),
                "maxvoxel": ((coords.max(axis=0) + 1) * size - 1).tolist()}

    def has_voxels_in(self, view: VersionView, label: int, min_xyz=None, max_xyz=None,
                      supervoxels: bool = False) -> bool:
        """Whether the label has voxels in a block touching the inclusive (level-0)
        bounds -- DVID's HEAD sparsevol, which widens the bounds to whole blocks
        and reads only the index.  An absent label has none (False, not an error)."""
        try:
            idx = self.body_index(view, label, supervoxels)
        except NotFoundError:
            return False
        return bool(self._blocks_in(idx, self._region(min_xyz, max_xyz)))

    def sizes(self, view: VersionView, labels, supervoxels: bool = False) -> list[int]:
        """Voxel count of each body (or supervoxel), 0 for an absent one, in one snapshot."""
        view = self.as_view(view)
        out = []
        with self.engine.snapshot() as snap:
            mapping = self.mapping(view, snap) if supervoxels else None
            for label in labels:
                idx = self.index(view, label if mapping is None else mapping.body(label), snap)
                if idx is None:
                    out.append(0)
                elif mapping is not None:
                    out.append(int(idx.counts[idx.svs == np.uint64(label)].sum()))
                else:
                    out.append(idx.size)
        return out

    def supervoxel_sizes(self, view: VersionView, body: int) -> tuple[list[int], list[int]]:
        """The body's supervoxels (ascending) and the voxel count of each."""
        idx = self.require_index(view, body)
        svs, inverse = np.unique(idx.svs, return_inverse=True)
        return svs.tolist(), np.bincount(inverse.reshape(-1), weights=idx.counts).astype(np.int64).tolist()

    def map_supervoxels(self, view: VersionView, svs, verify: bool = True) -> list[int]:
        """The body of each supervoxel (DVID's GET mapping).  A supervoxel with no
        mapping entry is its own body; with `verify` it is checked against that
        body's index and answers 0 ("no such id") when it has no voxels, as DVID's
        lookup does.  Mapped supervoxels are answered from the mapping alone."""
        view = self.as_view(view)
        with self.engine.snapshot() as snap:
            mapping = self.mapping(view, snap)
            out = []
            for s in svs:
                s = int(s)
                if s in mapping.pairs or not verify:
                    out.append(mapping.body(s))
                    continue
                idx = self.index(view, s, snap) if s else None
                out.append(s if idx is not None and bool((idx.svs == np.uint64(s)).any()) else 0)
        return out

    def list_bodies(self, view: VersionView, start: int = 0, number: int | None = None,
                    with_sizes: bool = False) -> list[tuple[int, int]]:
        """(body, voxels or 0) for up to `number` bodies with id >= start, ascending
        (DVID's listlabels); sizes only read when asked for."""
        view = self.as_view(view)
        lo = _u64_tkey(keys.CLASS_LABEL_INDEX, start)
        hi = _u64_tkey(keys.CLASS_LABEL_INDEX, 2**64 - 1)
        out = []
        for tk, value in versioned.scan(self.engine, self.inst.id, lo, hi, view, include_value=with_sizes):
            if number is not None and len(out) >= number:
                break
            out.append((_U64.unpack(tk[1:])[0], LabelIndex.decode(value).size if with_sizes else 0))
        return out

    def lastmod(self, view: VersionView, label: int) -> dict:
        """The newest mutation record naming the body (merge target, split source
        or new label, cleave source or cleaved label), as DVID's lastmod fields;
        a body no merge/split/cleave touched answers mutation id 0 and empty
        strings (voxel writes are not mutation records here).  NotFoundError if absent."""
        self.require_index(view, label)
        for rec in reversed(self.mutations(view)):
            if label in _labels_of(rec):
                return {"mutation id": rec["MutationID"], "last mod user": rec.get("User", ""),
                        "last mod app": rec.get("App", ""), "last mod time": rec.get("Timestamp", "")}
        return {"mutation id": 0, "last mod user": "", "last mod app": "", "last mod time": ""}

    def next_label(self) -> int:
        """The first id a reservation or a split would hand out now (DVID's nextlabel)."""
        return self.repo_max_label() + 1

    # ------------------------------------------------------------ writing: index upkeep
    def begin_stage(self, reader: Reader, view: VersionView) -> None:
        self._deltas = []
        self._max_written = 0
        self._mapping_changed = False  # a failed batch's merge left nothing to forget

    def stage_block(self, batch: Batch, node: Node, bcoord: XYZ, old, new) -> None:
        if old is not None and np.array_equal(old, new):
            return
        super().stage_block(batch, node, bcoord, old, new)
        self._count(bcoord, new, +1)
        if old is not None:
            self._count(bcoord, old, -1)

    def stage_delete(self, batch: Batch, node: Node, bcoord: XYZ, old) -> None:
        super().stage_delete(batch, node, bcoord, old)
        self._count(bcoord, old, -1)

    def _count(self, bcoord: XYZ, block: np.ndarray, sign: int) -> None:
        ids, counts = np.unique(block, return_counts=True)
        keep = ids != 0  # background is not a body
        ids, counts = ids[keep], counts[keep]
        if len(ids):
            self._deltas.append((pack_block(*bcoord), ids, sign * counts.astype(np.int64)))
            if sign > 0:
                self._max_written = max(self._max_written, int(ids[-1]))

    def end_stage(self, batch: Batch, reader: Reader, node: Node, view: VersionView) -> None:
        if self._deltas:
            blocks = np.concatenate([np.full(len(ids), b, np.uint64) for b, ids, _ in self._deltas])
            svs = np.concatenate([ids for _, ids, _ in self._deltas])
            deltas = np.concatenate([d for _, _, d in self._deltas])
            bodies = self.mapping(view, reader).apply(svs)
            order = np.argsort(bodies, kind="stable")
            bodies, blocks, svs, deltas = bodies[order], blocks[order], svs[order], deltas[order]
            cuts = np.flatnonzero(np.diff(bodies)) + 1
            for sl in np.split(np.arange(len(bodies)), cuts):
                body = int(bodies[sl[0]])
                idx = self.index(view, body, reader) or LabelIndex()
                self._put_index(batch, node, body, idx.add(blocks[sl], svs[sl], deltas[sl]))
        self._stage_max(batch, reader, node, view)
        self._deltas = []

    def _stage_max(self, batch: Batch, reader: Reader, node: Node, view: VersionView) -> None:
        """Raise the node's and the repo-wide max label to the largest id written
        or claimed in this batch (never lower them)."""
        if self._max_written > self.max_label(view, reader):
            versioned.put(batch, self.inst.id, MAXLABEL_TKEY, node.version_id,
                          struct.pack("<Q", self._max_written))
        if self._max_written > self.repo_max_label():
            batch.put(self._repo_max_key(), struct.pack("<Q", self._max_written))

    def after_apply(self, node: Node) -> None:
        """The mapping cache of `node` is dropped before any subscriber hears of a merge."""
        if self._mapping_changed:
            self._mapping_changed = False
            self._forget_mapping(node.version_id)
        super().after_apply(node)

    def _put_index(self, batch: Batch, node: Node, body: int, idx: LabelIndex) -> None:
        tk = _u64_tkey(keys.CLASS_LABEL_INDEX, body)
        if len(idx):
            versioned.put(batch, self.inst.id, tk, node.version_id, idx.encode())
        else:
            versioned.delete(batch, self.inst.id, tk, node.version_id)

    # ------------------------------------------------------------ mutations
    def _log(self, batch: Batch, node: Node, record: dict, user: str = "", app: str = "") -> dict:
        """Stage one mutation record (DVID's JSON mutation-log fields; `User` and
        `App` only when given, as DVID writes them) under a new repo-wide id."""
        mid = self.db._next_id(batch, "mutation")
        record = {"MutationID": mid, **record, "UUID": node.uuid, "Timestamp": iso(now())}
        if user:
            record["User"] = str(user)
        if app:
            record["App"] = str(app)
        versioned.put(batch, self.inst.id, _u64_tkey(keys.CLASS_MUTATION_LOG, mid), node.version_id,
                      json.dumps(record).encode())
        return record

    def mutations(self, view: VersionView) -> list[dict]:
        """The mutation log as seen from this node (its own and its ancestors' records)."""
        view = self.as_view(view)
        lo = _u64_tkey(keys.CLASS_MUTATION_LOG, 0)
        hi = _u64_tkey(keys.CLASS_MUTATION_LOG, 2**64 - 1)
        return [json.loads(v) for _, v in versioned.scan(self.engine, self.inst.id, lo, hi, view)]

    def _claim_ids(self, view: VersionView, reader: Reader, count: int) -> int:
        """First of `count` fresh ids for a write being staged: above every id any
        version ever wrote or reserved (DVID's MaxRepoLabel), so branches never
        share one.  end_stage records them as written, in the same batch."""
        start = max(self.max_label(view, reader), self.repo_max_label()) + 1
        if start + count - 1 >= 2**64:
            raise InvalidInputError(f"cannot hand out {count} new label id(s): the uint64 ids above "
                                    f"{start - 1} run out; nothing was changed")
        self._max_written = max(self._max_written, start + count - 1)
        return start

    def reserve_labels(self, node: Node, count: int) -> tuple[int, int]:
        """Reserve `count` new ids (DVID's POST nextlabel): returns the inclusive
        range.  The repo-wide and the node's max label move past it atomically, so
        no later reservation, split or cleave hands out any of them."""
        count = int(count)
        if count < 1:
            raise InvalidInputError(f"cannot reserve {count} labels: ask for 1 or more")
        with self.staged_write(node) as (batch, snap, view):  # end_stage stores the new maxima
            start = self._claim_ids(view, snap, count)
        return start, start + count - 1

    def merge(self, node: Node, target: int, others: list[int], user: str = "", app: str = "") -> dict:
        """Merge bodies `others` into `target`: mapping and index only, no voxel block rewritten."""
        target, others = int(target), [int(o) for o in others]
        if not others:
            raise InvalidInputError("merge needs at least one body to merge into the target")
        if target in others:
            raise InvalidInputError(f"cannot merge body {target} into itself")
        if len(set(others)) != len(others):
            raise InvalidInputError("a body is listed twice in the merge")
        if target == 0 or 0 in others:
            raise InvalidInputError("label 0 is background and cannot be merged")
        with self.staged_write(node) as (batch, snap, view):
            tidx = self.require_index(view, target, snap)
            gone = set(others)
            # supervoxels already mapped to a merged body but with no voxels now
            # (overwritten since): remap them too, so the chain stays transitive
            remap = {sv_ for sv_, b in self.mapping(view, snap).pairs.items() if b in gone}
            for o in others:
                oidx = self.require_index(view, o, snap)
                remap.update(int(s) for s in oidx.supervoxels())
                tidx = tidx.union(oidx)
                self._put_index(batch, node, o, LabelIndex())
            for s in sorted(remap):
                self._put_mapping(batch, node, s, target)
            self._put_index(batch, node, target, tidx)
            rec = self._log(batch, node, {"Action": "merge", "Target": target, "Labels": others}, user, app)
            self._mapping_changed = True
        return rec

    def _put_mapping(self, batch: Batch, node: Node, sv_id: int, body: int) -> None:
        versioned.put(batch, self.inst.id, _u64_tkey(keys.CLASS_MAPPING, sv_id), node.version_id,
                      struct.pack("<Q", body))

    def cleave(self, node: Node, body: int, svs: list[int], user: str = "", app: str = "") -> dict:
        """Move supervoxels `svs` of `body` to a new body (DVID's cleave): mapping
        keys and index rows only, no voxel block rewritten.  Every listed
        supervoxel must be in the body (or mapped to it with no voxels left, a
        "ghost"), and some must stay; otherwise nothing changes."""
        body, svs = int(body), [int(s) for s in svs]
        if not svs:
            raise InvalidInputError("cleave needs at least one supervoxel")
        if len(set(svs)) != len(svs):
            raise InvalidInputError("a supervoxel is listed twice in the cleave")
        if 0 in svs:
            raise InvalidInputError("label 0 is background and cannot be cleaved")
        with self.staged_write(node) as (batch, snap, view):
            idx = self.require_index(view, body, snap)
            pairs = self.mapping(view, snap).pairs
            have = set(idx.supervoxels().tolist())
            for s in svs:
                if s not in have and pairs.get(s) != body:
                    raise InvalidInputError(f"cleave refused: supervoxel {s} is not in body {body}; "
                                            "nothing was changed")
            if have <= set(svs):
                raise InvalidInputError(f"cleave refused: it would take every supervoxel of body {body}; "
                                        "nothing was changed")
            new_id = self._claim_ids(view, snap, 1)
            rows = np.isin(idx.svs, np.array(svs, np.uint64))
            self._put_index(batch, node, body, LabelIndex(idx.blocks[~rows], idx.svs[~rows], idx.counts[~rows]))
            self._put_index(batch, node, new_id, LabelIndex(idx.blocks[rows], idx.svs[rows], idx.counts[rows]))
            for s in sorted(svs):
                self._put_mapping(batch, node, s, new_id)
            rec = self._log(batch, node, {"Action": "cleave", "OrigLabel": body, "CleavedLabel": new_id,
                                          "CleavedSupervoxels": svs}, user, app)
            self._mapping_changed = True
        return rec

    def split(self, node: Node, body: int, rles: bytes, user: str = "", app: str = "") -> dict:
        """Move the voxels given as a DVID sparsevol out of `body` into a new body.
        Every voxel must belong to `body`; otherwise nothing changes."""
        body = int(body)
        runs = sv.decode_rles(rles)
        if not len(runs):
            raise InvalidInputError("the split sparsevol has no voxels")
        runs = sv.merge_runs(runs)
        # Bound the work by the body before any block is touched or the lock taken:
        # a 28-byte sparsevol can name 2**31 voxels.
        voxels = int(runs[:, 3].astype(np.int64).sum())
        size = self.size(self.db.view(node), body)
        if voxels > size:
            raise InvalidInputError(f"split refused: the sparsevol has {voxels} voxels but body {body} "
                                    f"has {size}; nothing was changed")
        with self.staged_write(node) as (batch, snap, view):
            self.require_index(view, body, snap)
            mapping = self.mapping(view, snap)
            new_id = self._claim_ids(view, snap, 1)
            cut = 0
            for bcoord in self._blocks_of_runs(runs):
                bbox = self.grid.block_box(bcoord)
                old = self.block(snap, view, bcoord)
                if old is None:
                    old = np.zeros(self.grid.shape_zyx, self.dtype)
                mask = sv.runs_to_mask(runs, bbox.lo, self.grid.shape_zyx)
                inside = mapping.apply(old[mask]) == body
                if not inside.all():
                    raise InvalidInputError(
                        f"split refused: {int((~inside).sum())} voxel(s) of the sparsevol in block "
                        f"{bcoord} are not in body {body}; nothing was changed")
                new = old.copy()
                new[mask] = new_id
                cut += int(mask.sum())
                self.stage_block(batch, node, bcoord, old, new)
            rec = self._log(batch, node, {"Action": "split", "Target": body, "NewLabel": new_id,
                                          "Voxels": cut}, user, app)
        return rec

    def _blocks_of_runs(self, runs: np.ndarray) -> list[XYZ]:
        bx, by, bz = self.grid.size
        x0 = runs[:, 0].astype(np.int64)
        x1 = x0 + runs[:, 3] - 1
        out = set()
        for a, b, y, z in zip(x0 // bx, x1 // bx, runs[:, 1] // by, runs[:, 2] // bz):
            for x in range(int(a), int(b) + 1):
                out.add((x, int(y), int(z)))
        return sorted(out, key=lambda c: (c[2], c[1], c[0]))

    # ------------------------------------------------------------ info
    def info(self, view: VersionView) -> dict:
        d = super().info(view)
        d["Extended"]["MaxLabel"] = self.max_label(view)
        d["Extended"]["IndexedLabels"] = True
        return d
