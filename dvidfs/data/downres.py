"""Volumes at lower resolution: the 2x rules, and levels computed on demand.

Scale N halves each axis N times; a voxel at scale N stands for a 2^N cube at
scale 0.  Two rules, one per kind of voxel:

* labels (`mode2x`): like DVID's labelmap, each halving takes the **mode** of
  every 2x2x2 group of *supervoxels*, and the body mapping is applied
  afterwards, so a body merge needs no voxel rewritten at any level.  DVID's
  own rule counts votes in a Go map (ties go to whichever label the map
  yields first, and background is meant not to vote); ours is deterministic
  and says so: the most frequent non-zero label wins, ties go to the smaller
  id, and a group of only background stays 0.
* grayscale (`mean2x`): the **mean** of each 2x2x2 group, rounded half up
  ((sum + 4) // 8).  DVID's imageblk has no 3-D downres of its own (its
  multiscale grayscale is separate instances written by external tools; its
  2-D `DownRes` averages), so we take the mean.

Never-written space is background 0 at every level, and a group straddling
the edge of the written volume counts its missing voxels as 0.

Because each halving is local to its 2x2x2 group, a group never straddles a
block, so each block is downsampled on its own and pasted: memory stays at
one block plus the reply.  Stored pyramids (data/pyramid.py) are these same
halvings, one level at a time; levels above the stored ones are computed
here from the highest stored level below them.
"""
from __future__ import annotations

import numpy as np

from dvidfs.errors import InvalidInputError
from dvidfs.geometry import XYZ, Box

MAX_SCALE = 6  # 2^6 = 64: one level-0 block per voxel at the coarsest level


def mode2x(vol: np.ndarray) -> np.ndarray:
    """[z, y, x] array with even sides -> half size, the mode of each 2x2x2 group
    (most frequent non-zero label; ties to the smaller id; all-zero stays 0)."""
    z, y, x = _halvable(vol)
    g = vol.reshape(z // 2, 2, y // 2, 2, x // 2, 2).transpose(0, 2, 4, 1, 3, 5).reshape(-1, 8)
    out = g[:, 0].copy()
    # Most groups of a segmentation hold one label: only the others are voted on
    # (5x faster on EM labels; the result is the same, a uniform group's mode is its label).
    mixed = np.flatnonzero((g != g[:, :1]).any(axis=1))
    if len(mixed):
        h = np.sort(g[mixed], axis=1)
        votes = (h[:, :, None] == h[:, None, :]).sum(axis=2)   # how many of the 8 share each value
        votes[h == 0] = 0                                       # background does not vote
        best = votes.argmax(axis=1)                             # first max: the smallest id among ties
        m = h[np.arange(len(h)), best]
        m[votes.max(axis=1) == 0] = 0
        out[mixed] = m
    return out.reshape(z // 2, y // 2, x // 2)


def mean2x(vol: np.ndarray) -> np.ndarray:
    """[z, y, x] uint8 array with even sides -> half size, the mean of each
    2x2x2 group rounded half up."""
    _halvable(vol)
    s = vol[0::2].astype(np.uint16)   # pairwise sums along z, y, x: 20x faster than a 3-axis sum
    s += vol[1::2]
    s = s[:, 0::2] + s[:, 1::2]
    s = s[:, :, 0::2] + s[:, :, 1::2]
    s += 4
    s >>= 3
    return s.astype(vol.dtype)


def _halvable(vol: np.ndarray) -> tuple[int, int, int]:
    z, y, x = vol.shape
    if z % 2 or y % 2 or x % 2:
        raise InvalidInputError(f"cannot halve a block of shape {vol.shape}: sides must be even")
    return z, y, x


def downsample(vol: np.ndarray, scale: int, halve=mode2x) -> np.ndarray:
    """`scale` successive halvings (scale 0 returns `vol` itself)."""
    for _ in range(scale):
        vol = halve(vol)
    return vol


def ondemand_limit(block_size: XYZ) -> int:
    """How many halvings one block can take on its own (a 64³ block: 6)."""
    return min(MAX_SCALE, *(int(b).bit_length() - 1 for b in block_size))


def check_scale(scale: int, block_size: XYZ, stored: int = 0) -> None:
    """`scale` is readable: up to the stored levels plus what can be computed
    from the highest of them (`ondemand_limit`)."""
    limit = stored + ondemand_limit(block_size)
    if not 0 <= scale <= limit:
        raise InvalidInputError(f"scale {scale} is out of range: 0..{limit} for blocks of {list(block_size)}"
                                + (f" with {stored} stored pyramid level(s)" if stored else ""))


def scale_box(box: Box, scale: int) -> Box:
    """The voxels of level `scale` covering a level-0 box (rounded out)."""
    return Box(tuple(l >> scale for l in box.lo), tuple(-((-h) >> scale) for h in box.hi))


def level0_box(offset: XYZ, size: XYZ, scale: int) -> Box:
    """The scale-0 region behind a box given in scale-`scale` voxels."""
    f = 1 << scale
    return Box.from_offset_size(tuple(o * f for o in offset), tuple(s * f for s in size))


def read_scaled(vol, reader, view, offset: XYZ, size: XYZ, steps: int, halve) -> np.ndarray:
    """A box of level `vol.scale + steps` ([z, y, x]), in voxels of that level:
    every stored block of `vol` (a level view) under it, halved `steps` times
    on its own and pasted."""
    if steps > ondemand_limit(vol.grid.size):
        raise InvalidInputError(f"cannot compute {steps} levels above stored level {vol.scale} "
                                f"from blocks of {list(vol.grid.size)}")
    out_box = Box.from_offset_size(offset, size)
    out = np.zeros(out_box.shape_zyx, vol.dtype)
    f = 1 << steps
    for bcoord, block in vol.iter_blocks(reader, view, level0_box(offset, size, steps)):
        small = downsample(block, steps, halve)
        lo = tuple(b * s // f for b, s in zip(bcoord, vol.grid.size))
        small_box = Box(lo, tuple(l + n for l, n in zip(lo, small.shape[::-1])))
        part = small_box.intersect(out_box)
        if part is not None:
            out[part.slices_in(out_box)] = small[part.slices_in(small_box)]
    return out


def read_supervoxels_scaled(labels, reader, view, offset: XYZ, size: XYZ, scale: int) -> np.ndarray:
    """Supervoxels of a box at scale `scale` ([z, y, x] uint64) computed from
    level 0: every stored level-0 block under it, downsampled on its own and pasted."""
    check_scale(scale, labels.grid.size)
    return read_scaled(labels, reader, view, offset, size, scale, mode2x)
