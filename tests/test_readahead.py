"""Sequential read-ahead returns exactly what read_slice returns, across layer
borders, negative coordinates, all planes, and after writes (no stale layers)."""
from __future__ import annotations

import numpy as np

from dvidfs.data.readahead import ReadAhead


def test_sequential_reads_equal_read_slice_and_see_writes(store, root):
    vol = store.new_instance(root, "g", "grayscale", block_size=8)
    rng = np.random.default_rng(4)
    data = rng.integers(0, 256, (21, 19, 23), dtype=np.uint8)
    off = (-5, -3, -9)
    vol.write(root, off, data)
    view = store.db.view(root)
    ra = ReadAhead()
    for plane, axis, n in (("xy", 2, 21), ("xz", 1, 19), ("yz", 0, 23)):
        for c in list(range(off[axis], off[axis] + n)) + list(range(off[axis] + n - 1, off[axis] - 1, -1)):
            np.testing.assert_array_equal(ra.read_slice(vol, view, plane, c), vol.read_slice(view, plane, c))
    assert ra.layers.hits > 0  # read-ahead was actually used
    # a write in the (open) node: layers cached before it must not be served
    z = off[2] + 4
    ra.read_slice(vol, view, "xy", z - 1)
    ra.read_slice(vol, view, "xy", z)
    vol.write(root, (off[0], off[1], z + 1), np.full((1, 19, 23), 7, np.uint8))
    got = ra.read_slice(vol, view, "xy", z + 1)
    assert (got == 7).all()
    np.testing.assert_array_equal(ra.read_slice(vol, view, "yz", off[0] + 2), vol.read_slice(view, "yz", off[0] + 2))


def test_random_access_does_not_read_ahead(store, root):
    vol = store.new_instance(root, "g", "grayscale", block_size=8)
    vol.write(root, (0, 0, 0), np.ones((32, 8, 8), np.uint8))
    view = store.db.view(root)
    ra = ReadAhead()
    for z in (0, 9, 20, 3, 27):
        ra.read_slice(vol, view, "xy", z)
    assert ra.layers.used == 0


def test_second_slice_of_a_layer_reads_ahead(store, root):
    """Stepping through a stack a few slices at a time (z, z+3, …) stays inside
    one layer of blocks: the second read loads the layer, later ones are copies
    that still equal the source voxels."""
    vol = store.new_instance(root, "g", "grayscale", block_size=8)
    src = np.random.default_rng(3).integers(0, 256, (24, 16, 20), dtype=np.uint8)
    vol.write(root, (0, 0, 0), src)
    view = store.db.view(root)
    ra = ReadAhead()
    np.testing.assert_array_equal(ra.read_slice(vol, view, "xy", 8), src[8])
    assert ra.layers.used == 0
    np.testing.assert_array_equal(ra.read_slice(vol, view, "xy", 11), src[11])
    assert ra.layers.used == 8 * 16 * 20  # the layer z = 8..15
    for z in (14, 9):
        np.testing.assert_array_equal(ra.read_slice(vol, view, "xy", z), src[z])
    np.testing.assert_array_equal(ra.read_slice(vol, view, "yz", 5), src[:, :, 5])


def test_big_slices_read_ahead_in_thinner_layers(store, root):
    """When a whole layer of blocks is over a quarter of the budget, layers get
    thinner (a power-of-two part of a block) instead of disappearing; every
    slice still equals the source, and the one loaded layer holds t planes."""
    vol = store.new_instance(root, "g", "grayscale", block_size=8)
    src = np.random.default_rng(5).integers(0, 256, (16, 12, 10), dtype=np.uint8)
    vol.write(root, (0, 0, 0), src)
    view = store.db.view(root)
    plane_bytes = 12 * 10
    ra = ReadAhead(budget=4 * (2 * plane_bytes))  # a quarter holds 2 planes, not 8
    np.testing.assert_array_equal(ra.read_slice(vol, view, "xy", 4), src[4])
    assert ra.layers.used == 0  # one read: no sequence yet
    for z in (5, 6, 7, 8):
        np.testing.assert_array_equal(ra.read_slice(vol, view, "xy", z), src[z])
        assert ra.layers.used % (2 * plane_bytes) == 0 and ra.layers.used > 0
    tiny = ReadAhead(budget=4 * plane_bytes)  # not even 2 planes: no read-ahead at all
    for z in (4, 5, 6):
        np.testing.assert_array_equal(tiny.read_slice(vol, view, "xy", z), src[z])
    assert tiny.layers.used == 0
