"""Shared world for the client acceptance tests (test_server_clients.py,
test_server_neuroglancer.py): a small sample store behind a real `dvidfs serve`,
and the numpy truth every answer is checked against.

The store: repo "sample" (dvidfs/samplestore.py) of 128 x 128 x 64 voxels with
`grayscale` (uint8blk) and `segmentation` (labelmap, 64³ blocks); its root is
committed.  On top of that:

    root --- child   (master leaf; body `merged_away` merged into `big`)
         \\-- side    (branch "side", untouched)

so branch-versions/master has two entries, find_lost_ids has something to find,
and every body read at the child goes through a non-identity mapping.

The truth is regenerated from dvidfs.sample with the same seed (never read back
through our own encoders), and the reference algorithms below are written
independently of dvidfs/data/downres.py.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from dvidfs.core import Dvid
from dvidfs.sample import make_sample
from dvidfs.samplestore import build_sample_store
from serving import served

SIZE_XYZ = (128, 128, 64)
BLOCK = 64          # labelmap block size (dvidfs default for labels, DVID's default)
SEED = 0


@dataclass
class World:
    url: str
    core: Dvid
    root: str                  # committed root UUID
    child: str                 # master leaf UUID (open), holds the merge
    side: str                  # UUID of branch "side" (child of root)
    gray: np.ndarray           # [z, y, x] uint8
    sv: np.ndarray             # [z, y, x] uint64 supervoxels (= bodies at the root)
    big: int                   # merge target
    merged_away: int           # merged into `big` at the child
    small: int                 # a body inside one 64³ block only
    absent: list[int]          # ids that are nowhere
    merge_record: dict
    _cache: dict = field(default_factory=dict)

    # --------------------------------------------------------------- truth
    def mapping(self, node: str) -> dict[int, int]:
        return {self.merged_away: self.big} if node == self.child else {}

    def bodies(self, node: str) -> np.ndarray:
        """[z, y, x] body labels as seen at `node`."""
        key = ("bodies", node)
        if key not in self._cache:
            self._cache[key] = apply_mapping(self.sv, self.mapping(node))
        return self._cache[key]

    def level(self, node: str, scale: int) -> np.ndarray:
        """Body labels at `scale`: successive 2x modes of the supervoxels, mapped
        afterwards (DVID downsamples supervoxels; the mapping applies on read)."""
        key = ("level", scale)
        if key not in self._cache:
            self._cache[key] = self.sv if scale == 0 else ref_halve(self.level(self.root, scale - 1))
        return apply_mapping(self._cache[key], self.mapping(node))

    def count(self, node: str, body: int) -> int:
        return int(np.count_nonzero(self.bodies(node) == body))

    def voxels_xyz(self, node: str, body: int, scale: int = 0) -> np.ndarray:
        """Sorted (N, 3) int64 xyz coordinates of `body` at `scale`."""
        return sort_xyz(np.argwhere(self.level(node, scale) == body)[:, ::-1])

    def blocks_xyz(self, node: str, body: int) -> np.ndarray:
        """Sorted block coordinates (64³ blocks) holding `body`."""
        return sort_xyz(np.unique(self.voxels_xyz(node, body) // BLOCK, axis=0))


def sort_xyz(a) -> np.ndarray:
    """(N, 3) xyz -> int64, rows sorted by z, then y, then x (DVID's span order)."""
    a = np.asarray(a, dtype=np.int64).reshape(-1, 3)
    return a[np.lexsort((a[:, 0], a[:, 1], a[:, 2]))]


def apply_mapping(arr: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    out = arr.copy()
    for sv, body in mapping.items():
        out[arr == sv] = body
    return out


def ref_halve(vol: np.ndarray) -> np.ndarray:
    """Independent 2x2x2 mode for labels: the most frequent non-zero label of
    each group, ties to the smaller id, an all-zero group stays 0.

    Counts votes in a (group x label) table with np.add.at; labels are ranked
    ascending, so argmax's first maximum is the smaller id."""
    z, y, x = vol.shape
    assert z % 2 == 0 and y % 2 == 0 and x % 2 == 0, vol.shape
    groups = vol.reshape(z // 2, 2, y // 2, 2, x // 2, 2).transpose(0, 2, 4, 1, 3, 5).reshape(-1, 8)
    labels, dense = np.unique(groups, return_inverse=True)
    dense = dense.reshape(groups.shape)
    votes = np.zeros((groups.shape[0], len(labels)), np.uint8)
    np.add.at(votes, (np.repeat(np.arange(groups.shape[0]), 8), dense.ravel()), 1)
    if labels[0] == 0:
        votes[:, 0] = 0
    winner = labels[votes.argmax(axis=1)]
    winner[votes.max(axis=1) == 0] = 0
    return winner.reshape(z // 2, y // 2, x // 2).astype(vol.dtype)


def padded_box(vol: np.ndarray, offset_xyz, size_xyz) -> np.ndarray:
    """[z, y, x] region of `vol` at `offset_xyz` (may lie partly or wholly outside;
    outside is 0, like an absent block)."""
    out = np.zeros(tuple(size_xyz[::-1]), vol.dtype)
    lo = [max(0, o) for o in offset_xyz]
    hi = [min(n, o + s) for o, s, n in zip(offset_xyz, size_xyz, vol.shape[::-1])]
    if all(h > l for l, h in zip(lo, hi)):
        src = tuple(slice(l, h) for l, h in zip(lo[::-1], hi[::-1]))
        dst = tuple(slice(l - o, h - o) for l, h, o in zip(lo[::-1], hi[::-1], offset_xyz[::-1]))
        out[dst] = vol[src]
    return out


def build_world(path: os.PathLike) -> World:
    """Create the store under `path` (the caller serves world.core, sets
    world.url and closes the core)."""
    core = Dvid.init(path)
    root_uuid = build_sample_store(core, SIZE_XYZ, seed=SEED)
    gray, sv = make_sample(SIZE_XYZ[::-1], seed=SEED)
    root = core.node(root_uuid)
    child = core.branch(root)                 # next version on master
    side = core.branch(root, "side")

    ids, counts = np.unique(sv, return_counts=True)
    order = np.argsort(counts, kind="stable")[::-1]
    big, merged_away = int(ids[order[0]]), int(ids[order[1]])
    small = None
    for i in order:                            # largest body that lives in one block
        lab = int(ids[i])
        if lab in (big, merged_away) or counts[i] < 200:
            continue
        zyx = np.argwhere(sv == lab)
        if len(np.unique(zyx // BLOCK, axis=0)) == 1:
            small = lab
            break
    assert small is not None, "sample has no body inside a single block"
    present = set(int(i) for i in ids)
    absent = [a for a in (1, 2, 3, 12345, 2**41 + 7) if a not in present][:3]

    rec = core.data(child, "segmentation").merge(child, big, [merged_away])
    world = World(url="", core=core, root=root_uuid, child=child.uuid, side=side.uuid,
                  gray=gray, sv=sv, big=big, merged_away=merged_away, small=small,
                  absent=absent, merge_record=rec)
    return world


def decode_compressed_segmentation(payload: bytes, size_xyz, block=(8, 8, 8)) -> np.ndarray:
    """Independent reader of neuroglancer's compressed_segmentation (uint64, one
    channel) -> [z, y, x] uint64.  Format: uint32 LE words; word 0 = offset of
    the channel (1); per block (x fastest) two header words: table offset | bits
    << 24, values offset (in words from the channel start); `bits` in
    {0,1,2,4,8,16,32}-bit indices packed LSB first, voxel order x fastest; the
    table holds uint64 values as (low, high) word pairs."""
    w = np.frombuffer(payload, "<u4")
    assert w[0] == 1, f"one channel: header offset 1, got {w[0]}"
    ch = w[1:]
    gx, gy, gz = (-(-s // b) for s, b in zip(size_xyz, block))
    bx, by, bz = block
    n = bx * by * bz
    out = np.zeros((gz * bz, gy * by, gx * bx), np.uint64)
    k = 0
    for z in range(gz):
        for y in range(gy):
            for x in range(gx):
                h0, h1 = int(ch[2 * k]), int(ch[2 * k + 1])
                k += 1
                table_at, bits = h0 & 0xFFFFFF, h0 >> 24
                assert bits in (0, 1, 2, 4, 8, 16, 32), bits
                if bits == 0:
                    idx = np.zeros(n, np.int64)
                else:
                    words = ch[h1:h1 + (n * bits + 31) // 32].astype(np.uint64)
                    pos = np.arange(n) * bits
                    idx = ((words[pos // 32] >> (pos % 32).astype(np.uint64))
                           & np.uint64((1 << bits) - 1)).astype(np.int64)
                ntab = int(idx.max()) + 1
                tab = ch[table_at:table_at + 2 * ntab].astype(np.uint64)
                values = tab[0::2] | (tab[1::2] << np.uint64(32))
                out[z * bz:(z + 1) * bz, y * by:(y + 1) * by, x * bx:(x + 1) * bx] = \
                    values[idx].reshape(bz, by, bx)
    sx, sy, sz = size_xyz
    return out[:sz, :sy, :sx]


def served_world(path: os.PathLike) -> Iterator[World]:
    """The world behind a real server (`world.url`), closed afterwards: the body
    of the module-scoped `world` fixtures."""
    w = build_world(path)
    try:
        with served(w.core) as url:
            w.url = url
            yield w
    finally:
        w.core.close()
