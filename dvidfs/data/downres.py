"""Label volumes at lower resolution, computed on demand from level 0.

Scale N halves each axis N times; a voxel at scale N stands for a 2^N cube at
scale 0.  Like DVID's labelmap, each halving takes the **mode** of every 2x2x2
group of *supervoxels*, and the body mapping is applied afterwards, so a body
merge needs no voxel rewritten at any level.  DVID's own rule counts votes in
a Go map (ties go to whichever label the map yields first, and background is
meant not to vote); ours is deterministic and says so: the most frequent
non-zero label wins, ties go to the smaller id, and a group of only
background stays 0.

Because each halving is local to its 2x2x2 group, a 2^N cube never straddles
a level-0 block (blocks are 64³, N <= 6), so each stored block is downsampled
on its own and pasted: memory stays at one block plus the reply, however
large the scale-0 region behind it.  Until stored pyramids exist, the cost is
reading every level-0 block under the request.
"""
from __future__ import annotations

import numpy as np

from dvidfs.errors import InvalidInputError
from dvidfs.geometry import XYZ, Box

MAX_SCALE = 6  # 2^6 = 64: one level-0 block per voxel at the coarsest level


def mode2x(vol: np.ndarray) -> np.ndarray:
    """[z, y, x] array with even sides -> half size, the mode of each 2x2x2 group
    (most frequent non-zero label; ties to the smaller id; all-zero stays 0)."""
    z, y, x = vol.shape
    if z % 2 or y % 2 or x % 2:
        raise InvalidInputError(f"cannot halve a block of shape {vol.shape}: sides must be even")
    g = vol.reshape(z // 2, 2, y // 2, 2, x // 2, 2).transpose(0, 2, 4, 1, 3, 5).reshape(-1, 8)
    g = np.sort(g, axis=1)
    votes = (g[:, :, None] == g[:, None, :]).sum(axis=2)   # how many of the 8 share each value
    votes[g == 0] = 0                                       # background does not vote
    best = votes.argmax(axis=1)                             # first max: the smallest id among ties
    out = g[np.arange(len(g)), best]
    out[votes.max(axis=1) == 0] = 0
    return out.reshape(z // 2, y // 2, x // 2)


def downsample(vol: np.ndarray, scale: int) -> np.ndarray:
    """`scale` successive halvings (scale 0 returns `vol` itself)."""
    for _ in range(scale):
        vol = mode2x(vol)
    return vol


def check_scale(scale: int, block_size: XYZ) -> None:
    limit = min(MAX_SCALE, *(int(b).bit_length() - 1 for b in block_size))
    if not 0 <= scale <= limit:
        raise InvalidInputError(f"scale {scale} is out of range: 0..{limit} for blocks of {list(block_size)}")


def level0_box(offset: XYZ, size: XYZ, scale: int) -> Box:
    """The scale-0 region behind a box given in scale-`scale` voxels."""
    f = 1 << scale
    return Box.from_offset_size(tuple(o * f for o in offset), tuple(s * f for s in size))


def read_supervoxels_scaled(labels, reader, view, offset: XYZ, size: XYZ, scale: int) -> np.ndarray:
    """Supervoxels of a box at scale `scale` ([z, y, x] uint64): every stored
    level-0 block under it, downsampled on its own and pasted."""
    check_scale(scale, labels.grid.size)
    out_box = Box.from_offset_size(offset, size)
    out = np.zeros(out_box.shape_zyx, np.uint64)
    f = 1 << scale
    for bcoord, block in labels.iter_blocks(reader, view, level0_box(offset, size, scale)):
        small = downsample(block, scale)
        lo = tuple(b * s // f for b, s in zip(bcoord, labels.grid.size))
        small_box = Box(lo, tuple(l + n for l, n in zip(lo, small.shape[::-1])))
        part = small_box.intersect(out_box)
        if part is not None:
            out[part.slices_in(out_box)] = small[part.slices_in(small_box)]
    return out
